"""Atomic file writes: a temp file in the same directory, then os.replace."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None,
                durable: bool = True) -> None:
    """Readers see the old file or the new one, never a part. durable=False skips the fsync,
    for files that are rendered anew on every launch (job scripts and configs)."""
    path = Path(path)
    if not durable and _same_content(path, data, mode):
        return  # renaming over a file flushes it on ext4: don't rewrite identical renders
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        # mkstemp makes the file 0600, and os.replace keeps that: take the mode the umask
        # gives a new file (colleagues on a shared project directory can read the results)
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_with(path: str | os.PathLike, save: Any) -> None:
    """Write `path` atomically through `save(tmp_path)` (a library that writes files itself,
    openpyxl's Workbook.save): readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, default_mode())  # not mkstemp's 0600: what the umask gives
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_mode() -> int:
    """The mode open() gives a new file here: 0o666 less the process's umask."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def _same_content(path: Path, data: bytes, mode: int | None) -> bool:
    try:
        if (path.stat().st_mode & 0o777) != (default_mode() if mode is None else mode):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def write_text(path: str | os.PathLike, text: str, mode: int | None = None,
               durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), mode, durable)


def write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=4, sort_keys=True, allow_nan=True) + "\n",
               durable=durable)
