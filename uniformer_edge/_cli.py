"""Shared command-line plumbing: user errors become one clear line and a non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


# Errors raised for bad input by the library itself (bad names, files, checkpoints, configs).
_USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, PermissionError,
                NotADirectoryError, IsADirectoryError)


def run(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None,
        prog: str = "uniformer_edge") -> int:
    try:
        return main(argv) or 0
    except _USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
