"""Where the time goes: per-op profiles of the UniFormer-S 8x224 int8 programs.

    python benchmarks/profile_ops.py [--runs 10] [--threads 2] [--top 15]

Profiles the int8 ExecuTorch program (ETDump: every XNNPACK operator inside the delegate and
every portable kernel outside it) and both int8 ONNX models, ours (PT2E QDQ) and ONNX
Runtime's `quantize_static` MinMax output (ORT's session profiler: every node's kernel time),
on the same clip of the synthetic test split (the clip the suite and the interleaved check
time). Each op kind is reported in ms per run and as a share of the run;
"outside any op" is the rest of the run (the runtime's own dispatch). Reuses the exports of
`export_models.py` / `run_suite.py`. Writes benchmarks/results/profile_ops.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from common import EXPORTS, environment, machine_line, require_exports, roofline, synthetic_test_clip, write_results
from uniformer_edge.export.onnx import ort_session

PROGRAMS = {
    "ExecuTorch int8 (XNNPACK)": ("executorch", "s-executorch/uniformer-s-8x224-int8.pte"),
    "ORT int8 (ours, PT2E QDQ)": ("onnxruntime", "s-onnx/uniformer-s-8x224-int8.onnx"),
    "ORT quantize_static MinMax": ("onnxruntime", "s-onnx/uniformer-s-8x224-int8-ort.onnx"),
}


# The work of the int8 `.pte`, by class, and the XNNPACK operator kinds that do it. ExecuTorch's
# XNNPACK partitioner delegates `bmm` in fp32 only, so attention products stay fp32 in any int8
# program; the depthwise convolutions and the LayerNorm means are fp32 by the int8 recipe
# (`uniformer_edge.quantize.xnnpack`).
WORK = {
    "weight GEMMs (int8)": ("Fully Connected (NC, QS8, QC8W) GEMM", "Convolution (NHWC, QC8) IGEMM"),
    "attention products (fp32)": ("Batch Matrix Multiply (NC, F32) GEMM",),
    "depthwise convolutions (fp32)": ("Convolution (NHWC, F32) DWConv",),
    "LayerNorm means (fp32)": ("Fully Connected (NC, F32) GEMM", "Convolution (NHWC, F32) GEMM"),
}


def program_work(float_model: torch.nn.Module, clip: torch.Tensor) -> tuple[dict[str, int], int]:
    """Multiply-adds of the XNNPACK form of `float_model` by `WORK` class, counted on its export
    (the int8 program has the same ops), and the number of ops in that graph."""
    from uniformer_edge.forms import is_depthwise_conv, xnnpack_form

    graph = torch.export.export(xnnpack_form(float_model, clip.shape[2]), (clip,)).graph
    work = dict.fromkeys(WORK, 0)
    ops = 0
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        ops += 1
        out = node.meta["val"]
        if node.target == torch.ops.aten.bmm.default:
            work["attention products (fp32)"] += out.numel() * node.args[0].meta["val"].shape[-1]
        elif node.target in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default):
            weight = node.args[1].meta["val"]
            per_output = weight[0].numel()  # in_features, or in_channels / groups * kh * kw
            if weight.shape[0] == 1:  # a mean over channels (`LayerNormAsXnnpackOps`)
                kind = "LayerNorm means (fp32)"
            elif node.target == torch.ops.aten.conv2d.default and is_depthwise_conv(node):
                kind = "depthwise convolutions (fp32)"
            else:
                kind = "weight GEMMs (int8)"
            work[kind] += out.numel() * per_output
    return work, ops


def work_floor(work: dict[str, int], per_kind: dict[str, float], ceilings: dict) -> dict[str, dict]:
    """Per work class: GMAC, the profile's ms, the rate it ran at, and its ms at the fp32 and
    int8 matrix-product ceilings of this CPU."""
    rows = {}
    for name, macs in work.items():
        ms = sum(per_kind.get(kind, 0.0) for kind in WORK[name])
        rows[name] = {
            "gmac": macs / 1e9,
            "ms": ms,
            "gops": 2 * macs / ms / 1e6 if ms else None,
            "ms_at_fp32_roofline": 2 * macs / ceilings["fp32_gflops"] / 1e6,
            "ms_at_int8_roofline": 2 * macs / ceilings["int8_gops"] / 1e6,
        }
    return rows


def profile_executorch(path: Path, clip: torch.Tensor, runs: int, tmp: Path) -> tuple[float, dict[str, float]]:
    """(median ms per run, {op kind: ms per run}) from ETDump. XNNPACK numbers its operators
    ("Convert (NC) #3"); the kind drops the number. Delegate calls and operator calls are
    containers of these and are not counted again."""
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path, enable_etdump=True)
    method = program.load_method("forward")
    for _ in range(runs + 1):  # the median per op instance leaves out the slow first run
        method.execute((clip,))
    program.write_etdump_result_to_file(str(tmp / "runs.etdp"), str(tmp / "runs.bin"))
    frame = Inspector(etdump_path=str(tmp / "runs.etdp")).to_dataframe()
    frame = frame[frame.event_block_name == "Execute"]
    # one row per op instance, its median over the runs
    total = float(frame.loc[frame.event_name == "Method::execute", "p50 (ms)"].iloc[0])
    leaves = frame[frame.is_delegated_op.astype(bool) | frame.event_name.str.startswith("native_call_")]
    kinds = leaves.event_name.str.replace(r" #\d+$", "", regex=True).str.replace("native_call_", "portable ")
    per_kind = leaves.groupby(kinds)["p50 (ms)"].sum()
    return total, {str(k): float(v) for k, v in per_kind.items()}


def profile_onnxruntime(
    path: Path, clip: torch.Tensor, runs: int, threads: int, tmp: Path
) -> tuple[float, dict[str, float]]:
    """(median ms per run, {op type: ms per run}) from ONNX Runtime's profiler, warm-up run
    excluded: node kernel times whose start falls inside a profiled run."""
    session = ort_session(path, threads, profile_prefix=tmp / "ort")
    feed = {"video": clip.numpy()}
    for _ in range(runs + 1):
        session.run(["logits"], feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[1:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in model_runs]
    per_kind: dict[str, float] = {}
    for e in events:
        if (
            e.get("cat") == "Node"
            and e["name"].endswith("_kernel_time")
            and any(start <= e["ts"] <= end for start, end in windows)
        ):
            kind = e["args"]["op_name"]
            per_kind[kind] = per_kind.get(kind, 0.0) + e["dur"] / 1000 / len(windows)
    return statistics.median((end - start) / 1000 for start, end in windows), per_kind


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="profiled runs per program, after one warm-up run")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--top", type=int, default=15, help="op kinds listed per program in the markdown")
    args = p.parse_args()
    require_exports(rel for _, rel in PROGRAMS.values())
    torch.set_num_threads(args.threads)
    clip = synthetic_test_clip()
    profiles = {}
    for name, (runtime, rel) in PROGRAMS.items():
        with tempfile.TemporaryDirectory() as tmp:
            if runtime == "executorch":
                total, per_kind = profile_executorch(EXPORTS / rel, clip, args.runs, Path(tmp))
            else:
                total, per_kind = profile_onnxruntime(EXPORTS / rel, clip, args.runs, args.threads, Path(tmp))
        ops = dict(sorted(per_kind.items(), key=lambda kv: -kv[1]))
        profiles[name] = {
            "artifact": rel,
            "ms_per_run": total,
            "ops_ms_per_run": ops,
            "outside_any_op_ms": total - sum(ops.values()),
        }
        print(f"{name}: {total:.1f} ms per run, {len(ops)} op kinds", flush=True)
    from uniformer_edge.benchmark import discover

    ceilings = roofline(args.threads)
    work, graph_ops = program_work(discover(EXPORTS / "s-executorch")[0].float_model(), clip)
    ours = profiles["ExecuTorch int8 (XNNPACK)"]
    ours["work"] = work_floor(work, ours["ops_ms_per_run"], ceilings)
    ours["form_graph_ops"] = graph_ops
    result = {
        "runs": args.runs,
        "threads": args.threads,
        "roofline": ceilings,
        "profiles": profiles,
        "environment": environment(),
    }
    write_results("profile_ops", result, markdown(result, args.top))


def markdown(result: dict, top: int) -> str:
    env = result["environment"]
    lines = [
        "# Where the time goes: per-op profiles, UniFormer-S 8x224 int8",
        "",
        f"{result['runs']} profiled runs after one warm-up, one synthetic test clip, {result['threads']} threads. "
        "Each op kind's time is the sum over its instances of their median per run. Profilers add "
        "their own overhead and this machine's speed drifts between runs, so read the shares; the "
        "suite and the interleaved check give the latencies.",
        "",
    ]
    for name, prof in result["profiles"].items():
        total = prof["ms_per_run"]
        lines += [
            f"## {name}: {total:.1f} ms per run",
            "",
            f"`{prof['artifact']}`",
            "",
            "| op kind | ms per run | share |",
            "|---|---|---|",
        ]
        ops = list(prof["ops_ms_per_run"].items())
        rest = sum(ms for _, ms in ops[top:])
        others = len(ops) - top
        rows = (
            ops[:top]
            + ([(f"{others} other op kind" + ("s" if others > 1 else ""), rest)] if others > 0 else [])
            + [("outside any op", prof["outside_any_op_ms"])]
        )
        lines += [f"| {kind} | {ms:.2f} | {100 * ms / total:.1f}% |" for kind, ms in rows]
        lines.append("")
        if "work" in prof:
            lines += work_markdown(prof, result["roofline"])
        if "Invalid Unary Op" in prof["ops_ms_per_run"]:
            lines += [
                "XNNPACK's profiler labels GELU, the program's one elementwise unary op, "
                '"Invalid Unary Op" (one instance per MLP).',
                "",
            ]
    lines.append(f"Command: `python benchmarks/profile_ops.py --runs {result['runs']}` ({machine_line(env)}).")
    return "\n".join(lines) + "\n"


def work_markdown(prof: dict, ceilings: dict) -> list[str]:
    lines = [
        f"Its work, counted on the XNNPACK form's export ({prof['form_graph_ops']} ops), against this CPU's "
        f"matrix-product ceilings (fp32 {ceilings['fp32_gflops']:.0f} GFLOP/s, int8 {ceilings['int8_gops']:.0f} "
        "GOP/s, as the suite measures them):",
        "",
        "| work | GMAC | ms per run | rate (GOP/s) | ms at the fp32 ceiling | ms at the int8 ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in prof["work"].items():
        rate = f"{row['gops']:.0f}" if row["gops"] else "-"
        lines.append(
            f"| {name} | {row['gmac']:.2f} | {row['ms']:.2f} | {rate} | {row['ms_at_fp32_roofline']:.1f} | "
            f"{row['ms_at_int8_roofline']:.1f} |"
        )
    counted = sum(row["ms"] for row in prof["work"].values())
    lines += [
        "",
        f"Everything else (elementwise ops, softmax, layout changes, conversions, time outside any op): "
        f"{prof['ms_per_run'] - counted:.1f} ms of {prof['ms_per_run']:.1f}. ExecuTorch's XNNPACK partitioner "
        "delegates `bmm` in fp32 only, so the attention products cannot run in int8 in a `.pte`.",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
