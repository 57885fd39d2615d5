"""Core ML (`.mlpackage`, ML program) export: float (fp32/fp16 compute), weight compression
(int8/int4 linear, 4/6-bit k-means palettization) and W8A8 from the PT2E graph.

Input `video` (float32 multi-array 1x3xTxHxW), output `logits` (float32); with labels also a
`probabilities` output (softmax) and the class names in the metadata (`classes`, JSON list in
output order). coremltools 9.0 cannot attach a classifier (`classLabel`) to a torch.export
program (IndexError in its proto writer), so the app maps the argmax to a name itself.
Prediction only exists on macOS; on every system the saved program is executed by the MIL
reference (`mil_reference`), and `neural_engine_census` reports its static Neural Engine
eligibility."""

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

from ..errors import ExportError, InputError
from ..engine import per_clip
from ..forms import frame_batched
from ..models import deploy
from .base import FP16_PARITY, FP32_PARITY, PT2E_PARITY, Format, Precision, Reference, Runner, Runtime, Threshold, tally
from .. import __version__

__all__ = [
    "FORMAT",
    "RUNTIME",
    "COMPUTE_UNITS",
    "fp16_safety",
    "FP16_HEADROOM",
    "convert_coreml",
    "coreml_op_census",
    "coreml_io",
    "can_predict",
    "predict_coreml",
    "TARGETS",
    "FORMS",
    "with_package_weights",
    "ANE_NATIVE_OPS",
    "neural_engine_census",
    "compute_plan",
]

TARGETS = ("ios16", "ios17", "ios18")


# Core ML program forms: "ane" is built from the frame-batched 2-D deploy form (Conv2d over
# temporal taps, no 5-D convolution: the Neural Engine cannot lower Conv3d on any device);
# "3d" keeps the model's native Conv3d.
FORMS = ("ane", "3d")

# MIL op types the Apple Neural Engine runs natively as far as public sources tell (Apple
# publishes no list): 2-D convolution incl. depthwise/grouped, matmul/linear, layer norm,
# softmax, GELU, elementwise arithmetic and data movement, int8 (de)quantization on A17 Pro / M4,
# and load-time weight decompression. Sources: ../shared/COREML_ON_LINUX.md, the ANE guide's
# "Capability surface" (ane-guide.readthedocs.io: the scatter family has no hardware path) and
# hollance/neural-engine docs/unsupported-layers.md. topk, gathers, scatters and selects (the
# light models' token pruning) are outside it.
ANE_NATIVE_OPS = frozenset(
    {
        "const",
        "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale",
        "constexpr_lut_to_dense",
        "conv",
        "linear",
        "matmul",
        "layer_norm",
        "softmax",
        "gelu",
        "add",
        "sub",
        "mul",
        "real_div",
        "maximum",
        "minimum",
        "reduce_mean",
        "reduce_sum",
        "reduce_max",
        "reshape",
        "transpose",
        "expand_dims",
        "squeeze",
        "slice_by_index",
        "split",
        "concat",
        "cast",
        "quantize",
        "dequantize",
    }
)


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


def convert_coreml(
    model,
    example: Tensor,
    precision: str,
    target: str,
    labels: Optional[Sequence[str]] = None,
    preprocessing: Optional[dict] = None,
    description: str = "",
):
    """Convert `model` (float deploy form, or for `int8` the PT2E-quantized graph module) to an
    in-memory Core ML model. Raises ValueError for precision/target combinations Core ML lacks."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    if precision not in FORMAT.thresholds:
        raise InputError(f"Core ML precision {precision!r} unknown; choose from {', '.join(FORMAT.precisions)}")
    precision = Precision(precision)
    if target not in TARGETS:
        raise InputError(f"unknown Core ML target {target!r}; choose from {', '.join(TARGETS)}")
    needed = FORMAT.min_target[precision]
    if TARGETS.index(target) < TARGETS.index(needed):
        raise InputError(f"Core ML {precision} needs --target {needed} or later (got {target})")
    example = example[:1]
    wrapped = _WithProbabilities(model) if labels else model
    program = _drop_aliases(torch.export.export(wrapped, (example,)).run_decompositions({}))
    outputs = [ct.TensorType(name="logits", dtype=np.float32)]
    if labels:
        outputs.append(ct.TensorType(name="probabilities", dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            program,
            inputs=[ct.TensorType(name="video", shape=tuple(example.shape), dtype=np.float32)],
            outputs=outputs,
            convert_to="mlprogram",
            minimum_deployment_target=_target(target),
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True,
        )
        if precision == "w8":
            mlmodel = cto.linear_quantize_weights(
                mlmodel,
                cto.OptimizationConfig(
                    cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
                ),
            )
        elif precision == "w4":
            mlmodel = cto.linear_quantize_weights(
                mlmodel,
                cto.OptimizationConfig(
                    cto.OpLinearQuantizerConfig(
                        mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32
                    )
                ),
            )
        elif precision.startswith("palettize"):
            mlmodel = cto.palettize_weights(
                mlmodel,
                cto.OptimizationConfig(cto.OpPalettizerConfig(mode="kmeans", nbits=int(precision[len("palettize") :]))),
            )
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
    blocks = _spec(path_or_model).mlProgram.functions["main"].block_specializations.values()
    return tally(op.type for block in blocks for op in block.operations)


_DTYPES = {65552: "float16", 65568: "float32", 131104: "int32"}


def coreml_io(path_or_model) -> dict:
    """Input/output names, shapes and dtypes as the package declares them."""
    spec = _spec(path_or_model)

    def describe(features):
        out = {}
        for f in features:
            kind = f.type.WhichOneof("Type")
            if kind == "multiArrayType":
                out[f.name] = {
                    "shape": list(f.type.multiArrayType.shape),
                    "dtype": _DTYPES.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType)),
                }
            else:
                out[f.name] = {"type": kind}
        return out

    return {
        "inputs": describe(spec.description.input),
        "outputs": describe(spec.description.output),
        "spec_version": spec.specificationVersion,
    }


def neural_engine_census(program) -> dict:
    """Static Neural Engine eligibility of a MIL program (`mil_reference.load_mil_program`):
    5-D convolutions, ops touching rank-5 tensors, op types outside `ANE_NATIVE_OPS`, and the
    compute precision (an fp32 program never runs on the Neural Engine). Eligibility only: which
    unit runs each op is Core ML's decision on the device (`compute_plan`)."""
    from coremltools.converters.mil.mil import types

    conv5d, rank5, outside, compute = 0, {}, {}, set()
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            continue
        tensors = [v for v in op.outputs]
        for value in op.inputs.values():
            tensors += list(value) if isinstance(value, (list, tuple)) else [value]
        ranks = [len(v.shape) for v in tensors if types.is_tensor(v.sym_type)]
        if op.op_type == "conv" and len(op.inputs["x"].shape) == 5:
            conv5d += 1
        if ranks and max(ranks) >= 5 and not op.op_type.startswith("constexpr_"):
            rank5[op.op_type] = rank5.get(op.op_type, 0) + 1
        if op.op_type not in ANE_NATIVE_OPS:
            outside[op.op_type] = outside.get(op.op_type, 0) + 1
        if op.op_type in ("conv", "linear", "matmul"):
            compute.add(types.builtin_to_string(op.outputs[0].dtype))
    precision = "fp32" if "fp32" in compute else "fp16"
    return {
        "conv_5d": conv5d,
        "ops_on_rank5_tensors": sum(rank5.values()),
        "rank5_op_types": dict(sorted(rank5.items())),
        "ops_outside_ane_list": dict(sorted(outside.items())),
        "compute_precision": precision,
        "eligible": conv5d == 0 and not outside and precision == "fp16",
        "note": "static eligibility (op types, tensor ranks, precision), not placement: Core ML decides on the "
        "device which unit runs each op",
    }


def compute_plan(path, compute_units: str = "ALL") -> dict:
    """Core ML's compute plan of a package on this Mac (macOS 14.4+, coremltools >= 8): the share
    of ops, and of the plan's estimated cost, on each compute device."""
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    reason = can_predict()
    if reason:
        raise RuntimeError(reason)
    compiled = ct.models.MLModel(
        str(path), compute_units=getattr(ct.ComputeUnit, compute_units)
    ).get_compiled_model_path()
    plan = MLComputePlan.load_from_path(path=compiled, compute_units=getattr(ct.ComputeUnit, compute_units))
    ops, cost = {}, {}
    program = plan.model_structure.program
    for function in program.functions.values():
        for operation in function.block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            if usage is None:
                continue
            device = type(usage.preferred_compute_device).__name__.replace("ML", "").replace("ComputeDevice", "")
            ops[device] = ops.get(device, 0) + 1
            estimate = plan.get_estimated_cost_for_mlprogram_operation(operation)
            cost[device] = cost.get(device, 0.0) + (estimate.weight if estimate is not None else 0.0)
    total_ops, total_cost = sum(ops.values()) or 1, sum(cost.values()) or 1.0
    return {
        "compute_units": compute_units,
        "ops": ops,
        "op_share": {k: v / total_ops for k, v in ops.items()},
        "cost_share": {k: v / total_cost for k, v in cost.items()},
    }


_COMPRESSED_SUFFIXES = ("_to_fp16_palettized", "_to_fp16_quantized")


def with_package_weights(module: nn.Module, weights: dict, wrapped: bool) -> nn.Module:
    """A copy of `module` (what was converted) holding the weights a compressed package
    decompresses at load time (`MilReference.decompressed_weights`): the PyTorch counterpart of a
    w8 / w4 / palettized package. Raises ValueError for a weight it cannot place."""
    import copy

    out = copy.deepcopy(module)
    params = dict(out.named_parameters())
    by_const = {"p_" + ("model_" if wrapped else "") + name.replace(".", "_"): name for name in params}
    if len(by_const) != len(params):
        raise ValueError("parameter names collide once dots become underscores")
    placed = 0
    for const, value in weights.items():
        base = next((const[: -len(s)] for s in _COMPRESSED_SUFFIXES if const.endswith(s)), None)
        if base not in by_const:
            raise ValueError(f"compressed weight {const} matches no parameter of the converted model")
        param = params[by_const[base]]
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"compressed weight {const} has shape {value.shape}, the parameter {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
        placed += 1
    if not placed:
        raise ValueError("the package holds no compressed weights")
    return out


def predict_coreml(path, clips: Tensor, compute_units: str = "ALL") -> Tensor:
    """Logits for `clips`, one clip per call (macOS only)."""
    import coremltools as ct

    reason = can_predict()
    if reason:
        raise RuntimeError(reason)
    model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
    return per_clip(lambda clip: _predict(model, clip))(clips)


def _predict(model, clip: Tensor) -> Tensor:
    return torch.from_numpy(np.asarray(model.predict({"video": clip.numpy().astype(np.float32)})["logits"])).float()


# A float op output within this factor of fp16's largest value (65504) is reported by name.
FP16_HEADROOM = 4.0


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


def _build(ctx, precision: Precision, path: Path) -> dict:
    """The package of `precision` at `path`, executed from disk by the MIL reference (and by
    Core ML itself on macOS) against its counterpart."""
    from .mil_reference import RUNTIME_NAME, RUNTIME_NOTE, MilReference

    job = ctx.job
    form, form_note = job.coreml_form, None
    if precision is Precision.INT8 and form == "ane" and job.quantized:
        form = "3d"
        form_note = (
            f"--quantized {job.quantized} holds a graph of the 5-D (Conv3d) form; export without "
            "--quantized (int8 is then quantized here) for the Neural Engine form"
        )
        warnings.warn(f"Core ML int8: {form_note}", stacklevel=2)
    conv3d = "2d" if form == "ane" else "native"
    if precision is Precision.INT8:
        source = ctx.program(precision, conv3d).module()
    else:
        source = frame_batched(ctx.model, job.frames) if conv3d == "2d" else deploy(ctx.model)
    mlmodel = convert_coreml(
        source,
        ctx.example,
        precision,
        job.target,
        ctx.labels,
        ctx.preprocessing(),
        f"UniFormer-{job.variant.upper()} {job.frames}x{job.size}, {precision}, {form} form",
    )
    save_mlpackage(mlmodel, path)
    census, io = coreml_op_census(path), coreml_io(path)
    if io["inputs"].get("video", {}).get("shape") != [1, 3, *ctx.thw()] or "logits" not in io["outputs"]:
        raise ExportError(f"{path.name}: unexpected inputs/outputs {io}")
    if precision is Precision.INT8 and not census.get("quantize"):
        raise ExportError(f"{path.name}: no activation quantize ops in the converted program")
    reference = MilReference(path)  # read back from disk: what the package holds, not the in-memory model
    threshold = FORMAT.thresholds[precision]

    def counterpart() -> Tensor:
        """The PyTorch module a quantized or weight-compressed package must match, on the check clips."""
        if precision is Precision.INT8:
            return ctx.program(precision, conv3d).module()(ctx.clips)
        return with_package_weights(source, reference.decompressed_weights(), wrapped=bool(ctx.labels))(ctx.clips)

    output = torch.from_numpy(reference.run_batch(ctx.clips.numpy(), "video", "logits", track=precision != "fp32"))
    reference_parity = ctx.parity(RUNTIME_NAME, output, threshold, counterpart, what=RUNTIME_NOTE)
    reason = can_predict()
    if reason:
        parity = {"runtime": "Core ML", "not run": reason}
    else:
        parity = ctx.parity(
            "coremltools (macOS, compute units ALL)", predict_coreml(path, ctx.clips), threshold, counterpart
        )
    info = {
        "census": census,
        "io": io,
        "form": form,
        "parity": parity,
        "reference_parity": reference_parity,
        "neural_engine": neural_engine_census(reference.program),
        "target": job.target,
        "input": ctx.input_spec(1),
    }
    if form_note:
        info["form_note"] = form_note
    if precision is not Precision.FP32:
        info["fp16_safety"] = fp16_safety(reference, path.name)
    return info


# fp16 programs store fp16 between ops and keep the bound of every fp16 export. W8A8 compares with
# the PT2E graph in PyTorch by cosine only (a rounding tie in one int8 value can cascade).
# Weight-compressed packages compare, like the ONNX weight-only exports, with their PyTorch
# counterpart: the converted model holding the weights the package decompresses.
FORMAT = Format(
    name="coreml",
    suffix=".mlpackage",
    runtime="coreml",
    thresholds={
        Precision.FP32: FP32_PARITY,
        Precision.FP16: FP16_PARITY,
        Precision.INT8: PT2E_PARITY,
        **{
            p: Threshold(Reference.PACKAGE_WEIGHTS, min_cosine=0.999)
            for p in (Precision.W8, Precision.W4, Precision.PALETTIZE4, Precision.PALETTIZE6)
        },
    },
    build=_build,
    census=coreml_op_census,
    # Core ML op availability: activation quantize/dequantize need iOS 17, per-block int4 weights iOS 18.
    min_target={
        **{
            p: "ios16"
            for p in (Precision.FP32, Precision.FP16, Precision.W8, Precision.PALETTIZE4, Precision.PALETTIZE6)
        },
        Precision.INT8: "ios17",
        Precision.W4: "ios18",
    },
)

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def _coreml_available() -> Optional[str]:
    try:
        import coremltools  # noqa: F401
    except ImportError as err:
        return f"coremltools is not installed ({err}); pip install 'uniformer-edge[coreml]'"
    return can_predict()


def _plan_or_reason(path, units: str) -> dict:
    """Core ML's compute plan (ops and estimated cost per compute device), or why there is none."""
    try:
        return compute_plan(path, units)
    except Exception as err:  # MLComputePlan needs macOS 14.4+ and coremltools >= 8
        return {"not available": f"{type(err).__name__}: {err}"}


def _coreml_runner(path, units: str, threads: int, source: dict) -> Runner:
    import coremltools as ct

    model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units))
    return Runner(
        "coreml",
        units,
        per_clip(lambda clip: _predict(model, clip)),
        fixed_batch=1,
        extra={"compute_plan": _plan_or_reason(path, units)},
    )


RUNTIME = Runtime(
    name="coreml", format="coreml", settings=COMPUTE_UNITS, available=_coreml_available, load=_coreml_runner
)
