"""Parameter and multiply-add counts of a model at a given input size.

GMACs follow the paper's convention: multiply-adds of convolutions, linear layers and
matrix products, each counted once (fvcore's "FLOPs"). Normalisations and element-wise
ops are not counted.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelInfo", "model_info"]

# FlopCounterMode counts 2 FLOPs per multiply-add; its op names mapped to readable groups.
_OP_GROUPS = {"convolution": "conv", "addmm": "linear", "mm": "linear", "bmm": "matmul", "baddbmm": "matmul"}


@dataclass
class ModelInfo:
    params: int
    gmacs: float
    gmacs_by_op: dict[str, float]
    input_shape: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


def model_info(model: nn.Module, frames: int = 8, size: int = 224, batch: int = 1) -> ModelInfo:
    """Count parameters and GMACs of one forward pass on a (batch, 3, frames, size, size) clip."""
    shape = [batch, 3, frames, size, size]
    # Shapes alone decide the count: run a weightless copy on the meta device (fast, no memory).
    ghost = copy.deepcopy(model).to("meta").eval().requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        ghost(torch.empty(shape, device="meta"))
    by_op: dict[str, float] = {}
    for op, flops in counter.get_flop_counts()["Global"].items():
        group = _OP_GROUPS.get(str(op).split(".")[-1].split("_")[0], str(op))
        by_op[group] = by_op.get(group, 0.0) + flops / 2e9
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(params=params, gmacs=sum(by_op.values()), gmacs_by_op=by_op, input_shape=shape)
