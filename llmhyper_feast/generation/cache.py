"""On-disk cache of LLM answers, so that re-running identical requests costs no backend call.

Each entry is one JSON file named by the sha256 of the canonical JSON of
(backend name, model, messages, parameters). Writes are atomic (temporary file in the same
directory, then ``os.replace``), so a crash or a concurrent writer never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmhyper_feast.errors import InputError
from llmhyper_feast.store.files import atomic_write_text

__all__ = ["AnswerCache", "key_for"]

log = logging.getLogger(__name__)

#: Bumped when the entry layout changes, so old entries are ignored rather than misread.
CACHE_FORMAT = 1


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def key_for(backend: str, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    """The cache key (64 hex chars) of one request: sha256 of its canonical JSON."""
    payload = {
        "format": CACHE_FORMAT,
        "backend": backend,
        "model": model,
        "messages": list(messages),
        "params": dict(params),
    }
    try:
        text = _canonical(payload)
    except (TypeError, ValueError) as exc:
        raise InputError(f"A cached request must be JSON-serialisable (finite numbers, str keys). Got: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AnswerCache:
    """A directory of cached answers: ``get(key)`` / ``put(key, entry)`` with JSON entries."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"AnswerCache({str(self.directory)!r})"

    key_for = staticmethod(key_for)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise InputError(f"A cache key must be 64 lowercase hex characters (see key_for). Got {key!r} instead.")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, or None when absent or unreadable."""
        path = self._path(key)
        try:
            with path.open("r", encoding="utf-8") as fh:
                entry = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("Ignoring unreadable cache entry %s: %s", path, exc)
            return None
        if not isinstance(entry, dict):
            log.warning("Ignoring cache entry %s: expected a JSON object", path)
            return None
        return entry

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store ``entry`` (JSON-serialisable) under ``key``, atomically."""
        path = self._path(key)
        data = json.dumps(dict(entry), ensure_ascii=False, allow_nan=False)
        # no fsync: a cache entry lost to a power cut costs one repeated call, not data
        atomic_write_text(path, data, sync=False)

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def __len__(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(1 for _ in self.directory.glob("??/*.json"))
