"""Device fingerprint: what a latency figure was measured on."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

from .._cpu import cpu_name, has_int8_dot_product, instruction_sets

__all__ = ["fingerprint", "cpu_name"]


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
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "instruction_sets": list(instruction_sets()),
        "int8_dot_product": has_int8_dot_product(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "versions": versions,
    }
