"""Activation range observers beyond torchao's stock ones."""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.observer import HistogramObserver

__all__ = ["PercentileObserver"]


class PercentileObserver(HistogramObserver):
    """Clips the observed range to the central `percentile` of the calibration activations
    (read off the running histogram), so rare outliers do not stretch the int8 grid."""

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = percentile

    @torch.jit.export
    def calculate_qparams(self):
        if self.histogram.sum() == 0 or self.min_val == float("inf"):
            return super().calculate_qparams()
        cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum()
        tail = (100.0 - self.percentile) / 200.0  # split between both ends
        width = (self.max_val - self.min_val) / self.bins
        low = int(torch.searchsorted(cdf, torch.tensor(tail)))
        high = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail)))
        new_min = self.min_val + width * low
        new_max = self.min_val + width * (high + 1)
        return self._calculate_qparams(
            torch.minimum(new_min, torch.zeros_like(new_min)), torch.maximum(new_max, torch.zeros_like(new_max))
        )
