"""Human-readable quantization reports."""

from __future__ import annotations

__all__ = ["render_markdown"]


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def render_markdown(r: dict) -> str:
    a = r["agreement"]
    lines = [f"# UniFormer-{r['variant'].upper()} {r['method'].upper()} {r['recipe']}", ""]
    if r.get("random_weights"):
        lines += [
            "> Random weights (no checkpoint): top-1 figures are meaningless; the agreement with the "
            "float model below is what this report measures.",
            "",
        ]
    drop = None
    if r["float"]["top1"] is not None:
        drop = 100 * (r["float"]["top1"] - r["quantized"]["top1"])
    lines += [
        "| | float | quantized |",
        "|---|---|---|",
        f"| top-1 | {_pct(r['float']['top1'])} | {_pct(r['quantized']['top1'])} |",
        f"| top-5 | {_pct(r['float']['top5'])} | {_pct(r['quantized']['top5'])} |",
        "",
        "| agreement with the float model | |",
        "|---|---|",
        f"| logit SQNR | {a['sqnr_db']:.2f} dB |",
        f"| KL divergence | {a['kl']:.5f} |",
        f"| top-1 agreement | {_pct(a['top1_agreement'])} |",
        f"| cosine | {a['cosine']:.5f} |",
        "",
        f"- observer: {r['observer']}; calibration: {r['calibration_clips']} clips of {r['calibration_data']}",
        f"- evaluation: {r['evaluation_clips']} clips of {r['evaluation_data']}",
        f"- top-1 drop: {'n/a' if drop is None else f'{drop:.2f} points'}",
        f"- time: {r['seconds']:.1f} s; size: {r['size_bytes']['quantized_pt2'] / 1e6:.2f} MB "
        f"(float32 parameters {r['size_bytes']['float32_parameters'] / 1e6:.2f} MB)",
        f"- layers quantized: {len(r['layers']['quantized'])}; kept float: {len(r['layers']['float'])}"
        + (
            f" ({', '.join(r['layers']['float'][:12])}{', ...' if len(r['layers']['float']) > 12 else ''})"
            if r["layers"]["float"]
            else ""
        ),
    ]
    if "qat" in r:
        q = r["qat"]
        lines += [
            "",
            f"QAT: {q['epochs']} epoch(s), {q['steps']} steps on {q['train_clips']} clips, lr {q['lr']}, "
            f"distillation weight {q['distill_weight']} at T={q['temperature']}, observers frozen after "
            f"step {q['observers_frozen_after_step']}",
        ]
    if "mixed_precision" in r:
        m = r["mixed_precision"]
        lines += [
            "",
            f"Mixed precision (max drop {m['max_drop_points']} points): kept float "
            f"{', '.join(m['kept_float']) or 'nothing'}; simulated drop {m['simulated_drop_points']:.2f} points",
        ]
    if "analysis" in r:
        a = r["analysis"]
        key = a["criterion"]
        rows = sorted(a["layers"], key=lambda x: x["only_quantized"]["sqnr_db"])[:15]
        lines += [
            "",
            f"## Most sensitive layers ({a['clips']} clips)",
            "",
            f"| layer | SQNR alone (dB) | KL alone | {key} alone | {key} with it float |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['layer']} | {x['only_quantized']['sqnr_db']:.1f} | {x['only_quantized']['kl']:.5f} | "
            f"{_pct(x['only_quantized'][key])} | {_pct(x['only_float'][key])} |"
            for x in rows
        ]
        lines += ["", "## Block outputs, quantized vs float", "", "| block | SQNR (dB) |", "|---|---|"]
        lines += [f"| {b} | {v:.1f} |" for b, v in a["block_sqnr_db"].items()]
    return "\n".join(lines) + "\n"
