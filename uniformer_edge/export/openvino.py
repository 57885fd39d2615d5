"""OpenVINO as a runtime of ONNX artifacts: the CPU engine x86 edge users pick, measured beside
ONNX Runtime and ExecuTorch on the same files. Its settings are named in every row they time:
the latency performance hint, the thread count, and fp32 inference precision (the CPU plugin
otherwise computes fp32 models in bf16 on CPUs that have AVX-512 BF16 or AMX)."""

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


def compile_openvino(path, device: str = "CPU", threads: Optional[int] = None):
    """The model at `path` (ONNX, or OpenVINO IR `.xml`) compiled for `device` with the latency
    hint and fp32 inference precision; `compiled.uniformer_config` holds the settings."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(Path(path)), device, config)
    settings = {
        "openvino": ov.__version__,
        "device": device,
        **{k: str(v) for k, v in config.items()},
        "NUM_STREAMS": str(compiled.get_property("NUM_STREAMS")),
    }
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
