"""Export: every format and precision on tiny configs, parity executed by ONNX Runtime and
ExecuTorch, Core ML spec inspection, manifest hashes, and the refusals."""

from __future__ import annotations

import importlib.util
import json
import operator
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_LIGHT
from uniformer_edge._cpu import is_x86
from uniformer_edge.export import ExportJob, run_export, verify_manifest
from uniformer_edge.export.onnx import entropy_histograms, export_onnx, kl_threshold, ort_session, run_onnx

LIGHT = {k: v for k, v in TINY_LIGHT.items() if k != "num_classes"}
PLAIN = {k: v for k, v in TINY.items() if k != "num_classes"}
INPUT = dict(frames=8, size=32, num_classes=10, num_calib=8, check_clips=3)


@pytest.fixture(scope="module")
def light_float(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "float"
    labels = out.parent / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    manifest = run_export(
        ExportJob(
            variant="xxs",
            model_overrides=LIGHT,
            formats=("onnx", "coreml"),
            precisions=("fp32", "fp16"),
            labels=str(labels),
            out=str(out),
            **INPUT,
        ),
        progress=False,
    )
    return out, manifest


def _by(manifest, fmt, precision):
    return next(a for a in manifest["artifacts"] if a["format"] == fmt and a["precision"] == precision)


def test_float_exports_meet_parity_and_manifest_verifies(light_float):
    out, manifest = light_float
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert verify_manifest(out)["variant"] == "xxs"
    onnx32 = _by(manifest, "onnx", "fp32")
    assert onnx32["parity"]["passed"] and onnx32["parity"]["vs_float"]["max_rel_err"] <= 1e-4
    assert onnx32["parity"]["runtime"].startswith("onnxruntime")
    onnx16 = _by(manifest, "onnx", "fp16")
    assert onnx16["parity"]["vs_float"]["cosine"] >= 0.999 and onnx16["size_bytes"] < 0.75 * onnx32["size_bytes"]
    for art in manifest["artifacts"]:
        path = out / art["path"]
        assert path.exists() and art["size_bytes"] > 0 and len(art["sha256"]) == 64
    assert manifest["source"]["random_weights"] and manifest["input"]["preprocessing"]["mean"] == [0.45] * 3
    assert manifest["versions"]["torch"] == torch.__version__


def test_coreml_spec_inspection(light_float):
    import coremltools as ct

    out, manifest = light_float
    art = _by(manifest, "coreml", "fp16")
    io = art["io"]
    assert io["inputs"]["video"] == {"shape": [1, 3, 8, 32, 32], "dtype": "float32"}
    assert io["outputs"]["logits"]["dtype"] == "float32" and io["outputs"]["probabilities"]["shape"] == [1, 10]
    assert art["census"]["conv"] > 0 and art["census"]["linear"] > 0
    model = ct.models.MLModel(str(out / art["path"]), skip_model_load=True)
    meta = model.get_spec().description.metadata
    assert meta.author == "uniformer-edge" and json.loads(meta.userDefined["preprocessing"])["frames"] == 8
    assert json.loads(meta.userDefined["classes"]) == [f"class {i}" for i in range(10)]
    if platform.system() != "Darwin":
        assert "macOS" in art["parity"]["not run"] and "passed" not in art["parity"]
    else:
        assert art["parity"]["passed"]


def test_tampered_artifact_fails_verification(light_float, tmp_path):
    import shutil

    out, manifest = light_float
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    onnx_file = copy / _by(manifest, "onnx", "fp32")["path"]
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match its manifest"):
        verify_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        verify_manifest(copy)


def test_light_model_refuses_another_input_size(light_float):
    out, manifest = light_float
    session = ort_session(out / _by(manifest, "onnx", "fp32")["path"])
    assert run_onnx(session, torch.randn(2, 3, 8, 32, 32)).shape == (2, 10)  # dynamic batch
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_onnx(session, torch.randn(1, 3, 8, 64, 64))


@pytest.fixture(scope="module")
def light_quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "quantized"
    return out, run_export(
        ExportJob(
            variant="xxs",
            model_overrides=LIGHT,
            formats=("onnx",),
            precisions=("int8", "w8", "w4", "int8-ort", "int8-ort-entropy"),
            out=str(out),
            **INPUT,
        ),
        progress=False,
    )


def test_onnx_quantized_exports_keep_qdq_and_match_pytorch_graph(light_quantized):
    out, manifest = light_quantized
    for precision in ("int8", "w8", "w4"):
        art = _by(manifest, "onnx", precision)
        assert art["census"]["DequantizeLinear"] > 0
        assert (art["census"].get("QuantizeLinear", 0) > 0) == (precision == "int8")
        assert art["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999 and art["parity"]["passed"]
    ort = _by(manifest, "onnx", "int8-ort")
    assert ort["census"]["QuantizeLinear"] > 0 and "vs_float" in ort["parity"]
    # Entropy calibration really chooses other ranges than MinMax (ORT's default bins would not).
    import onnx

    def scales(precision):
        model = onnx.load(str(out / _by(manifest, "onnx", precision)["path"]))
        return {
            i.name: onnx.numpy_helper.to_array(i)
            for i in model.graph.initializer
            if i.name.endswith("_scale") and len(i.dims) == 0
        }

    minmax, entropy = scales("int8-ort"), scales("int8-ort-entropy")
    assert minmax.keys() == entropy.keys()
    assert sum(float(minmax[k]) != float(entropy[k]) for k in minmax) > len(minmax) // 4
    verify_manifest(out)


@pytest.mark.parametrize("shape", ["gaussian", "heavy_tail", "sparse"])
def test_kl_threshold_equals_onnxruntime_entropy_search(shape):
    """Our array version of ORT's KL threshold search returns exactly ORT's range."""
    import numpy as np
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    data = {
        "gaussian": rng.normal(0.3, 1.0, 20000),
        "heavy_tail": rng.standard_t(2, 20000),
        "sparse": np.where(rng.random(20000) < 0.9, 0.0, rng.exponential(2.0, 20000)),
    }[shape].astype(np.float32)
    bound = np.abs(data).max()
    hist, edges = np.histogram(data, 512, range=(-bound, bound))
    histogram = (hist, edges, data.min(), data.max())
    collector = HistogramCollector("entropy", False, 512, 128, 99.99, "same")
    assert kl_threshold(*histogram, num_quantized_bins=128) == collector.get_entropy_threshold(histogram, 128)


def _bias_free_convolution_onnx(path):
    model = torch.nn.Sequential(
        torch.nn.Conv3d(3, 4, 3, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    ).eval()
    return export_onnx(model, path, torch.randn(1, 3, 4, 8, 8))


def test_entropy_histograms_equal_onnxruntime_seeing_all_clips_at_once(tmp_path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    model = _bias_free_convolution_onnx(tmp_path / "m.onnx")
    clips = [torch.randn(3, 4, 8, 8) * scale for scale in (0.5, 2.0, 1.0)]
    ours = entropy_histograms(model, clips, tmp_path, num_bins=256)
    calibrator = create_calibrator(
        model,
        augmented_model_path=str(tmp_path / "ort.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 256},
    )

    class AllClips:
        batches = iter([{"video": torch.stack(clips).numpy()}])

        def get_next(self):
            return next(self.batches, None)

    calibrator.collect_data(AllClips())
    theirs = calibrator.collector.histogram_dict
    assert ours.keys() == theirs.keys() and len(ours) >= 4
    for name, (hist, edges, low, high, threshold) in ours.items():
        assert (hist == theirs[name][0]).all() and (edges == theirs[name][1]).all(), name
        assert (low, high, threshold) == tuple(theirs[name][2:]), name


def test_entropy_histograms_survive_a_range_that_grows_by_orders_of_magnitude(tmp_path):
    """A tensor near zero on the first clip: ORT's one-clip-at-a-time merge keeps that clip's bin
    width and would need ~1e30 bins for the second clip; ours keeps 2048 over the final range."""
    model = _bias_free_convolution_onnx(tmp_path / "m.onnx")
    clips = [torch.randn(3, 4, 8, 8) * 1e-30, torch.randn(3, 4, 8, 8)]
    histograms = entropy_histograms(model, clips, tmp_path)
    for name, (hist, edges, low, high, threshold) in histograms.items():
        assert hist.size == 2048 and edges[0] == -threshold and edges[-1] == threshold, name
        assert threshold == max(abs(low), abs(high)) > 0.1, name
        low_kl, high_kl = kl_threshold(hist, edges, low, high)
        assert low <= low_kl < high_kl <= high, name
    assert histograms["video"][0].sum() == 2 * 3 * 4 * 8 * 8


@pytest.mark.slow  # minutes: run by .ci/run after the default set
def test_executorch_fp32_and_int8_run_on_the_runtime(tmp_path):
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    manifest = run_export(
        ExportJob(
            variant="s",
            model_overrides=PLAIN,
            formats=("executorch",),
            precisions=("fp32", "int8"),
            out=str(tmp_path / "e"),
            **INPUT,
        ),
        progress=False,
    )
    fp32, int8 = _by(manifest, "executorch", "fp32"), _by(manifest, "executorch", "int8")
    assert fp32["parity"]["vs_float"]["max_rel_err"] <= 1e-4 and "executorch" in fp32["parity"]["runtime"]
    assert int8["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999
    assert not any("conv3d" in op for op in fp32["census"])  # every 5-D convolution rewritten for XNNPACK
    # XNNPACK runs everything but the final pooling over a 5-D map: two delegate calls, no
    # portable LayerNorm, no portable slices of the input clip.
    for art in (fp32, int8):
        assert {op for op in art["census"] if op != "getitem"} == {"executorch_call_delegate", "aten.mean.dim"}
        assert art["census"]["executorch_call_delegate"] == 2
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]


@pytest.mark.slow  # minutes: run by .ci/run after the default set
def test_executorch_fp16_and_weight_quantized_programs(tmp_path):
    """fp16 behind fp32 inputs and outputs; w8/w4 with XNNPACK's per-call activation quantization,
    each run by the runtime against its PyTorch graph, smaller as the weights shrink."""
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    manifest = run_export(
        ExportJob(
            variant="s",
            model_overrides=PLAIN,
            formats=("executorch",),
            precisions=("fp16", "w8", "w4"),
            out=str(tmp_path / "e"),
            **INPUT,
        ),
        progress=False,
    )
    fp16, w8, w4 = (_by(manifest, "executorch", p) for p in ("fp16", "w8", "w4"))
    assert fp16["input"]["dtype"] == "float32" and fp16["parity"]["vs_float"]["cosine"] >= 0.999
    for art in (w8, w4):
        assert art["parity"]["passed"] and art["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.998
        assert art["quantization"]["method"] == "weights only, no calibration"
        assert {op for op in art["census"] if op != "getitem"} == {"executorch_call_delegate", "aten.mean.dim"}
    assert w8["parity"]["vs_float"]["sqnr_db"] > w4["parity"]["vs_float"]["sqnr_db"] + 10
    assert w4["size_bytes"] < w8["size_bytes"] < fp16["size_bytes"]
    from uniformer_edge.quantize.xnnpack import xnnpack_weight_quantize

    with pytest.raises(ValueError, match="8 or 4 bits"):
        xnnpack_weight_quantize(torch.nn.Identity(), torch.zeros(1, 3, 8, 32, 32), bits=2)


def test_layer_norm_as_xnnpack_ops_matches_layer_norm():
    from uniformer_edge.forms import LayerNormAsXnnpackOps

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(48, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    # a large common offset: a one-pass variance (E[x^2] - E[x]^2) would lose it in fp32
    x = 100.0 + 0.1 * torch.randn(2, 50, 48)
    with torch.no_grad():
        assert (LayerNormAsXnnpackOps(norm)(x) - norm(x)).abs().max() < 1e-3
        x = torch.randn(3, 7, 9, 48)
        assert (LayerNormAsXnnpackOps(norm)(x) - norm(x)).abs().max() < 1e-5
        # channels-first maps (N, C, H, W), normalised over dim 1 without permuting
        maps = 100.0 + 0.1 * torch.randn(2, 48, 5, 6)
        expected = norm(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert (LayerNormAsXnnpackOps(norm, channels_first=True)(maps) - expected).abs().max() < 1e-3
    with pytest.raises(ValueError, match="last dimension"):
        LayerNormAsXnnpackOps(torch.nn.LayerNorm((4, 48)))


def test_xnnpack_quantization_keeps_depthwise_convolutions_and_residual_stream_float():
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    from uniformer_edge.forms import is_residual_add
    from uniformer_edge.quantize.xnnpack import xnnpack_quantize
    from uniformer_edge.models import create_model
    from uniformer_edge.models.uniformer import CBlock, SABlock

    torch.manual_seed(0)
    model = create_model("s", **TINY).eval()
    clips = torch.randn(2, 3, 8, 32, 32)
    converted = xnnpack_quantize(model, clips[:1], [(clips, None)])
    kinds = {"depthwise": [], "other": []}
    averaging = []  # LayerNorms stay fp32: their products with 1/C vectors (linear or 1x1 conv) are not quantized
    for node in converted.graph.nodes:
        if node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            continue
        weight = node.args[1]
        if weight.op == "get_attr":  # a float weight
            w = operator.attrgetter(weight.target)(converted)
            if w.shape[0] == 1 and torch.allclose(w, torch.full_like(w, 1.0 / w.numel())):
                averaging.append(node)
                continue
        if node.target == torch.ops.aten.conv2d.default:
            depthwise = len(node.args) > 6 and node.args[6] == weight.meta["val"].shape[0] > 1
            kinds["depthwise" if depthwise else "other"].append("dequantize" in str(weight.target))
    assert kinds["depthwise"] and not any(kinds["depthwise"])  # fp32: XNNPACK runs those faster
    assert kinds["other"] and all(kinds["other"])
    assert len(averaging) == 2 * sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert any(n.target == torch.ops.aten.conv2d.default for n in averaging)  # the patch embeddings' channel norms
    # the residual stream stays fp32: every residual add takes the stream from the add before it
    # (or from the position embedding's fp32 depthwise runs, its residual folded in), not from an
    # int8 tensor
    residual_adds = [n for n in converted.graph.nodes if is_residual_add(n)]
    assert len(residual_adds) == 2 * sum(isinstance(m, (CBlock, SABlock)) for m in model.modules())
    for add in residual_adds:
        assert any("dequantize" not in str(a.target) for a in add.args), add
    with torch.no_grad():
        expected = model(clips[:1])
        got = converted(clips[:1])
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.99


@pytest.mark.slow  # minutes: run by .ci/run after the default set
def test_executorch_int8_qat_fine_tunes_the_calibrated_program(tmp_path):
    """QAT of the .pte's int8 graph moves the calibrated program and keeps it a working one; the
    export job fine-tunes it, records how, and runs it on the ExecuTorch runtime against its
    PyTorch graph."""
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    from uniformer_edge.calibration import build_dataset
    from uniformer_edge.quantize.xnnpack import xnnpack_quantize
    from uniformer_edge.models import create_model
    from uniformer_edge.quantize.qat import QATSchedule

    torch.manual_seed(0)
    light = dict(LIGHT, num_classes=12)  # the synthetic clips' classes
    model = create_model("xxs", **light).eval()
    train_set = build_dataset("synthetic", "train", frames=8, size=32, num_clips=8, seed=0)
    clips = torch.stack([train_set[i][0] for i in range(len(train_set))])
    calib = [(clips, None)]

    def run(program):
        with torch.no_grad():
            return torch.cat([program(clip[None]) for clip in clips])

    calibrated = run(xnnpack_quantize(model, clips[:1], calib))
    tuned = run(xnnpack_quantize(model, clips[:1], calib, (QATSchedule(epochs=1, lr=1e-4, batch_size=4), train_set)))
    assert not torch.allclose(tuned, calibrated, atol=1e-3 * calibrated.abs().max())
    with torch.no_grad():
        reference = model(clips)
    assert torch.nn.functional.cosine_similarity(tuned.flatten(), reference.flatten(), dim=0) > 0.95

    manifest = run_export(
        ExportJob(
            variant="xxs",
            model_overrides=LIGHT,
            formats=("executorch",),
            precisions=("int8",),
            qat_epochs=1,
            qat_clips=8,
            out=str(tmp_path / "e"),
            **{**INPUT, "num_classes": 12},
        ),
        progress=False,
    )
    int8 = _by(manifest, "executorch", "int8")
    assert int8["quantization"]["method"] == "qat" and int8["quantization"]["train_clips"] == 8
    assert int8["quantization"]["epochs"] == 1 and int8["quantization"]["distill_weight"] == 1.0
    assert int8["parity"]["passed"] and int8["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999


@pytest.mark.slow  # tens of seconds: run by .ci/run after the default set
def test_export_from_quantize_output(tmp_path):
    from uniformer_edge.quantize import QuantizeJob, run_job

    qdir = tmp_path / "q"
    run_job(
        QuantizeJob(variant="xxs", model_overrides=LIGHT, frames=8, size=32, num_calib=4, num_eval=4, out=str(qdir)),
        progress=False,
    )
    formats = ("onnx", "openvino") if importlib.util.find_spec("openvino") else ("onnx",)
    manifest = run_export(
        ExportJob(quantized=str(qdir), formats=formats, out=str(tmp_path / "x"), check_clips=2), progress=False
    )
    art = manifest["artifacts"][0]
    assert art["precision"] == "int8" and manifest["source"]["quantized_recipe"] == "w8a8"
    for art in manifest["artifacts"]:
        assert art["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999, art["path"]
    if "openvino" in formats:  # the folder's program is converted as it is, and the IR says what it lacks
        (ir,) = [a for a in manifest["artifacts"] if a["format"] == "openvino"]
        assert ir["quantization"]["activation_scheme"] == "affine" and "--form openvino" in ir["note"]
    with pytest.raises(ValueError, match="XXS model, not --variant s"):
        ExportJob(quantized=str(qdir), variant="s", out=str(tmp_path / "y"))
    with pytest.raises(ValueError, match="cannot provide w8"):
        ExportJob(quantized=str(qdir), precisions=("w8",), out=str(tmp_path / "y"))
    # programs quantized by the export step calibrate on the quantize job's data unless told otherwise
    inherited = ExportJob(quantized=str(qdir), formats=("executorch",), out=str(tmp_path / "y"))
    assert (inherited.calib_data, inherited.num_calib, inherited.seed) == ("synthetic", 4, 0)
    told = ExportJob(
        quantized=str(qdir), formats=("executorch",), out=str(tmp_path / "y"), calib_data="synthetic", num_calib=9
    )
    assert told.num_calib == 9


@pytest.mark.slow  # tens of seconds: run by .ci/run after the default set
def test_xnnpack_target_is_lowered_as_quantized(tmp_path):
    """`quantize --target xnnpack` writes the XNNPACK program; `export` lowers that program
    itself (no second quantization) and checks the .pte against it."""
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    from uniformer_edge.quantize import QuantizeJob, load_program, run_job
    from uniformer_edge.quantize.config import QuantConfig

    qdir = tmp_path / "q"
    report = run_job(
        QuantizeJob(
            variant="xxs",
            target="xnnpack",
            model_overrides=LIGHT,
            frames=8,
            size=32,
            num_calib=4,
            num_eval=4,
            out=str(qdir),
        ),
        progress=False,
    )
    assert report["target"] == "xnnpack" and report["agreement"]["sqnr_db"] > 15
    assert report["layers"]["quantized"] and report["layers"]["float"]  # depthwise convolutions stay fp32
    config = json.loads((qdir / "quant_config.json").read_text())
    program = load_program(qdir / "quantized.pt2", config["program_sha256"])
    assert any("quantize_per_tensor" in str(n.target) for n in program.graph.nodes)

    import uniformer_edge.quantize.xnnpack as xnnpack

    def no_second_quantization(*args, **kwargs):
        raise AssertionError("export quantized the program again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xnnpack, "xnnpack_quantize", no_second_quantization)
        manifest = run_export(
            ExportJob(quantized=str(qdir), formats=("executorch",), out=str(tmp_path / "x"), check_clips=2),
            progress=False,
        )
    art = manifest["artifacts"][0]
    assert art["path"].endswith("int8.pte") and art["quantization"]["quantized"] == str(qdir)
    assert art["parity"]["passed"] and art["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.998
    with pytest.raises(ValueError, match="only --format executorch lowers"):
        ExportJob(quantized=str(qdir), formats=("onnx",), out=str(tmp_path / "y"))
    with pytest.raises(ValueError, match="fine-tune it with"):
        ExportJob(quantized=str(qdir), formats=("executorch",), qat_epochs=1, out=str(tmp_path / "y"))
    with pytest.raises(ValueError, match="does not take --observer"):
        QuantizeJob(variant="xxs", target="xnnpack", config=QuantConfig(observer="mse"), out=str(tmp_path / "z"))
    with pytest.raises(ValueError, match="recipes w8a8, w8, w4, not dynamic"):
        QuantizeJob(variant="xxs", target="xnnpack", config=QuantConfig(recipe="dynamic"), out=str(tmp_path / "z"))


def test_token_scores_and_pooled_features_are_marked_not_found_by_rank():
    """The XNNPACK int8 program keeps the ops the model marks (`TokenScoreOp`, `FeaturePool`)
    float: the pruning order and merge weights, and the pooled features' own range."""
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    from uniformer_edge.forms import is_feature_pool, is_token_score_op, xnnpack_form
    from uniformer_edge.models import create_model
    from uniformer_edge.quantize.xnnpack import _float_ops

    torch.manual_seed(0)
    model = create_model("xxs", **TINY_LIGHT).eval()
    clips = torch.randn(1, 3, 8, 32, 32)
    graph = torch.export.export(xnnpack_form(model, 8), (clips,)).module()
    calls = [n for n in graph.graph.nodes if n.op == "call_function"]
    scores = [n for n in calls if is_token_score_op(n)]
    assert {str(n.target) for n in scores} >= {"aten.topk.default", "aten.scatter.src", "aten.div.Tensor"}
    # every rank-2 float op outside the marks is the classifier's (the class token's features,
    # which only training reads, have no user)
    for n in calls:
        value = n.meta.get("val")
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.is_floating_point() and n.users:
            assert is_token_score_op(n) or is_feature_pool(n) or n.target == torch.ops.aten.linear.default, n
    pooled = [n for n in calls if is_feature_pool(n)]
    assert [str(n.target) for n in pooled][-1] == "aten.mean.dim"
    floats = _float_ops(graph)
    assert set(scores) <= floats and set(pooled) <= floats


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(formats=("coreml",), precisions=("w4",), target="ios16"), "needs --target ios18"),
        (dict(formats=("onnx",), precisions=("palettize4",)), "not available for onnx .*coreml"),
        (dict(formats=("tflite",)), "unknown format"),
        (dict(quantized="/nonexistent/dir"), "directory not found"),
        (dict(formats=("onnx",), precisions=("int8",), qat_epochs=1), "--qat-epochs fine-tunes the ExecuTorch int8"),
        (dict(formats=("executorch",), precisions=("int8",), qat_epochs=-1), "--qat-epochs must be 0 or more"),
    ],
)
def test_refusals(kwargs, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ExportJob(**{"variant": "xxs", "out": str(tmp_path / "o"), **kwargs})


def test_labels_with_wrong_count_and_cli_errors(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="has 3 classes, the model 10"):
        run_export(
            ExportJob(variant="xxs", model_overrides=LIGHT, labels=str(labels), out=str(tmp_path / "o"), **INPUT),
            progress=False,
        )
    assert not (tmp_path / "o").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError, match="file is not a directory"):
        run_export(ExportJob(variant="xxs", model_overrides=LIGHT, out=str(blocker / "o"), **INPUT), progress=False)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "uniformer_edge.export",
            "--variant",
            "xxs",
            "--format",
            "coreml",
            "--precision",
            "w4",
            "--target",
            "ios17",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2 and "needs --target ios18" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def _trained_tiny_checkpoint(path, variant, overrides, num_classes, frames, size, steps=30):
    """A tiny model fitted for a few steps to synthetic clips: weights and activations shaped by
    training (larger, correlated), where random weights are not."""
    from uniformer_edge.calibration import build_dataset
    from uniformer_edge.models import create_model

    torch.manual_seed(0)
    model = create_model(variant, num_classes=num_classes, **overrides)
    data = build_dataset("synthetic", "train", num_clips=16, frames=frames, size=size, seed=0)
    clips = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))]) % num_classes
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        batch = slice((step * 4) % 16, (step * 4) % 16 + 4)
        logits = model(clips[batch])
        logits = logits[0] if isinstance(logits, tuple) else logits  # light models add a training head
        loss = torch.nn.functional.cross_entropy(logits, labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({"model": model.state_dict()}, path)
    return str(path)


# Fresh cases at the CLI's defaults (4 check clips, 32 calibration clips): both families, several
# seeds and class counts, random and trained weights.
GATE_CASES = [
    ("s", PLAIN, 1, 400, False),
    ("s", PLAIN, 2, 7, False),
    ("s", PLAIN, 3, 12, True),
    ("xxs", LIGHT, 1, 400, False),
    ("xxs", LIGHT, 4, 10, False),
    ("xxs", LIGHT, 5, 12, True),
]


@pytest.mark.parametrize("variant,overrides,seed,num_classes,trained", GATE_CASES)
def test_int8_onnx_gate_holds_on_fresh_cases(variant, overrides, seed, num_classes, trained, tmp_path):
    from uniformer_edge._cpu import has_int8_dot_product

    checkpoint = (
        _trained_tiny_checkpoint(tmp_path / "trained.pth", variant, overrides, num_classes, 8, 32) if trained else None
    )
    manifest = run_export(
        ExportJob(
            variant=variant,
            checkpoint=checkpoint,
            model_overrides=overrides,
            num_classes=None if trained else num_classes,
            formats=("onnx",),
            precisions=("int8",),
            frames=8,
            size=32,
            seed=seed,
            out=str(tmp_path / "x"),
        ),
        progress=False,
    )
    art = _by(manifest, "onnx", "int8")
    assert art["parity"]["passed"] and art["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999
    assert manifest["cpu"]["instruction_sets"] is not None and manifest["cpu"]["name"]
    # Where the CPU lacks VNNI the session ran with ONNX Runtime's exact int8 kernels, and every
    # int8 artifact tells users which session entry they need on such CPUs.
    expected = {"session.x64quantprecision": "1"} if has_int8_dot_product() is False else {}
    assert art["parity"]["session_config"] == expected
    assert art["onnxruntime_session_config"]["session.x64quantprecision"] == "1"


def test_token_pruning_models_fall_back_to_the_accuracy_rule():
    """A light model's artifact that misses its bound against its counterpart (a token crossed the
    top-k cut) passes when it is about as close to float as the counterpart; a plain model's does
    not, and an artifact much further from float than its counterpart fails either way."""
    from uniformer_edge.export.base import PRUNING_SQNR_MARGIN_DB, Precision, judge
    from uniformer_edge.export.onnx import FORMAT as ONNX_FORMAT

    threshold = ONNX_FORMAT.thresholds[Precision.INT8]
    g = torch.Generator().manual_seed(0)
    float_logits = torch.randn(4, 12, generator=g)
    counterpart = float_logits + 0.05 * torch.randn(4, 12, generator=g)  # about 26 dB from float
    other_route = float_logits + 0.05 * torch.randn(4, 12, generator=g)  # as far from float, elsewhere
    broken = float_logits + 0.5 * torch.randn(4, 12, generator=g)  # 20 dB worse

    def verdict(output, pruning):
        return judge("test", output, float_logits, threshold, lambda: counterpart, prunes_tokens=pruning)

    plain, light = verdict(other_route, False), verdict(other_route, True)
    assert plain["vs_pytorch_quantized"]["cosine"] < 0.999
    assert not plain["passed"] and "token_pruning_rule" not in plain
    assert light["passed"] and light["token_pruning_rule"]["margin_db"] == PRUNING_SQNR_MARGIN_DB
    assert "prunes tokens" in light["threshold"] and "prunes tokens" not in plain["threshold"]
    worse = verdict(broken, True)
    assert not worse["passed"] and not worse["token_pruning_rule"]["passed"]
    exact = verdict(counterpart, True)
    assert exact["passed"] and "token_pruning_rule" not in exact  # the bound itself was met


def test_session_config_follows_the_cpu(monkeypatch):
    from uniformer_edge.export import onnx as onnx_module

    monkeypatch.setattr(onnx_module, "is_x86", lambda: True)
    for vnni, expected in (
        (False, {"session.x64quantprecision": "1"}),
        (None, {"session.x64quantprecision": "1"}),
        (True, {}),
    ):
        monkeypatch.setattr(onnx_module, "has_int8_dot_product", lambda v=vnni: v)
        assert onnx_module.ort_session_config() == expected
    monkeypatch.setattr(onnx_module, "is_x86", lambda: False)
    assert onnx_module.ort_session_config() == {}


@pytest.mark.slow  # tens of seconds: run by .ci/run after the default set
def test_a_failing_precision_keeps_the_others(tmp_path, monkeypatch):
    """One artifact that misses its gate is not written; the others are, listed with the miss."""
    from uniformer_edge.export import FORMATS, ExportError, Precision, Threshold

    thresholds = FORMATS["onnx"].thresholds
    monkeypatch.setitem(thresholds, Precision.FP16, Threshold(min_cosine=1.5))  # no fp16 model can reach it
    out = tmp_path / "x"
    with pytest.raises(ExportError, match=r"1 of 2 artifacts not written: .*fp16\.onnx misses") as err:
        run_export(
            ExportJob(
                variant="xxs",
                model_overrides=LIGHT,
                formats=("onnx",),
                precisions=("fp32", "fp16"),
                out=str(out),
                **INPUT,
            ),
            progress=False,
        )
    manifest = verify_manifest(out)
    assert [a["precision"] for a in manifest["artifacts"]] == ["fp32"] and err.value.manifest == manifest
    assert manifest["failed"][0]["precision"] == "fp16" and not list(out.glob("*fp16*"))
    monkeypatch.setitem(thresholds, Precision.FP32, Threshold(max_rel_err=-1.0))
    with pytest.raises(ExportError, match="nothing written"):
        run_export(
            ExportJob(
                variant="xxs",
                model_overrides=LIGHT,
                formats=("onnx",),
                precisions=("fp32",),
                out=str(tmp_path / "y"),
                **INPUT,
            ),
            progress=False,
        )
    assert not (tmp_path / "y").exists()


def test_registry_is_consistent_and_drives_the_command_line():
    """One registry: every format names a runtime that runs it, every precision has a parity
    threshold, Core ML's targets cover its precisions, and the CLI offers exactly these."""
    from uniformer_edge.export import FORMATS, PRECISIONS, RUNTIMES, Precision, get_runtime
    from uniformer_edge.export.__main__ import build_parser

    for fmt in FORMATS.values():
        assert RUNTIMES[fmt.runtime].format == fmt.name
        assert fmt.precisions and all(isinstance(p, Precision) for p in fmt.precisions)
        assert not fmt.min_target or set(fmt.min_target) == set(fmt.thresholds)
    assert set(PRECISIONS) == {p for f in FORMATS.values() for p in f.precisions}
    for runtime in RUNTIMES.values():
        status = runtime.status()
        assert set(status) == set(runtime.settings)
        assert all(reason is None or (isinstance(reason, str) and reason) for reason in status.values())
    assert get_runtime("onnxruntime").status()["CPUExecutionProvider"] is None
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        get_runtime("tflite")
    assert Precision.from_recipe("w8a8") is Precision.INT8 and Precision("int8-ort").pt2e_recipe is None
    actions = {a.dest: a for a in build_parser()._actions}
    assert set(actions["format"].choices) == set(FORMATS)
    assert set(actions["precision"].choices) == {p.value for p in PRECISIONS}
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        ExportJob(variant="xxs", precisions=("int3",), out="unused")


@pytest.mark.parametrize(
    "overrides",
    [PLAIN, pytest.param(LIGHT, marks=pytest.mark.slow)],  # slow: keeps the default run within its time
    ids=["uniformer", "light"],
)
def test_openvino_ir_export(tmp_path, overrides):
    """OpenVINO IR folders: fp32 reproduces the float model, int8 (OPENVINO_FORM, quantized by the
    export itself) reproduces its PT2E graph; both re-read from the manifest and run by the
    benchmark's OpenVINO runtime, whose output is the export's. The int8 IR computes the same with
    OpenVINO's kernels held to AVX2 (no VNNI: u8 x s8 multiply-adds that saturate int16 pair sums),
    as on a CPU without VNNI; with full-range int8 weights it does not (the overflow check below)."""
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    from uniformer_edge.benchmark import discover
    from uniformer_edge.benchmark.backends import runners_for
    from uniformer_edge.export.openvino import compile_openvino, run_openvino

    out = tmp_path / "ir"
    job = ExportJob(
        variant="xxs",
        model_overrides=overrides,
        formats=("openvino",),
        precisions=("fp32", "int8"),
        out=str(out),
        **INPUT,
    )
    manifest = run_export(job, progress=False)
    assert verify_manifest(out) == manifest and not manifest["failed"]
    fp32, int8 = (_by(manifest, "openvino", p) for p in ("fp32", "int8"))
    for art in (fp32, int8):
        folder = out / art["path"]
        assert art["path"].endswith(".openvino") and sorted(p.name for p in folder.iterdir()) == [
            "model.bin",
            "model.xml",
        ]
        assert art["parity"]["passed"] and art["parity"]["openvino_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert fp32["parity"]["vs_float"]["max_rel_err"] <= 1e-4 and not fp32["census"].get("FakeQuantize")
    assert int8["quantization"] == {
        "activation_scheme": "symmetric",
        "ops": ["conv", "linear", "matmul"],
        "overflow_safe_weights": True,
    }
    assert "note" not in int8
    assert int8["census"]["FakeQuantize"] > 0 and int8["parity"]["vs_pytorch_quantized"]["cosine"] >= 0.999
    assert int8["size_bytes"] < 0.6 * fp32["size_bytes"]  # int8 weights
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    for artifact in discover(out):
        if artifact.format != "openvino":
            continue
        (runner,) = runners_for(artifact, "openvino", 2)
        compiled, _ = compile_openvino(artifact.path, "CPU", threads=2)
        per_clip = torch.cat([run_openvino(compiled, clip[None]) for clip in clips])
        assert runner.backend == "openvino" and runner.fixed_batch == 1 and torch.equal(runner.fn(clips), per_clip)
    if not is_x86():
        return
    native = _openvino_logits(out / int8["path"], clips, tmp_path / "native.npy")
    held = _openvino_logits(out / int8["path"], clips, tmp_path / "avx2.npy", ONEDNN_MAX_CPU_ISA="AVX2")
    assert torch.nn.functional.cosine_similarity(native.flatten(), held.flatten(), 0) >= 0.999


def _openvino_logits(path, clips, out, **env) -> torch.Tensor:
    """OpenVINO's logits of the IR at `path` on `clips`, in a fresh process with `env` (oneDNN reads
    its ISA limit once, at load)."""
    np.save(out, clips.numpy())
    code = (
        "import sys, numpy, torch; from uniformer_edge.export.openvino import compile_openvino, run_openvino; "
        "compiled, _ = compile_openvino(sys.argv[1], 'CPU', threads=2); "
        "clips = torch.from_numpy(numpy.load(sys.argv[2])); "
        "numpy.save(sys.argv[2], torch.cat([run_openvino(compiled, c[None]) for c in clips]).numpy())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out)], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.from_numpy(np.load(out))


@pytest.mark.slow  # two tiny quantizations and exports
def test_full_range_int8_weights_saturate_without_vnni(tmp_path):
    """Why OPENVINO_FORM narrows its weights: the same IR with full-range int8 weights, run with
    OpenVINO's kernels held to AVX2, departs from itself on this CPU's own kernels. Run where the
    CPU has VNNI (on one without, both runs take the AVX2 path)."""
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    from uniformer_edge._cpu import has_int8_dot_product
    from uniformer_edge.export.openvino import FORMAT
    from uniformer_edge.quantize.config import OPENVINO_FORM

    if not (is_x86() and has_int8_dot_product()):
        pytest.skip("needs an x86 CPU with int8 dot products (VNNI) to compare against its AVX2 path")
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    cosine = {}
    for safe in (True, False):
        form = {**OPENVINO_FORM, "overflow_safe_weights": safe}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("uniformer_edge.export.openvino.OPENVINO_FORM", form)
            out = tmp_path / str(safe)
            job = ExportJob(
                variant="xxs", model_overrides=PLAIN, formats=("openvino",), precisions=("int8",), out=str(out), **INPUT
            )
            manifest = run_export(job, progress=False)
        path = out / manifest["artifacts"][0]["path"]
        native = _openvino_logits(path, clips, tmp_path / f"n{safe}.npy")
        held = _openvino_logits(path, clips, tmp_path / f"a{safe}.npy", ONEDNN_MAX_CPU_ISA="AVX2")
        cosine[safe] = float(torch.nn.functional.cosine_similarity(native.flatten(), held.flatten(), 0))
    assert FORMAT.name == "openvino" and cosine[True] >= 0.999 and cosine[False] < 0.99, cosine


def test_openvino_runs_the_onnx_exports_as_onnxruntime_does(light_float):
    """OpenVINO's CPU plugin, with the settings the benchmark names, reproduces ONNX Runtime on
    the light model's fp32 and fp16 exports (token pruning included)."""
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    from uniformer_edge.export import RUNTIMES
    from uniformer_edge.export.openvino import compile_openvino, run_openvino

    out, manifest = light_float
    assert RUNTIMES["openvino"].status()["CPU"] is None
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    for precision in ("fp32", "fp16"):
        path = out / _by(manifest, "onnx", precision)["path"]
        compiled, settings = compile_openvino(path, "CPU", threads=2)
        assert settings["INFERENCE_PRECISION_HINT"] == "f32" and settings["PERFORMANCE_HINT"] == "LATENCY"
        got, expected = run_openvino(compiled, clips), run_onnx(ort_session(path), clips)
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-3, precision
        # The runtime runs the clips one by one (OpenVINO's int8 batch bug, `save_ir`): the same logits.
        (runner,) = RUNTIMES["openvino"].runners(path, 2, {})
        assert runner.extra["openvino_config"]["device"] == "CPU" and runner.fixed_batch is None
        one_by_one = torch.cat([run_openvino(compiled, clip[None]) for clip in clips])
        assert torch.equal(runner.fn(clips), one_by_one)
    # Left unset, the precision is the plugin's choice for this CPU, and the settings say which.
    _, default = compile_openvino(path, "CPU", threads=2, precision=None)
    chosen, note = default["INFERENCE_PRECISION_HINT"].split(" ", 1)
    assert chosen in ("f32", "bf16", "f16") and note == "(the plugin's default)"
