"""Classification metrics on a dataset: top-1, top-5, per-class accuracy, confusion matrix.
Under torchrun every rank evaluates its own shard and the counts are summed, so no clip is
counted twice or missed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .._memory import release_free_heap
from .distributed import DistContext, all_reduce_sum, shard

# Batches between returns of freed heap memory to the system (see `_memory`): often enough to keep
# a run over 100000 clips at its first batches' size.
TRIM_EVERY = 8

__all__ = [
    "Metrics",
    "evaluate",
    "iterate_batches",
    "metrics_from_counts",
    "collect_logits",
    "topk_accuracy",
    "agreement",
    "per_clip",
]


@dataclass
class Metrics:
    num_clips: int
    top1: float
    top5: float
    per_class: list[Optional[float]]
    confusion: list[list[int]]
    classes: Optional[list[str]] = field(default=None)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return f"top-1 {100 * self.top1:.2f}%  top-5 {100 * self.top5:.2f}%  ({self.num_clips} clips)"


def iterate_batches(
    dataset: Dataset, indices: Sequence[int], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        yield torch.stack([clip for clip, _ in items]), torch.tensor([label for _, label in items])


def metrics_from_counts(confusion: torch.Tensor, top5_hits: int, classes=None) -> Metrics:
    total = int(confusion.sum())
    rows = confusion.sum(dim=1)
    per_class = [float(confusion[c, c] / rows[c]) if rows[c] > 0 else None for c in range(len(confusion))]
    return Metrics(
        num_clips=total,
        top1=float(confusion.diag().sum()) / max(total, 1),
        top5=top5_hits / max(total, 1),
        per_class=per_class,
        confusion=confusion.tolist(),
        classes=list(classes) if classes is not None else None,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    batch_size: int = 8,
    ctx: Optional[DistContext] = None,
    progress: bool = True,
    desc: str = "evaluating",
) -> Metrics:
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    logits, labels = collect_logits(
        lambda clips: model(clips.to(ctx.device)),
        dataset,
        batch_size,
        indices=shard(len(dataset), ctx),
        progress=progress and ctx.is_main,
        desc=desc,
    )
    model.train(was_training)
    if len(labels) == 0:
        logits = torch.empty(0, num_classes)
    confusion = torch.bincount(labels * num_classes + logits.argmax(dim=1), minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    top5_hits = (logits.topk(min(5, num_classes), dim=1).indices == labels[:, None]).any(dim=1).sum()
    all_reduce_sum(confusion, ctx)
    all_reduce_sum(top5_hits, ctx)
    return metrics_from_counts(confusion, int(top5_hits), getattr(dataset, "classes", None))


@torch.no_grad()
def collect_logits(
    model,
    dataset: Dataset,
    batch_size: int = 8,
    indices: Optional[Sequence[int]] = None,
    progress: bool = True,
    desc: str = "running",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of `model` (any callable on a clip batch) over `dataset`."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    outs, labels = [], []
    bar = tqdm(total=len(indices), desc=desc, disable=not progress, leave=False, unit="clip")
    for batch, (clips, y) in enumerate(iterate_batches(dataset, indices, batch_size), 1):
        outs.append(model(clips).float().cpu())
        labels.append(y)
        bar.update(len(y))
        if batch % TRIM_EVERY == 0:
            release_free_heap()
    bar.close()
    if not outs:  # an empty shard (more ranks than clips)
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Per clip, whether its label is among its `k` highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    return float(topk_hits(logits, labels, k).float().mean())


def top1_drop(reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 accuracy lost by `other` against `reference` on the same clips, in points, with its
    paired standard error: only the clips that one gets right and the other wrong carry
    information, so the error follows from those two counts (`lost`, `gained`)."""
    diff = topk_hits(reference, labels).double() - topk_hits(other, labels).double()
    n = len(diff)
    se = float(diff.std() / n**0.5) if n > 1 else float("nan")
    return {
        "drop_points": 100 * float(diff.mean()),
        "drop_se_points": 100 * se,
        "lost": int((diff > 0).sum()),
        "gained": int((diff < 0).sum()),
    }


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """How closely `other` logits follow `reference` logits: SQNR (dB), mean KL divergence of the
    softmax distributions KL(ref || other), top-1 agreement, cosine similarity."""
    ref, oth = reference.double(), other.double()
    noise = (ref - oth).pow(2).sum()
    sqnr = float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))
    kl = torch.nn.functional.kl_div(oth.log_softmax(1), ref.log_softmax(1), log_target=True, reduction="batchmean")
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), oth.flatten(), dim=0)
    return {
        "sqnr_db": sqnr,
        "kl": float(kl),
        "top1_agreement": float((ref.argmax(1) == oth.argmax(1)).double().mean()),
        "cosine": float(cos),
    }


def per_clip(fn):
    """`fn`, a program with a static batch of one, applied to a batch of clips one clip at a time."""

    def run(clips: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.as_tensor(fn(clip[None])) for clip in clips])

    return run
