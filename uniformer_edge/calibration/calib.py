"""Calibration sets: small, deterministic, class-stratified subsets streamed in batches."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = ["CalibrationSet", "calibration_set", "stratified_indices"]


def stratified_indices(labels: Sequence[int], num: int, seed: int) -> list[int]:
    """`num` indices drawn round-robin over classes (each class shuffled with `seed`), so every
    class is represented as evenly as the counts allow. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[int(label)].append(i)
    queues = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    picked: list[int] = []
    while len(picked) < num and any(queues):
        for q in queues:
            if q and len(picked) < num:
                picked.append(int(q.pop(0)))
    return picked


class CalibrationSet:
    """A fixed subset of a dataset, iterated as `(clips, labels)` batches. Clips are loaded one
    batch at a time, so memory stays bounded by the batch size however large the dataset is.
    A clip holding NaN or Inf is an error naming it."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], batch_size: int):
        self.dataset, self.indices, self.batch_size = dataset, list(indices), batch_size

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.indices) // self.batch_size)

    @property
    def num_clips(self) -> int:
        return len(self.indices)

    def _load(self, index: int):
        clip, label = self.dataset[index]
        if not torch.isfinite(clip).all():
            name = self.dataset.item_name(index) if hasattr(self.dataset, "item_name") else f"item {index}"
            raise InputError(f"calibration clip {name} contains NaN or Inf values")
        return clip, label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.indices), self.batch_size):
            items = [self._load(i) for i in self.indices[start : start + self.batch_size]]
            yield torch.stack([c for c, _ in items]), torch.tensor([label for _, label in items])

    def labels(self) -> list[int]:
        return [int(self.dataset.labels[i]) for i in self.indices] if hasattr(self.dataset, "labels") else []


def calibration_set(dataset: Dataset, num_clips: int, seed: int = 0, batch_size: int = 8) -> CalibrationSet:
    """A deterministic, class-stratified subset of `num_clips` clips of `dataset`.

    Datasets with a `labels` list are stratified by class; others are sampled uniformly.
    """
    if num_clips < 1:
        raise InputError(f"a calibration set needs at least 1 clip, got num_clips={num_clips}")
    if len(dataset) == 0:
        raise InputError("cannot calibrate on an empty dataset")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    num = min(num_clips, len(dataset))
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        indices = stratified_indices(labels, num, seed)
    else:
        indices = sorted(np.random.default_rng(seed).choice(len(dataset), num, replace=False).tolist())
    return CalibrationSet(dataset, indices, batch_size)
