"""Job: rebuild the online store from the registry and the offline history.

For an online store that was deleted, lost tables (e.g. to a copied registry) or became
unreadable: the tables of every online view are created again (nothing is dropped) and each
view is re-materialized from its offline source, so lookups return what they returned before.
An unreadable SQLite file is renamed aside (``<name>.corrupt-<UTC timestamp>``), never deleted.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import guard
from llmhyper_feast.store.layout import check_repo
from llmhyper_feast.store.lock import repo_lock

__all__ = ["RepairReport", "repair"]


@dataclass
class RepairReport:
    """What a repair did: rows (entities) materialized per view, and a corrupt store set aside."""

    online_store: str
    rows: dict[str, int] = field(default_factory=dict)
    set_aside: Path | None = None

    def summary(self) -> str:
        """One line: views and rows per view."""
        per_view = ", ".join(f"{v}={n}" for v, n in self.rows.items()) or "none"
        moved = f"; unreadable store moved to {self.set_aside}" if self.set_aside else ""
        return (
            f"repaired {self.online_store}: {len(self.rows)} online views re-materialized "
            f"({sum(self.rows.values())} rows: {per_view}){moved}"
        )


def _set_aside_if_unreadable(path: Path) -> Path | None:
    """Rename ``path`` aside when SQLite cannot read it; the new path, or None when it is fine or absent."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT name FROM sqlite_master").fetchall()
        return None
    except sqlite3.DatabaseError:
        pass
    finally:
        conn.close()
    dest = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    os.replace(path, dest)
    return dest


def repair(repo: str | Path, *, progress: bool = True) -> RepairReport:
    """Recreate the online tables of every online view and re-materialize them from the offline history."""
    from tqdm.auto import tqdm

    root = check_repo(repo)
    guard.check_registry_is_own(root)  # a copied registry must be rebuilt first, or the next apply drops tables
    with repo_lock(root, "repair"):
        store = fa.open_store(root)
        path = fa.online_store_path(store)
        report = RepairReport(str(path or type(store.config.online_store).__name__))
        if path is not None:
            report.set_aside = _set_aside_if_unreadable(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        views = fa.recreate_online_tables(store)
        bar = tqdm(views, desc="repair: materialize", unit="view", disable=not progress)
        for view in bar:
            bar.set_postfix_str(view)
            with contextlib.redirect_stdout(io.StringIO()):  # Feast prints a banner per view: the bar says it
                fa.materialize_sources(store, [view])
            report.rows[view] = len(fa.read_latest(store, view))
    return report
