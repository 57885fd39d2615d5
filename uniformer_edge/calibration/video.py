"""Datasets users hold: Kinetics / Something-Something style annotation lists, folder-per-class
layouts, and folders of pre-extracted clips (`.npy` / `.pt`), with the official test-time
pipeline (single centre view).

Annotation lists have one `relative/path label` per line, separated by a space or a comma, as
the official SlowFast lists are. Videos are decoded with PyAV. Files that are missing,
unreadable or too short are found when the dataset is built, skipped with a warning naming
each, and counted.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import InputError
from .transforms import SAMPLING_MODES, center_crop, frames_needed, normalize, resize_short_side, sample_indices

__all__ = ["VideoDataset", "read_annotations", "read_class_names", "VIDEO_SUFFIXES", "CLIP_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
CLIP_SUFFIXES = (".npy", ".pt")
PathLike = Union[str, os.PathLike]


def read_class_names(path: PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"class-name file {path} is empty")
    return names


def read_annotations(path: PathLike) -> list[tuple[str, int]]:
    """Parse `relative/path label` lines (space- or comma-separated; blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation list not found: {path}")
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        match = re.fullmatch(r"(.+?)[\s,]+(\S+)", line)
        if match is None:
            raise InputError(f"{path}:{lineno}: expected 'path label', got {line!r}")
        name, label = match.groups()
        try:
            entries.append((name, int(label)))
        except ValueError:
            raise InputError(f"{path}:{lineno}: label {label!r} is not an integer") from None
    if not entries:
        raise InputError(f"annotation list {path} has no entries")
    return entries


def _decode(path: Path, wanted: Optional[np.ndarray] = None) -> np.ndarray:
    """Decode a video (or the `wanted` frame indices of it) to uint8 (T, H, W, 3)."""
    import av

    keep = None if wanted is None else set(int(i) for i in wanted)
    last = None if wanted is None else int(max(wanted))
    frames: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if keep is None or i in keep:
                frames[i] = frame.to_ndarray(format="rgb24")
            if last is not None and i >= last:
                break
    if not frames:
        raise InputError("no decodable video frames")
    if wanted is None:
        return np.stack([frames[i] for i in sorted(frames)])
    missing = [i for i in wanted if int(i) not in frames]
    if missing:
        raise InputError(f"frames {missing[:3]} could not be decoded")
    return np.stack([frames[int(i)] for i in wanted])


def _count_frames(path: Path) -> int:
    """Frame count from the container header, or by decoding when the header does not say."""
    if path.suffix in CLIP_SUFFIXES:
        return len(_load_clip_file(path))
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise InputError("no video stream")
        declared = container.streams.video[0].frames
    return declared if declared > 0 else len(_decode(path))


def _load_clip_file(path: Path) -> np.ndarray:
    """Pre-extracted frames: (T, H, W, 3), uint8 or float in [0, 1]."""
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, torch.Tensor):
            raise InputError(f"expected a tensor of frames, found {type(obj).__name__}")
        arr = obj.numpy()
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"expected frames of shape (T, H, W, 3), got {tuple(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise NonFiniteFrames(f"{path}: {int((~np.isfinite(arr)).sum())} frame values are NaN or infinite")
    return arr


class NonFiniteFrames(InputError):
    """Frames holding NaN or infinity: an error, never a clip skipped or scored silently."""


class VideoDataset(Dataset):
    """Labelled videos for evaluation and calibration, with the official single-view test pipeline.

    Give either `annotations` (a list file; paths relative to `root`) or only `root` laid out
    folder-per-class (`root/<class name>/<video>`; labels in sorted class-name order). Class
    names come from `class_names` (a file, one per line) when given. Items are `(clip, label)`,
    `clip` a normalised float tensor (3, frames, size, size).
    """

    def __init__(
        self,
        root: PathLike,
        annotations: Optional[PathLike] = None,
        frames: int = 8,
        size: int = 224,
        sampling: str = "uniform",
        sampling_rate: int = 8,
        class_names: Optional[Union[PathLike, Sequence[str]]] = None,
        num_classes: Optional[int] = None,
        probe: bool = True,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video root folder not found: {self.root}")
        self.frames, self.size = frames, size
        self.sampling, self.sampling_rate = sampling, sampling_rate
        if sampling not in SAMPLING_MODES:
            raise InputError(f"unknown sampling {sampling!r}; choose from {', '.join(SAMPLING_MODES)}")

        if annotations is not None:
            entries = read_annotations(annotations)
            source = str(annotations)
            names = None
        else:
            names, entries = self._scan_folders()
            source = str(self.root)
        if class_names is not None:
            names = read_class_names(class_names) if isinstance(class_names, (str, os.PathLike)) else list(class_names)
        self.classes = names
        self.num_classes = num_classes or (len(names) if names else max(label for _, label in entries) + 1)
        bad = [(p, label) for p, label in entries if not 0 <= label < self.num_classes]
        if bad:
            raise InputError(
                f"{source}: {len(bad)} label(s) outside 0..{self.num_classes - 1}, e.g. {bad[0][0]} -> {bad[0][1]}"
            )
        self.items, skipped = self._check_files(entries, probe)
        if skipped:
            for path, reason in skipped:
                warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
            warnings.warn(f"{source}: skipped {len(skipped)} of {len(entries)} videos", stacklevel=2)
        if not self.items:
            raise InputError(f"{source}: no usable videos (all {len(entries)} skipped)")
        self.labels = [label for _, label in self.items]
        self.skipped = skipped

    def _scan_folders(self) -> tuple[list[str], list[tuple[str, int]]]:
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir())
        if not class_dirs:
            raise InputError(f"{self.root}: no class folders (expected root/<class>/<video>) and no annotation list")
        suffixes = VIDEO_SUFFIXES + CLIP_SUFFIXES
        entries = [
            (str(f.relative_to(self.root)), label)
            for label, d in enumerate(class_dirs)
            for f in sorted(d.iterdir())
            if f.suffix.lower() in suffixes
        ]
        if not entries:
            raise InputError(f"{self.root}: class folders hold no videos ({', '.join(suffixes)})")
        return [d.name for d in class_dirs], entries

    def _check_files(self, entries, probe: bool):
        need = frames_needed(self.frames, self.sampling, self.sampling_rate)
        items, skipped = [], []
        for rel, label in tqdm(entries, desc="checking videos", disable=not probe or len(entries) < 200, leave=False):
            path = self.root / rel
            if not path.is_file():
                skipped.append((path, "file not found"))
                continue
            if probe:
                try:
                    count = _count_frames(path)
                except NonFiniteFrames:
                    raise
                except Exception as e:  # any decoder failure means the file is unusable
                    skipped.append((path, f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"))
                    continue
                if count < need:
                    skipped.append((path, f"too short ({count} frames, {need} needed)"))
                    continue
            items.append((path, label))
        return items, skipped

    def __len__(self) -> int:
        return len(self.items)

    def item_name(self, index: int) -> str:
        return str(self.items[index][0])

    def load_frames(self, index: int) -> np.ndarray:
        path = self.items[index][0]
        try:
            if path.suffix in CLIP_SUFFIXES:
                arr = _load_clip_file(path)
                return arr[sample_indices(len(arr), self.frames, self.sampling, self.sampling_rate)]
            count = _count_frames(path)
            return _decode(path, sample_indices(count, self.frames, self.sampling, self.sampling_rate))
        except NonFiniteFrames:
            raise
        except Exception as e:
            raise RuntimeError(f"cannot load {path}: {e}") from e

    def __getitem__(self, index: int):
        arr = self.load_frames(index)
        frames = torch.from_numpy(np.ascontiguousarray(arr))
        clip = center_crop(resize_short_side(normalize(frames), self.size), self.size)
        return clip.contiguous(), self.items[index][1]

    def describe(self) -> str:
        return f"{self.root} ({len(self)} videos, {self.num_classes} classes)"
