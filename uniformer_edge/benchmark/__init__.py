"""Per-device latency and accuracy reports against the float model, mergeable across devices."""

from .backends import BACKENDS, Artifact, backend_status, discover
from .report import merge_reports, read_report, render_markdown, write_report
from .run import BENCHMARK_REPORT_SCHEMA, BenchmarkJob, latency_stats, run_benchmark

__all__ = [
    "BenchmarkJob",
    "run_benchmark",
    "latency_stats",
    "BENCHMARK_REPORT_SCHEMA",
    "BACKENDS",
    "Artifact",
    "discover",
    "backend_status",
    "write_report",
    "merge_reports",
    "read_report",
    "render_markdown",
]
