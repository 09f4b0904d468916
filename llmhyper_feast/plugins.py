"""What LLM backends, embedders and weight priors share: one registry type and strict options."""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import pydantic

from llmhyper_feast.errors import BackendError, BackendNotFoundError, ConfigError


def _format_errors(what: str, exc: pydantic.ValidationError, allowed: list[str]) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "options"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown option '{loc}' (expected one of: {', '.join(allowed)})")
        else:
            parts.append(f"option '{loc}': {err['msg']} (got {err.get('input')!r})")
    return f"Invalid options for {what}: " + "; ".join(parts) + "."


def coerce_options(options_cls: type[pydantic.BaseModel], options: Any, what: str) -> Any:
    """Validate ``options`` (None, a dict or an Options model) into ``options_cls``; ConfigError if invalid."""
    if isinstance(options, options_cls):
        return options
    if options is None:
        options = {}
    elif isinstance(options, pydantic.BaseModel):
        options = options.model_dump(exclude_unset=True)
    if not isinstance(options, dict):
        raise ConfigError(
            f"The options of {what} must be a dict or {options_cls.__qualname__}. Got {type(options).__name__} instead."
        )
    try:
        return options_cls(**options)
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_errors(what, exc, list(options_cls.model_fields))) from None


def package_dir(package: str, what: str, install_hint: str) -> Path:
    """Folder of an installed data package (not imported), or a BackendError with the pip command."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            f"{what} needs the package '{package}', which is not installed. Install it with: {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plugin class lookup shared by LLM backends, embedders and weight priors.

    Names resolve in this order: built-ins (``"module:Class"`` strings, imported on first
    use), classes added with :meth:`register`, the entry-point group, and finally a dotted
    path ``"package.module:Class"``. Every resolved object must subclass ``base``.
    """

    def __init__(self, kind: str, base: type, group: str, builtins: dict[str, str]) -> None:
        # base is typed loosely: the plugin base classes are abstract, and mypy refuses
        # abstract classes where type[T] is expected
        self.kind, self.base, self.group = kind, base, group
        self._builtins = dict(builtins)
        self._registered: dict[str, type[T]] = {}

    def register(self, cls: type[T], *, name: str | None = None, replace: bool = False) -> type[T]:
        """Make ``cls`` available under ``name`` (default ``cls.name``); usable as a decorator."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ConfigError(
                f"Registering a {self.kind} expects a {self.base.__name__} subclass. Got {cls!r} instead."
            )
        key = name if name is not None else getattr(cls, "name", None)
        if not isinstance(key, str) or not key or ":" in key:
            raise ConfigError(
                f"The name of {self.kind} {cls.__name__} must be a non-empty string without ':'. Got {key!r} instead."
            )
        if key in self._builtins:
            raise ConfigError(f"'{key}' is a built-in {self.kind} name; give {cls.__name__} another name.")
        if key in self._registered and self._registered[key] is not cls and not replace:
            raise ConfigError(
                f"A {self.kind} named '{key}' is already registered "
                f"({self._registered[key].__qualname__}); pass replace=True to override it."
            )
        self._registered[key] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a class added with :meth:`register` (no-op when absent)."""
        self._registered.pop(name, None)

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def available(self) -> list[str]:
        """Names that :meth:`get_class` resolves without a dotted path: built-ins first."""
        names = list(self._builtins)
        names += [n for n in self._registered if n not in names]
        names += sorted(n for n in self._entry_points() if n not in names)
        return names

    def _check(self, obj: Any, origin: str) -> type[T]:
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise ConfigError(f"{origin} must name a {self.base.__name__} subclass. Got {obj!r} instead.")
        return cast("type[T]", obj)

    def _import(self, path: str, origin: str) -> Any:
        module_name, _, attr = path.partition(":")
        if not module_name or not attr:
            raise BackendNotFoundError(
                f"A dotted {self.kind} path must look like 'package.module:Class'. Got '{path}'."
            )
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise BackendNotFoundError(
                    f"No {self.kind} at '{path}': module '{module_name}' is not importable ({exc})."
                ) from None
            raise BackendError(f"Could not import {origin} module '{module_name}': {exc}") from exc
        except ImportError as exc:
            raise BackendError(f"Could not import {origin} module '{module_name}': {exc}") from exc
        try:
            return getattr(module, attr)
        except AttributeError:
            raise BackendNotFoundError(
                f"Module '{module_name}' has no attribute '{attr}' ({origin} '{path}')."
            ) from None

    def get_class(self, name: str) -> type[T]:
        """The class registered under ``name`` (or found at ``pkg.mod:Class``)."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A {self.kind} name must be a non-empty string. Got {name!r} instead.")
        if name in self._builtins:
            return self._check(
                self._import(self._builtins[name], f"built-in {self.kind}"), f"Built-in {self.kind} '{name}'"
            )
        if name in self._registered:
            return self._registered[name]
        eps = self._entry_points()
        if name in eps:
            try:
                obj = eps[name].load()
            except Exception as exc:
                raise BackendError(
                    f"The entry point '{name}' in group '{self.group}' ({eps[name].value}) failed to load: {exc}"
                ) from exc
            return self._check(obj, f"Entry point '{name}'")
        if ":" in name:
            return self._check(self._import(name, self.kind), f"'{name}'")
        raise BackendNotFoundError(
            f"Unknown {self.kind} '{name}'. Available: {', '.join(self.available())}; "
            "or give a dotted path 'package.module:Class'."
        )
