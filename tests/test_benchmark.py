"""Benchmark: real latency/accuracy runs on tiny artifacts for every backend here, reports and
plots written and re-read, merging, the not-available path and bad input."""

from __future__ import annotations

import json
import platform
import shutil

import pytest
import torch

from conftest import REPO, TINY
from uniformer_edge.benchmark import (
    BenchmarkJob,
    latency_stats,
    merge_reports,
    read_report,
    render_markdown,
    run_benchmark,
    write_report,
)
from uniformer_edge.export import Runner
from uniformer_edge.export.onnx import ORT_PROVIDERS
from uniformer_edge.benchmark.report import pareto_front
from uniformer_edge.benchmark.run import _float_gpu_rows
from uniformer_edge.engine import agreement
from uniformer_edge.models import create_model, deploy
from uniformer_edge.export import ExportJob, run_export
from uniformer_edge.quantize import QuantizeJob, run_job

PLAIN = {k: v for k, v in TINY.items() if k != "num_classes"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is an optional extra")
    run_export(
        ExportJob(
            variant="s",
            model_overrides=PLAIN,
            formats=("onnx", "coreml", "executorch"),
            precisions=("fp32",),
            frames=8,
            size=32,
            num_classes=10,
            check_clips=2,
            out=str(root / "export"),
        ),
        progress=False,
    )
    run_job(
        QuantizeJob(
            variant="s", model_overrides=PLAIN, frames=8, size=32, num_calib=4, num_eval=4, out=str(root / "quant")
        ),
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def report(artifacts):
    job = BenchmarkJob(
        artifacts=(str(artifacts / "export"), str(artifacts / "quant")),
        runs=3,
        warmup=1,
        num_clips=4,
        out=str(artifacts / "report"),
    )
    return run_benchmark(job, progress=False)


def test_every_backend_measured_or_explained(report):
    rows = report["rows"]
    measured = {(r["backend"], r["format"]) for r in rows if "latency" in r}
    assert {
        ("torch", "torch eager"),
        ("onnxruntime", "onnx"),
        ("executorch", "executorch"),
        ("torch", "pt2"),
    } <= measured
    for r in rows:
        if "latency" in r:
            lat = r["latency"]
            assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["runs"] == 3
            assert r["peak_rss_bytes"] > 0 and r["size_bytes"] > 0 and r["speedup_vs_torch_fp32"] > 0
            if r["format"] != "torch eager":  # each ratio uses the baseline timed right after its row
                assert r["speedup_vs_torch_fp32"] == pytest.approx(r["torch_fp32_median_ms"] / lat["median_ms"])
    onnx = next(r for r in rows if r["backend"] == "onnxruntime")
    assert onnx["accuracy"]["vs_float"]["sqnr_db"] > 80  # fp32 export of the same random model
    quant = next(r for r in rows if r["format"] == "pt2")
    assert 10 < quant["accuracy"]["vs_float"]["sqnr_db"] < 80 and "top1" not in quant["accuracy"]
    coreml = [r for r in rows if r["backend"] == "coreml"]
    if platform.system() != "Darwin":
        assert coreml and all(
            "not available here: Core ML prediction needs macOS" in r["not_available"] for r in coreml
        )
    assert report["complete"] and report["groups"][0]["float_reference"].startswith("float PyTorch model on")
    assert report["device"]["cores"] and report["device"]["versions"]["torch"]


def test_report_files_and_merge(report, tmp_path):
    files = write_report(report, tmp_path / "a")
    assert read_report(tmp_path / "a" / "report.json")["rows"] == json.loads(json.dumps(report["rows"], default=str))
    for png in (f for f in files if f.endswith(".png")):
        assert (tmp_path / "a" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "a" / "report.md").read_text()
    assert "| onnxruntime | CPUExecutionProvider |" in md and "x torch fp32" in md
    other = dict(report, device=dict(report["device"], hostname="macbook"))
    write_report(other, tmp_path / "b")
    merged = merge_reports([tmp_path / "a" / "report.json", tmp_path / "b" / "report.json"])
    assert [d["device"]["hostname"] for d in merged["devices"]][1] == "macbook"
    files = write_report(merged, tmp_path / "m")
    assert "latency_vs_accuracy-1.png" in files
    assert (tmp_path / "m" / "report.md").read_text().count("## ") == 2
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**report, "schema": 99}))
    with pytest.raises(ValueError, match="schema 99, newer"):
        merge_reports([newer])


def test_bad_input(artifacts, tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        BenchmarkJob(artifacts=(str(artifacts / "export"),), backends=("tensorrt",))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        run_benchmark(BenchmarkJob(artifacts=(str(tmp_path),)), progress=False)
    copy = tmp_path / "tampered"
    shutil.copytree(artifacts / "export", copy)
    onnx_file = next(copy.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1])
    with pytest.raises(ValueError, match="does not match its manifest"):
        run_benchmark(BenchmarkJob(artifacts=(str(copy),)), progress=False)


def test_latency_stats_and_pareto():
    stats = latency_stats([0.010, 0.020, 0.030, 0.040, 0.100], batch=2)
    assert stats["median_ms"] == pytest.approx(30) and stats["min_ms"] == pytest.approx(10)
    assert stats["p90_ms"] == pytest.approx(100) and stats["throughput_clips_per_s"] == pytest.approx(2000 / 30)
    assert pareto_front([(10, 0.9), (20, 0.95), (30, 0.94), (5, 0.5)]) == [0, 1, 3]


def test_every_setting_listed_available_or_with_its_reason(report):
    import onnxruntime as ort

    settings = report["backend_settings"]
    assert settings["torch"]["cpu"] == "available"
    assert (settings["torch"]["cuda"] == "available") == torch.cuda.is_available()
    assert set(settings["onnxruntime"]) == set(ORT_PROVIDERS)
    md = render_markdown(report)
    for provider, state in settings["onnxruntime"].items():
        if provider in ort.get_available_providers():
            assert state == "available"
        else:
            assert state.startswith(f"not available here: onnxruntime {ort.__version__} has no {provider}")
            assert f"- onnxruntime {provider}: {state}" in md
    if not torch.cuda.is_available():
        assert f"- torch cuda: {settings['torch']['cuda']}" in md
        assert not [r for r in report["rows"] if r.get("setting") == "cuda"]


def test_float_gpu_rows_with_the_cpu_standing_in_for_the_gpu():
    """The GPU rows' code on the one device every machine has: fp32 and fp16 copies of the float
    model, timed and scored against the float model, each ratio to the CPU baseline run after it."""
    torch.manual_seed(0)
    model = deploy(create_model("s", **TINY).eval())
    clips = torch.randn(3, 3, 8, 32, 32)
    with torch.no_grad():
        reference = model(clips)
    job = BenchmarkJob(artifacts=("unused",), runs=3, warmup=1)
    baseline = Runner("torch", "cpu", lambda x: model(x))
    rows = list(
        _float_gpu_rows(
            model,
            clips,
            clips[:1],
            job,
            lambda lg: agreement(reference, lg),
            baseline,
            {"variant": "s", "artifact": "float model (deploy form)"},
            device="cpu",
        )
    )
    assert [(r["precision"], r["setting"]) for r in rows] == [("fp32", "cpu"), ("fp16", "cpu")]
    fp32, fp16 = rows
    assert fp32["accuracy"]["sqnr_db"] > 100 and 20 < fp16["accuracy"]["sqnr_db"] < 80
    assert fp16["size_bytes"] == fp32["size_bytes"] // 2
    for r in rows:
        assert r["latency"]["runs"] == 3 and "peak_gpu_bytes" not in r
        assert r["speedup_vs_torch_fp32"] == pytest.approx(r["torch_fp32_median_ms"] / r["latency"]["median_ms"])


def test_device_report_merged_into_results(report, tmp_path, monkeypatch):
    """benchmarks/device_report.py measures a device, and the suite's RESULTS.md section merges it."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import device_report
    import run_suite

    device = device_report.measure(
        [("s", 8, 32)], runs=2, threads=torch.get_num_threads(), export_dir=tmp_path, model_overrides=PLAIN
    )
    rows = {(r["format"], r["precision"], r["backend"], r["setting"]) for r in device["rows"] if "latency" in r}
    assert {
        ("torch eager", "fp32", "torch", "cpu"),
        ("onnx", "fp32", "onnxruntime", "CPUExecutionProvider"),
        ("onnx", "fp16", "onnxruntime", "CPUExecutionProvider"),
    } <= rows
    slug = device_report.device_slug(device["device"])
    assert slug and set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    devices, merged = tmp_path / "devices", tmp_path / "merged"
    write_report(device, devices / slug)
    write_report(report, tmp_path / "suite")
    lines = run_suite.other_devices(tmp_path / "suite" / "report.json", devices, merged)
    text = "\n".join(lines)
    assert "| S 8x32 | uniformer-s-8x32-fp16.onnx (fp16) | onnxruntime CPUExecutionProvider |" in text
    assert len(read_report(merged / "report.json")["devices"]) == 2
    assert run_suite.other_devices(tmp_path / "suite" / "report.json", tmp_path / "none", merged)[2].startswith(
        "None measured yet"
    )


def test_results_keep_a_section_per_cpu_type(tmp_path, monkeypatch):
    """A suite run enters its CPU type (name and best int8 instruction set) and keeps the others';
    a second run on the same type replaces that type's figures only."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import run_suite

    def report(cpu, isas, ms):
        row = dict(variant="s", artifact="s.pte", precision="int8", backend="executorch", setting="XNNPACK")
        return {
            "device": {"cpu": cpu, "instruction_sets": isas, "threads": 2, "versions": {"torch": "2.13.0+cpu"}},
            "roofline": {"fp32_gflops": 100.0, "int8_gops": 400.0},
            "rows": [
                {**row, "latency": {"median_ms": ms}, "speedup_vs_torch_fp32": 3.0},
                {**row, "variant": "xxs", "latency": {"median_ms": 1.0}, "speedup_vs_torch_fp32": 3.0},
            ],
        }

    path = tmp_path / "cpu_types.json"
    vnni = report("AMD EPYC", ["avx2", "avx512f", "avx512_vnni"], 108.0)
    run_suite.record_cpu_type(vnni, path)
    run_suite.record_cpu_type(report("AMD EPYC", ["avx2", "fma"], 660.0), path)
    known = run_suite.record_cpu_type({**vnni, "rows": [{**vnni["rows"][0], "latency": {"median_ms": 99.0}}]}, path)
    assert known == json.loads(path.read_text())
    assert set(known) == {"AMD EPYC, AVX-512 VNNI", "AMD EPYC, AVX2, no VNNI"}
    assert [r["median_ms"] for r in known["AMD EPYC, AVX-512 VNNI"]["rows"]] == [99.0]  # replaced, S rows only
    assert run_suite.cpu_type({"cpu": "Intel Xeon", "instruction_sets": ["avx512_vnni", "amx_int8"]}).endswith("AMX")
    assert run_suite.cpu_type({"cpu": "old", "instruction_sets": []}) == "old (instruction sets not recorded)"
    text = "\n".join(run_suite.cpu_type_sections(known))
    assert "### AMD EPYC, AVX2, no VNNI" in text and "| s.pte | int8 | executorch XNNPACK | 660.0 | 3.00 |" in text

    # openvino_peers.py's verdicts enter the CPU type they ran on, beside the suite's figures or alone,
    # and a later suite run there keeps them.
    def peers(isas, ours_ms, rival_ms, int8_dot):
        rival = "OpenVINO fp32 (our ONNX)"
        return {
            "ours": "OpenVINO int8 IR (ours)",
            "median_ms": {"OpenVINO int8 IR (ours)": ours_ms, rival: rival_ms},
            "fastest_openvino_as_accurate": rival,
            "ratio_to_ours": {rival: {"median": rival_ms / ours_ms, "p10": 1.0, "p90": 2.0}},
            "goal_met": rival_ms / ours_ms >= 1.3,
            "int8_goal_met": ours_ms <= 85 if int8_dot else None,
            "environment": {"processor": "AMD EPYC", "instruction_sets": isas, "versions": {"openvino": "2026.4.1"}},
        }

    run_suite.record_cpu_type(None, path, peers(["avx2", "avx512f", "avx512_vnni"], 80.0, 114.0, True))
    run_suite.record_cpu_type(None, path, peers(["avx2", "fma"], 500.0, 550.0, False))
    known = run_suite.record_cpu_type(None, path, peers(["avx512f"], 300.0, 600.0, False))
    known = run_suite.record_cpu_type({**vnni, "rows": [{**vnni["rows"][0], "latency": {"median_ms": 98.0}}]}, path)
    assert known["AMD EPYC, AVX-512 VNNI"]["openvino_peers"]["ours_ms"] == 80.0
    assert [r["median_ms"] for r in known["AMD EPYC, AVX-512 VNNI"]["rows"]] == [98.0]
    text = "\n".join(run_suite.cpu_type_sections(known))
    assert "OpenVINO fp32 (our ONNX), 114.0 ms: 1.43x our time (goal 1.3x), met; int8 at 85 ms or less: met." in text
    assert "550.0 ms: 1.10x our time (goal 1.3x), NOT met." in text  # no int8 goal without VNNI
    assert "### AMD EPYC, AVX-512, no VNNI" in text and "The suite has not run on this CPU type." in text


def test_accuracy_bounds_judged_only_where_the_clips_resolve_them(monkeypatch):
    """A drop meets a bound when drop + 2 s.e. is within it, fails when drop - 2 s.e. is beyond it,
    and is reported unresolved in between; a peer ahead of ours counts only beyond two s.e."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import quantize_reference
    import run_suite
    from common import EXECUTORCH_QAT_ROW, EXECUTORCH_ROW, drop_verdict

    def row(top1, drop, se, group="ours"):
        return {"group": group, "top1": top1, "drop_points": drop, "drop_se_points": se, "sqnr_db": 25.0}

    assert drop_verdict(row(0.96, 0.10, 0.09), 0.3, 6000) == "met"
    assert drop_verdict(row(0.96, 0.25, 0.10), 0.3, 6000).startswith("not resolved by 6000 clips")
    assert drop_verdict(row(0.96, 0.55, 0.10), 0.3, 6000) == "NOT met"
    # no clip changed among 64: the standard error is 0, yet 64 clips cannot resolve 0.3 points
    assert drop_verdict(row(0.96, 0.0, 0.0), 0.3, 64).startswith("not resolved")
    result = {
        "evaluation_clips": 6000,
        "qat": None,
        "rows": {
            "float (fp32)": row(0.960, 0.0, 0.0, "float"),
            "ours PTQ w8a8 (minmax)": row(0.9598, 0.02, 0.10),
            "peer A": row(0.9603, -0.03, 0.05, "peer"),
            EXECUTORCH_ROW: row(0.9602, 0.2, 0.09),
            EXECUTORCH_QAT_ROW: row(0.9620, -0.20, 0.12),
        },
    }
    targets = quantize_reference.targets_of(result)
    assert targets["w8a8_not_resolvably_less_accurate_than_any_peer"].startswith("met within noise (peer A")
    assert targets["executorch_int8_drop_at_most_0.3"].startswith("not resolved")
    assert targets["executorch_int8_qat_drop_at_most_0.1"] == "met"
    result["rows"]["peer A"]["drop_points"] = -1.0  # a full point ahead, s.e. 0.11: resolved
    assert quantize_reference.targets_of(result)["w8a8_not_resolvably_less_accurate_than_any_peer"].startswith(
        "NOT met"
    )
    # A row scored on more clips than the table is judged on its own: 0.05 ± 0.10 on 6000 clips does
    # not resolve 0.1 points, the same drop ± 0.02 on 24000 clips does.
    result["rows"][EXECUTORCH_QAT_ROW] = row(0.9600, 0.05, 0.10)
    assert quantize_reference.targets_of(result)["executorch_int8_qat_drop_at_most_0.1"].startswith(
        "not resolved by 6000 clips"
    )
    result["rows"][EXECUTORCH_QAT_ROW] = {**row(0.9600, 0.05, 0.02), "clips": 24000}
    assert quantize_reference.targets_of(result)["executorch_int8_qat_drop_at_most_0.1"] == "met"
    assert "after QAT (`--qat-epochs`) (24000 test clips): drop 0.05" in run_suite._accuracy_condition(
        {"format": "executorch"}, result
    )
    result["rows"][EXECUTORCH_QAT_ROW] = row(0.9620, -0.20, 0.12)
    # and its float row of those clips stands just before the first row scored on them
    rows = {
        "float (fp32)": {"group": "float"},  # a row written before rows kept their clip count
        "float (fp32), 24000 clips": {"group": "float", "clips": 24000},
        "a": {"group": "ours", "clips": 6000},
        "b": {"group": "ours", "clips": 24000},
        "float (fp32), 12000 clips": {"group": "float", "clips": 12000},  # its rows rescored since
    }
    assert list(quantize_reference._float_beside_its_rows(rows, 6000)) == [
        "float (fp32)",
        "a",
        "float (fp32), 24000 clips",
        "b",
    ]
    assert quantize_reference._command({"evaluation_clips": 1200, "calibration_clips": 32}).endswith("--num-eval 1200")
    # The suite judges its fastest int8 path by the bounds of that path's format, on that format's rows.
    from common import OPENVINO_IR_QAT_ROW, OPENVINO_IR_ROW

    result["rows"][OPENVINO_IR_ROW] = row(0.9601, 0.05, 0.10)
    assert quantize_reference.targets_of(result)["openvino_int8_drop_at_most_0.3"] == "met"
    openvino = run_suite._accuracy_condition({"format": "openvino"}, result)
    assert "0.3 points calibrated" in openvino and openvino.endswith(
        "calibrated (6000 test clips): drop 0.05 ± 0.10 s.e. points, met"
    )
    result["rows"][OPENVINO_IR_QAT_ROW] = row(0.9600, 0.25, 0.05)
    assert quantize_reference.targets_of(result)["openvino_int8_qat_drop_at_most_0.1"] == "NOT met"
    openvino = run_suite._accuracy_condition({"format": "openvino"}, result)
    assert openvino.endswith(
        "after QAT (`quantize --method qat`) (6000 test clips): drop 0.25 ± 0.05 s.e. points, NOT met"
    )
    executorch = run_suite._accuracy_condition({"format": "executorch"}, result)
    assert "drop 0.20" in executorch and "drop -0.20" in executorch and "drop 0.05" not in executorch
    assert "not measured" in run_suite._accuracy_condition({"format": "onnx"}, result)


def test_rows_rescored_alone_keep_the_table_provenance(monkeypatch):
    """Rescoring the ExecuTorch rows alone, then the OpenVINO rows alone (and the reverse), keeps the
    table's own command and machine and names each partial run beside its rows; neither erases the
    other's provenance or claims a reason it was not run for."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import quantize_reference

    def env(name):
        return {"processor": name, "instruction_sets": ["avx2"], "threads": 2, "torch": "2.13.0+cpu"}

    table = {
        "command": "python benchmarks/quantize_reference.py",
        "environment": env("table CPU"),
        "evaluation_clips": 6000,
    }
    parse = quantize_reference.parser().parse_args

    def rescore(previous, argv, cpu):
        args = parse(argv)
        run = {"command": quantize_reference._command(vars(args)), "environment": env(cpu), "evaluation_clips": 6000}
        return quantize_reference.rescored_alone(run, previous, args)

    openvino = rescore(table, ["--openvino-only", "--num-eval", "24000"], "OpenVINO CPU")
    both = rescore(openvino, ["--executorch-only"], "ExecuTorch CPU")
    again = rescore(both, ["--openvino-only", "--keep-nncf-rows", "--num-eval", "96000"], "later CPU")
    for result in (openvino, both, again):
        assert result["command"] == table["command"] and result["environment"] == table["environment"]
        assert result["evaluation_clips"] == 6000
    assert "executorch_rows_rescored_alone" not in openvino
    assert both["openvino_rows_scored_alone"] == openvino["openvino_rows_scored_alone"]
    assert both["executorch_rows_rescored_alone"] == {
        "command": "python benchmarks/quantize_reference.py --executorch-only",
        "environment": env("ExecuTorch CPU"),
    }
    assert again["executorch_rows_rescored_alone"] == both["executorch_rows_rescored_alone"]
    assert again["openvino_rows_scored_alone"]["command"].endswith("--num-eval 96000 --openvino-only --keep-nncf-rows")
    assert again["openvino_rows_scored_alone"]["nncf_rows"]["command"].endswith("--num-eval 24000 --openvino-only")
    first_executorch = rescore(table, ["--executorch-only"], "ExecuTorch CPU")
    assert (
        rescore(first_executorch, ["--openvino-only"], "OpenVINO CPU")["executorch_rows_rescored_alone"]
        == (first_executorch["executorch_rows_rescored_alone"])
    )


def test_plots_use_an_accuracy_that_means_something(tmp_path):
    """Top-1 with its interval only with labels and enough clips; otherwise the logit SQNR (float-
    exact rows at the cap); one latency-vs-accuracy panel per model."""
    pytest.importorskip("matplotlib", reason="plots are an optional extra")
    from PIL import Image  # matplotlib's own dependency

    from uniformer_edge.benchmark.report import _accuracy_axis, _plots

    def row(variant, precision, median, sqnr, top1=None):
        accuracy = {"vs_float": {"sqnr_db": sqnr, "top1_agreement": 1.0}}
        if top1 is not None:
            accuracy["top1"] = top1
        latency = {"median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.2, "min_ms": median * 0.8}
        return dict(
            variant=variant, input="8x32", backend="torch", setting="cpu", format="pt2", precision=precision,
            latency=latency, accuracy=accuracy, size_bytes=1e6,
        )  # fmt: skip

    labelled = [row("s", "fp32", 10, float("inf"), 0.60), row("s", "int8", 5, 30.0, 0.58)]
    values, half, label = _accuracy_axis(labelled, 6000)
    assert (
        values == pytest.approx([60.0, 58.0])
        and "95% interval" in label
        and abs(half[0] - 1.96 * (60 * 40 / 6000) ** 0.5) < 1e-9
    )
    values, half, label = _accuracy_axis(labelled, 8)  # 8 clips: an interval of +-34 points says nothing
    assert half is None and values == [80.0, 30.0] and "SQNR" in label
    report = {
        "device": {"hostname": "h", "cpu": "c", "threads": 2},
        "backends": {"torch": "available"},
        "groups": [{"variant": v, "frames": 8, "size": 32, "evaluation_clips": 8} for v in ("s", "xxs")],
        "rows": labelled + [row("xxs", "fp32", 4, float("inf")), row("xxs", "w8", 3, 40.0)],
    }
    written = _plots(report, tmp_path)
    assert written == ["latency_vs_accuracy.png", "latency.png", "size.png"]
    width, height = Image.open(tmp_path / "latency_vs_accuracy.png").size
    assert width > 1.8 * height  # two panels side by side
