"""The default engine: every group runs in this process, one after another."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import ClassVar, TypeVar

from llmhyper_feast.engine.base import Engine

C = TypeVar("C")
G = TypeVar("G")
R = TypeVar("R")


class LocalEngine(Engine):
    """Groups run in order in the calling process (no cluster, nothing to start)."""

    name: ClassVar[str] = "local"

    def map_groups(
        self, fn: Callable[[C, G], R], groups: Sequence[G], *, context: C, what: str = "work"
    ) -> Generator[tuple[int, R], None, None]:
        for i, group in enumerate(groups):
            yield i, fn(context, group)
