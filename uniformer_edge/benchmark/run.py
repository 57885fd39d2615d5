"""Latency and accuracy of every artifact on every backend this device has, against the float
reference (the float PyTorch model on a GPU when one is present, else on CPU). Every speed
figure is also a ratio to the float model's deploy form in torch eager fp32 on this CPU; on a
CUDA device the float model itself is timed there too (fp32 and fp16)."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..calibration import build_dataset
from ..engine import agreement, topk_accuracy
from ..models import deploy
from ..export import Runner, get_runtime
from .backends import BACKENDS, Artifact, backend_status, discover, runners_for, setting_status
from .device import fingerprint

__all__ = ["BenchmarkJob", "run_benchmark", "latency_stats", "BENCHMARK_REPORT_SCHEMA"]

BENCHMARK_REPORT_SCHEMA = 1


@dataclass
class BenchmarkJob:
    artifacts: tuple[str, ...]
    backends: tuple[str, ...] = tuple(BACKENDS)
    threads: Optional[int] = None
    batch: int = 1
    runs: int = 20
    warmup: int = 3
    data: str = "synthetic"
    root: Optional[str] = None
    num_clips: int = 32
    out: str = "benchmark-report"
    force: bool = False

    def __post_init__(self):
        for b in self.backends:
            if b not in BACKENDS:
                raise InputError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        for name, value in (("--batch", self.batch), ("--runs", self.runs), ("--num-clips", self.num_clips)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be non-negative, got {self.warmup}")
        if not self.artifacts:
            raise InputError("give at least one artifact folder")


def _reset_peak_rss() -> None:
    """Linux lets a process reset its peak RSS (VmHWM); elsewhere the peak is process-wide."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def latency_stats(seconds: list[float], batch: int) -> dict:
    ms = sorted(s * 1000 for s in seconds)

    def pct(q):
        return ms[min(len(ms) - 1, max(0, round(q * (len(ms) - 1))))]

    median = statistics.median(ms)
    return {
        "median_ms": median,
        "p10_ms": pct(0.1),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "min_ms": ms[0],
        "std_ms": statistics.pstdev(ms),
        "runs": len(ms),
        "throughput_clips_per_s": 1000 * batch / median,
    }


@torch.no_grad()
def _measure(runner: Runner, example: torch.Tensor, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        runner.fn(example)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.fn(example)
        times.append(time.perf_counter() - started)
    return latency_stats(times, len(example))


@torch.no_grad()
def _logits(fn, clips: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(clips[i : i + batch]).float().cpu() for i in range(0, len(clips), batch)])


def _float_reference(artifact: Artifact):
    model = artifact.float_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), device


def _float_gpu_rows(
    cpu_model, clips, example, job: BenchmarkJob, score, baseline: Runner, common: dict, device: str = "cuda"
):
    """The float model (deploy form) on the GPU in fp32 and fp16, timed from a clip in host
    memory to its logits back in host memory (what a caller of the GPU model waits for)."""
    gpu = torch.device(device).type == "cuda"
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        started = time.perf_counter()
        gpu_model = copy.deepcopy(cpu_model).to(device, dtype)
        load_s = time.perf_counter() - started
        runner = Runner("torch", device, lambda x, m=gpu_model, d=dtype: m(x.to(device, d)).float().cpu())
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        row = {
            **common,
            "precision": precision,
            "backend": "torch",
            "load_s": load_s,
            "size_bytes": sum(p.numel() * p.element_size() for p in gpu_model.parameters()),
            **_timed(runner, clips, example, job, score, baseline),
        }
        if gpu:
            row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        yield row
        del gpu_model


def _timed(runner: Runner, clips, example, job: BenchmarkJob, score, baseline: Runner) -> dict:
    """One row's measurements: the scored logits of `clips`, latency, peak RSS, and the ratio to
    the torch eager fp32 baseline."""
    logits = _logits(runner.fn, clips, job.batch)
    latency = _measure(runner, example, job.warmup, job.runs)
    peak_rss = _peak_rss_bytes()
    # The baseline is timed again right after each row: a machine whose speed drifts over a long
    # run (throttling, a busy neighbour) would otherwise skew every ratio by the drift since the
    # group's first baseline block.
    base_ms = _measure(baseline, example, 1, max(3, job.runs // 4))["median_ms"]
    return {
        "setting": runner.setting,
        "latency": latency,
        "peak_rss_bytes": peak_rss,
        "torch_fp32_median_ms": base_ms,
        "speedup_vs_torch_fp32": base_ms / latency["median_ms"],
        "accuracy": score(logits),
    }


@contextlib.contextmanager
def _ieee_fp32():
    """cuDNN runs fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later GPUs by
    default: the float reference is computed in full fp32; timed GPU rows keep the default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _accuracy(logits, labels, reference, has_labels: bool) -> dict:
    out = {"vs_float": agreement(reference, logits)}
    if has_labels:
        out["top1"], out["top5"] = topk_accuracy(logits, labels, 1), topk_accuracy(logits, labels, 5)
    return out


def run_benchmark(job: BenchmarkJob, progress: bool = True) -> dict:
    """Measure every artifact on every backend; returns the report (partial if interrupted)."""
    threads = job.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    artifacts = [a for folder in job.artifacts for a in discover(folder)]
    status = {b: backend_status(b) for b in job.backends}
    settings = {b: setting_status(b) for b in job.backends}
    cuda = "torch" in settings and settings["torch"]["cuda"] is None
    report = {
        "schema": BENCHMARK_REPORT_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": fingerprint(threads),
        "settings": {k: getattr(job, k) for k in ("batch", "runs", "warmup", "data", "num_clips")},
        "backends": {b: ("available" if r is None else f"not available here: {r}") for b, r in status.items()},
        "backend_settings": {
            b: {s: "available" if r is None else f"not available here: {r}" for s, r in per.items()}
            for b, per in settings.items()
        },
        "groups": [],
        "rows": [],
        "complete": False,
    }
    groups: dict[tuple, list[Artifact]] = {}
    for a in artifacts:
        groups.setdefault(a.group, []).append(a)
    bar = tqdm(
        total=len(artifacts) * len(job.backends) + len(groups), desc="benchmark", disable=not progress, unit="step"
    )
    try:
        for items in groups.values():
            first = items[0]
            dataset = build_dataset(
                job.data,
                "test",
                frames=first.frames,
                size=first.size,
                root=job.root,
                num_clips=job.num_clips if job.data == "synthetic" else None,
            )
            n = min(job.num_clips, len(dataset))
            samples = [dataset[i] for i in range(n)]
            clips = torch.stack([c for c, _ in samples])
            labels = torch.tensor([y for _, y in samples])
            has_labels = first.card.checkpoint is not None  # random weights: labels mean nothing
            model, device = _float_reference(first)
            with torch.no_grad(), _ieee_fp32():
                reference = _logits(lambda x: model(x.to(device)), clips, job.batch)
            example = clips[: job.batch]
            score = functools.partial(_accuracy, labels=labels, reference=reference, has_labels=has_labels)
            group = {
                "variant": first.variant,
                "frames": first.frames,
                "size": first.size,
                "checkpoint": first.card.checkpoint,
                "weights_sha256": first.card.weights_sha256,
                "float_reference": f"float PyTorch model on {device}"
                + (f" ({torch.cuda.get_device_name(0)}, full fp32: TF32 off)" if device == "cuda" else ""),
                "evaluation_clips": n,
                "labels_meaningful": has_labels,
            }
            report["groups"].append(group)
            # torch eager fp32 on this CPU: the baseline every speed figure is divided by
            cpu_model = deploy(model.cpu())
            baseline = Runner("torch", "cpu", lambda x: cpu_model(x))
            _reset_peak_rss()
            row = {
                "variant": first.variant,
                "input": f"{first.frames}x{first.size}",
                "artifact": "float model (deploy form)",
                "format": "torch eager",
                "precision": "fp32",
                "backend": "torch",
                "setting": "cpu",
                "size_bytes": sum(p.numel() * p.element_size() for p in cpu_model.parameters()),
                "load_s": 0.0,
                "latency": _measure(baseline, example, job.warmup, job.runs),
                "accuracy": score(_logits(baseline.fn, clips, job.batch)),
            }
            row["peak_rss_bytes"] = _peak_rss_bytes()
            report["rows"].append(row)
            row["speedup_vs_torch_fp32"] = 1.0
            model.to(device)
            if cuda:
                report["rows"] += _float_gpu_rows(
                    cpu_model,
                    clips,
                    example,
                    job,
                    score,
                    baseline,
                    {k: row[k] for k in ("variant", "input", "artifact", "format")},
                )
            bar.update(1)
            for artifact in items:
                for backend in job.backends:
                    bar.set_postfix_str(f"{artifact.name} on {backend}")
                    bar.update(1)
                    if not get_runtime(backend).runs(artifact.format):
                        continue
                    common = {
                        "variant": artifact.variant,
                        "input": f"{artifact.frames}x{artifact.size}",
                        "artifact": artifact.name,
                        "format": artifact.format,
                        "precision": artifact.precision,
                        "backend": backend,
                        "size_bytes": artifact.size_bytes,
                    }
                    if status[backend] is not None:
                        report["rows"].append(
                            {**common, "setting": None, "not_available": f"not available here: {status[backend]}"}
                        )
                        continue
                    if backend == "torch" and cuda:
                        report["rows"].append(
                            {
                                **common,
                                "setting": "cuda",
                                "not_available": (
                                    "not measured on cuda: a PT2E int8 program runs its quantize/dequantize ops as "
                                    "float arithmetic there (emulation, not int8 kernels)"
                                ),
                            }
                        )
                    gc.collect()
                    _reset_peak_rss()
                    started = time.perf_counter()
                    runners = runners_for(artifact, backend, threads)
                    load_s = time.perf_counter() - started
                    for runner in runners:
                        report["rows"].append(
                            {
                                **common,
                                "load_s": load_s,
                                **runner.extra,
                                **_timed(runner, clips, example, job, score, baseline),
                            }
                        )
                    del runners
        report["complete"] = True
    except KeyboardInterrupt:
        report["interrupted"] = "Ctrl-C: the report holds what was measured before"
    finally:
        bar.close()
    return report
