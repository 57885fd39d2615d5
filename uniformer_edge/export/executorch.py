"""ExecuTorch export: XNNPACK-delegated `.pte` programs lowered from the XNNPACK form
(`uniformer_edge.forms.xnnpack_form`), float or quantized by `uniformer_edge.quantize.xnnpack`,
and run with the ExecuTorch runtime for parity."""

from __future__ import annotations

import dataclasses
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .._io import atomic_write
from ..engine import per_clip
from ..errors import InputError
from .base import FP16_PARITY, FP32_PARITY, Format, Precision, Reference, Runner, Runtime, Threshold, tally

__all__ = ["executorch_available", "lower_executorch", "load_executorch", "run_executorch", "FORMAT", "RUNTIME"]


def executorch_available() -> Optional[str]:
    """None when ExecuTorch can export and run here, else the reason it cannot."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401
    except Exception as err:  # ImportError, or a runtime library that fails to load
        return (
            f"ExecuTorch is not installed ({err.__class__.__name__}: {err}); pip install 'uniformer-edge[executorch]'"
        )
    return None


def lower_executorch(model: nn.Module, example: Tensor, path) -> dict[str, int]:
    """Lower `model` (the XNNPACK form, float or PT2E-converted) to an XNNPACK `.pte` at
    `path`; returns the op census of the lowered graph (delegate calls and any ops left on
    ExecuTorch's portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch.export.export(model, (example[:1],)), partitioner=[XnnpackPartitioner()])
    census = tally(
        getattr(node.target, "__name__", str(node.target))
        for node in edge.exported_program().graph.nodes
        if node.op == "call_function"
    )
    buffer = edge.to_executorch().buffer
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer))
    return census


def load_executorch(path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(Path(path)).load_method("forward")


def run_executorch(method, clips: Tensor) -> Tensor:
    """Logits for `clips`, one clip per call (the program's batch is one)."""
    return per_clip(lambda clip: method.execute((clip.contiguous(),))[0])(clips).float()


def _build(ctx, precision: Precision, path: Path) -> dict:
    """The XNNPACK `.pte` of `precision` at `path`, run by the ExecuTorch runtime against its
    reference (for quantized programs: the quantized XNNPACK form in PyTorch, clip by clip)."""
    from ..forms import XnnpackHalf, xnnpack_form
    from ..quantize.xnnpack import xnnpack_quantize, xnnpack_weight_quantize

    reason = executorch_available()
    if reason:
        raise InputError(reason)
    quantization = None
    if ctx.xnnpack_program is not None and precision.pt2e_recipe:  # from `quantize --target xnnpack`: lowered as it is
        model = ctx.xnnpack_program.module()
        cfg = ctx.job.quant_config
        quantization = {
            "method": cfg["method"],
            "quantized": ctx.job.quantized,
            "recipe": cfg["recipe"],
            "program_sha256": cfg["program_sha256"],
        }
    elif precision is Precision.INT8:
        finetuning = ctx.finetuning()
        model = xnnpack_quantize(ctx.model, ctx.example, ctx.calibration(), finetuning)
        quantization = {"method": "qat" if finetuning else "ptq", "calibration_clips": ctx.calibration().num_clips}
        if finetuning:
            schedule, train_set = finetuning
            quantization.update(train_clips=len(train_set), **dataclasses.asdict(schedule))
    elif precision in (Precision.W8, Precision.W4):
        model = xnnpack_weight_quantize(ctx.model, ctx.example, bits=int(precision.value[1:]))
        quantization = {
            "method": "weights only, no calibration",
            "weights": f"{precision.value[1:]}-bit symmetric per-channel: linear layers"
            + (" and pointwise convolutions" if precision is Precision.W8 else ""),
            "activations": "quantized to int8 by XNNPACK at every call, with that call's range",
        }
    elif precision is Precision.FP16:
        model = XnnpackHalf(ctx.model, ctx.job.frames)
    else:
        model = xnnpack_form(ctx.model, ctx.job.frames)
    census = lower_executorch(model, ctx.example, path)
    parity = ctx.parity(
        f"executorch {metadata.version('executorch')} runtime (XNNPACK)",
        run_executorch(load_executorch(path), ctx.clips),
        FORMAT.thresholds[precision],
        lambda: per_clip(model)(ctx.clips),  # a static batch of one, like the .pte
    )
    return {
        "census": census,
        "parity": parity,
        "quantization": quantization,
        "input": ctx.input_spec(1),
    }


# XNNPACK's int8 kernels requantize with their own fixed-point rounding after every quantized op
# (which PyTorch's graph simulates in fp32), and the light models' top-k token pruning amplifies
# any difference (figures in benchmarks/results/export_models.md); the margin covers other checkpoints.
_XNNPACK_QUANTIZED = Threshold(Reference.PT2E_GRAPH, min_cosine=0.998)
FORMAT = Format(
    name="executorch",
    suffix=".pte",
    runtime="executorch",
    thresholds={
        Precision.FP32: FP32_PARITY,
        Precision.FP16: FP16_PARITY,
        **{p: _XNNPACK_QUANTIZED for p in (Precision.INT8, Precision.W8, Precision.W4)},
    },
    build=_build,
    census=None,  # a .pte is not read back: the census is the lowered graph's, recorded by build
)


def _executorch_runner(path, setting: str, threads: int, source: dict) -> Runner:
    method = load_executorch(path)
    return Runner("executorch", setting, per_clip(lambda clip: method.execute((clip.contiguous(),))[0]), fixed_batch=1)


RUNTIME = Runtime(
    name="executorch",
    format="executorch",
    settings=("XNNPACK",),
    available=executorch_available,
    load=_executorch_runner,
)
