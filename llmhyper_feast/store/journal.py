"""Pending Feast writes: rows written offline whose online write may not have happened yet.

:func:`llmhyper_feast.store.feast_adapter.write_view` records a write here before its offline
half and clears it once the online half succeeded. A run killed in between leaves the record
behind; the next ``materialize``, ``train-warm`` or ``export`` finishes it (re-reads those rows'
latest offline values and writes them online, see ``feast_adapter.finish_pending_writes``),
so the offline and online stores converge. The journal is one JSON file, replaced atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmhyper_feast.errors import DataError
from llmhyper_feast.store.files import atomic_write_json
from llmhyper_feast.store.layout import RepoLayout

__all__ = ["PendingWrite", "clear", "pending", "record"]


@dataclass(frozen=True)
class PendingWrite:
    """One view's rows that may be offline but not online: entity ids and the versions written."""

    view: str
    join_keys: tuple[str, ...]
    entities: tuple[tuple[str, ...], ...]
    event_timestamp: str
    versions: dict[str, str]  # "|".join(entity key) -> weights_version (or event timestamp)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingWrite:
        return cls(
            view=str(data["view"]),
            join_keys=tuple(data["join_keys"]),
            entities=tuple(tuple(str(v) for v in e) for e in data["entities"]),
            event_timestamp=str(data["event_timestamp"]),
            versions={str(k): str(v) for k, v in data["versions"].items()},
        )

    def merged(self, other: PendingWrite) -> PendingWrite:
        """This record plus ``other``'s entities (an unfinished earlier write of the same view)."""
        entities = tuple(dict.fromkeys([*other.entities, *self.entities]))
        return PendingWrite(
            self.view, self.join_keys, entities, self.event_timestamp, {**other.versions, **self.versions}
        )


def pending(layout: RepoLayout) -> dict[str, PendingWrite]:
    """Unfinished writes by view name (empty when there are none)."""
    path = layout.pending_writes
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {view: PendingWrite.from_dict(entry) for view, entry in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"The pending-writes journal {path} is unreadable ({exc}). Delete it, then copy every view's latest "
            f"offline rows online: `cd {layout.root} && feast materialize-incremental 2100-01-01T00:00:00`."
        ) from exc


def record(layout: RepoLayout, write: PendingWrite) -> None:
    """Durably note ``write`` as pending (merged with an unfinished write of the same view)."""
    entries = pending(layout)
    previous = entries.get(write.view)
    entries[write.view] = write.merged(previous) if previous is not None else write
    _save(layout, entries)


def clear(layout: RepoLayout, view: str) -> None:
    """Forget the pending write of ``view`` (its online half is done)."""
    entries = pending(layout)
    if entries.pop(view, None) is None:
        return
    if entries:
        _save(layout, entries)
    else:
        Path(layout.pending_writes).unlink(missing_ok=True)


def _save(layout: RepoLayout, entries: dict[str, PendingWrite]) -> None:
    atomic_write_json(layout.pending_writes, {v: asdict(e) for v, e in entries.items()}, sort_keys=True, indent=1)
