"""What a figure was produced with: library versions and the CPU facts that change int8 results
(one listing for manifests, quantize reports and device fingerprints)."""

from __future__ import annotations

import platform
from importlib import metadata

from . import __version__
from ._cpu import cpu_name, has_int8_dot_product, instruction_sets

__all__ = ["LIBRARIES", "library_versions", "cpu_facts"]

LIBRARIES = (
    "torch",
    "torchao",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "coremltools",
    "executorch",
    "openvino",
    "numpy",
)


def library_versions() -> dict:
    """Python, this toolkit and every library a result can depend on (None: not installed)."""
    out = {"python": platform.python_version(), "uniformer_edge": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_facts() -> dict:
    return {
        "name": cpu_name(),
        "instruction_sets": list(instruction_sets()),
        "int8_dot_product": has_int8_dot_product(),
    }
