"""Export UniFormer-S (8x224) and XXS (8x160) in every format and precision and tabulate file
size, export time, parity figures and the op census.

    python benchmarks/export_models.py [--variants s xxs] [--formats onnx coreml executorch]

Random weights (no released checkpoint is reachable here): parity is about the exporters, not
accuracy. Artifacts go to --out (default: the local cache, where benchmarks/run_suite.py reuses
them); benchmarks/results/export_models.{json,md} are written (rows of formats and variants not
exported in this run are kept from the previous results). Core ML parity needs macOS; on
Linux its row shows the spec census only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import EXPORTS, RESULTS, environment, write_results
from uniformer_edge.export import SUPPORTED, ExportJob, run_export
from uniformer_edge.models import get_variant

QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "quantize", "dequantize", "constexpr_affine_dequantize",
                 "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")


def census_summary(fmt: str, census: dict) -> tuple[str, int]:
    """(convolutions as they remain, number of quantization-related ops)."""
    if fmt == "onnx":
        convs = f"{census.get('Conv', 0)} Conv (5-D)"
    elif fmt == "coreml":
        convs = f"{census.get('conv', 0)} conv (5-D)"
    else:  # ExecuTorch: every Conv3d was rewritten as 2-D taps before lowering
        convs = f"{sum(v for k, v in census.items() if 'convolution' in k)} undelegated conv, " \
                f"{sum(v for k, v in census.items() if 'delegate' in k)} XNNPACK calls"
    quant = sum(v for k, v in census.items() if k in QUANTIZED_OPS or "quantize" in k)
    return convs, quant


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["s", "xxs"])
    p.add_argument("--formats", nargs="+", default=["onnx", "coreml", "executorch"])
    p.add_argument("--out", type=Path, default=EXPORTS, help=f"where the artifacts go (default {EXPORTS})")
    args = p.parse_args()
    # A run over some formats or variants updates their rows and keeps the others.
    previous = RESULTS / "export_models.json"
    results = json.loads(previous.read_text())["artifacts"] if previous.is_file() else {}
    for variant in args.variants:
        for fmt in args.formats:
            started = time.time()
            manifest = run_export(ExportJob(variant=variant, formats=(fmt,), precisions=SUPPORTED[fmt],
                                            target="ios18", out=str(args.out / f"{variant}-{fmt}"), check_clips=2,
                                            force=True))
            print(f"{variant} {fmt}: {time.time() - started:.0f} s", flush=True)
            results[f"{variant}-{fmt}"] = manifest["artifacts"]
    lines = ["# Export of every format and precision", "",
             "| model | format | precision | size (MB) | export (s) | runtime | parity | threshold | convolutions | "
             "quantization ops |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, artifacts in results.items():
        variant, fmt = key.split("-", 1)
        frames, size = get_variant(variant).default_input
        for art in artifacts:
            parity = art["parity"]
            if "not run" in parity:
                figure, runtime, threshold = "not run", parity["not run"], "-"
            else:
                ref = parity.get("vs_pytorch_quantized", parity["vs_float"])
                figure = (f"rel err {ref['max_rel_err']:.1e}" if art["precision"] == "fp32" else
                          f"cos {ref['cosine']:.5f}") + f"; vs float {parity['vs_float']['sqnr_db']:.1f} dB"
                runtime, threshold = parity["runtime"], parity["threshold"]
            convs, quant = census_summary(fmt, art["census"])
            lines.append(f"| {variant.upper()} {frames}x{size} | {fmt} | {art['precision']} | "
                         f"{art['size_bytes'] / 1e6:.1f} | {art['export_seconds']:.0f} | {runtime} | {figure} | "
                         f"{threshold} | {convs} | {quant} |")
    lines += ["", "Core ML exports target iOS18 here so that every precision (int4 per-block) is included; "
              "ExecuTorch programs are built from the 2-D form (XNNPACK has no 5-D convolution).", "",
              f"Command: `python benchmarks/export_models.py` ({environment()['processor']}, "
              f"{environment()['threads']} threads)."]
    write_results("export_models", {"artifacts": results, "environment": environment()}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
