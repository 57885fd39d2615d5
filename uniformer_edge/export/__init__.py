"""Export to ONNX, Core ML and ExecuTorch, each validated numerically where a runtime exists,
listed with sizes, hashes and parity figures in a manifest. The formats and runtimes are listed
in one registry (`export.registry`)."""

from .base import Format, Precision, Runner, Runtime, Threshold
from .pipeline import ExportError, ExportJob, run_export, verify_manifest
from .registry import FORMATS, PRECISIONS, RUNTIMES, get_format, get_runtime

__all__ = [
    "ExportJob",
    "run_export",
    "verify_manifest",
    "ExportError",
    "FORMATS",
    "PRECISIONS",
    "RUNTIMES",
    "Format",
    "Runtime",
    "Runner",
    "Precision",
    "Threshold",
    "get_format",
    "get_runtime",
]
