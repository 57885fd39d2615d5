"""`python -m uniformer_edge.export`: Core ML, ONNX and ExecuTorch artifacts with a manifest."""

from __future__ import annotations

import sys

from .._cli import nonnegative_int, positive_float, positive_int, Parser, run
from ..models import list_variants
from ..quantize.config import QAT_LR
from .coreml import FORMS, TARGETS
from .pipeline import ExportError, ExportJob, run_export
from .registry import FORMATS, PRECISIONS


def build_parser() -> Parser:
    support = "; ".join(f"{f.name}: {' '.join(f.precisions)}" for f in FORMATS.values())
    targets = ", ".join(f"{p} {t}" for p, t in FORMATS["coreml"].min_target.items() if t != "ios16")
    p = Parser(
        prog="python -m uniformer_edge.export",
        description="Export a UniFormer model to ONNX, Core ML (.mlpackage), ExecuTorch (.pte) and OpenVINO IR "
        "(a .openvino folder: model.xml, model.bin). Every artifact "
        "is run against PyTorch where a runtime exists here (ONNX Runtime, ExecuTorch, OpenVINO; Core ML only on "
        "macOS; every Core ML package also by the MIL reference, which executes the saved program with "
        "numpy on any system) and must meet its parity threshold; OUT/manifest.json lists sizes, SHA-256 "
        "and parity. An artifact that misses its threshold is not written (the others are, and the command exits 2 "
        "naming it).",
        epilog=f"Precisions per format: {support}. int8/w8/w4 in ONNX and int8 in Core ML come from the PT2E "
        f"graph (--quantized, or quantized here on --calib-data); int8-ort and int8-ort-entropy are ONNX "
        f"Runtime's quantize_static (MinMax or Entropy calibration). ExecuTorch int8 is XNNPACK's calibrated "
        f"program; its w8/w4 quantize the weights alone (XNNPACK quantizes activations at every call: no "
        f"calibration); its fp16 takes and returns fp32. "
        f"Core ML targets: {targets} need at least that target.",
    )
    p.add_argument("--variant", help=f"model variant: {', '.join(list_variants())} (implied by --quantized)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="float checkpoint (default: random weights)")
    src.add_argument("--quantized", metavar="DIR", help="output folder of `python -m uniformer_edge.quantize`")
    p.add_argument("--format", nargs="+", default=["onnx"], choices=list(FORMATS), help="formats (default onnx)")
    p.add_argument(
        "--precision",
        nargs="+",
        default=None,
        choices=[p.value for p in PRECISIONS],
        help="precisions (default fp32, or the --quantized graph's)",
    )
    p.add_argument("--frames", type=positive_int, help="frames per clip (default: the variant's usual input)")
    p.add_argument("--size", type=positive_int, help="frame size (default: the variant's usual input)")
    p.add_argument(
        "--labels", help="class names, one per line: Core ML gets a probabilities output and the names in its metadata"
    )
    p.add_argument("--num-classes", type=positive_int, help="classes of a model without checkpoint (default 400)")
    p.add_argument(
        "--target",
        choices=TARGETS,
        help="Core ML deployment target (default ios17, or ios18 when w4 is requested: per-block int4 weights need it)",
    )
    p.add_argument(
        "--coreml-form",
        default="ane",
        choices=FORMS,
        help="Core ML program form: ane (default) is built from the frame-batched 2-D form, with no 5-D "
        "convolution, which the Neural Engine needs; 3d keeps the native Conv3d (CPU/GPU only)",
    )
    p.add_argument(
        "--calib-data",
        help="calibration data of the programs quantized here: 'synthetic' or an "
        "annotation list (default: the --quantized folder's, else synthetic)",
    )
    p.add_argument("--root", help="video folder of --calib-data")
    p.add_argument(
        "--num-calib", type=positive_int, help="calibration clips (default: the --quantized folder's, else 32)"
    )
    p.add_argument(
        "--qat-epochs",
        type=nonnegative_int,
        default=0,
        help="fine-tune the ExecuTorch int8 program with quantization-aware training for this many "
        "epochs: activation ranges from the calibration, distillation from the float model, on the "
        "training split of --calib-data (default 0: calibration only)",
    )
    p.add_argument(
        "--qat-clips", type=positive_int, default=1024, help="synthetic training clips for --qat-epochs (default 1024)"
    )
    p.add_argument(
        "--qat-lr",
        type=positive_float,
        default=QAT_LR[8],
        help=f"learning rate of --qat-epochs (default {QAT_LR[8]:g}, the quantize CLI's for int8 weights)",
    )
    p.add_argument("--check-clips", type=positive_int, default=4, help="clips used for the parity checks (default 4)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    job = ExportJob(
        variant=args.variant,
        checkpoint=args.checkpoint,
        quantized=args.quantized,
        formats=tuple(args.format),
        precisions=tuple(args.precision or ()),
        frames=args.frames,
        size=args.size,
        labels=args.labels,
        target=args.target,
        coreml_form=args.coreml_form,
        out=args.out,
        force=args.force,
        num_classes=args.num_classes,
        calib_data=args.calib_data,
        calib_root=args.root,
        num_calib=args.num_calib,
        check_clips=args.check_clips,
        qat_epochs=args.qat_epochs,
        qat_clips=args.qat_clips,
        qat_lr=args.qat_lr,
    )
    try:
        manifest = run_export(job)
    except ExportError as err:
        if err.manifest:
            _print_artifacts(err.manifest)
        raise
    _print_artifacts(manifest)
    print(f"wrote {job.out}/manifest.json")
    return 0


def _figure(parity: dict) -> str:
    if "not run" in parity:
        return f"{parity['runtime']} not run: {parity['not run']}"
    against = parity.get("vs_pytorch_quantized") or parity.get("vs_package_weights") or parity["vs_float"]
    return f"cosine {against['cosine']:.6f} on {parity['runtime']}"


def _print_artifacts(manifest: dict) -> None:
    for art in manifest["artifacts"]:
        figures = [_figure(art[key]) for key in ("reference_parity", "parity") if key in art]
        print(f"{art['path']}: {art['size_bytes'] / 1e6:.2f} MB, {'; '.join(figures)}")


if __name__ == "__main__":
    sys.exit(run(main, prog="uniformer_edge.export"))
