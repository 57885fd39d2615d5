"""The toolkit's error types. The command-line layer prints these as one line and exits 2; any
other exception is a bug and keeps its traceback."""

from __future__ import annotations

from typing import Optional

__all__ = ["UniformerEdgeError", "InputError", "ExportError"]


class UniformerEdgeError(Exception):
    """An error the user can act on, reported without a traceback."""


class InputError(UniformerEdgeError, ValueError):
    """Bad input: a name, value, file, checkpoint, dataset or configuration the toolkit refuses."""


class ExportError(UniformerEdgeError):
    """An artifact missed its parity threshold or came out malformed; `manifest` is the manifest
    written for the artifacts that passed, or, when none did, `{"artifacts": [], "failed": [...]}`."""

    def __init__(self, message: str, manifest: Optional[dict] = None):
        super().__init__(message)
        self.manifest = manifest
