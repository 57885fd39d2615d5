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

from common import EXPORTS, environment, machine_line, require_exports, synthetic_test_clip, write_results
from uniformer_edge.export.onnx import ort_session

PROGRAMS = {
    "ExecuTorch int8 (XNNPACK)": ("executorch", "s-executorch/uniformer-s-8x224-int8.pte"),
    "ORT int8 (ours, PT2E QDQ)": ("onnxruntime", "s-onnx/uniformer-s-8x224-int8.onnx"),
    "ORT quantize_static MinMax": ("onnxruntime", "s-onnx/uniformer-s-8x224-int8-ort.onnx"),
}


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
    result = {"runs": args.runs, "threads": args.threads, "profiles": profiles, "environment": environment()}
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
        if "Invalid Unary Op" in prof["ops_ms_per_run"]:
            lines += [
                "XNNPACK's profiler labels GELU, the program's one elementwise unary op, "
                '"Invalid Unary Op" (one instance per MLP).',
                "",
            ]
    lines.append(f"Command: `python benchmarks/profile_ops.py --runs {result['runs']}` ({machine_line(env)}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
