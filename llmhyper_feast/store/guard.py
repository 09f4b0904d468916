"""Refuse to apply a repo whose file registry was copied from another repo.

A registry records the absolute path of every SQLite online table it created (its *infra*).
``cp -r repoA repoB`` copies that record; ``feast apply`` in repoB then sees repoA's tables as
"moved" and drops them. :func:`check_registry_is_own` stops that before Feast runs, and
:func:`set_aside_registry` is the fix: the copied registry is renamed (never deleted) so the
next apply starts from a fresh one that records only the repo's own store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from llmhyper_feast.errors import FeatureRepoError
from llmhyper_feast.store.layout import check_repo

__all__ = ["ForeignTable", "check_registry_is_own", "foreign_tables", "registry_file", "set_aside_registry"]

DEFAULT_SQLITE_PATH = "data/online.db"  # Feast's default when online_store gives no path


@dataclass(frozen=True)
class ForeignTable:
    """An online table the registry records at a path that belongs to another repo."""

    path: Path
    table: str

    @property
    def origin(self) -> Path:
        """The repo the table belongs to: the nearest parent holding feature_store.yaml (else its folder)."""
        for parent in self.path.parents:
            if (parent / "feature_store.yaml").is_file():
                return parent
        return self.path.parent


def _feature_store_yaml(repo: Path) -> dict[str, Any]:
    path = repo / "feature_store.yaml"
    try:
        raw = yaml.safe_load(os.path.expandvars(path.read_text()))  # Feast expands ${VAR} the same way
    except (OSError, yaml.YAMLError) as exc:
        raise FeatureRepoError(f"Cannot read {path}: {exc}. Fix the file and re-run.") from exc
    if not isinstance(raw, dict):
        raise FeatureRepoError(f"{path} must hold a mapping (project, registry, online_store, ...).")
    return raw


def _resolve(repo: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else repo / p).resolve()


def registry_file(repo: str | Path) -> Path | None:
    """The repo's local file registry (None for sql/remote registries, which a copy does not duplicate)."""
    root = check_repo(repo)
    reg = _feature_store_yaml(root).get("registry")
    if isinstance(reg, dict):
        if reg.get("registry_type", "file") != "file":
            return None
        reg = reg.get("path")
    if not isinstance(reg, str) or not reg or "://" in reg:
        return None
    return _resolve(root, reg)


def _own_online_path(root: Path) -> Path | None:
    """The SQLite file the repo's config names (None when the online store is not SQLite)."""
    online = _feature_store_yaml(root).get("online_store")
    if online is None or online == "sqlite":
        return _resolve(root, DEFAULT_SQLITE_PATH)
    if isinstance(online, dict) and str(online.get("type", "sqlite")).split(".")[-1] in ("sqlite", "SqliteOnlineStore"):
        return _resolve(root, str(online.get("path") or DEFAULT_SQLITE_PATH))
    return None


def foreign_tables(repo: str | Path) -> list[ForeignTable]:
    """Online tables the repo's registry records outside the repo (other than the store its config names)."""
    from llmhyper_feast.store.feast_adapter import recorded_online_tables

    root = check_repo(repo)
    reg = registry_file(root)
    if reg is None or not reg.is_file():
        return []
    own = _own_online_path(root)
    out = []
    for path, table in recorded_online_tables(reg):
        p = _resolve(root, path)
        # Feast drops recorded tables that its plan no longer contains: only those elsewhere are at risk
        if p != own and not p.is_relative_to(root):
            out.append(ForeignTable(p, table))
    return out


def check_registry_is_own(repo: str | Path) -> None:
    """Raise :class:`FeatureRepoError` when applying ``repo`` would drop another repo's online tables."""
    root = check_repo(repo)
    foreign = foreign_tables(root)
    if not foreign:
        return
    origins = sorted({str(t.origin) for t in foreign})
    stores = sorted({str(t.path) for t in foreign})
    raise FeatureRepoError(
        f"The registry {registry_file(root)} was copied from another repo ({', '.join(origins)}): it records "
        f"{len(foreign)} online table(s) in {', '.join(stores)}, and applying {root} would drop them. "
        f"Run `llmhyper apply --repo {root} --rebuild-registry` to set the copied registry aside and apply a "
        f"fresh one (nothing outside {root} is touched)."
    )


def set_aside_registry(repo: str | Path) -> Path | None:
    """Rename the repo's file registry to ``<name>.copied-<UTC timestamp>``; the new path, or None if absent."""
    reg = registry_file(repo)
    if reg is None or not reg.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest, n = reg.with_name(f"{reg.name}.copied-{stamp}"), 1
    while dest.exists():
        n += 1
        dest = reg.with_name(f"{reg.name}.copied-{stamp}-{n}")
    os.replace(reg, dest)
    return dest
