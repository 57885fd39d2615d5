"""OpenVINO as a runtime of ONNX artifacts: the CPU engine x86 edge users pick, measured beside
ONNX Runtime and ExecuTorch on the same files. Its settings are named in every row they time:
the latency performance hint, the thread count, and the inference precision: fp32 unless asked
otherwise, because the CPU plugin's default computes the float ops of fp32 models (and of int8
ones) in bf16 on CPUs that have AVX-512 BF16 or AMX, which changes the results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .base import Runner, Runtime

__all__ = ["RUNTIME", "openvino_available", "compile_openvino", "run_openvino", "DEVICES"]

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


def compile_openvino(path, device: str = "CPU", threads: Optional[int] = None, precision: Optional[str] = "f32"):
    """The model at `path` (ONNX, or OpenVINO IR `.xml`) compiled for `device` with the latency
    hint and inference precision `precision` (None: the plugin's default for this machine);
    returns it and its settings, the precision the plugin chose included."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(Path(path)), device, config)
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
    request = compiled.create_infer_request()
    result = request.infer({"video": clips.numpy().astype(np.float32)})
    return torch.from_numpy(np.asarray(result[compiled.output("logits")]).copy())


def _runner(path, device: str, threads: int, source: dict) -> Runner:
    compiled, settings = compile_openvino(path, device, threads)
    return Runner("openvino", device, lambda clips: run_openvino(compiled, clips), extra={"openvino_config": settings})


RUNTIME = Runtime(
    name="openvino",
    format="onnx",
    settings=DEVICES,
    available=openvino_available,
    setting_available=_device_available,
    load=_runner,
)
