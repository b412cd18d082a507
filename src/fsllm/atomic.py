"""Atomic writes: a process killed at any moment leaves either the old file (or folder) or the new one.

Everything is written next to its target under a hidden temporary name, then moved into place
with ``os.replace`` (atomic on POSIX and Windows for files on one file system). A folder cannot
be swapped in one step with the standard library, so ``replacing_dir`` moves the old folder
aside, the new one in, and then deletes the old one: a kill between those two renames leaves
the complete old folder under ``.<name>.old`` (and ``fsllm train --resume`` writes it again).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _temp_sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{suffix}-{os.getpid()}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """``Path.write_text``, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Write ``lines`` (each without its newline), atomically."""
    with replacing(path) as tmp, tmp.open("w") as f:
        for line in lines:
            f.write(line + "\n")


@contextlib.contextmanager
def replacing_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it takes the place of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
