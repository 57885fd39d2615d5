"""The MIL reference on whole models: cost of a full UniFormer-S 8x224 run, and fp16 safety of
the Core ML packages of the trained reference model.

    python benchmarks/coreml_reference.py [--num-eval 1200] [--forms ane 3d]

1. Cost: UniFormer-S 8x224 fp32 packages (random weights) in each form, saved, then read back
   and executed on one synthetic test clip in a fresh process: load time, run time and the
   process's peak resident memory; the relative error against PyTorch.
2. fp16 safety: the synthetic reference model (UniFormer-XXS 8x64, trained by
   benchmarks/train_reference.py, cached) exported to Core ML fp16 and W8A8 in each form, each
   package run by the MIL reference (fp16 storage between ops) on the test split: logit SQNR,
   top-1 agreement with the float model, top-1 accuracy of both, and the largest magnitude any op
   reaches against fp16's 65504.
Writes benchmarks/results/coreml_reference.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common import REFERENCE_RECIPE, RESULTS, environment, machine_line, reference_checkpoint, write_results
from uniformer_edge.calibration import build_dataset
from uniformer_edge.engine import agreement
from uniformer_edge.export import ExportError, ExportJob, run_export
from uniformer_edge.export.coreml import convert_coreml, save_mlpackage
from uniformer_edge.export.mil_reference import FP16_MAX, MilReference
from uniformer_edge.forms import frame_batched
from uniformer_edge.models import create_model, deploy, read_state_dict

_CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
from uniformer_edge.export.mil_reference import MilReference
started = time.time()
ref = MilReference(sys.argv[1])
loaded = time.time()
out = ref.run_batch(np.load(sys.argv[2]))
ran = time.time()
np.save(sys.argv[3], out)
print(json.dumps({"load_s": loaded - started, "run_s": ran - loaded,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def cost(folder: Path, forms) -> list[dict]:
    from uniformer_edge.export.coreml import neural_engine_census

    torch.manual_seed(0)
    model = create_model("s").eval()
    clip = build_dataset("synthetic", "test", frames=8, size=224, num_clips=1)[0][0][None]
    np.save(folder / "clip.npy", clip.numpy())
    with torch.no_grad():
        expected = model(clip).numpy()
    rows = []
    for form in forms:
        deployed = frame_batched(model, 8) if form == "ane" else deploy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = save_mlpackage(convert_coreml(deployed, clip, "fp32", "ios17"), folder / f"s-{form}.mlpackage")
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(folder / "clip.npy"), str(folder / "out.npy")],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        out = np.load(folder / "out.npy")
        figures["max_rel_err"] = float(np.abs(out - expected).max() / np.abs(expected).max())
        census = neural_engine_census(MilReference(path).program)
        rows.append(
            {
                "form": form,
                **figures,
                "conv_5d": census["conv_5d"],
                "ops_on_rank5_tensors": census["ops_on_rank5_tensors"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def fp16_safety(folder: Path, forms, num_eval: int, checkpoint=None) -> list[dict]:
    r = REFERENCE_RECIPE
    checkpoint = str(checkpoint or reference_checkpoint())
    data = dict(frames=r["frames"], size=r["size"])
    test = build_dataset("synthetic", "test", num_clips=num_eval, **data)
    clips = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    num_classes = int(read_state_dict(checkpoint)["head.weight"].shape[0])
    model = create_model(r["variant"], num_classes=num_classes, checkpoint=checkpoint, new_head=False).eval()
    with torch.no_grad():
        float_logits = torch.cat([model(clips[i : i + 32]) for i in range(0, len(clips), 32)])
    rows = []
    for form in forms:
        out = folder / f"ref-{form}"
        try:
            manifest = run_export(
                ExportJob(
                    variant=r["variant"],
                    checkpoint=checkpoint,
                    formats=("coreml",),
                    precisions=("fp16", "int8"),
                    target="ios17",
                    coreml_form=form,
                    out=str(out),
                    force=True,
                    **data,
                )
            )
        except ExportError as err:  # a package that misses its gate is reported, the others measured
            if err.manifest is None:
                raise
            manifest = err.manifest  # when every package missed, only the failures
        packages = [(out / art["path"], art["form"], art["precision"], None) for art in manifest["artifacts"]]
        for miss in manifest["failed"]:
            if miss["precision"] != "fp16":  # int8 misses: benchmarks/int8_stability.py explains them
                rows.append({"form": form, "precision": miss["precision"], "failed": miss["reason"]})
                print(rows[-1], flush=True)
                continue
            # measured anyway: how far fp16 moves a trained light model is what this benchmark is for
            source = frame_batched(model, r["frames"]) if form == "ane" else deploy(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = save_mlpackage(
                    convert_coreml(source, clips[:1], "fp16", "ios17"), folder / f"missed-{form}-fp16.mlpackage"
                )
            packages.append((path, form, "fp16", miss["reason"]))
        for path, form_, precision, missed in packages:
            ref = MilReference(path)
            started = time.time()
            logits = torch.from_numpy(ref.run_batch(clips.numpy(), "video", "logits", track=True))
            seconds = time.time() - started
            fig = agreement(float_logits, logits)
            top = sorted(ref.magnitudes.items(), key=lambda kv: -kv[1])[:3]
            rows.append(
                {
                    "form": form_,
                    "precision": precision,
                    "missed_export_gate": missed,
                    "clips": len(clips),
                    "sqnr_db": fig["sqnr_db"],
                    "top1_agreement": fig["top1_agreement"],
                    "cosine": fig["cosine"],
                    "float_top1": float((float_logits.argmax(1) == labels).float().mean()),
                    "package_top1": float((logits.argmax(1) == labels).float().mean()),
                    "largest": [{"op": n, "type": ref.op_types[n], "magnitude": m} for n, m in top],
                    "headroom": FP16_MAX / top[0][1],
                    "seconds": seconds,
                }
            )
            print({k: v for k, v in rows[-1].items() if k != "largest"}, flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-eval", type=int, default=1200, help="test clips of the fp16 safety runs (default 1200)")
    p.add_argument("--forms", nargs="+", default=["ane", "3d"])
    p.add_argument(
        "--checkpoint",
        help="an XXS 8x64 checkpoint in place of the reference model (default: the "
        "reference model, trained first if it is not cached)",
    )
    p.add_argument(
        "--reuse-cost",
        action="store_true",
        help="keep the cost rows of the committed results/coreml_reference.json (random-weight UniFormer-S, "
        "independent of the checkpoint) and measure only the fp16 safety",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        costs = json.loads((RESULTS / "coreml_reference.json").read_text())["cost"] if args.reuse_cost else None
        costs = costs or cost(folder, args.forms)
        safety = fp16_safety(folder, args.forms, args.num_eval, args.checkpoint)
    env = environment()
    lines = [
        "# Core ML MIL reference: cost and fp16 safety",
        "",
        "## UniFormer-S 8x224 fp32, one clip (random weights)",
        "",
        "| form | load (s) | run (s) | peak memory (GB) | max rel err vs PyTorch | 5-D conv | ops on rank-5 tensors |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c['form']} | {c['load_s']:.1f} | {c['run_s']:.1f} | {c['peak_rss_gb']:.2f} | "
            f"{c['max_rel_err']:.1e} | {c['conv_5d']} | {c['ops_on_rank5_tensors']} |"
        )
    source = f"--checkpoint {args.checkpoint}, not the reference model" if args.checkpoint else "the reference model"
    lines += [
        "",
        "Peak memory is the resident peak of a fresh process that loads the package and runs it."
        + (" Cost rows as committed before (`--reuse-cost`)." if args.reuse_cost else ""),
        "",
        f"## fp16 safety: {source} "
        f"(UniFormer-{REFERENCE_RECIPE['variant'].upper()} {REFERENCE_RECIPE['frames']}x"
        f"{REFERENCE_RECIPE['size']}, trained) on {args.num_eval} test clips",
        "",
        "| form | package | logit SQNR vs float (dB) | top-1 agreement | float top-1 | package top-1 | "
        "largest magnitude (op type) | fp16 headroom |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in safety:
        if "failed" in s:
            lines.append(f"| {s['form']} | {s['precision']} | not written: {s['failed'].split(': {')[0]} | | | | | |")
            continue
        big = s["largest"][0]
        lines.append(
            f"| {s['form']} | {s['precision']}{' (missed its export gate)' if s.get('missed_export_gate') else ''} "
            f"| {s['sqnr_db']:.1f} | {100 * s['top1_agreement']:.2f}% | "
            f"{100 * s['float_top1']:.2f}% | {100 * s['package_top1']:.2f}% | {big['magnitude']:.4g} "
            f"({big['type']}) | {s['headroom']:.0f}x |"
        )
    lines += [
        "",
        "The packages run in the MIL reference with fp16 storage between ops (each op computes in "
        "fp32 and rounds its result), which checks the converted program, not Core ML's kernels or their "
        "fp16 accumulation on the GPU / Neural Engine.",
        "",
        "An int8 package of a light model that misses its bound against the PT2E graph is judged by the "
        "token-pruning accuracy rule (benchmarks/results/int8_stability.md); one that misses both is not written.",
        "",
        f"Command: `python benchmarks/coreml_reference.py --num-eval {args.num_eval}"
        f"{' --reuse-cost' if args.reuse_cost else ''}"
        f"{' --checkpoint ' + args.checkpoint if args.checkpoint else ''}` ({machine_line(env)}).",
    ]
    write_results(
        "coreml_reference",
        {"cost": costs, "fp16_safety": safety, "checkpoint": args.checkpoint, "environment": env},
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
