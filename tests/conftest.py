"""Shared fixtures: the team's reference shelf (`../shared/` beside the repo) and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNIFORMER_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"

# Tiny configs of both classes (the parity fixtures' shapes): fast enough for every test.
TINY = dict(embed_dim=(16, 32, 64, 128), depth=(1, 1, 2, 1), head_dim=16, num_classes=10)
TINY_LIGHT = dict(TINY, prune_ratio=([], [], [1, 0.5], [0.5]), trade_off=([], [], [1, 0.5], [0.5]))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (the team's shared/ folder beside the repo)")
    return REFERENCE


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial statistics so that folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()
