"""Artifacts and the backends that run them.

An artifact folder is either an export output (`manifest.json`: ONNX, Core ML, ExecuTorch
files) or a quantization output (`quant_config.json` + `quantized.pt2`, run by PyTorch).
Every backend either loads an artifact into a callable `clips -> logits` or says why it is not
available on this device."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import InputError
from ..export import verify_manifest
from ..quantize import read_quantize_config, verify_program

__all__ = [
    "Artifact",
    "discover",
    "BACKENDS",
    "Runner",
    "runners_for",
    "backend_status",
    "setting_status",
    "ORT_PROVIDERS",
    "COREML_UNITS",
]

ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider")
COREML_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


@dataclass
class Artifact:
    path: Path
    format: str  # onnx | coreml | executorch | pt2
    precision: str
    variant: str
    frames: int
    size: int
    size_bytes: int
    source: dict = field(default_factory=dict)  # checkpoint, seed, model_overrides, num_classes

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> tuple:
        """Artifacts of one model at one input size share a float reference and evaluation set."""
        s = self.source
        return (
            self.variant,
            self.frames,
            self.size,
            s.get("checkpoint"),
            s.get("seed"),
            json.dumps(s.get("model_overrides") or {}, sort_keys=True),
            s.get("num_classes"),
        )


def discover(folder) -> list[Artifact]:
    """The artifacts of one folder; hashes are verified against the manifest first."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        manifest = verify_manifest(folder)
        src = manifest["source"]
        source = {
            "checkpoint": src["checkpoint"],
            "seed": src.get("seed", 0),
            "model_overrides": src.get("model_overrides") or {},
            "num_classes": manifest["num_classes"],
        }
        return [
            Artifact(
                folder / a["path"],
                a["format"],
                a["precision"],
                manifest["variant"],
                manifest["input"]["frames"],
                manifest["input"]["size"],
                a["size_bytes"],
                source,
            )
            for a in manifest["artifacts"]
        ]
    if (folder / "quant_config.json").is_file():
        cfg = read_quantize_config(folder)
        verify_program(folder / "quantized.pt2", cfg["program_sha256"])
        _, _, frames, size, _ = cfg["input_shape"]
        source = {
            "checkpoint": cfg["job"].get("checkpoint"),
            "seed": cfg["job"].get("seed", 0),
            "model_overrides": cfg.get("model_overrides") or {},
            "num_classes": cfg["num_classes"],
        }
        precision = {"w8a8": "int8"}.get(cfg["quant_config"]["recipe"], cfg["quant_config"]["recipe"])
        precision += "-qat" if cfg["method"] == "qat" else ""
        return [
            Artifact(
                folder / "quantized.pt2",
                "pt2",
                precision,
                cfg["variant"],
                frames,
                size,
                (folder / "quantized.pt2").stat().st_size,
                {**source, "sha256": cfg["program_sha256"]},
            )
        ]
    raise FileNotFoundError(
        f"{folder} has no manifest.json (an export output) or quant_config.json + quantized.pt2 (a quantization output)"
    )


@dataclass
class Runner:
    """One artifact on one backend setting, ready to run."""

    backend: str
    setting: str  # e.g. "cpu", "cuda", "CPUExecutionProvider", "CPU_AND_NE"
    fn: Callable[[torch.Tensor], torch.Tensor]
    fixed_batch: Optional[int] = None
    extra: dict = field(default_factory=dict)  # reported with the row, e.g. Core ML's compute plan


def _ort_status() -> Optional[str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return f"onnxruntime is not installed ({err}); pip install 'uniformer-edge[onnx]'"
    return None


def _coreml_status() -> Optional[str]:
    try:
        import coremltools  # noqa: F401
    except ImportError as err:
        return f"coremltools is not installed ({err}); pip install 'uniformer-edge[coreml]'"
    from ..export.coreml import can_predict

    return can_predict()


def _executorch_status() -> Optional[str]:
    from ..export.executorch import executorch_available

    return executorch_available()


BACKENDS = {
    "torch": ("pt2", lambda: None),
    "onnxruntime": ("onnx", _ort_status),
    "coreml": ("coreml", _coreml_status),
    "executorch": ("executorch", _executorch_status),
}


def backend_status(name: str) -> Optional[str]:
    """None when the backend runs here, else why not."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name][1]()


def _cuda_status() -> Optional[str]:
    """None when PyTorch sees a CUDA device, else why not."""
    if torch.version.cuda is None:
        return f"no CUDA: torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda})"
    return None


def _ort_provider_status(provider: str) -> Optional[str]:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return None
    build = {
        "CUDAExecutionProvider": "the onnxruntime-gpu build has it",
        "CoreMLExecutionProvider": "onnxruntime's macOS builds have it",
    }[provider]
    return f"onnxruntime {ort.__version__} has no {provider} ({build})"


def setting_status(backend: str) -> dict[str, Optional[str]]:
    """Every setting of `backend` (device, execution provider, compute units): None when it runs
    here, else why not; a backend that is not available here gives its reason for each."""
    overall = backend_status(backend)
    settings = {
        "torch": ("cpu", "cuda"),
        "onnxruntime": ORT_PROVIDERS,
        "coreml": COREML_UNITS,
        "executorch": ("XNNPACK",),
    }[backend]
    if overall is not None:
        return {s: overall for s in settings}
    if backend == "torch":
        return {"cpu": None, "cuda": _cuda_status()}
    if backend == "onnxruntime":
        return {p: _ort_provider_status(p) for p in settings}
    return {s: None for s in settings}


def _per_clip(fn):
    def run(clips):
        return torch.cat([fn(clip[None]) for clip in clips])

    return run


def _compute_plan(path, units: str) -> dict:
    """Core ML's compute plan (ops and estimated cost per compute device), or why there is none."""
    from ..export.coreml import compute_plan

    try:
        return compute_plan(path, units)
    except Exception as err:  # MLComputePlan needs macOS 14.4+ and coremltools >= 8
        return {"not available": f"{type(err).__name__}: {err}"}


def runners_for(artifact: Artifact, backend: str, threads: int) -> list[Runner]:
    """Every setting of `backend` this device has for `artifact` (empty if it does not run it)."""
    if BACKENDS[backend][0] != artifact.format:
        return []
    if backend == "torch":
        from ..quantize import load_program

        module = load_program(artifact.path, artifact.source["sha256"]).module()
        return [Runner("torch", "cpu", lambda clips: module(clips))]
    if backend == "onnxruntime":
        import onnxruntime as ort

        from ..export.onnx import ort_session, run_onnx

        out = []
        for provider in ORT_PROVIDERS:
            if provider in ort.get_available_providers():
                session = ort_session(artifact.path, threads, [provider])
                out.append(Runner("onnxruntime", provider, lambda clips, s=session: run_onnx(s, clips)))
        return out
    if backend == "coreml":
        import coremltools as ct
        import numpy as np

        out = []
        for units in COREML_UNITS:
            model = ct.models.MLModel(str(artifact.path), compute_units=getattr(ct.ComputeUnit, units))

            def run(clip, m=model):
                return torch.from_numpy(np.asarray(m.predict({"video": clip.numpy()})["logits"])).float()

            out.append(
                Runner(
                    "coreml",
                    units,
                    _per_clip(run),
                    fixed_batch=1,
                    extra={"compute_plan": _compute_plan(artifact.path, units)},
                )
            )
        return out
    from ..export.executorch import load_executorch

    method = load_executorch(artifact.path)
    return [
        Runner("executorch", "XNNPACK", _per_clip(lambda clip: method.execute((clip.contiguous(),))[0]), fixed_batch=1)
    ]
