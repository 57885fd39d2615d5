"""`python -m uniformer_edge.quantize`: quantize a UniFormer model and report how it compares
with the float model."""

from __future__ import annotations

import sys

from .._cli import nonnegative_float, nonnegative_int, positive_float, positive_int, Parser, run
from ..errors import InputError
from ..models import list_variants
from .config import FORMS, OBSERVERS, QAT_DISTILL_WEIGHT, QAT_LR, QUANTIZABLE_OPS, RECIPES, QuantConfig
from .pipeline import TARGETS, QuantizeJob, run_job
from .qat import QATStopped


def build_parser() -> Parser:
    p = Parser(
        prog="python -m uniformer_edge.quantize",
        description="Quantize a UniFormer model with torchao's PT2E flow and compare it with the float model. "
        "Writes OUT/quantized.pt2 (torch.export program), quant_config.json, report.json and "
        "report.md, atomically. With only --variant it runs on random weights and the built-in "
        "synthetic data. `python -m uniformer_edge.export --quantized OUT` then exports the result "
        "(programs it quantizes itself are calibrated on this job's calibration data).",
    )
    p.add_argument("--variant", required=True, help=f"model variant: {', '.join(list_variants())}")
    p.add_argument("--checkpoint", help="checkpoint to quantize (default: random weights, with a warning)")
    p.add_argument("--method", default="ptq", choices=["ptq", "qat"], help="post-training or quantization-aware")
    p.add_argument(
        "--target",
        default="native",
        choices=TARGETS,
        help="native (default): the model's own 5-D graph, which ONNX, Core ML and PyTorch run; xnnpack: the "
        "XNNPACK form (frame-batched, a static batch of one) quantized with ExecuTorch's XNNPACK quantizer "
        "(recipes w8a8, w8, w4), which `export --quantized OUT --format executorch` lowers as it is",
    )
    p.add_argument("--recipe", default="w8a8", help=f"{', '.join(RECIPES)} (default w8a8)")
    p.add_argument("--observer", default="minmax", help=f"activation ranges: {', '.join(OBSERVERS)} (default minmax)")
    p.add_argument("--percentile", type=positive_float, default=99.99, help="for --observer percentile (default 99.99)")
    p.add_argument(
        "--form",
        default="default",
        choices=FORMS,
        help="openvino: the int8 form OpenVINO runs fastest and the same on every x86 CPU (symmetric "
        "activations, depthwise convolutions float, weights on -63..63 so CPUs without VNNI do not saturate), "
        "as `export --format openvino --precision int8` makes it; default: affine activations, 8-bit weights",
    )
    p.add_argument(
        "--ops",
        default=",".join(QUANTIZABLE_OPS),
        help=f"op groups to quantize (default {','.join(QUANTIZABLE_OPS)}; depthwise: the depthwise convolutions)",
    )
    p.add_argument(
        "--keep-float",
        default="",
        metavar="PATTERNS",
        help="comma-separated module-name patterns to leave float, e.g. 'patch_embed1*,head'",
    )
    p.add_argument("--calib-data", default="synthetic", help="'synthetic' or an annotation list")
    p.add_argument("--root", help="video folder of --calib-data")
    p.add_argument(
        "--num-calib", type=positive_int, default=32, help="calibration clips, class-stratified (default 32)"
    )
    p.add_argument("--eval-data", help="evaluation list (default: the synthetic test split / --calib-data)")
    p.add_argument("--eval-root", help="video folder of --eval-data")
    p.add_argument("--num-eval", type=positive_int, default=96, help="synthetic evaluation clips (default 96)")
    p.add_argument("--train-data", help="QAT training data: 'synthetic' or an annotation list")
    p.add_argument("--train-root", help="video folder of --train-data")
    p.add_argument("--qat-epochs", type=positive_int, default=1, help="QAT epochs (default 1)")
    p.add_argument("--qat-clips", type=positive_int, default=512, help="synthetic QAT training clips per epoch")
    p.add_argument(
        "--qat-lr",
        type=positive_float,
        help="QAT learning rate (default by weight bits: "
        + ", ".join(f"{lr:g} at {bits}-bit" for bits, lr in QAT_LR.items())
        + "; larger steps add noise to 8-bit weights instead of removing error)",
    )
    p.add_argument(
        "--freeze-observers-after",
        type=nonnegative_int,
        metavar="STEPS",
        help="freeze QAT activation ranges after this many steps (default: half of training)",
    )
    p.add_argument(
        "--distill-weight",
        type=nonnegative_float,
        default=QAT_DISTILL_WEIGHT,
        help="weight w of the KL distillation loss from the float model; (1 - w) goes to the labels' "
        f"cross-entropy (default {QAT_DISTILL_WEIGHT:g}: distillation only, labels not read)",
    )
    p.add_argument("--temperature", type=positive_float, default=2.0, help="distillation temperature (default 2)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="QAT: continue an interrupted job from OUT.qat-state.pth (saved after every epoch)",
    )
    p.add_argument(
        "--stop-after",
        type=positive_int,
        metavar="EPOCHS",
        help="QAT: end this invocation after that many epochs, state saved (time-limited jobs)",
    )
    p.add_argument(
        "--analyze",
        action="store_true",
        help="per-layer sensitivity (only this layer quantized / only this layer float) and "
        "per-block SQNR, in report.json and report.md",
    )
    p.add_argument(
        "--max-drop",
        type=nonnegative_float,
        metavar="POINTS",
        help="mixed precision: keep the fewest layers float so that top-1 drops at most POINTS",
    )
    p.add_argument("--analysis-clips", type=positive_int, default=32, help="evaluation clips used by the analysis")
    p.add_argument("--frames", type=positive_int, help="frames per clip (default: the variant's usual input)")
    p.add_argument("--size", type=positive_int, help="frame size (default: the variant's usual input)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per batch (default 8)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed for data selection")
    p.add_argument("--out", help="output folder (default artifacts/uniformer-<variant>-<recipe>[-qat][-xnnpack])")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def job_from_args(args) -> QuantizeJob:
    ops = tuple(o for o in args.ops.split(",") if o)
    form = FORMS[args.form]
    if "ops" in form and ops != QUANTIZABLE_OPS:
        raise InputError(f"--form {args.form} sets the op groups ({','.join(form['ops'])}); drop --ops")
    config = QuantConfig(
        **{
            "recipe": args.recipe,
            "observer": args.observer,
            "percentile": args.percentile,
            "ops": ops,
            "keep_float": tuple(p.strip() for p in args.keep_float.split(",") if p.strip()),
            "qat": args.method == "qat",
            **form,
        }
    )
    return QuantizeJob(
        variant=args.variant,
        config=config,
        method=args.method,
        target=args.target,
        checkpoint=args.checkpoint,
        calib_data=args.calib_data,
        calib_root=args.root,
        num_calib=args.num_calib,
        eval_data=args.eval_data,
        eval_root=args.eval_root,
        num_eval=args.num_eval,
        train_data=args.train_data,
        train_root=args.train_root,
        frames=args.frames,
        size=args.size,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
        force=args.force,
        qat_epochs=args.qat_epochs,
        qat_lr=args.qat_lr,
        qat_clips=args.qat_clips,
        freeze_observers_after=args.freeze_observers_after,
        distill_weight=args.distill_weight,
        temperature=args.temperature,
        analyze=args.analyze,
        max_drop=args.max_drop,
        analysis_clips=args.analysis_clips,
        resume=args.resume,
        stop_after=args.stop_after,
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    job = job_from_args(args)
    try:
        report = run_job(job)
    except QATStopped as stopped:
        print(stopped)
        return 0
    if not report:  # a non-main torchrun rank
        return 0
    a = report["agreement"]
    print(
        f"wrote {job.out}: logit SQNR {a['sqnr_db']:.1f} dB, top-1 agreement {100 * a['top1_agreement']:.1f}%, "
        f"{report['size_bytes']['quantized_pt2'] / 1e6:.2f} MB, {report['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="uniformer_edge.quantize"))
