"""Benchmark reports: JSON (versioned schema), Markdown tables, PNG plots, and merging reports
from several devices into one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .._io import atomic_dir
from .run import BENCHMARK_REPORT_SCHEMA

__all__ = [
    "render_markdown",
    "write_report",
    "merge_reports",
    "read_report",
    "pareto_front",
    "device_label",
    "unavailable_settings",
    "peak_memory",
]


def device_label(device: dict) -> str:
    return (
        f"{device.get('hostname', '?')} ({device.get('cpu', '?')}, {device.get('threads', '?')} threads"
        + (f", {device['gpu']}" if device.get("gpu") else "")
        + ")"
    )


def _fmt_acc(row) -> tuple[str, str, str, str]:
    acc = row.get("accuracy") or {}
    vs = acc.get("vs_float") or {}
    top1 = f"{100 * acc['top1']:.2f}%" if "top1" in acc else "-"
    return (
        top1,
        f"{100 * vs['top1_agreement']:.1f}%" if vs else "-",
        f"{vs['sqnr_db']:.1f}" if vs else "-",
        f"{vs['kl']:.1e}" if vs else "-",
    )


def render_markdown(report: dict) -> str:
    devices = report.get("devices") or [_device_entry(report)]
    lines = ["# Benchmark report", ""]
    if not report.get("complete", True):
        lines += [f"**Partial report**: {report.get('interrupted', 'interrupted')}.", ""]
    for entry in devices:
        dev = entry["device"]
        lines += [
            f"## {device_label(dev)}",
            "",
            f"{dev.get('os')}; memory {(dev.get('memory_bytes') or 0) / 2**30:.0f} GiB; "
            + ", ".join(
                f"{name} {version}"
                for name, version in dev["versions"].items()
                if version and name in ("torch", "onnxruntime", "openvino", "executorch", "coremltools")
            )
            + ".",
            "",
        ]
        for g in entry["groups"]:
            lines.append(
                f"- {g['variant'].upper()} {g['frames']}x{g['size']}: accuracy against the "
                f"{g['float_reference']} on {g['evaluation_clips']} clips"
                + ("" if g["labels_meaningful"] else " (random weights: only agreement is meaningful)")
            )
        lines += [f"- {line}" for line in unavailable_settings(entry)]
        lines += [
            "",
            "| model | artifact | precision | backend | setting | median ms | p90 ms | clips/s | "
            "x torch fp32 | load s | peak RSS (GPU) MB | size MB | top-1 | agreement | SQNR dB | KL |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in entry["rows"]:
            if "not_available" in r:
                lines.append(
                    f"| {r['variant'].upper()} {r['input']} | {r['artifact']} | {r['precision']} | "
                    f"{r['backend']} | {r['not_available']} |" + " |" * 11
                )
                continue
            lat = r["latency"]
            top1, agree, sqnr, kl = _fmt_acc(r)
            lines.append(
                f"| {r['variant'].upper()} {r['input']} | {r['artifact']} | {r['precision']} | {r['backend']} "
                f"| {r['setting']} | {lat['median_ms']:.1f} | {lat['p90_ms']:.1f} | "
                f"{lat['throughput_clips_per_s']:.2f} | {r['speedup_vs_torch_fp32']:.2f} | {r['load_s']:.2f} | "
                f"{peak_memory(r)} | {r['size_bytes'] / 1e6:.1f} | {top1} | {agree} | {sqnr} "
                f"| {kl} |"
            )
        lines.append("")
    return "\n".join(lines)


def _device_entry(report: dict) -> dict:
    """One device's part of a report, as a merged report lists it."""
    return {
        "device": report["device"],
        "rows": report["rows"],
        "groups": report["groups"],
        "backends": report["backends"],
        "backend_settings": report.get("backend_settings", {}),
        "complete": report.get("complete", True),
    }


def unavailable_settings(entry: dict) -> list[str]:
    """Lines "<backend>[ <setting>]: not available here: <reason>" for what a device lacks."""
    lines = []
    for backend, state in entry["backends"].items():
        if state != "available":
            lines.append(f"{backend}: {state}")
            continue
        for setting, setting_state in (entry.get("backend_settings") or {}).get(backend, {}).items():
            if setting_state != "available":
                lines.append(f"{backend} {setting}: {setting_state}")
    return lines


def peak_memory(row: dict) -> str:
    """Peak RSS in MB, and the GPU's peak allocation where the row ran on one."""
    rss = f"{row['peak_rss_bytes'] / 2**20:.0f}"
    return rss + (f" (GPU {row['peak_gpu_bytes'] / 2**20:.0f})" if "peak_gpu_bytes" in row else "")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower latency, higher accuracy)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


# Accuracy on the plots: top-1 with its 95% interval where the model has labels and enough clips
# for the interval to mean something; otherwise the logit SQNR against the float model, which
# is continuous on any number of clips (float-exact rows are drawn at the cap).
_MIN_CLIPS_FOR_TOP1 = 200
_SQNR_CAP_DB = 80.0
_MARKERS = "osD^v<>PXph*"


def _model_key(row: dict) -> str:
    return f"UniFormer-{row['variant'].upper()} {row['input']}"


def _accuracy_axis(rows: list[dict], clips: int) -> tuple[list[float], Optional[list[float]], str]:
    """(values, 95% half-intervals or None, axis label) for one model's rows."""
    if clips >= _MIN_CLIPS_FOR_TOP1 and all("top1" in r["accuracy"] for r in rows):
        top1 = [100 * r["accuracy"]["top1"] for r in rows]
        half = [1.96 * math.sqrt(max(p * (100 - p), 0.0) / clips) for p in top1]
        return top1, half, f"top-1 (%) on {clips} clips, 95% interval"
    sqnr = [min(float(r["accuracy"]["vs_float"]["sqnr_db"]), _SQNR_CAP_DB) for r in rows]
    return sqnr, None, f"logit SQNR vs float (dB, {clips} clips; exact at {_SQNR_CAP_DB:g})"


def _plots(report: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    devices = report.get("devices") or [_device_entry(report)]
    written = []
    for k, entry in enumerate(devices):
        rows = [r for r in entry["rows"] if "latency" in r]
        if not rows:
            continue
        suffix = f"-{k}" if len(devices) > 1 else ""
        label = device_label(entry["device"])
        models = list(dict.fromkeys(_model_key(r) for r in rows))
        clips = {
            f"UniFormer-{g['variant'].upper()} {g['frames']}x{g['size']}": g["evaluation_clips"]
            for g in entry["groups"]
        }
        backends = sorted({r["backend"] for r in rows})
        precisions = list(dict.fromkeys(r["precision"] for r in rows))
        colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
        markers = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(precisions)}

        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models) + 1.7, 4.8), squeeze=False)
        for ax, model in zip(axes[0], models):
            mine = [r for r in rows if _model_key(r) == model]
            lat = [r["latency"]["median_ms"] for r in mine]
            acc, half, ylabel = _accuracy_axis(mine, clips.get(model, 0))
            for i, r in enumerate(mine):
                ax.errorbar(
                    lat[i],
                    acc[i],
                    yerr=None if half is None else half[i],
                    fmt=markers[r["precision"]],
                    color=colours[r["backend"]],
                    markersize=7,
                    capsize=3,
                    zorder=3,
                )
            front = sorted(pareto_front(list(zip(lat, acc))), key=lambda i: lat[i])
            ax.plot([lat[i] for i in front], [acc[i] for i in front], "-", color="0.3", lw=1.5, zorder=2)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("median latency (ms, log scale)")
            ax.set_ylabel(ylabel)
            ax.set_title(model, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        handles = [Line2D([], [], color=colours[b], marker="o", ls="", label=b) for b in backends]
        handles += [Line2D([], [], color="0.4", marker=markers[p], ls="", label=p) for p in precisions]
        handles.append(Line2D([], [], color="0.3", lw=1.5, label="Pareto front"))
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
        fig.suptitle(f"Latency vs accuracy: {label}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1 - 1.5 / (5.5 * len(models) + 1.7), 1))
        fig.savefig(folder / f"latency_vs_accuracy{suffix}.png", dpi=110)
        plt.close(fig)

        _latency_bars(plt, folder / f"latency{suffix}.png", rows, models, colours, f"Latency: {label}")
        sized = {}
        for r in entry["rows"]:
            if "size_bytes" in r:
                sized.setdefault(_model_key(r), {})[f"{r['format']} {r['precision']}"] = r["size_bytes"] / 1e6
        _size_bars(plt, folder / f"size{suffix}.png", sized, f"File size: {label}")
        written += [f"latency_vs_accuracy{suffix}.png", f"latency{suffix}.png", f"size{suffix}.png"]
    return written


def _latency_bars(plt, path: Path, rows: list[dict], models: list[str], colours: dict, title: str) -> None:
    """Median latency per model, fastest first, whiskers from p10 to p90, coloured by backend."""
    fig, axes = plt.subplots(len(models), 1, figsize=(8, 0.5 + 0.26 * len(rows) + 0.6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        mine = sorted((r for r in rows if _model_key(r) == model), key=lambda r: r["latency"]["median_ms"])
        med = [r["latency"]["median_ms"] for r in mine]
        low = [m - r["latency"].get("p10_ms", r["latency"]["min_ms"]) for m, r in zip(med, mine)]
        high = [r["latency"]["p90_ms"] - m for m, r in zip(med, mine)]
        names = [f"{r['precision']} {r['backend']}/{r['setting']}" for r in mine]
        ax.barh(range(len(mine)), med, xerr=[low, high], color=[colours[r["backend"]] for r in mine], capsize=2)
        ax.set_yticks(range(len(mine)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("median latency (ms); whiskers p10-p90")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _size_bars(plt, path: Path, sized: dict, title: str) -> None:
    fig, axes = plt.subplots(
        len(sized), 1, figsize=(8, 0.5 + sum(0.26 * len(v) + 0.6 for v in sized.values())), squeeze=False
    )
    for ax, (model, sizes) in zip(axes[:, 0], sized.items()):
        ordered = sorted(sizes.items(), key=lambda kv: kv[1])
        ax.barh(range(len(ordered)), [v for _, v in ordered], color="tab:blue")
        ax.set_yticks(range(len(ordered)), [n for n, _ in ordered], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("size (MB)")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out, force: bool = False) -> list[str]:
    """report.json, report.md and the plots, written atomically into `out`."""
    with atomic_dir(out, force=force) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (tmp / "report.md").write_text(render_markdown(report))
        plots = _plots(report, tmp)
    return ["report.json", "report.md", *plots]


def read_report(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report not found: {path}")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not a benchmark report (invalid JSON: {err})") from None
    schema = report.get("schema") if isinstance(report, dict) else None
    if not isinstance(schema, int):
        raise InputError(f"{path} is not a benchmark report (no schema version)")
    if schema > BENCHMARK_REPORT_SCHEMA:
        raise InputError(
            f"{path} has report schema {schema}, newer than this toolkit reads ({BENCHMARK_REPORT_SCHEMA}); "
            f"upgrade uniformer-edge"
        )
    entries = report.get("devices") if "devices" in report else [report]
    for entry in entries if isinstance(entries, list) else [None]:
        missing = [k for k in _DEVICE_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            what = (
                "an export manifest"
                if "artifacts" in report
                else "a quantize report"
                if "agreement" in report or "recipe" in report
                else "not one"
            )
            raise InputError(
                f"{path} is not a benchmark report ({what}: no {', '.join(missing)}); "
                f"pass the report.json of `python -m uniformer_edge.benchmark`"
            )
        if not entry["rows"]:
            raise InputError(f"{path} is a benchmark report without rows: nothing to merge")
    return report


_DEVICE_KEYS = ("device", "rows", "groups", "backends")


def merge_reports(paths) -> dict:
    """One report holding every device's table (a merged report can be merged again); a device
    table that appears twice (the same report given twice, or inside a merged one) is kept once."""
    import warnings

    devices, seen = [], set()
    for p in paths:
        r = read_report(p)
        for entry in r.get("devices") or [_device_entry(r)]:
            key = json.dumps(entry, sort_keys=True, default=str)
            if key in seen:
                warnings.warn(f"{p}: a device table already merged from an earlier report; kept once", stacklevel=2)
                continue
            seen.add(key)
            devices.append(entry)
    return {
        "schema": BENCHMARK_REPORT_SCHEMA,
        "merged_from": [str(p) for p in paths],
        "devices": devices,
        "complete": True,
    }
