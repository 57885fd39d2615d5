"""The MIL reference executor: every op it implements cross-checked against coremltools' own
value inference (or PyTorch for conv), whole saved packages of both model families in every
precision, and planted faults in loaded programs that the parity check must catch."""

from __future__ import annotations

import platform
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, TINY_LIGHT, randomize_batchnorm

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from uniformer_edge.export import ExportJob, run_export  # noqa: E402
from uniformer_edge.export.coreml import convert_coreml, neural_engine_census, save_mlpackage  # noqa: E402
from uniformer_edge.export.mil_reference import (  # noqa: E402
    _OPS,
    IMPLEMENTED_OPS,
    MilReference,
    UnsupportedOp,
    _dtype_name,
    _round,
)
from uniformer_edge.export.base import Precision, Reference, judge  # noqa: E402
from uniformer_edge.export.coreml import FORMAT as COREML  # noqa: E402


def coreml_reference_parity(output, float_logits, precision, counterpart=None, prunes_tokens=False):
    """The verdict the export gives a Core ML package's MIL-reference output."""
    threshold = COREML.thresholds[Precision(precision)]
    return judge("MIL reference (numpy)", output, float_logits, threshold, counterpart, prunes_tokens)


from uniformer_edge.forms import frame_batched  # noqa: E402
from uniformer_edge.models import create_model, deploy  # noqa: E402

SMALL = {k: v for k, v in TINY.items() if k != "num_classes"}
LIGHT = {k: v for k, v in TINY_LIGHT.items() if k != "num_classes"}
RNG = np.random.default_rng(0)


def _r(*shape, dtype=np.float32, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def _build(make, opset=None):
    """The op `make()` creates, inside a throwaway program; its inputs are all constants, so
    coremltools' value inference has already computed its outputs' `.val`."""
    holder = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=opset or ct.target.iOS18)
    def prog(dummy):
        out = make()
        holder["op"] = (out[0] if isinstance(out, (list, tuple)) else out).op
        return dummy

    return holder["op"]


def _run_ours(op):
    def get(name):
        var = op.inputs.get(name)
        if var is None:
            return None
        if isinstance(var, (list, tuple)):
            return [v.val for v in var]
        return var.val

    return [_round(value, _dtype_name(var)) for value, var in zip(_OPS[op.op_type](op, get), op.outputs)]


def _theirs(op):
    vals = [v.val for v in op.outputs]
    if any(v is None for v in vals):
        vals = op.materialized_val_inference() if hasattr(op, "materialized_val_inference") else None
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
    return vals


# (id, builder) for ops that coremltools computes itself: value_inference or materialized_val_inference
_CASES = [
    ("linear", lambda: mb.linear(x=_r(2, 5, 8), weight=_r(6, 8), bias=_r(6))),
    ("matmul", lambda: mb.matmul(x=_r(2, 3, 4, 5), y=_r(2, 3, 6, 5), transpose_y=True)),
    ("matmul_tx", lambda: mb.matmul(x=_r(3, 5, 4), y=_r(3, 5, 2), transpose_x=True)),
    ("layer_norm", lambda: mb.layer_norm(x=_r(2, 7, 16), axes=[-1], gamma=_r(16), beta=_r(16), epsilon=1e-5)),
    (
        "layer_norm_fp16",
        lambda: mb.layer_norm(
            x=_r(2, 7, 16, dtype=np.float16),
            axes=[-1],
            gamma=_r(16, dtype=np.float16),
            beta=_r(16, dtype=np.float16),
            epsilon=np.float16(1e-5),
        ),
    ),
    ("softmax", lambda: mb.softmax(x=_r(2, 4, 9, scale=4), axis=-1)),
    ("gelu", lambda: mb.gelu(x=_r(3, 50, scale=3), mode="EXACT")),
    ("gelu_tanh", lambda: mb.gelu(x=_r(3, 50, scale=3), mode="TANH_APPROXIMATION")),
    ("add", lambda: mb.add(x=_r(2, 3, 4), y=_r(3, 1))),
    ("sub", lambda: mb.sub(x=_r(2, 3, 4), y=_r(4))),
    ("mul_fp16", lambda: mb.mul(x=_r(2, 3, 4, dtype=np.float16), y=_r(1, 3, 1, dtype=np.float16))),
    ("real_div", lambda: mb.real_div(x=_r(2, 3), y=np.abs(_r(2, 3)) + 0.5)),
    ("greater_equal", lambda: mb.greater_equal(x=_r(4, 5), y=_r(5))),
    ("reduce_mean", lambda: mb.reduce_mean(x=_r(2, 3, 4), axes=[1], keep_dims=True)),
    ("reduce_sum", lambda: mb.reduce_sum(x=_r(2, 3, 4), axes=[0, 2], keep_dims=False)),
    ("reduce_max", lambda: mb.reduce_max(x=_r(2, 3, 4), axes=[-1], keep_dims=False)),
    ("reshape", lambda: mb.reshape(x=_r(2, 3, 4), shape=[4, -1])),
    ("transpose", lambda: mb.transpose(x=_r(2, 3, 4, 5), perm=[0, 2, 3, 1])),
    ("expand_dims", lambda: mb.expand_dims(x=_r(2, 3), axes=[0, -1])),
    ("squeeze", lambda: mb.squeeze(x=_r(2, 1, 3, 1), axes=[1])),
    (
        "slice_by_index",
        lambda: mb.slice_by_index(
            x=_r(4, 6, 8),
            begin=[1, 0, 2],
            end=[3, 6, 8],
            stride=[1, 2, 3],
            begin_mask=[False, True, False],
            end_mask=[False, False, True],
        ),
    ),
    (
        "slice_squeeze",
        lambda: mb.slice_by_index(
            x=_r(3, 1, 4, 5), begin=[1, 0, 0, 0], end=[2, 1, 4, 5], squeeze_mask=[True, False, False, False]
        ),
    ),
    ("split", lambda: mb.split(x=_r(4, 6), num_splits=3, axis=1)),
    ("split_sizes", lambda: mb.split(x=_r(5, 6), split_sizes=[2, 3], axis=0)),
    ("concat", lambda: mb.concat(values=[_r(2, 3), _r(2, 5)], axis=1)),
    ("cast_fp16", lambda: mb.cast(x=_r(3, 4, scale=100), dtype="fp16")),
    ("cast_int32", lambda: mb.cast(x=_r(3, 4, scale=10), dtype="int32")),
    ("select", lambda: mb.select(cond=_r(3, 4) > 0, a=_r(3, 4), b=_r(3, 4))),
    ("gather", lambda: mb.gather(x=_r(4, 6, 3), indices=np.array([5, 0, 2], np.int32), axis=1)),
    (
        "gather_along_axis",
        lambda: mb.gather_along_axis(x=_r(3, 5), indices=RNG.integers(0, 5, (3, 4)).astype(np.int32), axis=1),
    ),
    (
        "scatter_along_axis",
        lambda: mb.scatter_along_axis(
            data=np.zeros(6, np.int32),
            indices=RNG.permutation(6).astype(np.int32),
            updates=np.arange(6, dtype=np.int32),
            axis=0,
            mode="update",
        ),
    ),
    ("topk", lambda: mb.topk(x=_r(3, 10), k=4, axis=1, ascending=False)),
    (
        "quantize",
        lambda: mb.quantize(
            input=_r(2, 3, 4, scale=3), scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8"
        ),
    ),
    (
        "quantize_axis",
        lambda: mb.quantize(
            input=_r(2, 3, 4, scale=3),
            scale=np.array([0.02, 0.05, 0.1], np.float32),
            zero_point=np.array([0, 1, -2], np.int8),
            axis=1,
            output_dtype="int8",
        ),
    ),
    (
        "dequantize",
        lambda: mb.dequantize(
            input=RNG.integers(-128, 128, (2, 3, 4)).astype(np.int8),
            scale=np.array([0.02, 0.05, 0.1], np.float32),
            zero_point=np.array([0, 1, -2], np.int8),
            axis=1,
        ),
    ),
    (
        "blockwise_shift_scale",
        lambda: mb.constexpr_blockwise_shift_scale(
            data=RNG.integers(-128, 128, (8, 64)).astype(np.int8),
            scale=np.abs(_r(8, 2, dtype=np.float16)),
            offset=RNG.integers(-3, 3, (8, 2)).astype(np.int8),
        ),
    ),
    (
        "blockwise_int4",
        lambda: mb.constexpr_blockwise_shift_scale(
            data=RNG.integers(-8, 8, (4, 64)).astype(types.np_int4_dtype), scale=np.abs(_r(4, 2, dtype=np.float16))
        ),
    ),
    (
        "lut_to_dense",
        lambda: mb.constexpr_lut_to_dense(
            indices=RNG.integers(0, 16, (8, 4, 3, 3)).astype(types.np_uint4_dtype),
            lut=_r(2, 1, 1, 1, 16, 1, dtype=np.float16),
        ),
    ),
    # the iOS16/17 forms, which packages targeting ios16/ios17 hold
    (
        "affine_dequantize_ios17",
        lambda: mb.constexpr_affine_dequantize(
            quantized_data=RNG.integers(-128, 128, (4, 6, 3)).astype(np.int8),
            zero_point=RNG.integers(-3, 3, 4).astype(np.int8),
            scale=np.abs(_r(4)) + 0.01,
            axis=0,
        ),
        "ios17",
    ),
    (
        "lut_to_dense_ios17",
        lambda: mb.constexpr_lut_to_dense(
            lut=_r(64, dtype=np.float16),
            indices=RNG.integers(0, 256, 30).astype(np.uint8),
            shape=np.array([8, 5], np.uint32),
        ),
        "ios17",
    ),
]
_OPSETS = {"ios17": ct.target.iOS17}


@pytest.mark.parametrize("case", _CASES, ids=[c[0] for c in _CASES])
def test_op_matches_coremltools(case):
    op = _build(case[1], _OPSETS.get(case[2]) if len(case) > 2 else None)
    theirs = _theirs(op)
    assert all(v is not None for v in theirs), f"coremltools computed no value for {op.op_type}"
    ours = _run_ours(op)
    assert len(ours) == len(theirs)
    for mine, ref, var in zip(ours, theirs, op.outputs):
        ref = np.asarray(ref)
        assert mine.shape == ref.shape, op.op_type
        assert mine.dtype == _round(ref, _dtype_name(var)).dtype
        if ref.dtype.kind == "f":
            tol = 2e-3 if mine.dtype == np.float16 else 2e-6
            np.testing.assert_allclose(mine.astype(np.float64), ref.astype(np.float64), rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(mine, ref)


def test_every_implemented_op_is_cross_checked():
    covered = {_build(c[1], _OPSETS.get(c[2]) if len(c) > 2 else None).op_type for c in _CASES} | {"conv", "const"}
    # maximum/minimum/comparisons are one numpy call each and appear in no package of ours
    unchecked = IMPLEMENTED_OPS - covered - {"maximum", "minimum", "greater", "less", "less_equal", "equal"}
    assert not unchecked, f"ops without a cross-check: {sorted(unchecked)}"


_CONVS = [  # (input shape, weight shape, groups, strides, pad (before/after per dim), dilations)
    ((1, 6, 9, 11), (4, 6, 3, 3), 1, (1, 2), (1, 1, 0, 2), (1, 1)),
    ((2, 8, 10, 10), (8, 1, 5, 5), 8, (1, 1), (2, 2, 2, 2), (1, 1)),  # depthwise
    ((1, 8, 7, 9), (6, 4, 3, 1), 2, (2, 1), (0, 1, 1, 0), (1, 1)),  # grouped
    ((1, 4, 9, 9), (3, 4, 3, 3), 1, (1, 1), (2, 2, 2, 2), (2, 2)),  # dilated
    ((1, 3, 6, 12, 12), (5, 3, 3, 4, 4), 1, (2, 4, 4), (1, 1, 0, 0, 0, 0), (1, 1, 1)),  # 3-D stem-like
    ((1, 6, 4, 8, 8), (6, 1, 5, 5, 5), 6, (1, 1, 1), (2, 2, 2, 2, 2, 2), (1, 1, 1)),  # depthwise 5x5x5
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", _CONVS, ids=[f"{len(c[0]) - 2}d-g{c[2]}-{i}" for i, c in enumerate(_CONVS)])
def test_conv_matches_pytorch(case, dtype):
    shape, wshape, groups, strides, pad, dilations = case
    x, w, b = _r(*shape, dtype=dtype), _r(*wshape, dtype=dtype, scale=0.3), _r(wshape[0], dtype=dtype)
    op = _build(
        lambda: mb.conv(
            x=x,
            weight=w,
            bias=b,
            strides=list(strides),
            pad_type="custom",
            pad=list(pad),
            dilations=list(dilations),
            groups=groups,
        )
    )
    ours = _run_ours(op)[0]
    n = len(shape) - 2
    torch_pad = []
    for i in reversed(range(n)):  # F.pad lists the last dimension first
        torch_pad += [pad[2 * i], pad[2 * i + 1]]
    conv = F.conv2d if n == 2 else F.conv3d
    ref = conv(
        F.pad(torch.from_numpy(x.astype(np.float32)), torch_pad),
        torch.from_numpy(w.astype(np.float32)),
        torch.from_numpy(b.astype(np.float32)),
        stride=strides,
        dilation=dilations,
        groups=groups,
    ).numpy()
    assert ours.dtype == dtype and ours.shape == ref.shape
    tol = 2e-2 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(ours.astype(np.float32), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("pad_type", ["valid", "same"])
def test_conv_pad_types_match_pytorch(pad_type):
    x, w = _r(1, 3, 10, 7), _r(4, 3, 3, 3)
    op = _build(lambda: mb.conv(x=x, weight=w, pad_type=pad_type))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=pad_type).numpy()
    np.testing.assert_allclose(_run_ours(op)[0], ref, rtol=1e-5, atol=1e-5)


def _save(model, tmp_path, precision, name="m", frames=8, size=64, target="ios18"):
    example = torch.randn(1, 3, frames, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_mlpackage(
            convert_coreml(model, example, precision, target), tmp_path / f"{name}.mlpackage"
        ), example


def test_unimplemented_op_is_named(tmp_path):
    class Sine(torch.nn.Module):
        def forward(self, video):
            return torch.sin(video).mean(dim=(2, 3, 4))

    path, _ = _save(Sine(), tmp_path, "fp32", size=8, frames=2)
    with pytest.raises(UnsupportedOp, match="sin"):
        MilReference(path)


@pytest.fixture(scope="module")
def tiny_s_package(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("s", **TINY).eval())
    folder = tmp_path_factory.mktemp("tiny_s")
    deployed = deploy(model)
    path, example = _save(deployed, folder, "fp32")
    clips = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        float_logits = model(clips)
    return path, clips, float_logits


def _reference_logits(ref: MilReference, clips: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(ref.run_batch(clips.numpy()))


def test_saved_package_matches_pytorch(tiny_s_package):
    path, clips, float_logits = tiny_s_package
    out = _reference_logits(MilReference(path), clips)
    verdict = coreml_reference_parity(out, float_logits, "fp32")
    assert verdict["passed"] and verdict["vs_float"]["max_rel_err"] < 1e-5


def _const_input(ref: MilReference, op_type: str, name: str, which: int = 0) -> str:
    ops = [op for op in ref.ops if op.op_type == op_type]
    return ops[which].inputs[name].name


def test_planted_conv_pad_is_caught(tiny_s_package):
    path, clips, float_logits = tiny_s_package
    ref = MilReference(path)
    # the first depthwise position embedding: one pixel of padding moved from the left to the right
    dw = next(op for op in ref.ops if op.op_type == "conv" and int(op.inputs["groups"].val) > 1)
    pad = np.array(dw.inputs["pad"].val).copy()
    assert pad[-2] > 0
    pad[-2] -= 1
    pad[-1] += 1
    ref.constants[dw.inputs["pad"].name] = pad
    verdict = coreml_reference_parity(_reference_logits(ref, clips), float_logits, "fp32")
    assert not verdict["passed"], verdict


def test_planted_layer_norm_epsilon_is_caught(tiny_s_package):
    path, clips, float_logits = tiny_s_package
    ref = MilReference(path)
    ref.constants[_const_input(ref, "layer_norm", "epsilon")] = np.float32(1e-1)
    verdict = coreml_reference_parity(_reference_logits(ref, clips), float_logits, "fp32")
    assert not verdict["passed"], verdict


@pytest.mark.parametrize("variant,overrides", [("s", TINY), ("xxs", TINY_LIGHT)])
def test_planted_quantization_scale_is_caught(variant, overrides, tmp_path):
    """On both families: the light model's verdict (with its token-pruning accuracy rule) too."""
    from uniformer_edge.models import prunes_tokens
    from uniformer_edge.quantize import QuantConfig, quantize_ptq

    torch.manual_seed(1)
    model = randomize_batchnorm(create_model(variant, **overrides).eval())
    clips = torch.randn(2, 3, 8, 32, 32)
    program, _ = quantize_ptq(
        model,
        [(torch.randn(2, 3, 8, 32, 32), None)],
        QuantConfig(recipe="w8a8"),
        clips[:1],
        conv3d="2d",
        progress=False,
    )
    graph = program.module()
    path, _ = _save(graph, tmp_path, "int8", size=32)
    with torch.no_grad():
        float_logits, quantized_logits = model(clips), graph(clips)
    ref = MilReference(path)
    pruning = prunes_tokens(model)
    assert pruning == (variant == "xxs")
    good = coreml_reference_parity(
        _reference_logits(ref, clips), float_logits, "int8", lambda: quantized_logits, pruning
    )
    assert good["passed"], good
    # the input's quantization scale 4x too small (the clip saturates int8); a cosine bound cannot
    # see small scale errors (one op's scale 1.3x off passes on most ops)
    quantize = next(op for op in ref.ops if op.op_type == "quantize")
    ref.constants[quantize.inputs["scale"].name] = np.asarray(quantize.inputs["scale"].val) * 0.25
    bad = coreml_reference_parity(
        _reference_logits(ref, clips), float_logits, "int8", lambda: quantized_logits, pruning
    )
    assert not bad["passed"], bad
    if pruning:  # judged by the accuracy rule too, and missed it
        assert not bad["token_pruning_rule"]["passed"], bad


def test_fp16_overflow_is_named(tmp_path):
    class Loud(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)
            with torch.no_grad():
                self.proj.weight.fill_(8000.0)

        def forward(self, video):
            return self.proj(video.mean(dim=(2, 3, 4)))

    from uniformer_edge.export.coreml import fp16_safety

    path, _ = _save(Loud(), tmp_path, "fp16", frames=2, size=8)
    ref = MilReference(path)
    ref.run_batch(np.ones((1, 3, 2, 8, 8), np.float32), track=True)
    with pytest.warns(UserWarning, match="linear op .* within 4x of fp16"):
        report = fp16_safety(ref, path.name)
    assert report["largest_op_type"] == "linear" and report["largest_magnitude"] == pytest.approx(24000, rel=1e-2)
    assert report["near_overflow"] and report["headroom"] < 4


@pytest.mark.slow  # minutes: run by .ci/run after the default set
@pytest.mark.parametrize("variant,overrides", [("s", SMALL), ("xxs", LIGHT)], ids=["S", "light"])
def test_every_precision_of_the_ane_form_passes_the_reference(tmp_path, variant, overrides):
    precisions = ("fp32", "fp16", "int8", "w8", "w4", "palettize4", "palettize6")
    manifest = run_export(
        ExportJob(
            variant=variant,
            model_overrides=overrides,
            formats=("coreml",),
            precisions=precisions,
            frames=8,
            size=64,
            target="ios18",
            check_clips=2,
            num_calib=4,
            num_classes=10,
            out=str(tmp_path / "out"),
        )
    )
    assert not manifest["failed"]
    by_precision = {a["precision"]: a for a in manifest["artifacts"]}
    assert set(by_precision) == set(precisions)
    for precision, art in by_precision.items():
        ref = art["reference_parity"]
        assert ref["runtime"] == "MIL reference (numpy)" and ref["passed"], (precision, ref)
        assert "not run" in art["parity"] or art["parity"]["passed"]
        assert art["form"] == "ane" and art["neural_engine"]["conv_5d"] == 0
        assert art["neural_engine"]["compute_precision"] == ("fp32" if precision == "fp32" else "fp16")
        if precision != "fp32":
            assert 0 < art["fp16_safety"]["largest_magnitude"] < 65504
    assert by_precision["int8"]["reference_parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999
    census = {p: a["census"] for p, a in by_precision.items()}
    assert census["int8"]["quantize"] > 0 and census["int8"]["dequantize"] > 0
    assert census["w8"].get("constexpr_blockwise_shift_scale", 0) > 0  # iOS18 programs: blockwise int8 too
    assert census["w4"].get("constexpr_blockwise_shift_scale", 0) > 0
    assert census["palettize4"]["constexpr_lut_to_dense"] > 0 and census["palettize6"]["constexpr_lut_to_dense"] > 0
    sizes = {p: a["size_bytes"] for p, a in by_precision.items()}
    assert sizes["palettize4"] < sizes["palettize6"] < sizes["w8"] < sizes["fp16"] < sizes["fp32"]
    for precision in ("w8", "w4", "palettize4", "palettize6"):
        assert by_precision[precision]["reference_parity"]["vs_package_weights"]["cosine"] >= 0.999
    # token pruning (topk, gathers, scatters) is outside the Neural Engine list
    outside = by_precision["fp16"]["neural_engine"]["ops_outside_ane_list"]
    assert ("topk" in outside) == (variant == "xxs")


@pytest.mark.slow  # a minute: run by .ci/run after the default set
def test_compressed_packages_at_the_default_target(tmp_path):
    """ios17, the default target, stores compressed weights with the older decompression ops."""
    manifest = run_export(
        ExportJob(
            variant="s",
            model_overrides=SMALL,
            formats=("coreml",),
            precisions=("int8", "w8", "palettize6"),
            frames=8,
            size=32,
            check_clips=2,
            num_calib=4,
            num_classes=10,
            out=str(tmp_path / "out"),
        ),
        progress=False,
    )
    assert not manifest["failed"]
    for art in manifest["artifacts"]:
        assert art["target"] == "ios17" and art["reference_parity"]["passed"], art["reference_parity"]
    census = {a["precision"]: a["census"] for a in manifest["artifacts"]}
    assert census["w8"]["constexpr_affine_dequantize"] > 0 and census["palettize6"]["constexpr_lut_to_dense"] > 0


@pytest.mark.slow
def test_3d_form_keeps_conv3d_and_passes_the_reference(tmp_path):
    manifest = run_export(
        ExportJob(
            variant="xxs",
            model_overrides=LIGHT,
            formats=("coreml",),
            precisions=("fp32", "fp16", "int8"),
            frames=8,
            size=64,
            target="ios18",
            check_clips=2,
            num_calib=4,
            num_classes=10,
            coreml_form="3d",
            out=str(tmp_path / "out"),
        )
    )
    for art in manifest["artifacts"]:
        assert art["form"] == "3d" and art["reference_parity"]["passed"]
        assert art["neural_engine"]["conv_5d"] > 0 and not art["neural_engine"]["eligible"]


def test_census_counts_five_dimensional_convs(tmp_path):
    torch.manual_seed(0)
    model = create_model("s", **TINY).eval()
    native, _ = _save(deploy(model), tmp_path, "fp16", name="native", size=32)
    ane, _ = _save(frame_batched(model, 8), tmp_path, "fp16", name="ane", size=32)
    native_census = neural_engine_census(MilReference(native).program)
    ane_census = neural_engine_census(MilReference(ane).program)
    assert native_census["conv_5d"] == sum(isinstance(m, torch.nn.Conv3d) for m in deploy(model).modules())
    assert ane_census["conv_5d"] == 0 and ane_census["compute_precision"] == "fp16"
    assert ane_census["ops_on_rank5_tensors"] < native_census["ops_on_rank5_tensors"]


def test_core_ml_thresholds_name_the_right_counterpart():
    """W8A8 packages answer to the PT2E graph, weight-compressed ones to their own decompressed
    weights, and every precision has a deployment target."""
    against = {p: t.against for p, t in COREML.thresholds.items()}
    assert against[Precision.INT8] is Reference.PT2E_GRAPH
    assert {against[p] for p in ("w8", "w4", "palettize4", "palettize6")} == {Reference.PACKAGE_WEIGHTS}
    assert against[Precision.FP16] is Reference.FLOAT and COREML.thresholds[Precision.FP16].same_top1
    assert set(COREML.min_target) == set(COREML.thresholds)


@pytest.mark.skipif(
    platform.system() != "Darwin", reason=f"Core ML's compute plan needs macOS 14.4+ (this is {platform.system()})"
)
def test_compute_plan_shares_on_macos(tiny_s_package):
    from uniformer_edge.export.coreml import compute_plan

    path = tiny_s_package[0]
    for units in ("CPU_ONLY", "ALL"):
        plan = compute_plan(path, units)
        assert sum(plan["ops"].values()) > 0 and abs(sum(plan["op_share"].values()) - 1) < 1e-6
    assert set(compute_plan(path, "CPU_ONLY")["ops"]) == {"CPU"}


def test_compute_plan_elsewhere_says_why(tiny_s_package):
    from uniformer_edge.export.coreml import can_predict, compute_plan

    if can_predict() is None:
        pytest.skip("this is macOS: the compute plan exists")
    with pytest.raises(RuntimeError, match="needs macOS"):
        compute_plan(tiny_s_package[0])
