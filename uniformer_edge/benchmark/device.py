"""Device fingerprint: what a latency figure was measured on."""

from __future__ import annotations

import os
import platform
import torch

from .._cpu import cpu_name
from .._environment import cpu_facts, library_versions

__all__ = ["fingerprint", "cpu_name"]


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def fingerprint(threads: int) -> dict:
    cpu = cpu_facts()
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu["name"],
        "instruction_sets": cpu["instruction_sets"],
        "int8_dot_product": cpu["int8_dot_product"],
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "versions": library_versions(),
    }
