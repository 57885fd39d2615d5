"""Human-readable quantization reports."""
from __future__ import annotations

__all__ = ["render_markdown"]


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def render_markdown(r: dict) -> str:
    a = r["agreement"]
    lines = [f"# UniFormer-{r['variant'].upper()} {r['method'].upper()} {r['recipe']}", ""]
    if r.get("random_weights"):
        lines += ["> Random weights (no checkpoint): top-1 figures are meaningless; the agreement with the "
                  "float model below is what this report measures.", ""]
    drop = None
    if r["float"]["top1"] is not None:
        drop = 100 * (r["float"]["top1"] - r["quantized"]["top1"])
    lines += [
        "| | float | quantized |", "|---|---|---|",
        f"| top-1 | {_pct(r['float']['top1'])} | {_pct(r['quantized']['top1'])} |",
        f"| top-5 | {_pct(r['float']['top5'])} | {_pct(r['quantized']['top5'])} |", "",
        "| agreement with the float model | |", "|---|---|",
        f"| logit SQNR | {a['sqnr_db']:.2f} dB |", f"| KL divergence | {a['kl']:.5f} |",
        f"| top-1 agreement | {_pct(a['top1_agreement'])} |", f"| cosine | {a['cosine']:.5f} |", "",
        f"- observer: {r['observer']}; calibration: {r['calibration_clips']} clips of {r['calibration_data']}",
        f"- evaluation: {r['evaluation_clips']} clips of {r['evaluation_data']}",
        f"- top-1 drop: {'n/a' if drop is None else f'{drop:.2f} points'}",
        f"- time: {r['seconds']:.1f} s; size: {r['size_bytes']['quantized_pt2'] / 1e6:.2f} MB "
        f"(float32 parameters {r['size_bytes']['float32_parameters'] / 1e6:.2f} MB)",
        f"- layers quantized: {len(r['layers']['quantized'])}; kept float: {len(r['layers']['float'])}"
        + (f" ({', '.join(r['layers']['float'][:12])}{', ...' if len(r['layers']['float']) > 12 else ''})"
           if r["layers"]["float"] else ""),
    ]
    return "\n".join(lines) + "\n"
