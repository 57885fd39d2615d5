"""`python -m uniformer_edge.benchmark`: latency and accuracy of exported / quantized artifacts
on every backend this device has, against the float model; or `--merge` device reports."""

from __future__ import annotations

import sys

from .._cli import nonnegative_int, positive_int, Parser, run
from .backends import BACKENDS
from .report import merge_reports, write_report
from .run import BenchmarkJob, run_benchmark


def build_parser() -> Parser:
    p = Parser(
        prog="python -m uniformer_edge.benchmark",
        description="Benchmark artifact folders (export outputs with manifest.json, or quantize outputs with "
        "quantized.pt2): latency (median, p90, p99, min, std, clips/s, load time, peak memory, size) "
        "on every backend this device has, and accuracy against the float model. Writes OUT/report.json, "
        "report.md and PNG plots. Backends this device lacks are listed as not available, with the reason.",
    )
    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT_DIR")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), help=f"subset of: {', '.join(BACKENDS)}")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's default)")
    p.add_argument("--batch", type=positive_int, default=1, help="clips per call (default 1)")
    p.add_argument("--runs", type=positive_int, default=20, help="timed runs (default 20)")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed warm-up runs (default 3)")
    p.add_argument("--data", default="synthetic", help="evaluation data: 'synthetic' or an annotation list")
    p.add_argument("--root", help="video folder of --data")
    p.add_argument("--num-clips", type=positive_int, default=32, help="evaluation clips (default 32)")
    p.add_argument("--merge", nargs="+", metavar="REPORT_JSON", help="merge device reports instead of measuring")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--force", action="store_true", help="replace an existing report folder")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge:
        files = write_report(merge_reports(args.merge), args.out, args.force)
        print(f"merged {len(args.merge)} reports into {args.out}: {', '.join(files)}")
        return 0
    job = BenchmarkJob(
        artifacts=tuple(args.artifacts),
        backends=tuple(args.backends),
        threads=args.threads,
        batch=args.batch,
        runs=args.runs,
        warmup=args.warmup,
        data=args.data,
        root=args.root,
        num_clips=args.num_clips,
        out=args.out,
        force=args.force,
    )
    from .._io import check_output_dir

    check_output_dir(job.out, job.force)
    report = run_benchmark(job)
    files = write_report(report, job.out, job.force)
    print(f"wrote {job.out}: {', '.join(files)}" + ("" if report["complete"] else " (partial: interrupted)"))
    return 0 if report["complete"] else 130


if __name__ == "__main__":
    sys.exit(run(main, prog="uniformer_edge.benchmark"))
