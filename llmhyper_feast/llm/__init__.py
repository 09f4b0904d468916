"""LLM backends and their registry.

Names resolve in this order: the built-ins (``openai``, ``local``, ``knn``), classes passed
to :func:`register_backend`, the ``llmhyper_feast.llm`` entry-point group, and finally a
dotted path ``"package.module:Class"``. Backend modules are imported only when requested.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from llmhyper_feast.errors import BackendError, BackendNotFoundError, ConfigError
from llmhyper_feast.llm.base import BackendStats, ChatRequest, ChatResult, LLMBackend

if TYPE_CHECKING:
    from llmhyper_feast.cache import AnswerCache

__all__ = [
    "BackendStats",
    "ChatRequest",
    "ChatResult",
    "LLMBackend",
    "available_backends",
    "get_backend",
    "get_backend_class",
    "register_backend",
    "unregister_backend",
]

ENTRY_POINT_GROUP = "llmhyper_feast.llm"

_BUILTINS: dict[str, str] = {
    "openai": "llmhyper_feast.llm.openai_backend:OpenAIBackend",
    "local": "llmhyper_feast.llm.local:LocalBackend",
    "knn": "llmhyper_feast.llm.knn:KnnBackend",
}
_REGISTERED: dict[str, type[LLMBackend]] = {}


def register_backend(cls: type[LLMBackend], *, replace: bool = False) -> type[LLMBackend]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, LLMBackend)):
        raise ConfigError(f"register_backend expects an LLMBackend subclass. Got {cls!r} instead.")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"{cls.__name__}.name must be a non-empty string without ':'. Got {name!r} instead.")
    if name in _BUILTINS:
        raise ConfigError(f"'{name}' is a built-in LLM backend name; give {cls.__name__} another name.")
    if name in _REGISTERED and _REGISTERED[name] is not cls and not replace:
        raise ConfigError(
            f"An LLM backend named '{name}' is already registered ({_REGISTERED[name].__qualname__}); "
            "pass replace=True to override it."
        )
    _REGISTERED[name] = cls
    return cls


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend` (no-op when absent)."""
    _REGISTERED.pop(name, None)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Names that :func:`get_backend` resolves without a dotted path."""
    names = list(_BUILTINS)
    names += [n for n in _REGISTERED if n not in names]
    names += sorted(n for n in _entry_points() if n not in names)
    return names


def _import_path(path: str, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"Could not import {what} module '{module_name}': {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendNotFoundError(f"Module '{module_name}' has no attribute '{attr}' (from {what} '{path}').") from None


def _check_class(obj: Any, origin: str) -> type[LLMBackend]:
    if not (isinstance(obj, type) and issubclass(obj, LLMBackend)):
        raise ConfigError(f"{origin} must name an LLMBackend subclass. Got {obj!r} instead.")
    return obj


def get_backend_class(name: str) -> type[LLMBackend]:
    """The backend class registered under ``name`` (or found at dotted path ``pkg.mod:Class``)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"An LLM backend name must be a non-empty string. Got {name!r} instead.")
    if name in _BUILTINS:
        return _check_class(_import_path(_BUILTINS[name], "built-in backend"), f"Built-in backend '{name}'")
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name in eps:
        try:
            obj = eps[name].load()
        except Exception as exc:
            raise BackendError(
                f"The entry point '{name}' in group '{ENTRY_POINT_GROUP}' ({eps[name].value}) failed to load: {exc}"
            ) from exc
        return _check_class(obj, f"Entry point '{name}'")
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not module_name or not attr:
            raise BackendNotFoundError(f"A dotted backend path must look like 'package.module:Class'. Got '{name}'.")
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise BackendNotFoundError(
                    f"No LLM backend at '{name}': module '{module_name}' is not importable ({exc})."
                ) from None
            raise
        return _check_class(_import_path(name, "backend"), f"'{name}'")
    raise BackendNotFoundError(
        f"Unknown LLM backend '{name}'. Available: {', '.join(available_backends())}; "
        "or give a dotted path 'package.module:Class'."
    )


def get_backend(
    name: str, options: dict | Any | None = None, cache: AnswerCache | None = None
) -> LLMBackend:
    """An instance of the backend ``name`` configured with ``options`` and an optional answer cache."""
    return get_backend_class(name)(options, cache=cache)
