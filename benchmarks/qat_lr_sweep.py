"""Where QAT's learning rate and loss take the reference model's int8 programs: the XXS 8x64
reference checkpoint (trained on the synthetic benchmark, `train_reference.py`) quantized in
OpenVINO's form (w8a8, `quantize --form openvino`, run as IR by OpenVINO's CPU plugin, as
`quantize_reference.py` scores it) and as w4a8 (run by PyTorch), each calibrated and after QAT
at several learning rates, scored against float on the same test clips.

    python benchmarks/qat_lr_sweep.py [--num-eval 6000] [--skip-w4a8]

QAT at learning rate 0 updates no weight: what it changes against calibration is the activation
ranges it tracks over its training clips, so that row separates the two. Every QAT run is the
quantize CLI's (1 epoch x 512 synthetic clips, its distillation weight) but for the learning
rate, plus one row of the former default (labels and distillation at 0.5, lr 5e-5). The rows
are what `quantize.config.QAT_LR` and `QAT_DISTILL_WEIGHT` were chosen from. Writes
benchmarks/results/qat_lr_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import TensorDataset

from common import REFERENCE_RECIPE as R
from common import environment, machine_line, reference_checkpoint, reference_qat_job, write_results
from quantize_reference import openvino_ir_logits
from uniformer_edge.calibration import build_dataset, calibration_set
from uniformer_edge.engine import agreement, collect_logits, top1_drop
from uniformer_edge.export.openvino import openvino_available
from uniformer_edge.models import create_model
from uniformer_edge.quantize import QuantConfig, quantize_ptq
from uniformer_edge.quantize.config import OPENVINO_FORM, QAT_DISTILL_WEIGHT, QAT_LR
from uniformer_edge.quantize.qat import run_qat

FORMER_DEFAULT = {"qat_lr": 5e-5, "distill_weight": 0.5}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-eval", type=int, default=6000, help="test clips (default 6000)")
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument("--w8-lrs", type=float, nargs="+", default=[0.0, 1e-6, 3e-6, 1e-5, 5e-5])
    p.add_argument("--w4a8-lrs", type=float, nargs="+", default=[0.0, 3e-6, 1e-5, 1e-4])
    p.add_argument("--skip-w4a8", action="store_true")
    args = p.parse_args()
    missing = openvino_available()
    if missing:
        raise SystemExit(f"qat_lr_sweep scores OpenVINO's form as IR: {missing}")

    torch.manual_seed(0)
    ckpt = reference_checkpoint()
    model = create_model(R["variant"], num_classes=12, checkpoint=ckpt).eval()
    data = dict(frames=R["frames"], size=R["size"], seed=0)
    calib = calibration_set(build_dataset("synthetic", "train", **data), args.num_calib, seed=0, batch_size=8)
    example = next(iter(calib))[0][:1]
    test = build_dataset("synthetic", "test", num_clips=args.num_eval, **data)
    # rendered once: every row reads the same clips
    clips = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    eval_set = TensorDataset(clips, labels)
    with torch.no_grad():
        float_logits = collect_logits(model, eval_set, batch_size=32, desc="float")[0]

    def torch_logits(program) -> torch.Tensor:
        with torch.no_grad():
            return collect_logits(program.module(), eval_set, batch_size=32, desc="PyTorch")[0]

    rows = []

    def record(form: str, method: str, lr, distill, logits, seconds):
        row = {
            "form": form,
            "method": method,
            "lr": lr,
            "distill_weight": distill,
            "seconds": round(seconds, 1),
            **top1_drop(float_logits, logits, labels),
            **agreement(float_logits, logits),
        }
        rows.append(row)
        print(
            f"{form:9s} {method:10s} lr {lr if lr is not None else '-'!s:7s} drop {row['drop_points']:+.2f} ± "
            f"{row['drop_se_points']:.2f}  SQNR {row['sqnr_db']:.2f} dB  agree {100 * row['top1_agreement']:.2f}%",
            flush=True,
        )

    openvino = QuantConfig(recipe="w8a8", **OPENVINO_FORM)
    record("openvino", "calibrated", None, None, *openvino_ir_logits(model, calib, eval_set, example))
    runs = [("openvino", lr, {"qat_lr": lr}) for lr in args.w8_lrs] + [("openvino", None, FORMER_DEFAULT)]
    if not args.skip_w4a8:
        started = time.time()
        program, _ = quantize_ptq(model, calib, QuantConfig(recipe="w4a8"), example, progress=False)
        record("w4a8", "calibrated", None, None, torch_logits(program), time.time() - started)
        runs += [("w4a8", lr, {"qat_lr": lr}) for lr in args.w4a8_lrs]
    for form, lr, options in runs:
        config = QuantConfig(recipe="w8a8", qat=True, **OPENVINO_FORM) if form == "openvino" else None
        config = config or QuantConfig(recipe="w4a8", qat=True)
        with tempfile.TemporaryDirectory() as tmp:
            qat = reference_qat_job(config, tmp, args.num_calib, **options)
            method = "QAT" if options is not FORMER_DEFAULT else "QAT, former default"
            if form == "openvino":
                logits, seconds = openvino_ir_logits(model, calib, eval_set, example, qat)
            else:
                started = time.time()
                logits = torch_logits(run_qat(model, calib, qat, example, progress=False)[0])
                seconds = time.time() - started
            record(form, method, qat.qat_lr, qat.distill_weight, logits, seconds)

    result = {
        "recipe": R,
        "checkpoint": str(ckpt),
        "calibration_clips": args.num_calib,
        "evaluation_clips": len(labels),
        "float_top1": float((float_logits.argmax(1) == labels).double().mean()),
        "defaults": {"qat_lr": QAT_LR, "distill_weight": QAT_DISTILL_WEIGHT, "epochs": 1, "clips": 512},
        "rows": rows,
        "environment": environment(),
    }
    write_results("qat_lr_sweep", result, render(result, openvino.as_dict()))


def render(result: dict, form: dict) -> str:
    env = result["environment"]
    form_text = f"{form['activation_scheme']} activations, quantized ops {', '.join(form['ops'])}"
    lines = [
        "# QAT learning rate and loss against calibration (reference XXS 8x64)",
        "",
        f"{machine_line(env)}. Float top-1 {100 * result['float_top1']:.2f}% on {result['evaluation_clips']} "
        f"synthetic test clips; every row against float on the same clips (drop ± paired standard error; "
        f"`lost`/`gained`: clips float gets right and the program wrong, and the reverse). Calibration "
        f"{result['calibration_clips']} clips. QAT: 1 epoch x 512 clips, AdamW on a cosine schedule, "
        "activation ranges tracked for the first half of the steps. `openvino`: "
        f"w8a8 in OpenVINO's form ({form_text}), run as IR by OpenVINO's CPU plugin at f32; `w4a8`: run by PyTorch.",
        "",
        "| form | method | lr | distillation weight | drop ± s.e. (points) | lost / gained | logit SQNR dB "
        "| top-1 agreement | KL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    forms = list(dict.fromkeys(r["form"] for r in result["rows"]))
    for r in sorted(result["rows"], key=lambda r: forms.index(r["form"])):  # each form's rows together
        lr = "—" if r["lr"] is None else f"{r['lr']:g}"
        distill = "—" if r["distill_weight"] is None else f"{r['distill_weight']:g}"
        lines.append(
            f"| {r['form']} | {r['method']} | {lr} | {distill} | {r['drop_points']:+.2f} ± {r['drop_se_points']:.2f} "
            f"| {r['lost']} / {r['gained']} | {r['sqnr_db']:.2f} | {100 * r['top1_agreement']:.2f}% "
            f"| {r['kl']:.4f} |"
        )
    defaults = ", ".join(f"{lr:g} at {bits}-bit weights" for bits, lr in result["defaults"]["qat_lr"].items())
    lines += [
        "",
        f"The quantize CLI's QAT defaults (`quantize.config`): learning rate {defaults}; distillation "
        f"weight {result['defaults']['distill_weight']:g}.",
        "",
        f"Command: `python benchmarks/qat_lr_sweep.py --num-eval {result['evaluation_clips']}`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
