"""One run at a time per repo: an exclusive advisory lock on ``RepoLayout.lock``.

``materialize``, ``train-warm``, ``generate`` and ``export`` hold it for their whole run, so
two runs never pay the same LLM calls twice or interleave their writes. The lock is an
``fcntl.flock`` on an open file: the kernel releases it when the holder exits or is killed,
so a crashed run never leaves a stale lock behind. The file also records the holder (pid,
command, start time) for the error message of the run that finds it taken.

Within one thread the lock is re-entrant (``materialize`` calls ``generate``); another thread
or process gets :class:`~llmhyper_feast.errors.RepoLockedError` at once, never a wait.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from llmhyper_feast.errors import RepoLockedError
from llmhyper_feast.store.layout import RepoLayout

__all__ = ["holder", "locked", "repo_lock"]

P = ParamSpec("P")
R = TypeVar("R")

_COMMANDS = {"materialize", "train-warm", "generate", "export", "repair"}  # shown as `llmhyper <command>`
_held: dict[Path, tuple[int, int, int]] = {}  # lock path -> (thread id, depth, fd)
_guard = threading.Lock()


def holder(repo: str | Path) -> dict[str, Any] | None:
    """What the lock file says about its last holder (None when empty or unreadable)."""
    try:
        data = json.loads(RepoLayout.of(repo).lock.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _locked_error(root: Path, info: dict[str, Any] | None) -> RepoLockedError:
    if info:
        command = str(info.get("command", "?"))
        name = f"`llmhyper {command}`" if command in _COMMANDS else command
        who = f"{name} (pid {info.get('pid', '?')}, since {info.get('since', '?')})"
    else:
        who = "another run (it is just starting)"
    return RepoLockedError(
        f"The repo {root} is locked by {who}. Wait for it to finish, or if that process is gone the lock "
        "is released automatically: then re-run."
    )


@contextmanager
def repo_lock(repo: str | Path, command: str) -> Iterator[None]:
    """Hold the repo's exclusive lock for the block, or raise RepoLockedError naming the holder."""
    import fcntl

    layout = RepoLayout.of(repo)
    path = layout.lock
    me = threading.get_ident()
    with _guard:
        held = _held.get(path)
        if held is not None and held[0] == me:
            _held[path] = (me, held[1] + 1, held[2])
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                tid, depth, fd = _held[path]
                _held[path] = (tid, depth - 1, fd)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _locked_error(layout.root, holder(layout.root)) from None
    except BaseException:
        os.close(fd)
        raise
    # Written in place, not via atomic_write: a rename would give the lock file a new inode
    # and the next run would lock that one instead of ours.
    info = {
        "pid": os.getpid(),
        "command": command,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    with _guard:
        _held[path] = (me, 1, fd)
    try:
        yield
    finally:
        with _guard:
            del _held[path]
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock


def locked(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a job whose first argument is the repo so that it runs under :func:`repo_lock`."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            repo = args[0] if args else kwargs["repo"]
            with repo_lock(repo, command):  # type: ignore[arg-type]
                return func(*args, **kwargs)

        return wrapper

    return decorate
