"""Export UniFormer-S (8x224) and XXS (8x160) in every format and precision and tabulate file
size, export time, parity figures and the op census.

    python benchmarks/export_models.py [--variants s xxs] [--formats onnx coreml executorch]

Random weights (no released checkpoint is reachable here): parity is about the exporters, not
accuracy. Artifacts go to --out (default: the local cache, where benchmarks/run_suite.py reuses
them); benchmarks/results/export_models.{json,md} are written (rows of formats and variants not
exported in this run are kept from the previous results). Core ML is exported in both program
forms (--coreml-forms): every package is executed by the MIL reference (numpy) on any system,
and its rows add the Neural Engine eligibility census and the fp16 safety figures; Core ML's own
prediction needs macOS.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import EXPORTS, RESULTS, environment, machine_line, write_results
from uniformer_edge.export import FORMATS, ExportJob, run_export
from uniformer_edge.models import get_variant

QUANTIZED_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "quantize",
    "dequantize",
    "constexpr_affine_dequantize",
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_dense",
    "FakeQuantize",
)


def census_summary(fmt: str, census: dict) -> tuple[str, int]:
    """(convolutions as they remain, number of quantization-related ops)."""
    if fmt == "onnx":
        convs = f"{census.get('Conv', 0)} Conv (5-D)"
    elif fmt == "openvino":
        convs = f"{census.get('Convolution', 0) + census.get('GroupConvolution', 0)} Convolution (5-D)"
    elif fmt.startswith("coreml"):
        convs = f"{census.get('conv', 0)} conv"
    else:  # ExecuTorch: every Conv3d was rewritten as 2-D taps before lowering
        convs = (
            f"{sum(v for k, v in census.items() if 'convolution' in k)} undelegated conv, "
            f"{sum(v for k, v in census.items() if 'delegate' in k)} XNNPACK calls"
        )
    quant = sum(v for k, v in census.items() if k in QUANTIZED_OPS or "quantize" in k)
    return convs, quant


def parity_figure(precision: str, parity: dict) -> str:
    ref = parity.get("vs_pytorch_quantized") or parity.get("vs_package_weights") or parity["vs_float"]
    return (
        f"rel err {ref['max_rel_err']:.1e}" if precision == "fp32" else f"cos {ref['cosine']:.5f}"
    ) + f"; vs float {parity['vs_float']['sqnr_db']:.1f} dB"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["s", "xxs"])
    p.add_argument("--formats", nargs="+", default=list(FORMATS))
    p.add_argument("--coreml-forms", nargs="+", default=["ane", "3d"], help="Core ML program forms (default both)")
    p.add_argument("--out", type=Path, default=EXPORTS, help=f"where the artifacts go (default {EXPORTS})")
    args = p.parse_args()
    # A run over some formats or variants updates their rows and keeps the others.
    previous = RESULTS / "export_models.json"
    results = json.loads(previous.read_text())["artifacts"] if previous.is_file() else {}
    for variant in args.variants:
        for fmt in args.formats:
            for form in args.coreml_forms if fmt == "coreml" else [None]:
                key = f"{variant}-{fmt}" if form in (None, "3d") else f"{variant}-{fmt}-{form}"
                started = time.time()
                manifest = run_export(
                    ExportJob(
                        variant=variant,
                        formats=(fmt,),
                        precisions=FORMATS[fmt].precisions,
                        target="ios18",
                        coreml_form=form or "ane",
                        out=str(args.out / key),
                        check_clips=2,
                        force=True,
                    )
                )
                print(f"{key}: {time.time() - started:.0f} s", flush=True)
                results[key] = manifest["artifacts"]
    results = dict(sorted(results.items(), key=lambda kv: (kv[0].split("-")[0] != "s", kv[0])))
    lines = [
        "# Export of every format and precision",
        "",
        "| model | format | precision | size (MB) | export (s) | runtime | parity | threshold | convolutions | "
        "quantization ops |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    coreml = []
    for key, artifacts in results.items():
        variant, fmt = key.split("-", 1)
        frames, size = get_variant(variant).default_input
        for art in artifacts:
            fmt_name = f"coreml ({art.get('form', '3d')})" if fmt.startswith("coreml") else fmt
            parity = art.get("reference_parity", art["parity"])
            if "not run" in parity:
                figure, runtime, threshold = "not run", parity["not run"], "-"
            else:
                figure, runtime, threshold = (
                    parity_figure(art["precision"], parity),
                    parity["runtime"],
                    parity["threshold"],
                )
            convs, quant = census_summary(fmt, art["census"])
            lines.append(
                f"| {variant.upper()} {frames}x{size} | {fmt_name} | {art['precision']} | "
                f"{art['size_bytes'] / 1e6:.1f} | {art['export_seconds']:.0f} | {runtime} | {figure} | "
                f"{threshold} | {convs} | {quant} |"
            )
            if "neural_engine" in art:
                coreml.append((variant, frames, size, art))
    if coreml:
        lines += [
            "",
            "## Core ML: Neural Engine eligibility and fp16 safety",
            "",
            "Static census of each saved package's MIL program (eligibility, not placement: only Core ML's "
            "compute plan on a device says which unit runs an op), and the largest magnitude any op reaches "
            "in the MIL reference run on the check clips against fp16's 65504.",
            "",
            "| model | form | precision | 5-D conv | ops on rank-5 tensors | ops outside the ANE list | "
            "compute | largest magnitude (op) | fp16 headroom |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for variant, frames, size, art in coreml:
            ne, safety = art["neural_engine"], art.get("fp16_safety")
            outside = ", ".join(f"{k} {v}" for k, v in ne["ops_outside_ane_list"].items()) or "none"
            peak = f"{safety['largest_magnitude']:.4g} ({safety['largest_op_type']})" if safety else "-"
            headroom = f"{safety['headroom']:.0f}x" if safety else "-"
            lines.append(
                f"| {variant.upper()} {frames}x{size} | {art['form']} | {art['precision']} | {ne['conv_5d']} | "
                f"{ne['ops_on_rank5_tensors']} | {outside} | {ne['compute_precision']} | {peak} | "
                f"{headroom} |"
            )
    lines += [
        "",
        "Core ML exports target iOS18 here so that every precision (int4 per-block) is included; their "
        "parity is the MIL reference's (numpy, from the saved package: it checks the converted program, not "
        "Core ML's kernels). w8/w4/palettized packages compare with the converted model holding the "
        "package's decompressed weights; their loss against float shows in the SQNR. ExecuTorch programs "
        "and the Core ML ane form are built from the 2-D form (no 5-D convolution).",
        "",
        f"Command: `python benchmarks/export_models.py` ({machine_line()}).",
    ]
    write_results("export_models", {"artifacts": results, "environment": environment()}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
