"""The int8 ONNX export's parity gate at the CLI's defaults, on full-size fresh cases, on this CPU.

    python benchmarks/onnx_int8_gate.py [--cases all] [--out DIR]

Each case runs what `python -m uniformer_edge.export --format onnx --precision int8` runs (its
defaults: 4 check clips, 32 calibration clips), then scores the same .onnx file again with
ONNX Runtime's default kernels, to show what `session.x64quantprecision` changes on this CPU:
on x86 without VNNI, ONNX Runtime's u8 x s8 kernels add neighbouring products in saturating
16-bit arithmetic. Trained cases first train a model for a few minutes on the synthetic
benchmark. Writes results/onnx_int8_gate.{json,md}, with the CPU's instruction sets.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import environment, write_results
from uniformer_edge._cpu import cpu_name, has_int8_dot_product, instruction_sets
from uniformer_edge.engine import agreement
from uniformer_edge.export import ExportJob
from uniformer_edge.export.onnx import run_onnx
from uniformer_edge.export import FORMATS, Precision
from uniformer_edge.export.pipeline import ExportContext

ONNX_INT8 = FORMATS["onnx"].thresholds[Precision.INT8]

# (name, variant, frames, size, seed, classes, training run or None)
CASES = [
    ("S 8x224 random, 400 classes, seed 0", "s", 8, 224, 0, 400, None),
    ("S 8x224 random, 10 classes, seed 1", "s", 8, 224, 1, 10, None),
    ("XXS 8x160 random, 400 classes, seed 0", "xxs", 8, 160, 0, 400, None),
    ("XXS 8x128 random, 10 classes, seed 2", "xxs", 8, 128, 2, 10, None),
    ("XXS 8x96 trained (12 classes), seed 3", "xxs", 8, 96, 3, None, dict(epochs=2, clips=768)),
    ("S 8x64 trained (12 classes), seed 4", "s", 8, 64, 4, None, dict(epochs=2, clips=512)),
]


def train_checkpoint(variant: str, frames: int, size: int, seed: int, run: dict, folder: Path) -> str:
    out = folder / f"train-{variant}-{size}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "uniformer_edge.train",
            "--variant",
            variant,
            "--frames",
            str(frames),
            "--size",
            str(size),
            "--epochs",
            str(run["epochs"]),
            "--num-train-clips",
            str(run["clips"]),
            "--num-val-clips",
            "96",
            "--batch-size",
            "16",
            "--seed",
            str(seed),
            "--out",
            str(out),
        ],
        check=True,
    )
    return str(out / "best.pth")


def plain_ort(path: Path, clips: torch.Tensor) -> torch.Tensor:
    """The same file with ONNX Runtime's default session: no exact-int8 entry."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return run_onnx(session, clips)


def measure(case, folder: Path) -> dict:
    name, variant, frames, size, seed, classes, run = case
    started = time.time()
    checkpoint = train_checkpoint(variant, frames, size, seed, run, folder) if run else None
    job = ExportJob(
        variant=variant,
        checkpoint=checkpoint,
        num_classes=classes,
        formats=("onnx",),
        precisions=("int8",),
        frames=frames,
        size=size,
        seed=seed,
        out=str(folder / "unused"),
    )
    exporter = ExportContext(job, progress=False)  # what run_export builds each artifact with
    path = folder / f"{variant}-{frames}x{size}-{seed}-int8.onnx"
    parity = FORMATS["onnx"].build(exporter, Precision.INT8, path)["parity"]
    with torch.no_grad():
        reference = exporter.program(Precision.INT8).module()(exporter.clips)
    default_kernels = agreement(reference, plain_ort(path, exporter.clips))
    gated = parity["vs_pytorch_quantized"]
    return {
        "case": name,
        "variant": variant,
        "input": f"{frames}x{size}",
        "seed": seed,
        "weights": "trained" if run else "random",
        "classes": exporter.num_classes,
        "session_config": parity["session_config"],
        "cosine": gated["cosine"],
        "sqnr_db": gated["sqnr_db"],
        "vs_float_sqnr_db": parity["vs_float"]["sqnr_db"],
        "passed": parity["passed"],
        "default_kernels_cosine": default_kernels["cosine"],
        "default_kernels_sqnr_db": default_kernels["sqnr_db"],
        "seconds": round(time.time() - started, 1),
    }


def render(rows: list[dict], env: dict) -> str:
    lines = [
        "# int8 ONNX parity gate at the CLI's defaults",
        "",
        f"CPU: {env['processor']}; instruction sets: {', '.join(env['instruction_sets']) or 'unknown'}; "
        f"int8 dot product (VNNI/AMX): {env['int8_dot_product']}. Gate: cosine >= {ONNX_INT8.min_cosine} against "
        "the PT2E graph in PyTorch on 4 test clips.",
        "",
        "| case | session entries | cosine (gate) | SQNR dB | vs float dB | passed | ORT default kernels: "
        "cosine | SQNR dB | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        config = ", ".join(f"{k}={v}" for k, v in r["session_config"].items()) or "none needed"
        lines.append(
            f"| {r['case']} | {config} | {r['cosine']:.6f} | {r['sqnr_db']:.1f} | {r['vs_float_sqnr_db']:.1f} | "
            f"{'yes' if r['passed'] else 'NO'} | {r['default_kernels_cosine']:.6f} | "
            f"{r['default_kernels_sqnr_db']:.1f} | {r['seconds']:.0f} |"
        )
    held = sum(r["passed"] for r in rows)
    lines += [
        "",
        f"The gate held in {held} of {len(rows)} cases. The last two columns run the same file with "
        "ONNX Runtime's default session (u8 x s8 kernels); on a CPU with VNNI both columns agree.",
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", type=int, help="indices of CASES to run (default all)")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    chosen = [CASES[i] for i in args.cases] if args.cases else CASES
    env = {
        **environment(),
        "int8_dot_product": has_int8_dot_product(),
        "processor": cpu_name(),
        "instruction_sets": list(instruction_sets()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for case in chosen:
            print(f"{case[0]} ...", file=sys.stderr, flush=True)
            rows.append(measure(case, folder))
            print(rows[-1], file=sys.stderr, flush=True)
    write_results("onnx_int8_gate", {"environment": env, "rows": rows}, render(rows, env))


if __name__ == "__main__":
    main()
