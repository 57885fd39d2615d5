"""The export job behind `python -m uniformer_edge.export`: every requested format x precision,
each checked against PyTorch on a runtime where one exists, listed in `manifest.json`.

Parity thresholds (an artifact that misses its threshold is not written; the others are, and the
job fails naming it):
fp32: relative max error <= 1e-4 against the float model; fp16: cosine >= 0.999 and the
same top-1; exports of a PT2E-quantized graph: cosine >= 0.999 against that graph in PyTorch
(0.998 for the quantized ExecuTorch programs, see `XNNPACK_INT8_MIN_COSINE`).
Every artifact also reports SQNR, KL and top-1 agreement against the float model.

Core ML packages are also executed by the MIL reference (`mil_reference`) from the saved
package on every system, with their own thresholds (`COREML_REFERENCE_THRESHOLDS`)."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import ExportError, InputError
from .. import __version__
from .._cpu import cpu_name, has_int8_dot_product, instruction_sets
from .._io import atomic_dir, check_output_dir, sha256_file, sha256_tree
from ..calibration import MEAN, STD, build_dataset, calibration_set, read_class_names
from ..engine import agreement
from ..forms import frame_batched
from ..models import create_model, deploy, get_variant, read_state_dict
from ..quantize import QuantConfig, load_program, quantize_ptq, read_quantize_config, verify_program
from ..quantize.qat import QATSchedule

__all__ = [
    "ExportJob",
    "run_export",
    "FORMATS",
    "PRECISIONS",
    "SUPPORTED",
    "MANIFEST_SCHEMA",
    "verify_manifest",
    "ExportError",
    "coreml_reference_parity",
    "fp16_safety",
    "COREML_REFERENCE_THRESHOLDS",
]

MANIFEST_SCHEMA = 1
FORMATS = ("onnx", "coreml", "executorch")
PRECISIONS = ("fp32", "fp16", "int8", "w8", "w4", "palettize4", "palettize6", "int8-ort", "int8-ort-entropy")
SUPPORTED = {
    "onnx": ("fp32", "fp16", "int8", "w8", "w4", "int8-ort", "int8-ort-entropy"),
    "coreml": ("fp32", "fp16", "int8", "w8", "w4", "palettize4", "palettize6"),
    "executorch": ("fp32", "fp16", "int8", "w8", "w4"),
}
# Precisions exported from our PT2E-quantized graph, and the quantization recipe behind each.
PT2E_RECIPE = {"int8": "w8a8", "w8": "w8", "w4": "w4"}
FP32_MAX_REL_ERR, FP16_MIN_COSINE, QUANT_MIN_COSINE = 1e-4, 0.999, 0.999
# XNNPACK's int8 kernels requantize with their own fixed-point rounding after every quantized op
# (which PyTorch's graph simulates in fp32), and the light models' top-k token pruning amplifies
# any difference (figures in benchmarks/results/export_models.md); the margin covers other checkpoints.
XNNPACK_INT8_MIN_COSINE = 0.998
# The MIL reference's thresholds per Core ML precision: (reference, minimum cosine, same top-1).
# fp32 uses FP32_MAX_REL_ERR. fp16 programs store fp16 between ops; the light models' token
# pruning sorts tokens by score, and fp16 scores can swap two tokens at the cut, which moves a
# whole token between the kept and the merged set, so fp16 keeps the bound of the other fp16
# exports. W8A8 compares with the PT2E graph in PyTorch by cosine only: a rounding tie in one
# int8 value can cascade, so no elementwise bound holds. Weight-compressed packages compare, like
# the ONNX weight-only exports, with their PyTorch counterpart: the converted model holding the
# weights the package decompresses.
COREML_REFERENCE_THRESHOLDS = {
    "fp16": ("float", FP16_MIN_COSINE, True),
    "int8": ("pytorch_quantized", QUANT_MIN_COSINE, False),
    **{p: ("package_weights", QUANT_MIN_COSINE, False) for p in ("w8", "w4", "palettize4", "palettize6")},
}
# A float op output within this factor of fp16's largest value (65504) is reported by name.
FP16_HEADROOM = 4.0
_SUFFIX = {"onnx": ".onnx", "coreml": ".mlpackage", "executorch": ".pte"}


@dataclass
class ExportJob:
    variant: Optional[str] = None
    checkpoint: Optional[str] = None
    quantized: Optional[str] = None
    formats: tuple[str, ...] = ("onnx",)
    precisions: tuple[str, ...] = ()  # empty: fp32, or the --quantized graph's precision
    frames: Optional[int] = None
    size: Optional[int] = None
    labels: Optional[str] = None
    target: Optional[str] = None  # Core ML target; default: ios17, or the later one a requested precision needs
    coreml_form: str = "ane"  # "ane": frame-batched 2-D program for the Neural Engine; "3d": native Conv3d
    out: str = "exports"
    force: bool = False
    num_classes: Optional[int] = None
    # Calibration of the programs quantized here (ExecuTorch int8, ONNX int8-ort, int8 without
    # --quantized). None: the --quantized folder's calibration data, else synthetic and 32 clips.
    calib_data: Optional[str] = None
    calib_root: Optional[str] = None
    num_calib: Optional[int] = None
    check_clips: int = 4
    seed: int = 0
    # QAT of the ExecuTorch int8 program (0 epochs: calibration only), on the training split of --calib-data
    qat_epochs: int = 0
    qat_clips: int = 1024
    qat_lr: float = 2e-5
    model_overrides: dict = field(default_factory=dict)  # constructor arguments, e.g. for small test models
    quant_config: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        from .coreml import FORMS, MIN_TARGET, TARGETS

        if self.quantized:
            self._read_quantized()
        self.calib_data, self.num_calib = self.calib_data or "synthetic", self.num_calib or 32
        if not self.precisions:
            self.precisions = (self.quant_config["precision"],) if self.quantized else ("fp32",)
        if not self.variant:
            raise InputError("--variant is required (or --quantized, which names its variant)")
        spec = get_variant(self.variant)
        self.variant = spec.name
        for name in ("frames", "size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        self.frames = spec.default_input[0] if self.frames is None else self.frames
        self.size = spec.default_input[1] if self.size is None else self.size
        self.formats, self.precisions = tuple(dict.fromkeys(self.formats)), tuple(dict.fromkeys(self.precisions))
        for fmt in self.formats:
            if fmt not in FORMATS:
                raise InputError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        for prec in self.precisions:
            if prec not in PRECISIONS:
                raise InputError(f"unknown precision {prec!r}; choose from {', '.join(PRECISIONS)}")
            lacking = [f for f in self.formats if prec not in SUPPORTED[f]]
            if lacking:
                having = [f for f in FORMATS if prec in SUPPORTED[f]]
                raise InputError(
                    f"precision {prec} is not available for {', '.join(lacking)} "
                    f"(formats with {prec}: {', '.join(having)})"
                )
        if self.target is None:
            needed = [MIN_TARGET[p] for p in self.precisions if "coreml" in self.formats and p in MIN_TARGET]
            self.target = max(["ios17", *needed], key=TARGETS.index)
        if self.target not in TARGETS:
            raise InputError(f"unknown --target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.coreml_form not in FORMS:
            raise InputError(f"unknown --coreml-form {self.coreml_form!r}; choose from {', '.join(FORMS)}")
        if "coreml" in self.formats:
            for prec in self.precisions:
                if TARGETS.index(self.target) < TARGETS.index(MIN_TARGET[prec]):
                    raise InputError(f"Core ML {prec} needs --target {MIN_TARGET[prec]} or later (got {self.target})")
        if self.quantized:
            mine = self.quant_config["precision"]
            other = [p for p in self.precisions if p in PT2E_RECIPE and p != mine and p != "int8-ort"]
            if other:
                raise InputError(
                    f"--quantized {self.quantized} holds a {self.quant_config['recipe']} graph "
                    f"(precision {mine}); it cannot provide {', '.join(other)}"
                )
        if self.check_clips < 1:
            raise InputError("check_clips must be at least 1")
        if self.qat_epochs < 0:
            raise InputError(f"--qat-epochs must be 0 or more, got {self.qat_epochs}")
        if self.qat_epochs and not ("executorch" in self.formats and "int8" in self.precisions):
            raise InputError(
                "--qat-epochs fine-tunes the ExecuTorch int8 program: it needs --format executorch --precision int8"
            )

    def _read_quantized(self):
        folder = Path(self.quantized)
        cfg = read_quantize_config(folder)
        verify_program(folder / "quantized.pt2", cfg["program_sha256"])  # before any work, not only at loading
        recipe = cfg["quant_config"]["recipe"]
        inverse = {v: k for k, v in PT2E_RECIPE.items()}
        if recipe not in inverse:
            raise InputError(
                f"--quantized {folder}: recipe {recipe} cannot be exported "
                f"(exportable: {', '.join(PT2E_RECIPE.values())})"
            )
        if self.variant and get_variant(self.variant).name != cfg["variant"]:
            raise InputError(
                f"--quantized {folder} holds a UniFormer-{cfg['variant'].upper()} model, not --variant {self.variant}"
            )
        _, _, frames, size, _ = cfg["input_shape"]
        if (self.frames is not None and self.frames != frames) or (self.size is not None and self.size != size):
            raise InputError(
                f"--quantized {folder} was quantized at {frames}x{size}; "
                f"it cannot be exported at {self.frames or frames}x{self.size or size}"
            )
        self.variant, self.frames, self.size = cfg["variant"], frames, size
        self.checkpoint = self.checkpoint or cfg["job"].get("checkpoint")
        if (
            self.checkpoint
            and cfg.get("checkpoint_sha256")
            and Path(self.checkpoint).is_file()
            and sha256_file(self.checkpoint) != cfg["checkpoint_sha256"]
        ):
            raise InputError(
                f"checkpoint {self.checkpoint} is not the one {folder} was quantized from (SHA-256 differs)"
            )
        self.num_classes = self.num_classes or cfg.get("num_classes")
        self.model_overrides = self.model_overrides or cfg.get("model_overrides") or {}
        self.quant_config = {**cfg, "recipe": recipe, "precision": inverse[recipe]}
        if self.calib_data is None:  # what the folder was calibrated on reaches every program calibrated here
            job = cfg["job"]
            self.calib_data, self.calib_root = job.get("calib_data", "synthetic"), job.get("calib_root")
            self.num_calib = self.num_calib or job.get("num_calib")
            self.seed = job.get("seed", self.seed)


def _library_versions() -> dict:
    out = {"python": platform.python_version(), "uniformer_edge": __version__}
    for name in ("torch", "torchao", "onnx", "onnxruntime", "onnxscript", "coremltools", "executorch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _num_classes(job: ExportJob, labels) -> int:
    if job.checkpoint:
        head = read_state_dict(job.checkpoint).get("head.weight")
        if head is not None:
            return int(head.shape[0])
    if job.num_classes:
        return job.num_classes
    return len(labels) if labels else 400


def _compare(reference: torch.Tensor, output: torch.Tensor) -> dict:
    rel = float((output - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    return {"max_rel_err": rel, **agreement(reference, output)}


def coreml_reference_parity(
    output: torch.Tensor,
    float_logits: torch.Tensor,
    precision: str,
    quantized_reference: Optional[Callable[[], torch.Tensor]] = None,
) -> dict:
    """Figures and verdict of a Core ML package's MIL-reference `output` under
    `COREML_REFERENCE_THRESHOLDS`; `quantized_reference()` gives the logits of the PyTorch
    counterpart (the PT2E graph for int8, the model with the package's weights for w8/w4/palettized)."""
    vs_float = _compare(float_logits, output)
    entry = {"clips": len(output), "vs_float": vs_float}
    if precision == "fp32":
        return {
            **entry,
            "threshold": f"max_rel_err <= {FP32_MAX_REL_ERR} vs float",
            "passed": vs_float["max_rel_err"] <= FP32_MAX_REL_ERR,
        }
    against, minimum, same_top1 = COREML_REFERENCE_THRESHOLDS[precision]
    figures, what = vs_float, "float"
    if against != "float":
        key, what = {
            "pytorch_quantized": ("vs_pytorch_quantized", "the PyTorch quantized graph"),
            "package_weights": ("vs_package_weights", "the model with the package's decompressed weights in PyTorch"),
        }[against]
        with torch.no_grad():
            figures = entry[key] = _compare(quantized_reference(), output)
    passed = figures["cosine"] >= minimum and (not same_top1 or figures["top1_agreement"] == 1.0)
    return {
        **entry,
        "threshold": f"cosine >= {minimum}{' and same top-1' if same_top1 else ''} vs {what}",
        "passed": passed,
    }


def fp16_safety(reference, name: str) -> dict:
    """Largest float magnitudes of a MIL program's ops over its tracked runs against fp16's range;
    warns naming each op within FP16_HEADROOM of overflow."""
    from .mil_reference import FP16_MAX

    magnitudes = reference.magnitudes
    peak_name = max(magnitudes, key=magnitudes.get)
    near = reference.near_overflow(FP16_HEADROOM)
    for op_name, op_type, peak in near:
        warnings.warn(
            f"{name}: {op_type} op {op_name} reaches {peak:.5g}, within {FP16_HEADROOM:g}x of "
            f"fp16's largest value {FP16_MAX:g}",
            stacklevel=2,
        )
    return {
        "fp16_max": FP16_MAX,
        "largest_magnitude": magnitudes[peak_name],
        "largest_op": peak_name,
        "largest_op_type": reference.op_types[peak_name],
        "headroom": FP16_MAX / max(magnitudes[peak_name], 1e-30),
        "near_overflow": [{"op": n, "type": t, "magnitude": m} for n, t, m in near],
    }


class _Exporter:
    """Builds the artifacts of one job inside a temporary output folder."""

    def __init__(self, job: ExportJob, progress: bool):
        self.job, self.progress = job, progress
        self.labels = read_class_names(job.labels) if job.labels else None
        num_classes = _num_classes(job, self.labels)
        if self.labels and len(self.labels) != num_classes:
            raise InputError(f"labels file {job.labels} has {len(self.labels)} classes, the model {num_classes}")
        torch.manual_seed(job.seed)  # random-weight models are reproducible from the manifest
        self.model = create_model(
            job.variant, num_classes=num_classes, checkpoint=job.checkpoint, **job.model_overrides
        ).eval()
        self.num_classes = num_classes
        data = dict(frames=job.frames, size=job.size, seed=job.seed)
        check = build_dataset("synthetic", "test", num_clips=job.check_clips, **data)
        self.clips = torch.stack([check[i][0] for i in range(len(check))])
        self.example = self.clips[:1]
        with torch.no_grad():
            self.float_logits = self.model(self.clips)
        self._calib, self._programs, self._et_quantized = None, {}, {}
        if job.quantized:
            self._programs[job.quant_config["precision"]] = load_program(
                Path(job.quantized) / "quantized.pt2", job.quant_config["program_sha256"]
            )

    def calibration(self):
        if self._calib is None:
            j = self.job
            source = build_dataset(j.calib_data, "train", frames=j.frames, size=j.size, root=j.calib_root, seed=j.seed)
            self._calib = calibration_set(source, j.num_calib, seed=j.seed, batch_size=8)
        return self._calib

    def program(self, precision: str, conv3d: str = "native"):
        """The PT2E-quantized program for `precision` (from --quantized, or quantized here) of the
        deploy form with `conv3d` ("native" or "2d"; --quantized programs are native)."""
        key = precision if conv3d == "native" else (precision, conv3d)
        if key not in self._programs:
            cfg = QuantConfig(recipe=PT2E_RECIPE[precision])
            self._programs[key], _ = quantize_ptq(
                self.model, self.calibration(), cfg, self.example, conv3d=conv3d, progress=self.progress
            )
        return self._programs[key]

    def preprocessing(self) -> dict:
        return {
            "frames": self.job.frames,
            "size": self.job.size,
            "channels": "RGB",
            "layout": "B,3,T,H,W",
            "pixel_scale": "divide 8-bit values by 255",
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
            "sampling": "uniform: T frames evenly spaced over the clip, short side resized to size, "
            "centre crop size x size",
        }

    def _parity(self, runtime: str, output: torch.Tensor, precision: str, fmt: str) -> dict:
        vs_float = _compare(self.float_logits, output)
        entry = {"runtime": runtime, "clips": len(self.clips), "vs_float": vs_float}
        if precision == "fp32":
            entry.update(
                threshold=f"max_rel_err <= {FP32_MAX_REL_ERR} vs float",
                passed=vs_float["max_rel_err"] <= FP32_MAX_REL_ERR,
            )
        elif precision == "fp16":
            entry.update(
                threshold=f"cosine >= {FP16_MIN_COSINE} and same top-1 vs float",
                passed=vs_float["cosine"] >= FP16_MIN_COSINE and vs_float["top1_agreement"] == 1.0,
            )
        elif precision in PT2E_RECIPE and not (fmt == "coreml" and precision != "int8"):
            reference = self._quantized_reference(fmt, precision)
            vs_torch = _compare(reference, output)
            minimum = XNNPACK_INT8_MIN_COSINE if fmt == "executorch" else QUANT_MIN_COSINE
            entry.update(
                vs_pytorch_quantized=vs_torch,
                threshold=f"cosine >= {minimum} vs the PyTorch quantized graph",
                passed=vs_torch["cosine"] >= minimum,
            )
        else:
            entry.update(threshold="none: no PyTorch counterpart, compared with the float model", passed=True)
        return entry

    def _quantized_reference(self, fmt: str, precision: str) -> torch.Tensor:
        with torch.no_grad():
            if fmt == "executorch":  # a static batch of one, like the .pte
                return torch.cat([self._et_quantized[precision](clip[None]) for clip in self.clips])
            return self.program(precision).module()(self.clips)

    # -- formats -------------------------------------------------------------------------
    def onnx(self, precision: str, path: Path) -> dict:
        from .onnx import export_onnx, half_precision, onnx_op_census, ort_quantize_static, ort_session, run_onnx

        if precision.startswith("int8-ort"):
            float_path = path.with_name(path.stem + ".float.tmp.onnx")
            export_onnx(deploy(self.model, per_channel_safe=True), float_path, self.example)
            try:
                ort_quantize_static(
                    float_path, path, self.calibration(), "entropy" if precision.endswith("entropy") else "minmax"
                )
            finally:
                float_path.unlink(missing_ok=True)
        elif precision in PT2E_RECIPE:
            export_onnx(self.program(precision), path)
        else:
            model = deploy(self.model)
            export_onnx(half_precision(model) if precision == "fp16" else model, path, self.example)
        census = onnx_op_census(path)
        if precision != "fp32" and precision != "fp16" and not census.get("DequantizeLinear"):
            raise ExportError(f"{path.name}: the exporter dropped every QuantizeLinear/DequantizeLinear node")
        import onnxruntime

        session = ort_session(path)
        output = run_onnx(session, self.clips)
        parity = self._parity(f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider", output, precision, "onnx")
        parity["session_config"] = session.uniformer_config
        extra = {}
        if census.get("QuantizeLinear"):
            extra["onnxruntime_session_config"] = {
                "session.x64quantprecision": "1",
                "when": "x86 CPUs without VNNI or AMX: their u8 x s8 kernels saturate int16 pair sums",
            }
        return {
            **extra,
            "census": census,
            "parity": parity,
            "input": {"name": "video", "shape": ["batch", 3, *self._thw()], "dtype": "float32"},
        }

    def coreml(self, precision: str, path: Path) -> dict:
        from .coreml import (
            can_predict,
            convert_coreml,
            coreml_io,
            coreml_op_census,
            neural_engine_census,
            predict_coreml,
            save_mlpackage,
        )
        from .mil_reference import RUNTIME_NAME, RUNTIME_NOTE, MilReference

        form, form_note = self.job.coreml_form, None
        if precision == "int8" and form == "ane" and self.job.quantized:
            form, form_note = (
                "3d",
                (
                    f"--quantized {self.job.quantized} holds a graph of the 5-D (Conv3d) form; "
                    "export without --quantized (int8 is then quantized here) for the Neural "
                    "Engine form"
                ),
            )
            warnings.warn(f"Core ML int8: {form_note}", stacklevel=2)
        conv3d = "2d" if form == "ane" else "native"
        if precision == "int8":
            source = self.program("int8", conv3d).module()
        else:
            source = frame_batched(self.model, self.job.frames) if conv3d == "2d" else deploy(self.model)
        mlmodel = convert_coreml(
            source,
            self.example,
            precision,
            self.job.target,
            self.labels,
            self.preprocessing(),
            f"UniFormer-{self.job.variant.upper()} {self.job.frames}x{self.job.size}, {precision}, {form} form",
        )
        save_mlpackage(mlmodel, path)
        census, io = coreml_op_census(path), coreml_io(path)
        if io["inputs"].get("video", {}).get("shape") != [1, 3, *self._thw()] or "logits" not in io["outputs"]:
            raise ExportError(f"{path.name}: unexpected inputs/outputs {io}")
        if precision == "int8" and not census.get("quantize"):
            raise ExportError(f"{path.name}: no activation quantize ops in the converted program")
        reference = MilReference(path)  # read back from disk: what the package holds, not the in-memory model
        output = torch.from_numpy(reference.run_batch(self.clips.numpy(), "video", "logits", track=precision != "fp32"))
        reference_parity = {
            "runtime": RUNTIME_NAME,
            "what": RUNTIME_NOTE,
            **coreml_reference_parity(
                output,
                self.float_logits,
                precision,
                lambda: self._counterpart(precision, conv3d, source, reference)(self.clips),
            ),
        }
        reason = can_predict()
        if reason:
            parity = {"runtime": "Core ML", "not run": reason}
        else:
            parity = self._parity(
                "coremltools (macOS, compute units ALL)", predict_coreml(path, self.clips), precision, "coreml"
            )
        info = {
            "census": census,
            "io": io,
            "form": form,
            "parity": parity,
            "reference_parity": reference_parity,
            "neural_engine": neural_engine_census(reference.program),
            "target": self.job.target,
            "input": {"name": "video", "shape": [1, 3, *self._thw()], "dtype": "float32"},
        }
        if form_note:
            info["form_note"] = form_note
        if precision != "fp32":
            info["fp16_safety"] = fp16_safety(reference, path.name)
        return info

    def _counterpart(self, precision: str, conv3d: str, source, reference):
        """The PyTorch module a quantized or weight-compressed package must match."""
        from .coreml import with_package_weights

        if precision == "int8":
            return self.program("int8", conv3d).module()
        return with_package_weights(source, reference.decompressed_weights(), wrapped=bool(self.labels))

    def executorch(self, precision: str, path: Path) -> dict:
        from ..forms import XnnpackHalf, xnnpack_form
        from ..quantize.xnnpack import xnnpack_quantize, xnnpack_weight_quantize
        from .executorch import executorch_available, load_executorch, lower_executorch, run_executorch

        reason = executorch_available()
        if reason:
            raise InputError(reason)
        quantization = None
        if precision == "int8":
            finetuning = self._finetuning()
            model = xnnpack_quantize(self.model, self.example, self.calibration(), finetuning)
            quantization = {"method": "qat" if finetuning else "ptq", "calibration_clips": self.calibration().num_clips}
            if finetuning:
                schedule, train_set = finetuning
                quantization.update(train_clips=len(train_set), **dataclasses.asdict(schedule))
        elif precision in ("w8", "w4"):
            model = xnnpack_weight_quantize(self.model, self.example, bits=int(precision[1:]))
            quantization = {
                "method": "weights only, no calibration",
                "weights": f"{precision[1:]}-bit symmetric per-channel: linear layers"
                + (" and pointwise convolutions" if precision == "w8" else ""),
                "activations": "quantized to int8 by XNNPACK at every call, with that call's range",
            }
        elif precision == "fp16":
            model = XnnpackHalf(self.model, self.job.frames)
        else:
            model = xnnpack_form(self.model, self.job.frames)
        if quantization:
            self._et_quantized[precision] = model
        census = lower_executorch(model, self.example, path)
        output = run_executorch(load_executorch(path), self.clips)
        parity = self._parity(
            f"executorch {metadata.version('executorch')} runtime (XNNPACK)", output, precision, "executorch"
        )
        return {
            "census": census,
            "parity": parity,
            "quantization": quantization,
            "input": {"name": "video", "shape": [1, 3, *self._thw()], "dtype": "float32"},
        }

    def _finetuning(self):
        """(schedule, training clips) of the ExecuTorch int8 QAT, or None without --qat-epochs."""
        j = self.job
        if not j.qat_epochs:
            return None
        train_set = build_dataset(
            j.calib_data,
            "train",
            frames=j.frames,
            size=j.size,
            root=j.calib_root,
            num_clips=j.qat_clips if j.calib_data == "synthetic" else None,
            seed=j.seed,
        )
        return QATSchedule(epochs=j.qat_epochs, lr=j.qat_lr, batch_size=8, seed=j.seed, distill_weight=1.0), train_set

    def _thw(self):
        return [self.job.frames, self.job.size, self.job.size]


def run_export(job: ExportJob, progress: bool = True) -> dict:
    """Export every format x precision of `job` into `job.out` (atomically) and return the manifest.

    An artifact that misses its parity threshold is not kept; the others are written, with the
    miss listed under the manifest's `failed`, and `ExportError` (carrying the manifest) is raised
    after writing. When every artifact misses, nothing is written."""
    check_output_dir(job.out, job.force)
    exporter = _Exporter(job, progress)
    artifacts, failed = [], []
    with atomic_dir(job.out, force=job.force) as tmp:
        for fmt in job.formats:
            for precision in job.precisions:
                name = f"uniformer-{job.variant}-{job.frames}x{job.size}-{precision}{_SUFFIX[fmt]}"
                if progress:
                    print(f"exporting {name} ...", flush=True)
                started = time.time()
                path = tmp / name
                try:
                    info = getattr(exporter, fmt)(precision, path)
                except ExportError as err:
                    failed.append({"path": name, "format": fmt, "precision": precision, "reason": str(err)})
                    _remove(path)
                    continue
                missed = [
                    (key, info[key])
                    for key in ("parity", "reference_parity")
                    if isinstance(info.get(key), dict) and info[key].get("passed") is False
                ]
                if missed:
                    key, parity = missed[0]
                    figures = {k: v for k, v in parity.items() if k.startswith("vs_")}
                    failed.append(
                        {
                            "path": name,
                            "format": fmt,
                            "precision": precision,
                            key: parity,
                            "reason": f"{name} misses its {parity['runtime']} parity threshold "
                            f"({parity['threshold']}): {json.dumps(figures)}",
                        }
                    )
                    _remove(path)
                    continue
                artifacts.append(
                    {
                        "path": name,
                        "format": fmt,
                        "precision": precision,
                        "target": info.get("target"),
                        "export_seconds": round(time.time() - started, 2),
                        "size_bytes": _size(path),
                        "sha256": sha256_tree(path) if path.is_dir() else sha256_file(path),
                        **{k: v for k, v in info.items() if k != "target"},
                    }
                )
        if not artifacts:
            # no manifest is written; the error still lists what failed
            raise ExportError(
                "; ".join(f["reason"] for f in failed) + " (nothing written)",
                manifest={"artifacts": [], "failed": failed},
            )
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "variant": job.variant,
            "num_classes": exporter.num_classes,
            "labels": exporter.labels,
            "source": {
                "checkpoint": job.checkpoint,
                "checkpoint_sha256": sha256_file(job.checkpoint) if job.checkpoint else None,
                "random_weights": job.checkpoint is None,
                "seed": job.seed,
                "model_overrides": job.model_overrides,
                "quantized": job.quantized,
                "quantized_recipe": job.quant_config.get("recipe"),
            },
            "input": {
                "name": "video",
                "dtype": "float32",
                "layout": "B,3,T,H,W",
                "frames": job.frames,
                "size": job.size,
                "preprocessing": exporter.preprocessing(),
            },
            "output": {"name": "logits", "dtype": "float32", "classes": exporter.num_classes},
            "artifacts": artifacts,
            "failed": failed,
            "versions": _library_versions(),
            "platform": platform.platform(),
            "cpu": {
                "name": cpu_name(),
                "instruction_sets": list(instruction_sets()),
                "int8_dot_product": has_int8_dot_product(),
            },
        }
        text = json.dumps(manifest, indent=2) + "\n"
        (tmp / "manifest.json").write_text(text)
    manifest = json.loads(text)  # exactly what manifest.json holds (tuples become lists)
    if failed:
        raise ExportError(
            f"{len(failed)} of {len(failed) + len(artifacts)} artifacts not written: "
            + "; ".join(f["reason"] for f in failed)
            + f". The other {len(artifacts)} are in {job.out} (manifest.json lists the failures)",
            manifest=manifest,
        )
    return manifest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def verify_manifest(folder) -> dict:
    """Re-read `folder/manifest.json` and re-hash every artifact; raises ValueError naming the
    first artifact that is missing or whose SHA-256 no longer matches."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no manifest.json: is it the output of `python -m uniformer_edge.export`?"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err})") from None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("artifacts"), list)
        or not all(isinstance(a, dict) and {"path", "sha256"} <= a.keys() for a in manifest["artifacts"])
    ):
        raise InputError(f"{path} is not an export manifest (no list of artifacts with path and sha256)")
    for key in ("variant", "input", "source", "num_classes"):
        if key not in manifest:
            raise InputError(f"{path} is not an export manifest (no {key})")
    if not isinstance(manifest.get("schema", 0), int):
        raise InputError(f"{path}: schema must be an integer")
    if manifest.get("schema", 0) > MANIFEST_SCHEMA:
        raise InputError(
            f"{path} has manifest schema {manifest['schema']}, newer than this toolkit reads "
            f"({MANIFEST_SCHEMA}); upgrade uniformer-edge"
        )
    for art in manifest["artifacts"]:
        if not isinstance(art["path"], str) or Path(art["path"]).name != art["path"] or art["path"] in ("", ".", ".."):
            raise InputError(f"{path}: artifact path {art['path']!r} is not a file name inside {folder}")
        p = folder / art["path"]
        if not p.exists():
            raise InputError(f"artifact {p} listed in {path} is missing")
        digest = sha256_tree(p) if p.is_dir() else sha256_file(p)
        if digest != art["sha256"]:
            raise InputError(
                f"artifact {p} does not match its manifest (SHA-256 {digest[:12]}..., "
                f"manifest {art['sha256'][:12]}...): it was modified after export"
            )
    return manifest
