"""Shared by the benchmark scripts: the synthetic reference model (trained once, cached
locally) and result writing."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import torch


REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = Path(os.environ.get("UNIFORMER_EDGE_CACHE", Path.home() / ".cache" / "uniformer-edge"))
EXPORTS = CACHE / "exports"  # export_models.py writes <variant>-<format>/ here; run_suite.py reuses them

# The reference model: UniFormer-XXS trained from scratch on the synthetic temporal benchmark.
REFERENCE_RECIPE = dict(
    variant="xxs",
    frames=8,
    size=64,
    epochs=3,
    batch_size=8,
    lr=4e-4,
    min_lr=1e-5,
    weight_decay=0.05,
    warmup_epochs=0.2,
    label_smoothing=0.05,
    drop_path=0.0,
    layer_scale=0.1,
    num_train_clips=8800,
    num_val_clips=600,
    seed=0,
)
# Its row for the suite's fastest int8 path in results/quantize_reference.json.
EXECUTORCH_ROW = "ExecuTorch XNNPACK int8 (.pte, depthwise fp32)"
# The same program after QAT (`python -m uniformer_edge.export --qat-epochs N`): same graph, same speed.
EXECUTORCH_QAT_ROW = "ExecuTorch XNNPACK int8 QAT (.pte, depthwise fp32)"
# Our OpenVINO IR export's int8 program (PT2E w8a8 in `quantize.config.OPENVINO_FORM`), run by OpenVINO.
OPENVINO_IR_ROW = "OpenVINO int8 IR (PT2E w8a8, OpenVINO's form)"
OPENVINO_IR_QAT_ROW = "OpenVINO int8 IR QAT (PT2E w8a8, OpenVINO's form)"
# Bounds on the top-1 drop (points against float) of our fastest int8 programs: (target name, the
# format of the program, how it was made, its row, bound); the drop must be resolved within them
# by the clips scored.
INT8_DROP_BOUNDS = (
    ("executorch_int8_drop_at_most_0.3", "executorch", "calibrated", EXECUTORCH_ROW, 0.3),
    ("executorch_int8_qat_drop_at_most_0.1", "executorch", "after QAT (`--qat-epochs`)", EXECUTORCH_QAT_ROW, 0.1),
    ("openvino_int8_drop_at_most_0.3", "openvino", "calibrated", OPENVINO_IR_ROW, 0.3),
    ("openvino_int8_qat_drop_at_most_0.1", "openvino", "after QAT (`quantize --method qat`)", OPENVINO_IR_QAT_ROW, 0.1),
)


def row_clips(row: dict, result: dict) -> int:
    """The test clips a row of results/quantize_reference.json was scored on: its own count where it
    was scored on more than the table (`--openvino-only --num-eval N`), else the table's."""
    return row.get("clips", result["evaluation_clips"])


def drop_verdict(row: dict, bound: float, clips: int) -> str:
    """A row's top-1 drop against `bound`, as far as its `clips` tell: met when the drop plus two
    paired standard errors is within the bound, NOT met when the drop minus two is beyond it;
    otherwise the clips do not resolve it, and the verdict says so. Few clips that change can
    make the standard error zero: no upper end is taken below 3 clips in `clips` (the rule of
    three), so a handful of clips cannot meet a tight bound."""
    drop, se = row["drop_points"], row["drop_se_points"]
    if max(drop + 2 * se, 300 / clips) <= bound:
        return "met"
    if drop - 2 * se > bound:
        return "NOT met"
    return f"not resolved by {clips} clips ({drop:.2f} ± {se:.2f})"


def require_exports(relative_paths) -> list[Path]:
    """The UniFormer-S exports a script reuses, under EXPORTS; exits naming the missing ones."""
    paths = [EXPORTS / rel for rel in relative_paths]
    missing = [str(p) for p in paths if not p.exists()]  # a file, or a folder (OpenVINO IR)
    if missing:
        raise SystemExit(f"missing exports {missing}: run `python benchmarks/export_models.py --variants s` first")
    return paths


def synthetic_test_clip() -> torch.Tensor:
    """The first clip of the synthetic test split at 8x224, batch of one: the clip the speed checks
    time, as the suite times that split. Input matters here: in one interleaved check the int8
    program ran 5% slower and torch eager fp32 6% faster on it than on Gaussian noise."""
    from uniformer_edge.calibration import build_dataset

    return build_dataset("synthetic", "test", frames=8, size=224, num_clips=1)[0][0][None].contiguous()


def reference_run_dir() -> Path:
    """Cache folder named after the recipe, so a changed recipe never reuses an old model."""
    import hashlib

    r = REFERENCE_RECIPE
    digest = hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:10]
    return CACHE / f"reference-{r['variant']}-{r['frames']}x{r['size']}-{digest}"


def reference_checkpoint(train_if_missing: bool = True) -> Path:
    """Path of the reference model's best checkpoint, training it first if it is not cached."""
    from uniformer_edge.engine import TrainConfig, train

    run = reference_run_dir()
    best = run / "best.pth"
    last = run / "last.pth"
    if (
        best.is_file()
        and last.is_file()
        and torch.load(last, weights_only=True)["epoch"] == REFERENCE_RECIPE["epochs"] - 1
    ):
        return best
    if not train_if_missing:
        raise FileNotFoundError(f"reference model not trained yet: run benchmarks/train_reference.py ({run})")
    train(TrainConfig(**REFERENCE_RECIPE, out=str(run)), resume=last.is_file(), force=True)
    return best


def reference_qat_job(config, out, num_calib: int, **options):
    """A `quantize --method qat` job of the reference checkpoint on synthetic training clips, at the
    reference recipe's input, writing under `out`; what `options` leave unset is the CLI's default."""
    from uniformer_edge.quantize import QuantizeJob

    r = REFERENCE_RECIPE
    return QuantizeJob(
        variant=r["variant"],
        config=config,
        method="qat",
        checkpoint=str(reference_checkpoint()),
        train_data="synthetic",
        frames=r["frames"],
        size=r["size"],
        num_calib=num_calib,
        out=str(Path(out) / "qat"),
        **options,
    )


def torchao_x86_prepare(graph: torch.fx.GraphModule):
    """torchao's stock X86 Inductor quantizer (its default static config) prepared on `graph`, as a
    user would apply it, and what it annotated: op -> count, and the Conv3d it left float. It
    annotates conv1d/conv2d only, so on UniFormer its int8 ops are the linear layers and the
    GELUs and adds that follow them (on the frame-batched form, `forms.frame_batched`, its
    conv-add pattern raises "Input partition has more than one output node")."""
    from collections import Counter

    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    conv3d = [n for n in graph.graph.nodes if n.target == torch.ops.aten.conv3d.default]
    prepared = prepare_pt2e(graph, X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
    annotated = Counter(
        n.target._opname
        for n in prepared.graph.nodes
        if getattr(n.meta.get("quantization_annotation"), "_annotated", False)
    )
    float_conv3d = sum("quantization_annotation" not in n.meta for n in conv3d)
    return prepared, {"int8_ops": dict(sorted(annotated.items())), "float_conv3d": float_conv3d}


def x86_census_text(census: dict) -> str:
    ops = ", ".join(f"{count} {op}" for op, count in sorted(census["int8_ops"].items(), key=lambda oc: -oc[1]))
    return f"{ops} ops in int8, its {census['float_conv3d']} Conv3d in fp32"


def roofline(threads: int) -> dict:
    """fp32 and int8 matrix-product ceilings of this CPU (2048^3, best of 5)."""
    import time

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    qa, qb = torch.randint(-128, 127, (n, n), dtype=torch.int8), torch.randint(-128, 127, (n, n), dtype=torch.int8)
    out = {}
    for name, fn in (("fp32_gflops", lambda: a @ b), ("int8_gops", lambda: torch._int_mm(qa, qb))):
        fn()
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        out[name] = 2 * n**3 / best / 1e9
    return out


def environment() -> dict:
    from uniformer_edge._environment import cpu_facts, library_versions

    versions, cpu = library_versions(), cpu_facts()
    return {
        "python": versions["python"],
        "torch": versions["torch"],
        "numpy": versions["numpy"],
        "versions": versions,
        "machine": platform.machine(),
        "processor": cpu["name"],
        "instruction_sets": cpu["instruction_sets"],
        "int8_dot_product": cpu["int8_dot_product"],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def machine_line(env: Optional[dict] = None) -> str:
    """The processor, its instruction sets, threads and torch, for a result's command line."""
    env = env or environment()
    isa = ", ".join(env["instruction_sets"]) or "no listed SIMD"
    return f"{env['processor']}, {isa}, {env['threads']} threads, torch {env['torch']}"


def write_results(name: str, data: dict, markdown: str) -> None:
    from uniformer_edge._io import atomic_write_json, atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", data)
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    print(markdown)
    print(f"wrote {RESULTS / name}.json and .md", file=sys.stderr)
