"""Quantization-aware training on the PT2E graph: fake-quantized fine-tuning with the same
quantizer configuration as PTQ, knowledge distillation from the float model, activation
ranges initialised on the calibration set and frozen after a configurable step. Runs
single-process or under torchrun (DDP) with the training loop of `uniformer_edge.engine`.

The deploy form is quantized, so BatchNorm is already folded into the convolutions and
its statistics cannot drift during QAT.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchao.quantization.pt2e import allow_exported_model_train_eval, disable_observer

from ..calibration import build_dataset
from ..engine import classification_loss, epoch_batches, init_distributed, train_one_epoch
from ..models import deploy
from .ptq import calibrate, convert, prepare

__all__ = ["distillation_loss", "run_qat"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, weight: float,
                      temperature: float) -> torch.Tensor:
    """(1 - w) * cross-entropy(labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                  log_target=True, reduction="batchmean") * temperature ** 2
    return (1 - weight) * classification_loss(student, labels, 0.0) + weight * kl


def run_qat(model: nn.Module, calib, job, example: torch.Tensor, progress: bool = True):
    """Fine-tune a fake-quantized copy of `model` and convert it. Returns (program, prepared, info)."""
    ctx = init_distributed()
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
    train_set = build_dataset(job.train_data, "train", frames=job.frames, size=job.size, root=job.train_root,
                              num_clips=job.qat_clips if job.train_data == "synthetic" else None, seed=job.seed)
    steps_per_epoch = len(train_set) // job.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"QAT training data has {len(train_set)} clips, fewer than one batch of {job.batch_size}")
    total = steps_per_epoch * job.qat_epochs
    freeze_after = job.freeze_observers_after if job.freeze_observers_after is not None else total // 2
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=job.qat_lr,
                                  weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    wrapped = nn.parallel.DistributedDataParallel(student) if ctx.distributed else student
    step = 0

    def loss_fn(m, clips, labels):
        nonlocal step
        if step == freeze_after:
            student.apply(disable_observer)
        step += 1
        with torch.no_grad():
            target = teacher(clips)
        return distillation_loss(m(clips), target, labels, job.distill_weight, job.temperature)

    losses = []
    for epoch in range(job.qat_epochs):
        batches = epoch_batches(len(train_set), job.batch_size, job.seed, epoch, ctx)
        loader = DataLoader(train_set, batch_sampler=batches)
        losses.append(train_one_epoch(wrapped, loader, optimizer, scheduler, ctx, loss_fn=loss_fn, clip_grad=1.0,
                                      desc=f"QAT epoch {epoch + 1}/{job.qat_epochs}"))
    student.apply(disable_observer)
    student.eval()
    info = {"qat": {"epochs": job.qat_epochs, "steps": step, "lr": job.qat_lr, "train_clips": len(train_set),
                    "distill_weight": job.distill_weight, "temperature": job.temperature,
                    "observers_frozen_after_step": min(freeze_after, step), "epoch_losses": losses}}
    return convert(prepared), prepared, info
