"""The engine interface: where a job's independent groups of work run (in-process or on a cluster)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from llmhyper_feast.config import Settings

C = TypeVar("C")
G = TypeVar("G")
R = TypeVar("R")

#: Test switch (never a setting): path of a file; the first group to run while it exists renames
#: it away and kills its own process, as a crashed worker would. See :func:`crash_point`.
TEST_CRASH_ENV = "LLMHYPER_TEST_CRASH_ONCE"


class Engine(ABC):
    """Runs ``fn(context, group)`` for each group and yields results as they finish.

    Jobs say what to run; the engine decides where. ``context`` is shipped once (a read-only
    object every group needs, e.g. the user matrix), each group once. Engines are context
    managers; :meth:`start` and :meth:`stop` nest, so a job and the steps it calls may each
    hold the same engine.
    """

    name: ClassVar[str]
    #: True when groups run outside this process (results then cross a process boundary)
    distributed: ClassVar[bool] = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self._depth = 0

    def start(self) -> None:
        """Make the engine ready (connect to or start a cluster); nested calls only count."""
        if self._depth == 0:
            self._start()
        self._depth += 1

    def stop(self) -> None:
        """Release what :meth:`start` acquired once the outermost holder stops."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self._stop()

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        return None

    def _stop(self) -> None:
        return None

    @property
    def workers(self) -> int:
        """How many groups run at once (groups are sized from it)."""
        return 1

    def worker_concurrency(self, default: int) -> int:
        """Calls in flight per worker when a group talks to a backend (``default``: the settings')."""
        return default

    @abstractmethod
    def map_groups(
        self, fn: Callable[[C, G], R], groups: Sequence[G], *, context: C, what: str = "work"
    ) -> Generator[tuple[int, R], None, None]:
        """``(i, fn(context, groups[i]))`` for every group, in the order they finish.

        ``fn`` must be a module-level function. Closing the iterator early cancels groups not
        started yet. ``what`` names the work in errors.
        """


def crash_point() -> None:
    """Test hook only: kill this process once, when ``LLMHYPER_TEST_CRASH_ONCE`` names an existing file."""
    path = os.environ.get(TEST_CRASH_ENV, "")
    if not path:
        return
    try:
        os.rename(path, path + ".fired")  # atomic: exactly one process wins
    except OSError:
        return
    os._exit(17)


def split_even(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` cut into at most ``parts`` consecutive slices of near-equal size (none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [p for p in out if p]
