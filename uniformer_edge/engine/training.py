"""Supervised training of UniFormer models: AdamW with a warm-up + cosine schedule, label
smoothing, per-epoch validation and atomic checkpoints in the official format
(`{"model_state", "optimizer_state", "epoch", "cfg", ...}`), resumable exactly.

Runs single-process by default and as DistributedDataParallel under torchrun. The global
batch is split across ranks and every rank draws the same per-epoch permutation, so the
clips of each step do not depend on the number of processes (BatchNorm statistics are
per process, as usual for DDP on CPU where SyncBatchNorm is unavailable).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import InputError, UniformerEdgeError
from .._io import atomic_torch_save, atomic_write_json, check_output_dir
from ..calibration import build_dataset
from ..models import create_model, load_checkpoint
from ..models.checkpoint import read_checkpoint_file
from .distributed import DistContext, init_distributed
from .evaluation import Metrics, evaluate

__all__ = [
    "TrainConfig",
    "NonFiniteLoss",
    "train",
    "warmup_cosine",
    "classification_loss",
    "make_optimizer",
    "dataset_num_classes",
    "train_one_epoch",
    "epoch_batches",
]


@dataclass
class TrainConfig:
    variant: str = "xxs"
    data: str = "synthetic"
    root: Optional[str] = None
    val_data: Optional[str] = None
    val_root: Optional[str] = None
    class_names: Optional[str] = None
    frames: int = 8
    size: int = 96
    sampling: str = "uniform"
    sampling_rate: int = 8
    num_train_clips: Optional[int] = None
    num_val_clips: Optional[int] = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    layer_scale: Optional[float] = None
    clip_grad: Optional[float] = 1.0
    checkpoint: Optional[str] = None
    out: str = "runs/train"
    seed: int = 0
    num_workers: int = 0
    device: Optional[str] = None

    def validate(self) -> "TrainConfig":
        """Refuse counts and rates that would make training meaningless (one line each)."""
        for name in ("frames", "size", "epochs", "batch_size", "sampling_rate"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("num_train_clips", "num_val_clips"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        for name in ("min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "drop_path"):
            if not getattr(self, name) >= 0:
                raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class NonFiniteLoss(UniformerEdgeError, ValueError):
    """The training loss became NaN or infinite: the run stops, nothing is saved for that epoch."""


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def classification_loss(output, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy; the light models' training output (logits, class-token logits) averages both."""
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    return sum(F.cross_entropy(o, labels, label_smoothing=label_smoothing) for o in outputs) / len(outputs)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases, norms, LayerScale and the class token (1-D / tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "gamma_1", "gamma_2")) else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def dataset_num_classes(dataset: Dataset) -> int:
    return getattr(dataset, "num_classes", None) or len(dataset.classes)


def _datasets(cfg: TrainConfig):
    common = dict(
        frames=cfg.frames,
        size=cfg.size,
        seed=cfg.seed,
        class_names=cfg.class_names,
        sampling=cfg.sampling,
        sampling_rate=cfg.sampling_rate,
    )
    train_set = build_dataset(cfg.data, "train", root=cfg.root, num_clips=cfg.num_train_clips, **common)
    if cfg.val_data is not None:
        val_set = build_dataset(cfg.val_data, "val", root=cfg.val_root, num_clips=cfg.num_val_clips, **common)
    elif cfg.data == "synthetic":
        val_set = build_dataset("synthetic", "val", num_clips=cfg.num_val_clips, **common)
    else:
        val_set = None
    return train_set, val_set


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[list[int]]:
    """This rank's index lists for every step of an epoch: a permutation shared by all ranks,
    cut into global batches, each split across ranks."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(num_items, generator=g).tolist()
    steps = num_items // batch_size
    return [perm[s * batch_size : (s + 1) * batch_size][ctx.rank :: ctx.world_size] for s in range(steps)]


# Consecutive steps with overflowing gradients that training tolerates (each is skipped).
MAX_SKIPPED_STEPS = 20


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer,
    scheduler,
    ctx: DistContext,
    *,
    loss_fn: Callable,
    clip_grad: Optional[float],
    desc: str,
) -> float:
    """One pass over `loader`; returns the mean loss over all ranks. A non-finite loss on any
    rank stops training (`NonFiniteLoss`) before it reaches the weights. A step whose gradients
    overflow is skipped, as a loss scaler would: the light models' token pruning normalises the
    pruned tokens' scores by their sum, and once attention is peaked that sum can fall below
    1e-38, where the exact, finite gradient through the softmax overflows fp32 on the way. More
    than `MAX_SKIPPED_STEPS` in a row stop training."""
    model.train()
    total, count, skipped, in_a_row = torch.zeros(()), 0, 0, 0
    bar = tqdm(loader, desc=desc, disable=not ctx.is_main, leave=False, unit="step")
    for step, (clips, labels) in enumerate(bar):
        clips = clips.to(ctx.device).contiguous(memory_format=torch.channels_last_3d)
        labels = labels.to(ctx.device)
        loss = loss_fn(model, clips, labels)
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if ctx.distributed:  # every rank stops together, none waits in the gradient all-reduce
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            raise NonFiniteLoss(
                f"{desc}, step {step + 1}: the training loss is {loss.item()} (not finite); "
                f"training stopped before updating the weights (lower --lr, check the data)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # One reduction over every gradient, identical on every rank (DDP has all-reduced them).
        # Without clipping the bound is infinite: the gradients are scaled by exactly 1.
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
        if torch.isfinite(norm):
            in_a_row = 0
            optimizer.step()
        else:
            skipped, in_a_row = skipped + 1, in_a_row + 1
            if in_a_row > MAX_SKIPPED_STEPS:
                raise NonFiniteLoss(
                    f"{desc}, step {step + 1}: the gradients overflowed in {in_a_row} steps in a row; "
                    f"training stopped (lower --lr)"
                )
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().cpu()
        count += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if skipped and ctx.is_main:
        warnings.warn(f"{desc}: skipped {skipped} of {count} steps whose gradients overflowed", stacklevel=2)
    if ctx.distributed:
        dist.all_reduce(total)
        total /= ctx.world_size
    return float(total) / max(count, 1)


_RESUME_MAY_CHANGE = ("out", "device", "num_workers")
_DEFAULT = asdict(TrainConfig())
_TRAINING_STATE_KEYS = (
    "model_state",
    "optimizer_state",
    "scheduler_state",
    "epoch",
    "cfg",
    "best_top1",
    "history",
    "rng_states",
)


def _read_training_state(path: Path) -> dict:
    """A `last.pth` of this toolkit's training, with one-line errors for anything else."""
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or not all(k in state for k in _TRAINING_STATE_KEYS):
        keys = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        raise InputError(
            f"--resume: {path} is not a training checkpoint of this toolkit (it has {keys}; "
            f"expected {', '.join(_TRAINING_STATE_KEYS)}); start a new run with --checkpoint {path}"
        )
    if not isinstance(state["cfg"], dict):
        raise InputError(f"--resume: {path} has no saved settings (cfg)")
    return state


def _gather_rng(ctx: DistContext) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if not ctx.distributed:
        return [state]
    states = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def train(
    cfg: TrainConfig,
    resume: bool = False,
    force: bool = False,
    ctx: Optional[DistContext] = None,
    progress: bool = True,
    stop_after: Optional[int] = None,
) -> dict:
    """Train (or, with `resume`, continue training) and return a summary with the best
    validation metrics. Checkpoints: `out/last.pth` after every epoch, `out/best.pth` for the
    best validation top-1 (the last epoch when there is no validation set).

    A resumed run takes every setting from the checkpoint (only `out`, `device` and
    `num_workers` may change), so it continues exactly as if never interrupted.
    `stop_after` ends this invocation after that many epochs (time-limited jobs)."""
    ctx = ctx or init_distributed(cfg.device)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder for checkpoints")
    check_output_dir(out, force=True)  # writable, before any work
    last_path, best_path = out / "last.pth", out / "best.pth"
    state = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path} to continue from")
        state = _read_training_state(last_path)
        saved = TrainConfig.from_dict(state["cfg"])
        ignored = [
            f"{f.name} ({getattr(cfg, f.name)!r}; the run has {getattr(saved, f.name)!r})"
            for f in fields(TrainConfig)
            if f.name not in _RESUME_MAY_CHANGE
            and getattr(cfg, f.name) != getattr(saved, f.name)
            and getattr(cfg, f.name) != _DEFAULT[f.name]
        ]
        if ignored and ctx.is_main:
            warnings.warn(
                f"--resume continues {last_path} with its saved settings; ignoring {', '.join(ignored)}", stacklevel=2
            )
        cfg = TrainConfig(**{**asdict(saved), **{k: getattr(cfg, k) for k in _RESUME_MAY_CHANGE}})
    elif last_path.exists() and not force:
        raise FileExistsError(f"{last_path} exists; pass --resume to continue that run or --force to start over")

    cfg.validate()
    train_set, val_set = _datasets(cfg)
    num_classes = dataset_num_classes(train_set)
    if len(train_set) < cfg.batch_size:
        raise InputError(f"training set has {len(train_set)} clips, fewer than one batch of {cfg.batch_size}")
    if cfg.batch_size % ctx.world_size:
        raise InputError(f"batch size {cfg.batch_size} is not divisible by {ctx.world_size} processes")

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    extra = {} if cfg.layer_scale is None else {"layer_scale": cfg.layer_scale}
    model = create_model(cfg.variant, num_classes=num_classes, drop_path_rate=cfg.drop_path, **extra)
    if cfg.checkpoint and state is None:
        load_checkpoint(model, cfg.checkpoint)
    model.to(ctx.device, memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = len(train_set) // cfg.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr / cfg.lr),
    )
    start_epoch, best_top1, history = 0, -1.0, []
    torch.manual_seed(cfg.seed + 1 + ctx.rank)  # stochastic depth / dropout differ per rank
    if state is not None:
        try:
            model.load_state_dict(state["model_state"])
            optimizer.load_state_dict(state["optimizer_state"])
            scheduler.load_state_dict(state["scheduler_state"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(
                f"--resume: {last_path} does not fit the UniFormer-{cfg.variant.upper()} run its "
                f"settings describe ({first})"
            ) from None
        start_epoch, best_top1, history = state["epoch"] + 1, state["best_top1"], list(state["history"])
        if len(state["rng_states"]) == ctx.world_size:
            torch.set_rng_state(state["rng_states"][ctx.rank])
    wrapped = nn.parallel.DistributedDataParallel(model) if ctx.distributed else model

    def loss_fn(m, clips, labels):
        return classification_loss(m(clips), labels, cfg.label_smoothing)

    started = time.time()
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        batches = epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch, ctx)
        loader = DataLoader(train_set, batch_sampler=batches, num_workers=cfg.num_workers)
        loss = train_one_epoch(
            wrapped,
            loader,
            optimizer,
            scheduler,
            ctx,
            loss_fn=loss_fn,
            clip_grad=cfg.clip_grad,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        metrics: Optional[Metrics] = None
        if val_set is not None:
            metrics = evaluate(model, val_set, num_classes, cfg.batch_size, ctx, progress=progress, desc="validating")
        entry = {
            "epoch": epoch,
            "loss": loss,
            "lr": optimizer.param_groups[0]["lr"],
            "val_top1": metrics.top1 if metrics else None,
            "val_top5": metrics.top5 if metrics else None,
            "seconds": time.time() - started,
        }
        history.append(entry)
        rng_states = _gather_rng(ctx)
        if ctx.is_main:
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}" + (f", val {metrics.summary()}" if metrics else "")
            )
            ckpt = {
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "epoch": epoch,
                "cfg": asdict(cfg),
                "best_top1": best_top1,
                "history": history,
                "rng_states": rng_states,
                "variant": cfg.variant,
                "num_classes": num_classes,
            }
            score = metrics.top1 if metrics else epoch
            if score > best_top1:
                best_top1 = score
                ckpt["best_top1"] = best_top1
                atomic_torch_save(
                    {k: ckpt[k] for k in ("model_state", "epoch", "cfg", "variant", "num_classes", "best_top1")},
                    best_path,
                )
            atomic_torch_save(ckpt, last_path)
            atomic_write_json(out / "history.json", history)
        elif metrics is not None:
            best_top1 = max(best_top1, metrics.top1)
    return {
        "best_top1": best_top1,
        "history": history,
        "last": str(last_path),
        "best": str(best_path),
        "num_classes": num_classes,
        "seconds": time.time() - started,
    }
