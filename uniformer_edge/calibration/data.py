"""One entry point for every command that takes `--data`: `synthetic` or an annotation list."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset

from ..errors import InputError
from .synthetic import SyntheticMotion
from .video import VideoDataset

__all__ = ["build_dataset"]


def build_dataset(
    data: str,
    split: str = "test",
    frames: int = 8,
    size: int = 224,
    root: Optional[str] = None,
    num_clips: Optional[int] = None,
    seed: int = 0,
    class_names: Optional[str] = None,
    sampling: str = "uniform",
    sampling_rate: int = 8,
    num_classes: Optional[int] = None,
) -> Dataset:
    """`data="synthetic"`: the built-in benchmark's `split`. Otherwise `data` is an annotation
    list (paths relative to `root`) or, with no list, `root` is a folder-per-class layout
    (pass `data="folder"`)."""
    if data == "synthetic":
        return SyntheticMotion(split, frames=frames, size=size, num_clips=num_clips, seed=seed)
    if data == "folder":
        if root is None:
            raise InputError("--data folder needs --root, the folder-per-class video folder")
        return VideoDataset(root, None, frames, size, sampling, sampling_rate, class_names, num_classes)
    if not Path(data).is_file():
        raise FileNotFoundError(
            f"annotation list not found: {data} (use --data synthetic for the built-in "
            "benchmark, or --data folder --root DIR for a folder-per-class layout)"
        )
    return VideoDataset(
        root if root is not None else Path(data).parent,
        data,
        frames,
        size,
        sampling,
        sampling_rate,
        class_names,
        num_classes,
    )
