"""Shared command-line plumbing: the toolkit's errors (`uniformer_edge.errors`) and file-system
errors become one clear line and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from .errors import UniformerEdgeError


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`prog: error: ...; see --help`), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_ONE_LINE = (
    UniformerEdgeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)


def run(
    main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None, prog: str = "uniformer_edge"
) -> int:
    try:
        return main(argv) or 0
    except _ONE_LINE as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _number(kind, minimum, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < minimum or value != value:  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


# Counts validated at parse time: 0 must never be read as "unset", a negative count never reach a loop.
positive_int = _number(int, 1, "a positive integer")
nonnegative_int = _number(int, 0, "0 or more")
positive_float = _number(float, float.fromhex("0x1p-1074"), "a positive number")
nonnegative_float = _number(float, 0.0, "0 or more")
