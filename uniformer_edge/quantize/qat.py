"""Quantization-aware training on the PT2E graph: fake-quantized fine-tuning with the same
quantizer configuration as PTQ, knowledge distillation from the float model, activation
ranges initialised on the calibration set and frozen after a configurable step. Runs
single-process or under torchrun (DDP) with the training loop of `uniformer_edge.engine`.
After every epoch the fake-quantized model, optimizer and schedule are saved (atomically) to
`<out>.qat-state.pth`, so an interrupted job continues with `resume=True` exactly where it was.

The deploy form is quantized: every BatchNorm is folded into a convolution or frozen into a
per-channel multiply-add (`ChannelAffine`), so no statistics drift during QAT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchao.quantization.pt2e import allow_exported_model_train_eval, disable_observer

from ..errors import InputError
from .._io import atomic_torch_save
from ..calibration import build_dataset
from ..engine import classification_loss, epoch_batches, init_distributed, train_one_epoch
from ..models import deploy
from .config import QAT_DISTILL_WEIGHT
from .ptq import calibrate, convert, prepare

__all__ = ["distillation_loss", "run_qat", "qat_state_path", "QATStopped", "QATSchedule", "finetune"]

# Settings a resumed job must share with the interrupted one.
_RESUME_KEYS = (
    "variant",
    "method",
    "checkpoint",
    "train_data",
    "train_root",
    "frames",
    "size",
    "batch_size",
    "seed",
    "qat_epochs",
    "qat_lr",
    "qat_clips",
    "freeze_observers_after",
    "distill_weight",
    "temperature",
    "num_calib",
    "calib_data",
    "calib_root",
)


class QATStopped(Exception):
    """Raised when a QAT job ends early on purpose (`stop_after`); its state is saved."""


def qat_state_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".qat-state.pth")


def _fingerprint(job) -> dict:
    return {k: getattr(job, k) for k in _RESUME_KEYS} | {"quant_config": job.config.as_dict()}


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """(1 - w) * cross-entropy(labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T));
    with w = 1 the labels are not read (they may come from a dataset with other classes)."""
    kl = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )
    if weight == 1.0:
        return kl
    return (1 - weight) * classification_loss(student, labels, 0.0) + weight * kl


def run_qat(
    model: nn.Module,
    calib,
    job,
    example: torch.Tensor,
    progress: bool = True,
    resume: bool = False,
    stop_after: int | None = None,
):
    """Fine-tune a fake-quantized copy of `model` and convert it. Returns (program, prepared, info).
    `resume` continues from the state file of an interrupted run of the same job; `stop_after`
    ends this invocation after that many epochs by raising `QATStopped` (state saved)."""
    ctx = init_distributed()
    state_path = qat_state_path(job.out)
    state = None
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no QAT state {state_path} to continue from")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["job"] != _fingerprint(job):
            diff = sorted(k for k in state["job"] if state["job"][k] != _fingerprint(job).get(k))
            raise InputError(f"--resume: {state_path} comes from a job with other settings ({', '.join(diff)})")
    cfg = job.config
    if not cfg.qat:
        raise ValueError("run_qat needs a QAT config (qat=True)")
    prepared = prepare(model, cfg, example)
    student = prepared.module
    allow_exported_model_train_eval(student)
    for p in student.parameters():
        p.requires_grad_(True)
    calibrate(prepared, calib, progress=progress and ctx.is_main)  # start from calibrated ranges

    teacher = deploy(model).to(ctx.device)
    schedule, train_set = qat_training(job)

    def save_state(progress_state: dict, optimizer, scheduler):
        if ctx.is_main:
            atomic_torch_save(
                {
                    "student": student.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    **progress_state,
                    "job": _fingerprint(job),
                },
                state_path,
            )

    trained = finetune(
        student, teacher, train_set, schedule, ctx, state=state, on_epoch_end=save_state, stop_after=stop_after
    )
    if trained["epochs_done"] < job.qat_epochs:
        raise QATStopped(
            f"QAT stopped after epoch {trained['epochs_done']}/{job.qat_epochs}; state in {state_path}, "
            f"continue with --resume"
        )
    student.apply(disable_observer)
    student.eval()
    info = {
        "qat": {
            "epochs": job.qat_epochs,
            "steps": trained["steps"],
            "lr": job.qat_lr,
            "train_clips": len(train_set),
            "distill_weight": job.distill_weight,
            "temperature": job.temperature,
            "observers_frozen_after_step": trained["observers_frozen_after_step"],
            "epoch_losses": trained["epoch_losses"],
        }
    }
    return convert(prepared), prepared, info


@dataclass(frozen=True)
class QATSchedule:
    """How a fake-quantized model is fine-tuned: AdamW on a cosine schedule, gradients clipped
    at 1, the loss `distillation_loss` against the float model."""

    epochs: int
    lr: float
    batch_size: int
    seed: int = 0
    freeze_observers_after: Optional[int] = None  # in steps; None: half of them
    distill_weight: float = QAT_DISTILL_WEIGHT
    temperature: float = 2.0


def qat_training(job) -> tuple["QATSchedule", object]:
    """The schedule and the training clips of a quantize job's QAT."""
    train_set = build_dataset(
        job.train_data,
        "train",
        frames=job.frames,
        size=job.size,
        root=job.train_root,
        num_clips=job.qat_clips if job.train_data == "synthetic" else None,
        seed=job.seed,
    )
    schedule = QATSchedule(
        epochs=job.qat_epochs,
        lr=job.qat_lr,
        batch_size=job.batch_size,
        seed=job.seed,
        freeze_observers_after=job.freeze_observers_after,
        distill_weight=job.distill_weight,
        temperature=job.temperature,
    )
    return schedule, train_set


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_set,
    schedule: QATSchedule,
    ctx,
    *,
    state: Optional[dict] = None,
    on_epoch_end: Optional[Callable] = None,
    stop_after: Optional[int] = None,
) -> dict:
    """Fine-tune the fake-quantized `student` (a prepared PT2E graph) towards `teacher`.
    `state` (from a saved run) continues where it ended; `on_epoch_end(progress, optimizer,
    scheduler)` is called after every epoch, e.g. to save that state. Returns the steps taken,
    the epochs done, the step the observers were frozen at and the mean loss of every epoch."""
    steps_per_epoch = len(train_set) // schedule.batch_size
    if steps_per_epoch == 0:
        raise InputError(f"QAT training data has {len(train_set)} clips, fewer than one batch of {schedule.batch_size}")
    total = steps_per_epoch * schedule.epochs
    freeze_after = schedule.freeze_observers_after if schedule.freeze_observers_after is not None else total // 2
    optimizer = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=schedule.lr, weight_decay=0.0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    step, start_epoch, losses = 0, 0, []
    if state is not None:  # observer ranges, fake-quant switches and weights all live in the state dict
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, start_epoch, losses = state["step"], state["epoch"] + 1, list(state["losses"])
    wrapped = nn.parallel.DistributedDataParallel(student) if ctx.distributed else student

    def loss_fn(m, clips, labels):
        nonlocal step
        if step == freeze_after:
            student.apply(disable_observer)
        step += 1
        with torch.no_grad():
            target = teacher(clips)
        return distillation_loss(m(clips), target, labels, schedule.distill_weight, schedule.temperature)

    end_epoch = schedule.epochs if stop_after is None else min(schedule.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        batches = epoch_batches(len(train_set), schedule.batch_size, schedule.seed, epoch, ctx)
        loader = DataLoader(train_set, batch_sampler=batches)
        losses.append(
            train_one_epoch(
                wrapped,
                loader,
                optimizer,
                scheduler,
                ctx,
                loss_fn=loss_fn,
                clip_grad=1.0,
                desc=f"QAT epoch {epoch + 1}/{schedule.epochs}",
            )
        )
        if on_epoch_end is not None:
            on_epoch_end({"step": step, "epoch": epoch, "losses": losses}, optimizer, scheduler)
    return {
        "steps": step,
        "epochs_done": end_epoch,
        "observers_frozen_after_step": min(freeze_after, step),
        "epoch_losses": losses,
    }
