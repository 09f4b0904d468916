"""Ad embedders and their registry.

``get_embedder(name, options)`` resolves ``name`` in this order: the built-ins (``minilm``,
``clip``), classes added with :func:`register_embedder`, the entry-point group
``llmhyper_feast.embedders``, and a dotted path ``"package.module:ClassName"`` to an
:class:`Embedder` subclass. Backends are imported only when requested.
"""

from __future__ import annotations

from typing import Any

from llmhyper_feast.backends.embedders.base import Embedder, local_path_from_uri
from llmhyper_feast.plugins import Registry

__all__ = [
    "EMBEDDERS",
    "Embedder",
    "available_embedders",
    "get_embedder",
    "local_path_from_uri",
    "register_embedder",
    "unregister_embedder",
]

ENTRY_POINT_GROUP = "llmhyper_feast.embedders"
DEFAULT_EMBEDDER = "minilm"

EMBEDDERS: Registry[Embedder] = Registry(
    "embedder",
    Embedder,
    ENTRY_POINT_GROUP,
    {
        "minilm": "llmhyper_feast.backends.embedders.minilm:MiniLMEmbedder",
        "clip": "llmhyper_feast.backends.embedders.clip:ClipEmbedder",
    },
)


def register_embedder(name: str, cls: type[Embedder], *, replace: bool = False) -> type[Embedder]:
    """Make the Embedder subclass ``cls`` available under ``name``."""
    return EMBEDDERS.register(cls, name=name, replace=replace)


def unregister_embedder(name: str) -> None:
    """Remove an embedder added with :func:`register_embedder` (no-op when absent)."""
    EMBEDDERS.unregister(name)


def available_embedders() -> list[str]:
    """Names usable with ``get_embedder``: built-ins, registered ones and installed entry points."""
    return EMBEDDERS.available()


def get_embedder(name: str = DEFAULT_EMBEDDER, options: Any = None) -> Embedder:
    """Create the embedder registered as ``name`` with ``options`` (dict, Options model or None)."""
    return EMBEDDERS.get_class(name)(options)
