"""The registry: every artifact format and every runtime the toolkit knows, declared by their
own modules (`onnx`, `coreml`, `executorch`, `openvino`; PyTorch runs `quantize` outputs here).
`export`, `benchmark` and the benchmark suite iterate over these tables and nothing else. A
format can have more than one runtime (ONNX: ONNX Runtime, which checks parity at export, and
OpenVINO, whose own format is its IR)."""

from __future__ import annotations

from typing import Optional

import torch

from ..engine import per_clip
from ..errors import InputError
from . import coreml, executorch, onnx, openvino
from .base import Format, Precision, Runner, Runtime

__all__ = ["FORMATS", "RUNTIMES", "PRECISIONS", "get_format", "get_runtime", "precision_of"]

FORMATS: dict[str, Format] = {f.name: f for f in (onnx.FORMAT, coreml.FORMAT, executorch.FORMAT, openvino.FORMAT)}
PRECISIONS: tuple[Precision, ...] = tuple(p for p in Precision if any(p in f.thresholds for f in FORMATS.values()))


def _cuda_available(setting: str) -> Optional[str]:
    if setting != "cuda":
        return None
    if torch.version.cuda is None:
        return f"no CUDA: torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda})"
    return None


def _torch_runner(path, setting: str, threads: int, source: dict) -> Runner:
    from ..quantize import load_program

    module = load_program(path, source["sha256"]).module()
    if source.get("static_batch"):  # the XNNPACK form: a batch of one
        return Runner("torch", setting, per_clip(module), fixed_batch=1)
    return Runner("torch", setting, lambda clips: module(clips))


# PT2E programs (`quantize` outputs) run on CPU; on "cuda" the benchmark times the float model.
TORCH = Runtime(
    name="torch",
    format="pt2",
    settings=("cpu", "cuda"),
    available=lambda: None,
    setting_available=_cuda_available,
    load=_torch_runner,
    artifact_settings=("cpu",),
)

RUNTIMES: dict[str, Runtime] = {
    r.name: r for r in (TORCH, onnx.RUNTIME, openvino.RUNTIME, coreml.RUNTIME, executorch.RUNTIME)
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise InputError(f"unknown backend {name!r}; choose from {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def precision_of(name: str) -> Precision:
    """The precision a user names; an unknown name is an error listing the known ones."""
    try:
        return Precision(name)
    except ValueError:
        raise InputError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}") from None
