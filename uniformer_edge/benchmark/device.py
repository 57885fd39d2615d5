"""Device fingerprint: what a latency figure was measured on."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["fingerprint", "cpu_name"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True).stdout.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def fingerprint(threads: int) -> dict:
    versions = {}
    for name in ("torch", "torchao", "onnxruntime", "coremltools", "executorch", "numpy", "uniformer-edge"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"hostname": platform.node(), "os": platform.platform(), "machine": platform.machine(),
            "cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "memory_bytes": _memory_bytes(), "python": platform.python_version(), "versions": versions}
