"""The project's benchmark suite: speed of every precision on every backend, beside the peers,
with this machine's roofline, and the accuracy columns of the synthetic reference model.

    python benchmarks/run_suite.py [--models s xxs] [--runs 20] [--qat-clips 16]

For each model (UniFormer-S 8x224, XXS 8x160; random weights, speed only) it exports ONNX
(fp32, fp16, PT2E int8/w8/w4, ORT quantize_static MinMax and Entropy), ExecuTorch XNNPACK
(fp32, fp16, int8, w8, w4) and Core ML weight compression (w8, palettize4: size only off
macOS), quantizes PT2E w8a8 by PTQ and by QAT (for speed; QAT accuracy comes from the reference
model) and w8, w4 by PTQ, and measures torchao's stock X86 PT2E flow in PyTorch; then runs
`uniformer_edge.benchmark` over everything. Writes benchmarks/results/suite/ (report.json,
plots) and benchmarks/RESULTS.md, which opens with the issue's matrix (precision x backend,
each cell a measured row or the reason there is none), keeps a section per CPU type the suite
has run on (benchmarks/results/cpu_types.json) and merges in the device reports of
`device_report.py`.
Run it on an otherwise idle machine: latencies of concurrent jobs mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from common import (
    EXPORTS,
    INT8_DROP_BOUNDS,
    REPO,
    RESULTS,
    drop_verdict,
    environment,
    roofline,
    row_clips,
    torchao_x86_prepare,
    x86_census_text,
)
from device_report import DEVICES
from openvino_peers import GOAL, INT8_GOAL_MS
from paired_targets import GOALS
from uniformer_edge._io import atomic_write_text
from uniformer_edge.benchmark import BenchmarkJob, merge_reports, read_report, run_benchmark, write_report
from uniformer_edge.benchmark.report import device_label, peak_memory, unavailable_settings
from uniformer_edge.benchmark.run import latency_stats
from uniformer_edge.export import FORMATS, RUNTIMES, ExportJob, run_export
from uniformer_edge.models import create_model, get_variant
from uniformer_edge.quantize import QuantConfig, QuantizeJob, run_job


# Every format in every precision, except the Core ML packages that cannot be timed off a Mac
# (the suite times them on macOS): one per compression kind there.
SUITE_EXPORTS = {
    name: tuple(p for p in fmt.precisions if name != "coreml" or p in ("fp16", "w8", "palettize4"))
    for name, fmt in FORMATS.items()
}
# PT2E programs timed in torch: (folder, recipe, method)
SUITE_QUANTIZED = (("ptq", "w8a8", "ptq"), ("qat", "w8a8", "qat"), ("ptq-w8", "w8", "ptq"), ("ptq-w4", "w4", "ptq"))


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def torchao_x86_latency(variant: str, frames: int, size: int, runs: int) -> dict:
    """torchao's stock X86 PT2E flow as documented: X86InductorQuantizer, convert, torch.compile;
    with what the quantizer made int8 (`torchao_x86_prepare`)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from uniformer_edge.models import deploy

    torch.manual_seed(0)
    model = deploy(create_model(variant).eval())
    x = torch.randn(1, 3, frames, size, size)
    prepared, census = torchao_x86_prepare(torch.export.export(model, (x,)).module())
    with torch.no_grad():
        prepared(x)
        converted = convert_pt2e(prepared)
        compiled = torch.compile(converted)
        started = time.perf_counter()
        compiled(x)
        compile_s = time.perf_counter() - started
        for _ in range(2):
            compiled(x)
        times = [_time(lambda: compiled(x)) for _ in range(runs)]
    return {**latency_stats(times, 1), "compile_s": compile_s, "quantized": census}


OURS_INT8 = ("int8", "int8-qat")  # our PT2E W8A8 graphs, whatever runtime runs them
ORT_STATIC = ("int8-ort", "int8-ort-entropy")


def performance_targets(rows: list[dict], reference: Optional[dict], variant: str = "s") -> list[str]:
    """The issue's targets for UniFormer-S: best int8 path >= 2.5x torch eager fp32 and >= 1.5x
    the faster ORT quantize_static output, all measured in this run."""
    timed = [r for r in rows if r["variant"] == variant and "latency" in r]
    if not timed:
        return []
    median = lambda r: r["latency"]["median_ms"]  # noqa: E731
    best = min((r for r in timed if r["precision"] in OURS_INT8), key=median)
    ort = min((r for r in timed if r["precision"] in ORT_STATIC), key=median)
    # The ratio stored in the row is to the baseline timed right after it.
    vs_eager, vs_ort = best["speedup_vs_torch_fp32"], median(ort) / median(best)
    eager_ms = median(best) * vs_eager
    min_eager, min_ort = (GOALS[key][1] for key in ("vs_torch_eager_fp32", "vs_faster_ort_quantize_static"))
    lines = [
        "## Performance targets (UniFormer-S 8x224, this run)",
        "",
        f"Best int8 path: {best['artifact']} on {best['backend']}, {median(best):.1f} ms "
        f"(SQNR vs float {best['accuracy']['vs_float']['sqnr_db']:.1f} dB).",
        "",
        f"- at least {min_eager}x torch eager fp32 ({eager_ms:.1f} ms): {vs_eager:.2f}x, "
        f"{_verdict(vs_eager >= min_eager)}",
        f"- at least {min_ort}x ORT quantize_static ({ort['artifact']}, {median(ort):.1f} ms): {vs_ort:.2f}x, "
        f"{_verdict(vs_ort >= min_ort)}",
    ]
    lines += [_accuracy_condition(best, reference), ""]
    paired = RESULTS / "paired_targets.json"
    if paired.is_file():
        data = json.loads(paired.read_text())
        per_process = [pp["speedup_vs_torch_eager_fp32"] for pp in data["processes"]]
        lines += [
            f"Interleaved check ([paired_targets.md](results/paired_targets.md), {data['rounds']} rounds of "
            f"every program back to back over {len(per_process)} fresh processes, each program warmed once per "
            "round, less sensitive to machine-speed drift than the blocks above; torch eager fp32 settles at a "
            f"different speed in each process, the speed-up over it ranged {min(per_process):.2f}-"
            f"{max(per_process):.2f}x between processes; ours is the faster of our int8 programs there, "
            f"{data['ours']}):"
        ]
        for key, s in data["speedup_of_ours"].items():
            against = "torch eager fp32" if key == "vs_torch_eager_fp32" else data["faster_ort"]
            name, minimum = GOALS[key]
            lines.append(
                f"- at least {minimum}x {against}: {s['median']:.2f}x (per-round p10-p90 {s['p10']:.2f}-"
                f"{s['p90']:.2f}x), {_verdict(data['targets'][name])}"
            )
        lines.append("")
    profile = RESULTS / "profile_ops.json"
    if profile.is_file():
        data = json.loads(profile.read_text())
        lines.append(
            "Where the time goes ([profile_ops.md](results/profile_ops.md), per-op profiles), largest op kinds:"
        )
        for name, prof in data["profiles"].items():
            largest = ", ".join(
                f"{kind} {100 * ms / prof['ms_per_run']:.0f}%" for kind, ms in list(prof["ops_ms_per_run"].items())[:3]
            )
            lines.append(f"- {name}: {largest}")
        lines.append("")
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _accuracy_condition(best: dict, reference: Optional[dict]) -> str:
    """The targets hold "at the accuracy bounds": the best path's program, built from the trained
    reference model, within INT8_DROP_BOUNDS of float (after calibration alone, and after QAT where
    its format has a bound for it: the same graph, so the same speed)."""
    rows = reference["rows"] if reference else {}
    mine = [(how, name, bound) for _, fmt, how, name, bound in INT8_DROP_BOUNDS if fmt == best["format"]]
    bounds = " and ".join(f"{bound:g} points {how}" for how, _, bound in mine) or "none set for this format"
    if not any(name in rows for _, name, _ in mine):
        return (
            f"- at the accuracy bounds (top-1 drop at most {bounds}): not measured for this path "
            "(run `python benchmarks/quantize_reference.py`)"
        )
    verdicts = []
    for how, name, bound in mine:
        if name in rows:
            row, clips = rows[name], row_clips(rows[name], reference)
            verdicts.append(
                f"{how} ({clips} test clips): drop {row['drop_points']:.2f} ± {row['drop_se_points']:.2f} s.e. "
                f"points, {drop_verdict(row, bound, clips)}"
            )
    return (
        f"- at the accuracy bounds (top-1 drop at most {bounds}; the same recipe on the trained reference model, "
        "[quantize_reference.md](results/quantize_reference.md)): " + "; ".join(verdicts)
    )


def reference_accuracy(data: Optional[dict]) -> list[str]:
    """Accuracy columns of every method on the trained synthetic reference model."""
    if data is None:
        return ["(no accuracy table: run `python benchmarks/quantize_reference.py` to write quantize_reference.md)", ""]
    lines = [
        "## Accuracy on the synthetic reference model",
        "",
        f"From [quantize_reference.md](results/quantize_reference.md): {data['evaluation_clips']} test clips "
        "(a row scored on more, to resolve a bound, is scored against the float row of its clips), "
        f"{data['calibration_clips']} calibration clips.",
        "",
        "| method | test clips | top-1 | drop ± s.e. (pts) | logit SQNR (dB) | top-1 agreement with float | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in data["rows"].items():
        lines.append(
            f"| {name} | {row_clips(row, data)} | {100 * row['top1']:.2f}% | {row['drop_points']:.2f} ± "
            f"{row['drop_se_points']:.2f} | "
            f"{row['sqnr_db']:.1f} | "
            f"{100 * row['top1_agreement']:.2f}% | {row.get('note', '')} |"
        )
    return lines + [""]


def openvino_peers() -> list[str]:
    """RESULTS.md's section from `openvino_peers.py`: our programs and OpenVINO's in the same rounds."""
    path = RESULTS / "openvino_peers.md"
    if not path.is_file():
        return []
    body = path.read_text().splitlines()[1:]  # its own title
    lines = ["## Against OpenVINO", *body, "([openvino_peers.md](results/openvino_peers.md))", ""]
    diagnosis = RESULTS / "nncf_diagnosis.md"
    if diagnosis.is_file():
        lines += [
            "Why NNCF's models lose accuracy ([nncf_diagnosis.md](results/nncf_diagnosis.md)): NNCF's default "
            "preset quantizes the elementwise adds and multiplies, the residual stream among them, which our "
            "recipes keep float; its transformer preset's SmoothQuant on the MatMuls breaks UniFormer-S with "
            "random weights. On the trained reference model the accuracy table above scores all three by top-1.",
            *diagnosis.read_text().splitlines()[1:],
            "",
        ]
    return lines


def other_devices(suite_report: Path, devices: Path = DEVICES, merged: Path = RESULTS / "merged") -> list[str]:
    """RESULTS.md's section on the device reports under `devices` (`device_report.py`), each
    device's rows against its own CPU's torch eager fp32; with any, the suite's report and theirs
    merged into `merged` (a table and plots per device)."""
    lines = ["## Other devices", ""]
    reports = sorted(devices.glob("*/report.json"))
    if not reports:
        return lines + [
            "None measured yet. `python benchmarks/device_report.py` measures the float models on "
            "another machine (the float GPU model and ONNX Runtime CUDA where it has a GPU; its "
            "docstring says how to run it on a lent GPU machine) into results/devices/.",
            "",
        ]
    write_report(merge_reports([suite_report, *reports]), merged, force=True)
    link = Path(os.path.relpath(merged / "report.md", REPO / "benchmarks")).as_posix()
    lines += [
        f"Float models on each device (`benchmarks/device_report.py`), random weights; merged with this "
        f"machine's suite in [{link}]({link}).",
        "",
    ]
    for path in reports:
        report = read_report(path)
        lines += [f"### {device_label(report['device'])}", ""]
        lines += [f"- {line}" for line in unavailable_settings(report)] + [""]
        lines += [
            "| model | artifact (precision) | backend | median ms | x torch eager fp32 on its CPU | "
            "peak RSS (GPU) MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["rows"]:
            if "latency" in r:
                lines.append(
                    f"| {r['variant'].upper()} {r['input']} | {r['artifact']} ({r['precision']}) | "
                    f"{r['backend']} {r['setting']} | {r['latency']['median_ms']:.1f} | "
                    f"{r['speedup_vs_torch_fp32']:.2f} | {peak_memory(r)} |"
                )
        lines.append("")
    return lines


# The suite's matrix: rows (label -> precision of the report rows), columns the CPU runtimes.
MATRIX_ROWS = {"fp32": "fp32", "fp16": "fp16", "w8": "w8", "w8a8 PTQ": "int8", "w8a8 QAT": "int8-qat", "w4": "w4"}
MATRIX_BACKENDS = ("torch", "onnxruntime", "executorch")


CPU_TYPES = RESULTS / "cpu_types.json"  # one entry per CPU type the suite has measured
# Instruction sets that set a CPU type's int8 speed, best first (`uniformer_edge._cpu.INT8_ISAS` names).
_CPU_CLASSES = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))


def cpu_type(device: dict) -> str:
    """A suite report's CPU type: the processor's name and the best of its int8 instruction sets."""
    isas = device.get("instruction_sets")
    if not isas:
        return f"{device['cpu']} (instruction sets not recorded)"
    found = next((label for isa, label in _CPU_CLASSES if isa in isas), None)
    if found is None:
        found = "AVX-512, no VNNI" if "avx512f" in isas else "AVX2, no VNNI" if "avx2" in isas else "no AVX2"
    return f"{device['cpu']}, {found}"


def cpu_type_summary(report: dict, variant: str = "s") -> dict:
    """What RESULTS.md keeps of a suite run on its CPU type: the roofline and UniFormer-S's rows."""
    rows = [
        {
            "artifact": r["artifact"],
            "precision": r["precision"],
            "runtime": f"{r['backend']} {r['setting']}",
            "median_ms": r["latency"]["median_ms"],
            "speedup_vs_torch_fp32": r["speedup_vs_torch_fp32"],
        }
        for r in report["rows"]
        if r["variant"] == variant and "latency" in r
    ]
    return {
        "cpu": report["device"]["cpu"],
        "instruction_sets": report["device"].get("instruction_sets"),
        "threads": report["device"]["threads"],
        "versions": report["device"].get("versions", {}),
        "roofline": report["roofline"],
        "rows": sorted(rows, key=lambda r: r["median_ms"]),
    }


def peers_summary(peers: dict) -> dict:
    """What a CPU type keeps of `openvino_peers.json`: its two speed goals, measured on that CPU."""
    ours, rival = peers["ours"], peers["fastest_openvino_as_accurate"]
    return {
        "ours": ours,
        "ours_ms": peers["median_ms"][ours],
        "fastest_openvino_as_accurate": rival,
        "rival_ms": peers["median_ms"][rival] if rival else None,
        "ratio": peers["ratio_to_ours"][rival] if rival else None,
        "goal_met": peers["goal_met"],
        "int8_goal_met": peers["int8_goal_met"],
        "openvino": peers["environment"]["versions"].get("openvino"),
    }


def record_cpu_type(report: Optional[dict], path: Path = CPU_TYPES, peers: Optional[dict] = None) -> dict:
    """Enter `report`'s summary (a suite run) and `peers`' (an `openvino_peers.py` run) under the CPU
    type each ran on in `path`, keeping everything else; returns all."""
    known = json.loads(path.read_text()) if path.is_file() else {}
    if report is not None:
        name = cpu_type(report["device"])
        known[name] = {**known.get(name, {}), **cpu_type_summary(report)}
    if peers is not None:
        env = peers["environment"]
        name = cpu_type({"cpu": env["processor"], "instruction_sets": env["instruction_sets"]})
        known[name] = {**known.get(name, {}), "openvino_peers": peers_summary(peers)}
    atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True) + "\n")
    return known


def cpu_type_sections(known: dict) -> list[str]:
    """RESULTS.md's section per CPU type: its roofline and the fastest UniFormer-S programs there."""
    lines = [
        "## Per CPU type",
        "",
        "Every CPU type the suite has run on keeps its figures here (`benchmarks/results/cpu_types.json`); "
        "a run replaces only its own CPU type's. UniFormer-S 8x224, 2-thread medians of the suite's blocks.",
        "",
    ]
    for name, entry in sorted(known.items()):
        lines += [f"### {name}", ""]
        peers = entry.get("openvino_peers")
        if peers:
            lines += [_peers_line(peers), ""]
        if "rows" not in entry:
            lines += ["The suite has not run on this CPU type.", ""]
            continue
        isas = ", ".join(entry["instruction_sets"]) if entry["instruction_sets"] else "not recorded"
        ceilings = entry["roofline"]
        lines += [
            f"Instruction sets: {isas}. Roofline: fp32 {ceilings['fp32_gflops']:.0f} GFLOP/s, int8 "
            f"{ceilings['int8_gops']:.0f} GOP/s. {entry['threads']} threads; torch "
            f"{entry['versions'].get('torch', '?')}, executorch {entry['versions'].get('executorch', '?')}.",
            "",
            "| program | precision | runtime | median ms | x torch eager fp32 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['artifact']} | {r['precision']} | {r['runtime']} | {r['median_ms']:.1f} | "
            f"{r['speedup_vs_torch_fp32']:.2f} |"
            for r in entry["rows"][:5]
        ]
        lines.append("")
    return lines


def _peers_line(peers: dict) -> str:
    """A CPU type's verdicts from `openvino_peers.py`: the 1.3x goal against OpenVINO, and 85 ms int8."""
    line = (
        f"Against OpenVINO {peers['openvino']} ([openvino_peers.md](results/openvino_peers.md), interleaved "
        f"rounds, the last run on this CPU type): ours, {peers['ours']}, {peers['ours_ms']:.1f} ms; "
    )
    if peers["fastest_openvino_as_accurate"] is None:
        line += f"no OpenVINO configuration is as accurate, so the {GOAL}x goal is met"
    else:
        line += (
            f"the fastest OpenVINO configuration at least as accurate, {peers['fastest_openvino_as_accurate']}, "
            f"{peers['rival_ms']:.1f} ms: {peers['ratio']['median']:.2f}x our time (goal {GOAL}x), "
            f"{_verdict(peers['goal_met'])}"
        )
    if peers["int8_goal_met"] is not None:
        line += f"; int8 at {INT8_GOAL_MS:g} ms or less: {_verdict(peers['int8_goal_met'])}"
    return line + "."


def matrix_cell(backend: str, precision: str):
    """(format, precision) of the report row a matrix cell shows, from the registry; None when
    the backend's format has no such precision. torch runs the float model eagerly and the
    quantize outputs (`pt2`, QAT included)."""
    if backend == "torch":
        return ("torch eager", "fp32") if precision == "fp32" else (None if precision == "fp16" else ("pt2", precision))
    fmt = RUNTIMES[backend].format
    return (fmt, precision) if precision in FORMATS[fmt].thresholds else None


NOT_IN_MATRIX = {
    ("fp16", "torch"): "not timed: PyTorch's CPU kernels run fp16 far slower than fp32 (UniFormer-S 8x224: 5.4 s "
    "against 0.35 s a clip); the float model in fp16 on a GPU: Other devices",
    ("w8a8 QAT", "onnxruntime"): "the w8a8 PTQ graph with fine-tuned weights and ranges (`export --quantized` of a "
    "QAT output): its speed",
    ("w8a8 QAT", "executorch"): "the w8a8 PTQ program with fine-tuned weights (`export --qat-epochs`): its speed; "
    "accuracy below",
}


def matrix(rows: list[dict], variant: str) -> list[str]:
    """Precision x backend for `variant`: median ms and the ratio to torch eager fp32, or why not."""
    timed = {}
    for r in rows:  # the first of equal rows: the exports' baseline, not the quantize outputs'
        if r["variant"] == variant and "latency" in r and r["setting"] in ("cpu", "CPUExecutionProvider", "XNNPACK"):
            timed.setdefault((r["backend"], r["format"], r["precision"]), r)
    lines = ["| precision | " + " | ".join(MATRIX_BACKENDS) + " |", "|---|---|---|---|"]
    for label, precision in MATRIX_ROWS.items():
        out = []
        for backend in MATRIX_BACKENDS:
            cell = matrix_cell(backend, precision)
            row = timed.get((backend, *cell)) if cell else None
            out.append(
                f"{row['latency']['median_ms']:.1f} ms ({row['speedup_vs_torch_fp32']:.2f}x)"
                if row
                else NOT_IN_MATRIX.get((label, backend), "not measured in this run")
            )
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    return lines + [""]


def write_results_md(report: dict, models, threads: int, suite_report: Path) -> None:
    """benchmarks/RESULTS.md from a suite report (the one just measured, or --from-report)."""
    path = RESULTS / "quantize_reference.json"
    reference = json.loads(path.read_text()) if path.is_file() else None
    ceilings, extra = report["roofline"], report["peers_measured_in_torch"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured by `python benchmarks/run_suite.py` on {cpu_type(report['device'])} ({threads} threads; "
        f"instruction sets: {', '.join(report['device'].get('instruction_sets') or ['not recorded'])}). Speed "
        "rows use random weights (speed does not depend on them); QAT rows are speed-only (16 clips of "
        "fine-tuning on random weights), the accuracy of every method on the trained reference model is "
        "in the last table. Each artifact's ratio is to torch eager fp32 of its own source model, timed again "
        "right after the artifact's runs (the baseline rows show each group's first block: one for the "
        "export folders, one for the quantize outputs).",
        "",
        f"Roofline here: fp32 matrix product {ceilings['fp32_gflops']:.0f} GFLOP/s, int8 "
        f"{ceilings['int8_gops']:.0f} GOP/s (`torch._int_mm`), both 2048^3.",
        "",
    ]
    for variant in models:
        if any(r["variant"] == variant for r in report["rows"]):
            lines += [
                f"### Precision x backend, UniFormer-{variant.upper()} (median, x torch eager fp32 timed right after)",
                "",
            ] + matrix(report["rows"], variant)
    for variant in models:
        rows, baseline_of = [], None
        for r in report["rows"]:
            if r["variant"] != variant or "latency" not in r:
                continue
            if r["format"] == "torch eager" and r["setting"] == "cpu":
                baseline_of = r
            rows.append((r, baseline_of))
        if not rows:
            continue
        lines += [
            f"## UniFormer-{variant.upper()} {rows[0][0]['input']}",
            "",
            "| artifact | backend | median ms | x torch eager fp32 | size MB | SQNR vs float (dB) |",
            "|---|---|---|---|---|---|",
        ]
        for r, base in sorted(rows, key=lambda rb: rb[0]["latency"]["median_ms"]):
            name = f"{r['artifact']} ({r['precision']})"
            if r is base:
                name = "torch eager fp32 baseline of " + (
                    "the quantize outputs" if _next_format(rows, r) == "pt2" else "the exports"
                )
            lines.append(
                f"| {name} | {r['backend']} {r['setting']} | {r['latency']['median_ms']:.1f} | "
                f"{r['speedup_vs_torch_fp32']:.2f} | {r['size_bytes'] / 1e6:.1f} | "
                f"{r['accuracy']['vs_float']['sqnr_db']:.1f} |"
            )
        first_base = rows[0][1]["latency"]["median_ms"]
        x86 = extra[f"{variant} torchao X86 PT2E + torch.compile"]
        lines.append(
            f"| torchao X86 PT2E int8 + torch.compile (peer; {x86_census_text(x86['quantized'])}) | "
            f"torch inductor | {x86['median_ms']:.1f} | {first_base / x86['median_ms']:.2f} | - | - |"
        )
        lines.append("")
    lines += performance_targets(report["rows"], reference) + reference_accuracy(reference)
    lines += openvino_peers()
    peers = RESULTS / "openvino_peers.json"
    lines += cpu_type_sections(
        record_cpu_type(report, peers=json.loads(peers.read_text()) if peers.is_file() else None)
    )
    lines += other_devices(suite_report)
    lines += ["Full per-device report: [results/suite/report.md](results/suite/report.md).", ""]
    atomic_write_text(REPO / "benchmarks" / "RESULTS.md", "\n".join(lines))
    print("\n".join(lines))


def _next_format(rows, baseline) -> str:
    after = [r for r, base in rows if base is baseline and r is not baseline]
    return after[0]["format"] if after else ""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["s", "xxs"])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--exports",
        type=Path,
        default=EXPORTS,
        help="folder of <variant>-<format>/ exports to reuse, e.g. from export_models.py; missing ones "
        f"are exported there (default {EXPORTS})",
    )
    p.add_argument("--qat-clips", type=int, default=16, help="QAT clips (speed rows only; default 16)")
    p.add_argument(
        "--from-report",
        type=Path,
        metavar="REPORT_JSON",
        help="only rewrite RESULTS.md from an earlier suite report (no measurement)",
    )
    args = p.parse_args()
    if args.from_report:
        report = json.loads(args.from_report.read_text())
        write_results_md(report, args.models, report["device"]["threads"], args.from_report)
        return
    ceilings = roofline(args.threads)
    print(f"roofline: {ceilings}", flush=True)
    extra = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for variant in args.models:
            frames, size = get_variant(variant).default_input
            base = Path(tmp) / variant
            common = dict(variant=variant, frames=frames, size=size, check_clips=1)
            exported = []
            for fmt, precisions in SUITE_EXPORTS.items():
                folder = args.exports / f"{variant}-{fmt}"
                if not (folder / "manifest.json").is_file():  # else reuse benchmarks/export_models.py output
                    run_export(
                        ExportJob(
                            **common, formats=(fmt,), precisions=precisions, target="ios18", out=str(folder), force=True
                        )
                    )
                exported.append(str(folder))
            for folder, recipe, method in SUITE_QUANTIZED:
                qat = dict(train_data="synthetic", qat_clips=args.qat_clips) if method == "qat" else {}
                run_job(
                    QuantizeJob(
                        variant=variant,
                        frames=frames,
                        size=size,
                        num_eval=2,
                        method=method,
                        config=QuantConfig(recipe=recipe, qat=method == "qat"),
                        out=str(base / folder),
                        **qat,
                    )
                )
            folders += exported + [str(base / folder) for folder, _, _ in SUITE_QUANTIZED]
            extra[f"{variant} torchao X86 PT2E + torch.compile"] = torchao_x86_latency(variant, frames, size, args.runs)
        report = run_benchmark(
            BenchmarkJob(
                artifacts=tuple(folders),
                threads=args.threads,
                runs=args.runs,
                warmup=3,
                num_clips=8,
                out=str(RESULTS / "suite"),
            )
        )
    report["roofline"] = ceilings
    report["peers_measured_in_torch"] = extra
    write_report(report, RESULTS / "suite", force=True)
    write_results_md(report, args.models, args.threads, RESULTS / "suite" / "report.json")
    print(json.dumps({"environment": environment()}))


if __name__ == "__main__":
    main()
