"""What LLM backends and embedders share: turning user options into their strict Options model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pydantic

from .errors import BackendError, ConfigError


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
        raise ConfigError(f"The options of {what} must be a dict or {options_cls.__qualname__}. "
                          f"Got {type(options).__name__} instead.")
    try:
        return options_cls(**options)
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_errors(what, exc, list(options_cls.model_fields))) from None


def package_dir(package: str, what: str, install_hint: str) -> Path:
    """Folder of an installed data package (not imported), or a BackendError with the pip command."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"{what} needs the package '{package}', which is not installed. "
                           f"Install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))
