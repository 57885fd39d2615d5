"""OpenVINO: the CPU engine x86 edge users pick. A format, OpenVINO IR (a folder holding
`model.xml` and `model.bin`; fp32, and int8 from the PT2E graph in the form its CPU plugin runs
fastest, `quantize.config.OPENVINO_FORM`), and a runtime of those folders and of the ONNX
artifacts, measured beside ONNX Runtime and ExecuTorch. Its settings are named in every row they
time: the latency performance hint, the thread count, and the inference precision: fp32 unless
asked otherwise, because the CPU plugin's default computes the float ops of fp32 models (and of
int8 ones) in bf16 on CPUs that have AVX-512 BF16 or AMX, which changes the results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..engine import per_clip
from ..errors import InputError
from ..models import deploy
from ..quantize.config import OPENVINO_FORM
from .base import FP32_PARITY, PT2E_PARITY, Format, Precision, Runner, Runtime, tally
from .onnx import export_onnx

__all__ = [
    "FORMAT",
    "RUNTIME",
    "openvino_available",
    "compile_openvino",
    "run_openvino",
    "ir_model",
    "save_ir",
    "DEVICES",
]

DEVICES = ("CPU", "GPU")


def openvino_available() -> Optional[str]:
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        return f"openvino is not installed ({err}); pip install 'uniformer-edge[openvino]'"
    return None


def _device_available(device: str) -> Optional[str]:
    import openvino as ov

    found = ov.Core().available_devices
    if any(d == device or d.startswith(device + ".") for d in found):
        return None
    return f"OpenVINO {ov.__version__} sees no {device} device (it sees {', '.join(found) or 'none'})"


def ir_model(path) -> Path:
    """The file OpenVINO reads for the artifact at `path`: an IR folder's `model.xml`, else `path`."""
    path = Path(path)
    return path / IR_XML if path.is_dir() else path


def compile_openvino(path, device: str = "CPU", threads: Optional[int] = None, precision: Optional[str] = "f32"):
    """The model at `path` (ONNX, an OpenVINO IR `.xml` or IR folder) compiled for `device` with the latency
    hint and inference precision `precision` (None: the plugin's default for this machine);
    returns it and its settings, the precision the plugin chose included."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(ir_model(path)), device, config)
    settings = {
        "openvino": ov.__version__,
        "device": device,
        **{k: str(v) for k, v in config.items()},
        "INFERENCE_PRECISION_HINT": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "NUM_STREAMS": str(compiled.get_property("NUM_STREAMS")),
    }
    if precision is None:
        settings["INFERENCE_PRECISION_HINT"] += " (the plugin's default)"
    return compiled, settings


def run_openvino(compiled, clips: Tensor) -> Tensor:
    """Logits of `clips`, run one clip at a time, whatever the model read: OpenVINO runs the int8
    graphs of token-pruning models wrongly on a batch of several clips (each clip alone is right),
    and IR folders take one clip (`save_ir`)."""
    request, logits = compiled.create_infer_request(), compiled.output("logits")

    def one(clip: Tensor) -> Tensor:
        result = request.infer({"video": clip.numpy().astype(np.float32)})
        return torch.from_numpy(np.asarray(result[logits]).copy())  # the request reuses its buffers

    return per_clip(one)(clips)


def _runner(path, device: str, threads: int, source: dict) -> Runner:
    compiled, settings = compile_openvino(path, device, threads)
    fixed_batch = 1 if Path(path).is_dir() else None  # an IR folder: a static batch of one (`save_ir`)
    run = lambda clips: run_openvino(compiled, clips)  # noqa: E731
    return Runner("openvino", device, run, fixed_batch=fixed_batch, extra={"openvino_config": settings})


IR_XML = "model.xml"  # an IR artifact is a folder: model.xml (the graph) beside model.bin (the weights)


def ir_op_census(path) -> dict[str, int]:
    import openvino as ov

    return tally(op.get_type_name() for op in ov.Core().read_model(str(ir_model(path))).get_ordered_ops())


def save_ir(onnx_path, folder) -> Path:
    """The ONNX model at `onnx_path` converted to an IR folder `folder` (created) with a static batch
    of one; returns it. OpenVINO runs the int8 graphs of token-pruning models wrongly on a batch of
    several clips (each clip alone is right), so the IR takes one clip, as Core ML and ExecuTorch do."""
    import openvino as ov

    folder = Path(folder)
    folder.mkdir()
    model = ov.convert_model(str(onnx_path))
    shape = model.input(0).get_partial_shape()
    shape[0] = 1
    model.reshape({model.input(0): shape})
    # Weights stay fp32: fp16-compressed IR weights are widened again on CPUs.
    ov.save_model(model, str(folder / IR_XML), compress_to_fp16=False)
    return folder


def _as_lists(settings: dict) -> dict:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in settings.items()}


def _build(ctx, precision: Precision, path: Path) -> dict:
    """The IR folder of `precision` at `path`, converted from the ONNX export of the same graph
    and run by OpenVINO (fp32 inference precision) against its reference."""
    reason = openvino_available()
    if reason:
        raise InputError(reason)
    import openvino as ov

    onnx_path = path.with_name(path.name + ".tmp.onnx")
    about, program = {}, None
    try:
        if precision is Precision.INT8:
            about["quantization"] = ctx.program_settings(OPENVINO_FORM)
            program = ctx.program(precision, form=OPENVINO_FORM)
            export_onnx(program, onnx_path)
        else:
            export_onnx(deploy(ctx.model), onnx_path, ctx.example)
        save_ir(onnx_path, path)
    finally:
        onnx_path.unlink(missing_ok=True)
    if "quantization" in about and _as_lists(about["quantization"]) != _as_lists(OPENVINO_FORM):
        about["note"] = (
            f"not OpenVINO's int8 form ({OPENVINO_FORM}): with affine activations it runs the attention products "
            "in fp32, and full-range int8 weights can saturate on x86 CPUs without VNNI; `quantize --form openvino` "
            "makes that form"
        )
    compiled, settings = compile_openvino(path, "CPU")
    parity = ctx.parity(
        f"openvino {ov.__version__} CPU",
        run_openvino(compiled, ctx.clips),
        FORMAT.thresholds[precision],
        (lambda: program.module()(ctx.clips)) if program is not None else None,
    )
    parity["openvino_config"] = settings
    return {
        **about,
        "census": ir_op_census(path),
        "parity": parity,
        "input": ctx.input_spec(1),
    }


# The int8 IR must reproduce the PT2E graph it is converted from, as the int8 ONNX must.
FORMAT = Format(
    name="openvino",
    suffix=".openvino",
    runtime="openvino",
    thresholds={
        Precision.FP32: FP32_PARITY,
        Precision.INT8: PT2E_PARITY,
    },
    build=_build,
    census=ir_op_census,
)

RUNTIME = Runtime(
    name="openvino",
    format="openvino",
    also_runs=("onnx",),
    settings=DEVICES,
    available=openvino_available,
    setting_available=_device_available,
    load=_runner,
)
