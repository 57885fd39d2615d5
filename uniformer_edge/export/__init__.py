"""Export to ONNX, Core ML and ExecuTorch, each validated numerically where a runtime exists,
listed with sizes, hashes and parity figures in a manifest."""

from .pipeline import FORMATS, PRECISIONS, SUPPORTED, ExportError, ExportJob, run_export, verify_manifest

__all__ = ["ExportJob", "run_export", "verify_manifest", "ExportError", "FORMATS", "PRECISIONS", "SUPPORTED"]
