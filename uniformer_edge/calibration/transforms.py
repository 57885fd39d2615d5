"""The official UniFormer / SlowFast test-time pipeline: frame sampling, short-side resize,
centre crop and normalisation (mean 0.45, std 0.225 on [0, 1] pixels)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..models.config import MEAN, STD

__all__ = [
    "MEAN",
    "STD",
    "normalize",
    "sample_indices",
    "resize_short_side",
    "center_crop",
    "SAMPLING_MODES",
    "frames_needed",
]

SAMPLING_MODES = ("uniform", "strided")


def normalize(frames: Tensor) -> Tensor:
    """(T, H, W, 3) uint8 or [0, 1] float frames -> normalised float32 clip (3, T, H, W)."""
    x = frames.float()
    if frames.dtype == torch.uint8:
        x = x / 255.0
    return ((x - MEAN) / STD).permute(3, 0, 1, 2).contiguous()


def sample_indices(num_available: int, frames: int, mode: str = "uniform", rate: int = 8) -> np.ndarray:
    """Frame indices of the single test view.

    `uniform`: the middle frame of each of `frames` equal segments over the whole video (the
    light models' and Something-Something protocol). `strided`: `frames` frames `rate` apart,
    centred in the video (the Kinetics TxR protocol, e.g. 8x8); needs (frames-1)*rate+1 frames.
    """
    if mode not in SAMPLING_MODES:
        raise InputError(f"unknown sampling {mode!r}; choose from {', '.join(SAMPLING_MODES)}")
    if num_available < 1:
        raise InputError("video has no frames")
    if mode == "uniform":
        return np.minimum(((np.arange(frames) + 0.5) * num_available / frames).astype(np.int64), num_available - 1)
    span = (frames - 1) * rate + 1
    if num_available < span:
        raise InputError(f"{frames}x{rate} strided sampling needs {span} frames, video has {num_available}")
    start = (num_available - span) // 2
    return start + np.arange(frames) * rate


def frames_needed(frames: int, mode: str, rate: int) -> int:
    return frames if mode == "uniform" else (frames - 1) * rate + 1


def resize_short_side(clip: Tensor, size: int) -> Tensor:
    """Bilinear resize of (3, T, H, W) so that min(H, W) == size, keeping the aspect ratio."""
    _, _, h, w = clip.shape
    if min(h, w) == size:
        return clip
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(
        clip.transpose(0, 1), size=new, mode="bilinear", align_corners=False, antialias=scale < 1
    ).transpose(0, 1)


def center_crop(clip: Tensor, size: int) -> Tensor:
    _, _, h, w = clip.shape
    top, left = (h - size) // 2, (w - size) // 2
    return clip[:, :, top : top + size, left : left + size]
