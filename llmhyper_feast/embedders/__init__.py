"""Ad embedders and their registry.

``get_embedder(name, options)`` resolves ``name`` in this order:

1. names registered with ``register_embedder`` (the built-ins ``minilm`` and ``clip`` included);
2. entry points in the group ``llmhyper_feast.embedders`` (third-party packages);
3. a dotted path to an ``Embedder`` subclass, ``"package.module:ClassName"`` or
   ``"package.module.ClassName"``.

Backends are imported only when requested, so importing this package stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from llmhyper_feast.embedders.base import Embedder, local_path_from_uri
from llmhyper_feast.errors import BackendNotFoundError, ConfigError

__all__ = [
    "Embedder",
    "available_embedders",
    "get_embedder",
    "local_path_from_uri",
    "register_embedder",
]

ENTRY_POINT_GROUP = "llmhyper_feast.embedders"
DEFAULT_EMBEDDER = "minilm"

# Value: an Embedder subclass (or factory taking options) or a "module:attr" string loaded lazily.
_REGISTRY: dict[str, type[Embedder] | Callable[..., Embedder] | str] = {
    "minilm": "llmhyper_feast.embedders.minilm:MiniLMEmbedder",
    "clip": "llmhyper_feast.embedders.clip:ClipEmbedder",
}


def register_embedder(name: str, factory: type[Embedder] | Callable[..., Embedder], *, overwrite: bool = False) -> None:
    """Register an embedder class (or a factory ``f(options) -> Embedder``) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"The 'name' parameter of register_embedder must be a non-empty str. Got {name!r} instead.")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"An embedder named '{name}' is already registered. Pass overwrite=True to replace it.")
    if not callable(factory):
        raise ConfigError(f"The embedder registered as '{name}' must be an Embedder subclass or a callable. "
                        f"Got {type(factory).__name__} instead.")
    _REGISTRY[name] = factory


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_embedders() -> list[str]:
    """Names usable with ``get_embedder``: registered ones and installed entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def _import_dotted(path: str) -> Any:
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(path)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve(name: str) -> Any:
    target = _REGISTRY.get(name)
    if target is not None:
        return _import_dotted(target) if isinstance(target, str) else target
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    if "." in name or ":" in name:
        try:
            return _import_dotted(name)
        except (ImportError, AttributeError) as exc:
            raise BackendNotFoundError(
                f"Could not import embedder '{name}': {exc}. Expected one of {available_embedders()} "
                "or an importable 'package.module:ClassName'."
            ) from exc
    raise BackendNotFoundError(
        f"Unknown embedder '{name}'. Available embedders: {available_embedders()}. "
        f"Third-party embedders register through the entry-point group '{ENTRY_POINT_GROUP}', "
        "or pass a dotted path 'package.module:ClassName'."
    )


def get_embedder(name: str = DEFAULT_EMBEDDER, options: Any = None) -> Embedder:
    """Create the embedder registered as ``name`` with ``options`` (dict, Options model or None)."""
    factory = _resolve(name)
    if isinstance(factory, type) and not issubclass(factory, Embedder):
        raise BackendNotFoundError(
            f"'{name}' resolves to {factory.__module__}.{factory.__qualname__}, which is not an "
            "Embedder subclass. Point it at a subclass of llmhyper_feast.embedders.Embedder."
        )
    embedder = factory(options)
    if not isinstance(embedder, Embedder):
        raise BackendNotFoundError(
            f"The factory registered as '{name}' returned a {type(embedder).__name__}, not an Embedder."
        )
    return embedder
