"""Core ML (`.mlpackage`, ML program) export: float (fp32/fp16 compute), weight compression
(int8/int4 linear, 4/6-bit k-means palettization) and W8A8 from the PT2E graph.

Input `video` (float32 multi-array 1x3xTxHxW), output `logits` (float32); with labels also a
`probabilities` output (softmax) and the class names in the metadata (`classes`, JSON list in
output order). coremltools 9.0 cannot attach a classifier (`classLabel`) to a torch.export
program (IndexError in its proto writer), so the app maps the argmax to a name itself. Prediction only exists on macOS: on
other systems packages are inspected (`skip_model_load=True`), never called validated."""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import ExportedProgram

from .. import __version__

__all__ = ["COREML_PRECISIONS", "MIN_TARGET", "convert_coreml", "coreml_op_census", "coreml_io", "can_predict",
           "predict_coreml", "TARGETS"]

TARGETS = ("ios16", "ios17", "ios18")
COREML_PRECISIONS = ("fp32", "fp16", "w8", "w4", "palettize4", "palettize6", "int8")
# The oldest deployment target each precision needs (Core ML op availability).
MIN_TARGET = {"fp32": "ios16", "fp16": "ios16", "w8": "ios16", "palettize4": "ios16", "palettize6": "ios16",
              "int8": "ios17",  # activation quantize/dequantize ops
              "w4": "ios18"}    # per-block int4 weights


def can_predict() -> Optional[str]:
    """None when Core ML predictions can run here, else the reason they cannot."""
    if platform.system() != "Darwin":
        return f"Core ML prediction needs macOS (this is {platform.system()})"
    return None


class _WithProbabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: Tensor):
        logits = self.model(video)
        return logits, logits.softmax(dim=-1)


def _drop_aliases(program: ExportedProgram) -> ExportedProgram:
    """coremltools has no converter for aten.alias (a no-op view that decompositions leave)."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def _target(name: str):
    import coremltools as ct

    return {"ios16": ct.target.iOS16, "ios17": ct.target.iOS17, "ios18": ct.target.iOS18}[name]


def convert_coreml(model, example: Tensor, precision: str, target: str, labels: Optional[Sequence[str]] = None,
                   preprocessing: Optional[dict] = None, description: str = ""):
    """Convert `model` (float deploy form, or for `int8` the PT2E-quantized graph module) to an
    in-memory Core ML model. Raises ValueError for precision/target combinations Core ML lacks."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    if precision not in COREML_PRECISIONS:
        raise ValueError(f"Core ML precision {precision!r} unknown; choose from {', '.join(COREML_PRECISIONS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown Core ML target {target!r}; choose from {', '.join(TARGETS)}")
    needed = MIN_TARGET[precision]
    if TARGETS.index(target) < TARGETS.index(needed):
        raise ValueError(f"Core ML {precision} needs --target {needed} or later (got {target})")
    example = example[:1]
    wrapped = _WithProbabilities(model) if labels else model
    program = _drop_aliases(torch.export.export(wrapped, (example,)).run_decompositions({}))
    outputs = [ct.TensorType(name="logits", dtype=np.float32)]
    if labels:
        outputs.append(ct.TensorType(name="probabilities", dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            program, inputs=[ct.TensorType(name="video", shape=tuple(example.shape), dtype=np.float32)],
            outputs=outputs, convert_to="mlprogram", minimum_deployment_target=_target(target),
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True)
        if precision == "w8":
            mlmodel = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel")))
        elif precision == "w4":
            mlmodel = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32)))
        elif precision.startswith("palettize"):
            mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(cto.OpPalettizerConfig(
                mode="kmeans", nbits=int(precision[len("palettize"):]))))
    mlmodel.author = "uniformer-edge"
    mlmodel.license = "Model weights: see the source checkpoint's licence; code: Apache-2.0"
    mlmodel.version = __version__
    mlmodel.short_description = description or "UniFormer video classifier"
    mlmodel.user_defined_metadata["preprocessing"] = json.dumps(preprocessing or {})
    mlmodel.user_defined_metadata["precision"] = precision
    if labels:
        mlmodel.user_defined_metadata["classes"] = json.dumps(list(labels))
        mlmodel.output_description["probabilities"] = "softmax of the logits, in the order of `classes`"
    mlmodel.input_description["video"] = "clip, float32 (1, 3, T, H, W), RGB, normalised per `preprocessing`"
    mlmodel.output_description["logits"] = "class scores before softmax"
    return mlmodel


def save_mlpackage(mlmodel, path) -> Path:
    """Save atomically: the package is a directory, written under a temporary name first."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        mlmodel.save(str(tmp / path.name))
        if path.exists():
            shutil.rmtree(path)
        (tmp / path.name).rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _spec(path_or_model):
    import coremltools as ct

    if isinstance(path_or_model, (str, Path)):
        return ct.models.MLModel(str(path_or_model), skip_model_load=True).get_spec()
    return path_or_model.get_spec()


def coreml_op_census(path_or_model) -> dict[str, int]:
    """MIL op counts of the main function (conv, linear, quantize/dequantize, constexpr_* decompression)."""
    counts: dict[str, int] = {}
    for block in _spec(path_or_model).mlProgram.functions["main"].block_specializations.values():
        for op in block.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items()))


_DTYPES = {65552: "float16", 65568: "float32", 131104: "int32"}


def coreml_io(path_or_model) -> dict:
    """Input/output names, shapes and dtypes as the package declares them."""
    spec = _spec(path_or_model)

    def describe(features):
        out = {}
        for f in features:
            kind = f.type.WhichOneof("Type")
            if kind == "multiArrayType":
                out[f.name] = {"shape": list(f.type.multiArrayType.shape),
                               "dtype": _DTYPES.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType))}
            else:
                out[f.name] = {"type": kind}
        return out

    return {"inputs": describe(spec.description.input), "outputs": describe(spec.description.output),
            "spec_version": spec.specificationVersion}


def predict_coreml(path, clips: Tensor, compute_units: str = "ALL") -> Tensor:
    """Logits for `clips`, one clip per call (macOS only)."""
    import coremltools as ct

    reason = can_predict()
    if reason:
        raise RuntimeError(reason)
    model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
    outs = [model.predict({"video": clip[None].numpy().astype(np.float32)})["logits"] for clip in clips]
    return torch.from_numpy(np.concatenate(outs, axis=0)).float()
