"""Loading the checkpoints users hold: official video checkpoints, DDP-saved ones, training
checkpoints of this toolkit, and ImageNet 2-D weights inflated to 3-D.

Files are always read with `torch.load(..., weights_only=True)`: no code is unpickled.
Every failure is a `CheckpointError` whose message names the file and the offending keys.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = [
    "CheckpointError",
    "LoadReport",
    "read_checkpoint_file",
    "read_state_dict",
    "checkpoint_metadata",
    "load_checkpoint",
    "inflate_2d_kernel",
]

# Keys a checkpoint may nest its weights under, in the order the official loaders look.
WRAPPER_KEYS = ("model_state", "model", "state_dict")
# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")
# Classifier heads that may be re-sized (fine-tuning on another class count).
HEAD_PREFIXES = ("head.", "head_cls.")
# Train-only modules of the light models; checkpoints may omit them without changing eval logits.
TRAIN_ONLY_PREFIXES = ("norm_cls.", "head_cls.")
_LIST_LIMIT = 12


class CheckpointError(InputError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


@dataclass
class LoadReport:
    path: str
    loaded: int
    inflated: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    missing_train_only: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _listing(keys, limit: int = _LIST_LIMIT) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _unwrap(obj, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: holds no weights (top-level keys: {_listing(map(str, obj))}); expected a state dict, "
            f"bare or under one of {', '.join(WRAPPER_KEYS)}"
        )
    if len(tensors) != len(obj):
        others = [k for k, v in obj.items() if not isinstance(v, Tensor)]
        raise CheckpointError(f"{path}: state dict has non-tensor entries: {_listing(others)}")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def _load_file(path: Path):
    """torch.load with weights_only=True, every failure turned into a CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: holds pickled Python objects{what} besides tensors; refusing to unpickle them "
            "(weights_only=True). Re-save its state_dict with torch.save from code you trust."
        ) from None
    except Exception as e:  # the unpickler fails in many ways on files that are not checkpoints
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    return obj


def read_checkpoint_file(path: Union[str, os.PathLike]):
    """The whole content of a checkpoint file, read safely (weights_only=True); every failure
    (missing, truncated, not a checkpoint, pickled objects) is a one-line CheckpointError."""
    return _load_file(Path(path))


def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """Read a state dict from a checkpoint file, unwrapping `model_state` / `model` /
    `state_dict` and stripping a `module.` (DDP) or `_orig_mod.` (torch.compile) prefix."""
    path = Path(path)
    return _unwrap(_load_file(path), path)


def checkpoint_metadata(path: Union[str, os.PathLike]) -> dict:
    """The entries of a checkpoint besides its weights (e.g. `cfg`, `epoch`, `variant` of
    training checkpoints); empty for a bare state dict."""
    obj = _load_file(Path(path))
    if not isinstance(obj, Mapping):
        return {}
    return {k: v for k, v in obj.items() if k not in WRAPPER_KEYS and not isinstance(v, Tensor)}


def inflate_2d_kernel(weight: Tensor, time_kernel: int) -> Tensor:
    """ImageNet 2-D kernel (O, I, kh, kw) -> 3-D (O, I, kt, kh, kw): repeated over time and
    divided by kt, so a static clip gives the 2-D response (the official inflation)."""
    return weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel


def _layer_scale_hint(missing: list[str], unexpected: list[str]) -> str:
    if any(".gamma_" in k for k in unexpected):
        return (
            " The checkpoint has LayerScale parameters (gamma_1/gamma_2): build the model with "
            "layer_scale=0.1 (official class Uniformer_light_ls_fp32)."
        )
    if any(".gamma_" in k for k in missing):
        return " The model has LayerScale but the checkpoint does not: build it with layer_scale=None."
    return ""


def load_checkpoint(
    model: nn.Module, path: Union[str, os.PathLike], strict: bool = True, new_head: bool = True
) -> LoadReport:
    """Load a checkpoint into `model`.

    Accepts a bare state dict or one under `model_state`, `model` or `state_dict`, with or
    without a `module.` prefix. A classifier head of another class count is dropped with a
    warning (fine-tuning); 2-D kernels are inflated to 3-D (ImageNet initialisation). With
    `strict=True` any other missing or unexpected key is an error; shape mismatches always are.
    The light models' train-only `norm_cls`/`head_cls` may be absent from the file. With
    `new_head=False` (evaluation) a head of another class count is an error. Non-finite weights
    always are.
    """
    state = read_state_dict(path)
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} tensor(s) hold NaN or infinite values: {_listing(broken)}")
    target = model.state_dict()
    report = LoadReport(path=str(path), loaded=0)
    usable: dict[str, Tensor] = {}
    mismatched: list[str] = []

    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if (
            value.shape != want.shape
            and value.ndim == 4
            and want.ndim == 5
            and value.shape == want.shape[:2] + want.shape[3:]
        ):
            value = inflate_2d_kernel(value, want.shape[2])
            report.inflated.append(key)
        if value.shape == want.shape:
            usable[key] = value
        elif key.startswith(HEAD_PREFIXES):
            report.dropped_head.append(key)
        else:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(want.shape)}")

    for key in target:
        if key not in state:
            (report.missing_train_only if key.startswith(TRAIN_ONLY_PREFIXES) else report.missing).append(key)

    if report.dropped_head and not new_head:
        shapes = {k: tuple(state[k].shape) for k in report.dropped_head}
        raise CheckpointError(
            f"{path}: its classifier has another class count than the model "
            f"({', '.join(f'{k} {v}' for k, v in shapes.items())} vs "
            f"{tuple(target[report.dropped_head[0]].shape)}); evaluating it would score a random "
            f"head (fine-tune it with `train --checkpoint`)"
        )
    if mismatched:
        raise CheckpointError(
            f"{path}: {len(mismatched)} tensor(s) do not fit the model: {_listing(mismatched)}"
            + _layer_scale_hint(report.missing, report.unexpected)
        )
    if strict and (report.missing or report.unexpected):
        parts = []
        if report.missing:
            parts.append(f"missing {len(report.missing)} key(s): {_listing(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected {len(report.unexpected)} key(s): {_listing(report.unexpected)}")
        raise CheckpointError(
            f"{path}: does not match the model; "
            + "; ".join(parts)
            + "."
            + _layer_scale_hint(report.missing, report.unexpected)
            + " Pass strict=False to load the matching part."
        )

    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if report.dropped_head:
        warnings.warn(
            f"{path}: classifier head has another class count; not loaded "
            f"({', '.join(report.dropped_head)}), left freshly initialised for fine-tuning",
            stacklevel=2,
        )
    if report.inflated:
        warnings.warn(
            f"{path}: inflated {len(report.inflated)} 2-D kernel(s) to 3-D (ImageNet initialisation)", stacklevel=2
        )
    if not strict and (report.missing or report.unexpected):
        warnings.warn(
            f"{path}: loaded non-strictly; {len(report.missing)} missing and "
            f"{len(report.unexpected)} unexpected key(s)",
            stacklevel=2,
        )
    return report
