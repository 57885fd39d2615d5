"""Training and evaluation loops, single-process or distributed (torchrun)."""

from .distributed import DistContext, cleanup, init_distributed, shard
from .evaluation import (
    Metrics,
    agreement,
    collect_logits,
    evaluate,
    iterate_batches,
    metrics_from_counts,
    per_clip,
    top1_drop,
    topk_accuracy,
)
from .training import (
    NonFiniteLoss,
    TrainConfig,
    epoch_batches,
    classification_loss,
    dataset_num_classes,
    make_optimizer,
    train,
    train_one_epoch,
    warmup_cosine,
)

__all__ = [
    "DistContext",
    "init_distributed",
    "cleanup",
    "shard",
    "Metrics",
    "evaluate",
    "iterate_batches",
    "metrics_from_counts",
    "collect_logits",
    "topk_accuracy",
    "top1_drop",
    "agreement",
    "per_clip",
    "TrainConfig",
    "epoch_batches",
    "train",
    "train_one_epoch",
    "warmup_cosine",
    "classification_loss",
    "make_optimizer",
    "dataset_num_classes",
    "NonFiniteLoss",
]
