"""Durable, atomic file writes: a reader sees the old file or the new one, never a part.

Every file the plugin writes (parquet parts, JSON state, caches, indexes) goes through
:func:`atomic_write`: the content is written to a temporary file in the same folder,
fsynced, renamed over the target, and the folder is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir"]


def fsync_dir(directory: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object], *, sync: bool = True) -> Path:
    """Call ``write(tmp_path)`` and move the finished file onto ``path`` in one rename.

    A failure inside ``write`` removes the temporary file and leaves ``path`` untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), sync=sync)


def atomic_write_text(path: str | Path, text: str, *, sync: bool = True) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), sync=sync)


def atomic_write_json(path: str | Path, obj: Any, *, sync: bool = True, **dumps: Any) -> Path:
    """Atomically replace ``path`` with ``obj`` as JSON."""
    return atomic_write_text(path, json.dumps(obj, **dumps), sync=sync)
