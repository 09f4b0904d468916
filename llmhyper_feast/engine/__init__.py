"""Engines: where the heavy jobs' groups of work run (``engine: local | ray``).

A job cuts its work into independent groups (ads to fit, ads to generate) and hands them to
:meth:`Engine.map_groups`; the engine named by the ``engine`` setting runs them in-process
(``local``) or as Ray tasks (``ray``). Other engines register like any plugin: a built-in name,
:func:`register_engine`, the entry-point group ``llmhyper_feast.engines``, or ``pkg.mod:Class``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmhyper_feast.engine.base import Engine, split_even
from llmhyper_feast.plugins import Registry

if TYPE_CHECKING:
    from llmhyper_feast.config import Settings

__all__ = ["ENGINES", "Engine", "available_engines", "get_engine", "register_engine", "split_even"]

ENGINES: Registry[Engine] = Registry(
    "engine",
    Engine,
    "llmhyper_feast.engines",
    {
        "local": "llmhyper_feast.engine.local:LocalEngine",
        "ray": "llmhyper_feast.engine.ray_engine:RayEngine",
    },
)


def register_engine(cls: type[Engine], *, replace: bool = False) -> type[Engine]:
    """Make an Engine subclass available under its ``name``."""
    return ENGINES.register(cls, replace=replace)


def available_engines() -> list[str]:
    """Names the ``engine`` setting accepts without a dotted path."""
    return ENGINES.available()


def get_engine(settings: Settings | None = None, name: str | None = None) -> Engine:
    """The engine ``name`` (default: ``settings.engine``, else local), not started yet."""
    chosen = name or (settings.engine if settings is not None else "local")
    return ENGINES.get_class(chosen)(settings)
