"""Quantization: PT2E quantizer configuration, PTQ recipes, QAT, outputs and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import TINY, TINY_LIGHT, randomize_batchnorm
from uniformer_edge.engine import agreement
from uniformer_edge.models import UniFormer, UniFormerLight
from uniformer_edge.quantize import QuantConfig, QuantizeJob, load_program, quantize_ptq, run_job
from uniformer_edge.quantize.qat import distillation_loss

torch.manual_seed(0)


def _batches(n=3, batch=4, frames=8, size=64):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 3, frames, size, size, generator=g), torch.zeros(batch, dtype=torch.long)) for _ in range(n)
    ]


@pytest.fixture(scope="module", params=["uniformer", "light"])
def tiny_model(request):
    torch.manual_seed(0)
    cls, kw = (UniFormer, TINY) if request.param == "uniformer" else (UniFormerLight, TINY_LIGHT)
    return randomize_batchnorm(cls(**kw)).eval()


def _count_qdq(program):
    """(static activation quantize ops, run-time qparam choices, per-channel weight dequantize ops)."""
    names = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    return (
        sum(t.endswith("quantize_per_tensor.default") and "dequantize" not in t for t in names),
        sum("choose_qparams" in t for t in names),
        sum("dequantize_per_channel" in t for t in names),
    )


@pytest.mark.parametrize("recipe,min_sqnr", [("w8a8", 25), ("w8", 30), ("dynamic", 30), ("w4", 5)])
def test_ptq_recipes_track_the_float_model(tiny_model, recipe, min_sqnr):
    x = torch.randn(3, 3, 8, 64, 64)
    program, prepared = quantize_ptq(tiny_model, _batches(), QuantConfig(recipe=recipe), x[:1], progress=False)
    with torch.no_grad():
        ref, out = tiny_model(x), program.module()(x)  # dynamic batch: 3 clips though exported with 2
    assert agreement(ref, out)["sqnr_db"] > min_sqnr
    static_q, dynamic_q, weight_dq = _count_qdq(program)
    assert weight_dq >= len(prepared.quantized_layers) - sum("matmul" in n for n in prepared.quantized_layers)
    if recipe == "w8a8":
        assert static_q > 0 and dynamic_q == 0 and any("matmul" in n for n in prepared.quantized_layers)
        assert not prepared.float_layers
    else:
        assert static_q == 0  # no calibrated activation ranges in weight-only and dynamic graphs
        assert (dynamic_q > 0) == (recipe == "dynamic")
        assert all("matmul" in n for n in prepared.float_layers)


def _tensors(program, dtype):
    return [
        t
        for t in list(program.state_dict.values()) + list(program.constants.values())
        if isinstance(t, torch.Tensor) and t.dtype == dtype
    ]


def test_int4_weights_are_packed_two_per_byte(tiny_model):
    from uniformer_edge.quantize.ptq import _unpack_int4, pack_int4

    values = torch.randint(-7, 8, (7, 3, 5), dtype=torch.int8)  # odd count: padded nibble
    assert torch.equal(_unpack_int4(pack_int4(values), [7, 3, 5]), values)
    x = torch.randn(1, 3, 8, 64, 64)
    w8, _ = quantize_ptq(tiny_model, _batches(1), QuantConfig(recipe="w8"), x, progress=False)
    w4, _ = quantize_ptq(tiny_model, _batches(1), QuantConfig(recipe="w4"), x, progress=False)
    int8_bytes = sum(t.numel() for t in _tensors(w8, torch.int8))
    packed = _tensors(w4, torch.uint8)
    assert not _tensors(w4, torch.int8) and packed
    assert sum(t.numel() for t in packed) <= int8_bytes // 2 + len(packed)
    nibbles = torch.cat([_unpack_int4(t, [2 * t.numel()]) for t in packed])
    assert int(nibbles.min()) >= -7 and int(nibbles.max()) <= 7 and len(nibbles.unique()) > 8


def test_keep_float_patterns(tiny_model):
    cfg = QuantConfig(keep_float=("patch_embed1*", "head", "blocks3.*.attn*"))
    _, prepared = quantize_ptq(tiny_model, _batches(1), cfg, torch.randn(1, 3, 8, 64, 64), progress=False)
    assert "head" in prepared.float_layers and any(n.startswith("patch_embed1") for n in prepared.float_layers)
    assert not any(n.startswith("blocks3.") and ".attn" in n for n in prepared.quantized_layers)
    with pytest.raises(ValueError, match="'nonexistent\\*'? match no quantizable layer|nonexistent"):
        quantize_ptq(
            tiny_model,
            _batches(1),
            QuantConfig(keep_float=("nonexistent*",)),
            torch.randn(1, 3, 8, 64, 64),
            progress=False,
        )


@pytest.mark.parametrize("observer", ["moving_average", "percentile", "mse"])
def test_observers(tiny_model, observer):
    x = torch.randn(2, 3, 8, 64, 64)
    program, _ = quantize_ptq(tiny_model, _batches(2), QuantConfig(observer=observer), x[:1], progress=False)
    with torch.no_grad():
        assert agreement(tiny_model(x), program.module()(x))["sqnr_db"] > 20


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown recipe 'w3'"):
        QuantConfig(recipe="w3")
    with pytest.raises(ValueError, match="unknown observer 'kl'"):
        QuantConfig(observer="kl")
    with pytest.raises(ValueError, match="unknown op group"):
        QuantConfig(ops=("softmax",))
    with pytest.raises(ValueError, match="unknown activation scheme 'asymmetric'"):
        QuantConfig(activation_scheme="asymmetric")
    with pytest.raises(ValueError, match="recipe w4 has none"):
        QuantConfig(recipe="w4", overflow_safe_weights=True)


def _activation_qparams(program) -> list[tuple]:
    """(zero point, quant_min, quant_max) of every static activation quantize op."""
    return [
        tuple(n.args[2:5])
        for n in program.graph.nodes
        if n.op == "call_function"
        and str(n.target).endswith("quantize_per_tensor.default")
        and "dequantize" not in str(n.target)
    ]


@pytest.mark.parametrize("observer", ["minmax", "mse"])  # a running range, and a histogram search
def test_symmetric_activations_have_no_zero_point(tiny_model, observer):
    """The scheme OpenVINO runs as int8 end to end: every activation on -127..127 around zero, at
    the accuracy of the affine default; the default keeps its zero points."""
    x = torch.randn(2, 3, 8, 64, 64)
    outputs = {}
    for scheme in ("affine", "symmetric"):
        cfg = QuantConfig(observer=observer, activation_scheme=scheme)
        program, _ = quantize_ptq(tiny_model, _batches(2), cfg, x[:1], progress=False)
        qparams = _activation_qparams(program)
        assert qparams, scheme
        if scheme == "symmetric":
            assert all(q == (0, -127, 127) for q in qparams), qparams
        else:
            assert all(q[1:] == (-128, 127) for q in qparams) and any(q[0] != 0 for q in qparams), qparams
        with torch.no_grad():
            outputs[scheme] = agreement(tiny_model(x), program.module()(x))["sqnr_db"]
    assert outputs["symmetric"] > 20 and outputs["symmetric"] > outputs["affine"] - 6, outputs


def test_openvino_form_keeps_depthwise_convolutions_float(tiny_model):
    """OPENVINO_FORM leaves out the "depthwise" group: exactly the convolutions with one input
    channel per group stay float (position embeddings, the local blocks' 5x5x5 convolutions); its
    weights use -63..63, every channel reaching its end of the range."""
    from uniformer_edge.quantize.config import OPENVINO_FORM
    from uniformer_edge.quantize.ptq import export_float
    from uniformer_edge.quantize.quantizer import quantizable_ops

    x = torch.randn(1, 3, 8, 64, 64)
    narrow, prepared = quantize_ptq(tiny_model, _batches(1), QuantConfig(**OPENVINO_FORM), x, progress=False)
    depthwise = {
        name
        for name, m in tiny_model.named_modules()
        if isinstance(m, torch.nn.Conv3d) and m.groups == m.in_channels > 1
    }
    assert depthwise and any(".pos_embed" in n for n in depthwise)
    assert set(prepared.float_layers) == depthwise
    assert not depthwise & set(prepared.quantized_layers)
    wide, full = quantize_ptq(tiny_model, _batches(1), QuantConfig(), x, progress=False)
    assert not full.float_layers and depthwise <= set(full.quantized_layers)
    kinds = {op.kind for op in quantizable_ops(export_float(tiny_model, x).module())}
    assert kinds == {"conv", "depthwise", "linear", "matmul"}
    for program, top in ((narrow, 63), (wide, 127)):
        weights = [t for t in _tensors(program, torch.int8) if t.dim() > 1]
        assert weights and all(int(w.abs().max()) == top for w in weights), top


def test_distillation_loss():
    logits = torch.randn(4, 6)
    labels = logits.argmax(1)
    same = distillation_loss(logits, logits, labels, weight=1.0, temperature=2.0)
    assert same.abs() < 1e-6  # no KL against itself
    assert distillation_loss(logits, -logits, labels, 1.0, 2.0) > 0.5


JOB = dict(variant="xxs", frames=8, size=32, num_calib=4, num_eval=8, batch_size=4)


def test_quantize_job_outputs(tmp_path):
    out = tmp_path / "q"
    with pytest.warns(UserWarning, match="random weights"):
        report = run_job(QuantizeJob(**JOB, out=str(out)), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "float_weights.pth",  # random weights: kept, so the float reference is the model itself
        "quant_config.json",
        "quantized.pt2",
        "report.json",
        "report.md",
    ]
    assert json.loads((out / "report.json").read_text()) == report
    assert report["calibration_clips"] == 4 and report["evaluation_clips"] == 8
    assert report["agreement"]["sqnr_db"] > 15 and report["float"]["top1"] is None
    program = load_program(out / "quantized.pt2")
    assert not any(
        v.dtype == torch.float32 and v.ndim >= 2 and v.numel() > 1000 for v in program.state_dict.values()
    ), "float weights must not be saved beside int8 ones"
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert program.module()(x).shape == (2, 12)
    config = json.loads((out / "quant_config.json").read_text())
    assert config["quant_config"]["recipe"] == "w8a8" and config["input_shape"] == [1, 3, 8, 32, 32]
    with pytest.raises(FileExistsError, match="--force"):
        run_job(QuantizeJob(**JOB, out=str(out)), progress=False)


def test_qat_defaults_follow_the_weight_bits():
    """The QAT learning rate defaults by weight bit width (one table, `QAT_LR`) wherever QAT is
    set up: the quantize CLI and its job, the export CLI's .pte QAT; an explicit one is kept, and
    the default loss is distillation alone."""
    from uniformer_edge.export import ExportJob
    from uniformer_edge.export.__main__ import build_parser as export_parser
    from uniformer_edge.quantize.__main__ import build_parser, job_from_args
    from uniformer_edge.quantize.config import QAT_DISTILL_WEIGHT, QAT_LR
    from uniformer_edge.quantize.qat import QATSchedule

    assert set(QAT_LR) == {QuantConfig(recipe=r).weight_bits for r in ("w8a8", "w4a8", "w8", "w4")}
    base = ["--variant", "xxs", "--method", "qat", "--train-data", "synthetic"]
    for recipe in ("w8a8", "w4a8", "w4"):
        job = job_from_args(build_parser().parse_args(base + ["--recipe", recipe]))
        assert job.qat_lr == QAT_LR[QuantConfig(recipe=recipe).weight_bits]
        assert job.distill_weight == QAT_DISTILL_WEIGHT == 1.0
    assert job_from_args(build_parser().parse_args(base + ["--qat-lr", "2e-4"])).qat_lr == 2e-4
    assert QuantizeJob(**JOB, method="qat", train_data="synthetic", qat_lr=0.0).qat_lr == 0.0
    assert QAT_LR[4] != QAT_LR[8]  # else one number would do
    assert export_parser().parse_args(["--variant", "xxs", "--out", "x"]).qat_lr == QAT_LR[8]
    assert ExportJob(variant="xxs", out="x").qat_lr == QAT_LR[8]
    assert QATSchedule(epochs=1, lr=1e-5, batch_size=8).distill_weight == QAT_DISTILL_WEIGHT


@pytest.mark.slow  # minutes: run by .ci/run after the default set
def test_qat_job_with_checkpoint(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pth"
    model = UniFormerLight(embed_dim=(56, 112, 224, 448), depth=(2, 5, 8, 2), head_dim=28, num_classes=12)
    torch.save({"model_state": model.state_dict()}, ckpt)
    cfg = QuantConfig(recipe="w4a8", qat=True)
    job = QuantizeJob(
        **JOB,
        config=cfg,
        method="qat",
        checkpoint=str(ckpt),
        train_data="synthetic",
        qat_clips=8,
        out=str(tmp_path / "qat"),
    )
    report = run_job(job, progress=False)
    assert report["method"] == "qat" and report["qat"]["steps"] == 2
    assert report["float"]["top1"] is not None  # a checkpoint: labels are meaningful
    with pytest.raises(ValueError, match="QAT needs training data"):
        QuantizeJob(**JOB, config=cfg, method="qat")


SMALL_LIGHT = {k: v for k, v in TINY_LIGHT.items() if k != "num_classes"}


@pytest.mark.slow  # minutes: run by .ci/run after the default set
def test_qat_resume_reproduces_uninterrupted_run(tmp_path):
    from uniformer_edge.quantize.qat import QATStopped, qat_state_path

    def job(out, **kw):
        return QuantizeJob(
            **dict(JOB, num_eval=4),
            model_overrides=SMALL_LIGHT,
            config=QuantConfig(qat=True),
            method="qat",
            train_data="synthetic",
            qat_clips=8,
            qat_epochs=2,
            out=str(tmp_path / out),
            **kw,
        )

    straight = run_job(job("straight"), progress=False)
    with pytest.raises(QATStopped, match="after epoch 1/2"):
        run_job(job("split", stop_after=1), progress=False)
    assert qat_state_path(tmp_path / "split").is_file() and not (tmp_path / "split").exists()
    with pytest.raises(ValueError, match="other settings .*qat_lr"):
        run_job(job("split", resume=True, qat_lr=1e-3), progress=False)
    resumed = run_job(job("split", resume=True), progress=False)
    assert not qat_state_path(tmp_path / "split").exists()  # removed once the job is complete
    assert resumed["qat"]["epoch_losses"] == straight["qat"]["epoch_losses"]
    x = torch.randn(2, 3, 8, 32, 32)
    a, b = (load_program(tmp_path / d / "quantized.pt2").module() for d in ("straight", "split"))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(FileNotFoundError, match="no QAT state"):
        run_job(job("other", resume=True), progress=False)


@pytest.mark.slow  # minutes: run by .ci/run after the default set
def test_qat_under_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29600 + os.getpid() % 1000),
            "-m",
            "uniformer_edge.quantize",
            "--variant",
            "xxs",
            "--method",
            "qat",
            "--train-data",
            "synthetic",
            "--qat-clips",
            "16",
            "--frames",
            "4",
            "--size",
            "32",
            "--num-calib",
            "4",
            "--num-eval",
            "4",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "qat" and report["qat"]["steps"] == 2  # 16 clips / global batch 8
    assert load_program(out / "quantized.pt2").module()(torch.randn(1, 3, 4, 32, 32)).shape == (1, 12)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "uniformer_edge.quantize", *args], capture_output=True, text=True)


def _in_process(capsys, *args) -> tuple[int, str]:
    """The quantize command run in this process (the subprocess start costs seconds per case)."""
    from uniformer_edge._cli import run
    from uniformer_edge.quantize.__main__ import main

    try:
        code = run(main, list(args), prog="uniformer_edge.quantize")
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    return code, capsys.readouterr().err


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    out = _cli("--variant", "xl", "--out", str(tmp_path / "out"))  # the real command line, once
    assert out.returncode == 2 and "unknown variant 'xl'" in out.stderr and "Traceback" not in out.stderr
    cases = [
        (["--variant", "xxs", "--recipe", "w2"], "unknown recipe 'w2'"),
        (["--variant", "xxs", "--observer", "magic"], "unknown observer 'magic'"),
        (["--variant", "xxs", "--checkpoint", str(tmp_path / "none.pth")], "checkpoint not found"),
        (["--variant", "xxs", "--method", "qat"], "QAT needs training data"),
        (["--variant", "xxs", "--num-calib", "0"], "--num-calib: must be a positive integer, got 0"),
        (["--variant", "xxs", "--resume"], "--resume and --stop-after apply to --method qat"),
        (["--variant", "xxs", "--target", "xnnpack", "--recipe", "w4a8"], "--target xnnpack has recipes"),
        (["--variant", "xxs", "--target", "xnnpack", "--analyze"], "does not take --analyze"),
        (["--variant", "xxs", "--target", "xnnpack", "--form", "openvino"], "does not take --form"),
        (["--variant", "xxs", "--form", "openvino", "--ops", "conv"], "--form openvino sets the op groups"),
        (["--variant", "xxs", "--form", "openvino", "--recipe", "w4"], "recipe w4 has none"),
    ]
    for args, message in cases:
        code, err = _in_process(capsys, *args, "--out", str(tmp_path / "out"), "--frames", "8", "--size", "32")
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "out").exists()
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("x")
    code, err = _in_process(capsys, "--variant", "xxs", "--out", str(tmp_path / "exists"))
    assert code == 2 and "already exists; pass --force" in err
    assert (tmp_path / "exists" / "keep.txt").read_text() == "x"


def test_switchable_graph_matches_converted_program(tiny_model):
    """All switches on computes what the converted int8 graph computes; all off is the float model."""
    from uniformer_edge.quantize import calibrate, convert, prepare
    from uniformer_edge.quantize.analysis import SwitchableQuantGraph, block_sqnr, sensitivity
    import copy

    x = torch.randn(3, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    prepared = prepare(tiny_model, QuantConfig(), x[:1])
    calibrate(prepared, _batches(), progress=False)
    graph = SwitchableQuantGraph(
        type(prepared)(copy.deepcopy(prepared.module), prepared.quantizer, x[:1], prepared.cfg)
    )
    program = convert(prepared)
    with torch.no_grad():
        converted = program.module()(x)
        reference = tiny_model(x)
    graph.set_quantized(None)
    assert agreement(converted, graph.logits(x))["sqnr_db"] > 40
    graph.set_quantized([])
    assert agreement(reference, graph.logits(x))["sqnr_db"] > 90
    rows = sensitivity(graph, x, progress=False)
    assert [r.layer for r in rows] == graph.layers and len(rows) == len(prepared.quantized_layers)
    # Quantizing one layer disturbs the logits far less than quantizing all but one (typically by
    # ~27 dB); a layer whose error the others happen to cancel may buck that by a few dB.
    margins = sorted(r.only_quantized["sqnr_db"] - r.only_float["sqnr_db"] for r in rows)
    assert margins[len(margins) // 2] > 10 and sum(m < -1 for m in margins) <= len(margins) // 10
    blocks = block_sqnr(graph, x)
    assert "blocks1.0" in blocks and "blocks4.0" in blocks and all(v > 10 for v in blocks.values())


@pytest.mark.slow  # a minute: run by .ci/run after the default set
def test_mixed_precision_job(tmp_path):
    job = QuantizeJob(
        **JOB, config=QuantConfig(recipe="w4a8"), analyze=True, max_drop=0.0, analysis_clips=8, out=str(tmp_path / "mp")
    )
    with pytest.warns(UserWarning, match="random weights"):
        report = run_job(job, progress=False)
    mp = report["mixed_precision"]
    assert mp["simulated_drop_points"] <= 0.0 + 1e-9
    assert set(mp["kept_float"]) <= set(report["layers"]["float"])
    assert len(report["analysis"]["layers"]) > 50
    text = (tmp_path / "mp" / "report.md").read_text()
    assert "Most sensitive layers" in text and "Mixed precision" in text
