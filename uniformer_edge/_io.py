"""Atomic artifact writing: a file or directory appears complete or not at all."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def remove_stale_partials(path: PathLike) -> list[Path]:
    """Remove the temporary siblings (`.NAME.PID.*.partial` / `.tmp`) that earlier writes of
    `path` left when their process was killed (SIGKILL, power loss): those whose process is gone.
    A write in progress in another live process is left alone."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if sibling.suffix not in (".partial", ".tmp"):
            continue
        pid = sibling.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                sibling.unlink()
        removed.append(sibling)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave it
    return True


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: PathLike) -> str:
    """SHA-256 of a directory (e.g. an .mlpackage): every file's relative path and bytes, in order."""
    import hashlib

    root = Path(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_output_file(path: PathLike) -> Path:
    """Check before any work that a file can be written at `path` (not a folder, a writable place)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output file {path} is a directory")
    _check_writable_parent(path)
    return path


def check_output_dir(path: PathLike, force: bool) -> Path:
    """Refuse an existing, non-empty output directory unless `force`; check it can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path exists and is not a directory: {path}")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(f"output directory {path} already exists; pass --force to replace it")
    _check_writable_parent(path)
    return path


def _check_writable_parent(path: Path) -> None:
    parent = path.parent if path.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot create output {path}: {probe} is not a directory")
    try:  # a real write: os.access says yes to root even where writing fails (/proc, read-only mounts)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to {probe} (for output {path}): {e.strerror}") from None


@contextlib.contextmanager
def atomic_dir(path: PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `path` only on success, so an
    error or Ctrl-C leaves no half-written output (and any previous output untouched)."""
    path = check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
