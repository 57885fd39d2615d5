"""A device report of the float models, to sit beside the suite's machine in RESULTS.md: above
all the float GPU model and ONNX Runtime's CUDA provider, on a machine with a GPU.

    python benchmarks/device_report.py [--models s xxs] [--runs 20] [--threads N] [--out DIR]

For each model (UniFormer-S 8x224, XXS 8x160; random weights, speed only) it exports ONNX fp32
and fp16 and runs `uniformer_edge.benchmark` with torch and ONNX Runtime: the float model in
torch eager fp32 on this CPU (every ratio's baseline) and, where CUDA is present, on the GPU in
fp32 and fp16; the ONNX files on every execution provider this onnxruntime has. Settings this
device lacks are listed with the reason. Writes benchmarks/results/devices/<device>/ (report.json,
report.md, plots); `python benchmarks/run_suite.py --from-report benchmarks/results/suite/report.json`
then renders RESULTS.md with every device report merged in.

On a lent GPU machine (the device tool of the tool library): its image has torch and onnxruntime
but not torchao, which travels as a wheel. Here, in the repository root:
    echo /.whl/ >> .git/info/exclude
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl torchao==0.18.0
then one run there, carrying .whl (about 5 minutes):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:. python3 benchmarks/device_report.py --out $OUT/device
and copy the files that come back to benchmarks/results/devices/<device>/.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Optional

import torch

from common import RESULTS
from uniformer_edge.benchmark import BenchmarkJob, run_benchmark, write_report
from uniformer_edge.export import ExportJob, run_export
from uniformer_edge.models import get_variant

DEVICES = RESULTS / "devices"


def device_slug(device: dict) -> str:
    """Folder name of a device report: its GPU where it has one, else its CPU."""
    return re.sub(r"[^a-z0-9]+", "-", (device.get("gpu") or device["cpu"]).lower()).strip("-")


def measure(
    models: list[tuple[str, int, int]],
    runs: int,
    threads: int,
    export_dir: Path,
    model_overrides: Optional[dict] = None,
) -> dict:
    """The benchmark report of `models` ((variant, frames, size)), exported into `export_dir`."""
    folders = []
    for variant, frames, size in models:
        folder = export_dir / f"{variant}-{frames}x{size}-onnx"
        run_export(
            ExportJob(
                variant=variant,
                frames=frames,
                size=size,
                model_overrides=model_overrides or {},
                formats=("onnx",),
                precisions=("fp32", "fp16"),
                check_clips=1,
                out=str(folder),
            )
        )
        folders.append(str(folder))
    return run_benchmark(
        BenchmarkJob(
            artifacts=tuple(folders),
            backends=("torch", "onnxruntime"),
            threads=threads,
            runs=runs,
            warmup=3,
            num_clips=8,
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["s", "xxs"], help="variants, each at its default input")
    p.add_argument("--runs", type=int, default=20, help="timed runs per row (default 20)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, help=f"report folder (default {DEVICES}/<device>)")
    args = p.parse_args()
    models = [(v, *get_variant(v).default_input) for v in args.models]
    with tempfile.TemporaryDirectory() as tmp:
        report = measure(models, args.runs, args.threads, Path(tmp))
    out = args.out or DEVICES / device_slug(report["device"])
    files = write_report(report, out, force=True)
    print(f"wrote {out}: {', '.join(files)}")


if __name__ == "__main__":
    main()
