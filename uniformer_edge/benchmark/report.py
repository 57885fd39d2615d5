"""Benchmark reports: JSON (versioned schema), Markdown tables, PNG plots, and merging reports
from several devices into one."""

from __future__ import annotations

import json
from pathlib import Path

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


def _plots(report: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = report.get("devices") or [_device_entry(report)]
    written = []
    for k, entry in enumerate(devices):
        rows = [r for r in entry["rows"] if "latency" in r]
        if not rows:
            continue
        suffix = f"-{k}" if len(devices) > 1 else ""
        label = device_label(entry["device"])
        names = [f"{r['variant']} {r['precision']} {r['backend']}/{r['setting']}" for r in rows]
        lat = [r["latency"]["median_ms"] for r in rows]
        acc = [100 * r["accuracy"].get("top1", r["accuracy"]["vs_float"]["top1_agreement"]) for r in rows]
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.scatter(lat, acc)
        for x, y, n in zip(lat, acc, names):
            ax.annotate(n, (x, y), fontsize=6)
        front = sorted(pareto_front(list(zip(lat, acc))), key=lambda i: lat[i])
        ax.plot([lat[i] for i in front], [acc[i] for i in front], "r--", label="Pareto front")
        ax.set_xlabel("median latency (ms)")
        ax.set_ylabel("top-1 (%) or top-1 agreement with float (%)")
        ax.set_title(f"Latency vs accuracy: {label}", fontsize=8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"latency_vs_accuracy{suffix}.png", dpi=120)
        plt.close(fig)
        _bar_chart(
            plt,
            folder / f"latency{suffix}.png",
            names,
            lat,
            "median latency (ms)",
            f"Latency per backend and precision: {label}",
        )
        sizes = {f"{r['variant']} {r['format']} {r['precision']}": r["size_bytes"] / 1e6 for r in entry["rows"]}
        _bar_chart(
            plt,
            folder / f"size{suffix}.png",
            list(sizes),
            list(sizes.values()),
            "size (MB)",
            f"Size per precision: {label}",
        )
        written += [f"latency_vs_accuracy{suffix}.png", f"latency{suffix}.png", f"size{suffix}.png"]
    return written


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


def _bar_chart(plt, path: Path, names: list, values: list, xlabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.barh(names, values)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
