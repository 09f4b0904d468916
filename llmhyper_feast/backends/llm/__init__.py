"""LLM backends and their registry.

Names resolve in this order: the built-ins (``openai``, ``local``), classes passed to
:func:`register_backend`, the ``llmhyper_feast.llm`` entry-point group, and finally a
dotted path ``"package.module:Class"``. Backend modules are imported only when requested.
Weight priors (``knn``) are not LLM backends: see :mod:`llmhyper_feast.generation.priors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmhyper_feast.backends.llm.base import BackendStats, ChatRequest, ChatResult, LLMBackend
from llmhyper_feast.errors import ConfigError
from llmhyper_feast.plugins import Registry

if TYPE_CHECKING:
    from llmhyper_feast.generation.cache import AnswerCache

__all__ = [
    "NO_LLM",
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
NO_LLM = "none"  # llm.name that generates with the weight prior alone

REGISTRY: Registry[LLMBackend] = Registry(
    "LLM backend",
    LLMBackend,
    ENTRY_POINT_GROUP,
    {
        "openai": "llmhyper_feast.backends.llm.openai_backend:OpenAIBackend",
        "local": "llmhyper_feast.backends.llm.local:LocalBackend",
    },
)


def register_backend(cls: type[LLMBackend], *, replace: bool = False) -> type[LLMBackend]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator)."""
    return REGISTRY.register(cls, replace=replace)


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend` (no-op when absent)."""
    REGISTRY.unregister(name)


def available_backends() -> list[str]:
    """Names that :func:`get_backend` resolves without a dotted path."""
    return REGISTRY.available()


def get_backend_class(name: str) -> type[LLMBackend]:
    """The backend class registered under ``name`` (or found at dotted path ``pkg.mod:Class``)."""
    if name == NO_LLM:
        raise ConfigError(
            f"'{NO_LLM}' means no LLM: generation then uses the weight prior alone, "
            "so there is no backend class to load."
        )
    from llmhyper_feast.generation.priors import PRIORS

    if name in PRIORS.available():
        raise ConfigError(
            f"'{name}' is a weight prior, not an LLM backend. To generate with the prior alone, "
            f"set llm.name to '{NO_LLM}' (--llm {NO_LLM}) and prior.name to '{name}' (--prior {name})."
        )
    return REGISTRY.get_class(name)


def get_backend(name: str, options: dict | Any | None = None, cache: AnswerCache | None = None) -> LLMBackend:
    """An instance of the backend ``name`` configured with ``options`` and an optional answer cache."""
    return get_backend_class(name)(options, cache=cache)
