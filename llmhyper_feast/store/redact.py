"""Remove secrets from text before it is stored (logs, views, caches) or printed.

:func:`redact` replaces with ``[redacted]``:

* the values of secret environment variables: ``OPENAI_API_KEY`` and every variable whose
  name ends with ``_API_KEY``, ``_TOKEN``, ``_SECRET`` or ``PASSWORD``;
* values registered with :func:`register_secret` (e.g. the key a backend was given as an option);
* token-shaped strings: ``sk-...`` API keys and ``Bearer ...`` credentials.

Values shorter than :data:`MIN_SECRET_CHARS` are not replaced: a placeholder key such as
``test`` would otherwise cut ordinary words apart.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "redact", "register_secret"]

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "PASSWORD")
_TOKEN_SHAPES = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys: sk-..., sk-proj-...
    r"|\b[Bb]earer\s+[A-Za-z0-9._~+/=\-]{8,}"  # Authorization header values
)
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from now on (for secrets not held in an environment variable)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _registered.add(value)


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper == "OPENAI_API_KEY" or upper.endswith(_SECRET_SUFFIXES)


def _secret_values(environ: Mapping[str, str]) -> list[str]:
    values = {v for k, v in environ.items() if _is_secret_name(k) and len(v) >= MIN_SECRET_CHARS}
    with _lock:
        values |= _registered
    return sorted(values, key=len, reverse=True)  # a key that contains another is replaced whole


def redact(text: object, environ: Mapping[str, str] | None = None) -> str:
    """``str(text)`` with every known secret and token-shaped string replaced by ``[redacted]``."""
    out = "" if text is None else str(text)
    for value in _secret_values(os.environ if environ is None else environ):
        out = out.replace(value, REDACTED)
    return _TOKEN_SHAPES.sub(REDACTED, out)
