"""Online lookups: user feature vectors and stored ad weights through the Feast SDK, and
:class:`SqliteUserReader`, the ranking service's direct read of Feast's SQLite online tables.

Every lookup raises :class:`~llmhyper_feast.errors.StoreUnavailableError` (one line naming
``llmhyper repair``) when the online store is missing, corrupt or unreachable.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmhyper_feast.errors import InputError
from llmhyper_feast.features import AdModels, FeatureSchema
from llmhyper_feast.store import feast_adapter as fa

if TYPE_CHECKING:
    from feast import FeatureStore

AD_META_FIELDS = (
    "bias",
    "alpha",
    "delta",
    "norm",
    "llm_model",
    "prompt_hash",
    "prompt_version",
    "feature_hash",
    "weights_version",
    "samples",
    "origin",
    "reason",
    "decision",
    "generated_at",
)


@dataclass
class UserFeatures:
    """Feature rows in schema order; ``found[i]`` is False when user i has no online row (row is NaN)."""

    user_ids: list[str]
    values: np.ndarray
    found: np.ndarray
    feature_names: list[str]


def get_user_features(
    store: FeatureStore, user_ids: Sequence[str], schema: FeatureSchema | None = None
) -> UserFeatures:
    """The users' feature vectors (float32, registry order) from the online store."""
    schema = schema or fa.read_feature_schema(store)
    refs = [f"{f.view}:{f.name}" for f in schema.features]
    data = fa.get_online(store, refs, [{"user_id": u} for u in user_ids])
    cols = [np.asarray([np.nan if v is None else v for v in data[name]], np.float32) for name in schema.names]
    values = np.stack(cols, axis=1) if cols else np.zeros((len(user_ids), 0), np.float32)
    found = ~np.all(np.isnan(values), axis=1)
    return UserFeatures(list(user_ids), values, found, schema.names)


def get_ad_weights(store: FeatureStore, ad_ids: Sequence[str], schema: FeatureSchema | None = None) -> AdModels:
    """Generated weights (float32, registry order), bias and metadata of ``ad_ids`` from the online store."""
    schema = schema or fa.read_feature_schema(store)
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    data = fa.get_online(
        store, [f"{view}:weights", *(f"{view}:{m}" for m in AD_META_FIELDS)], [{"ad_id": a} for a in ad_ids]
    )
    n = len(schema)
    weights = np.full((len(ad_ids), n), np.nan, np.float32)
    found = np.zeros(len(ad_ids), bool)
    for i, w in enumerate(data["weights"]):
        if w is not None and len(w) == n:
            weights[i], found[i] = w, True
    bias = np.asarray([np.nan if v is None else v for v in data["bias"]], np.float32)
    meta = [{m: data[m][i] for m in AD_META_FIELDS} for i in range(len(ad_ids))]
    return AdModels(list(ad_ids), weights, bias, meta, ["generated" if f else "" for f in found], found)


PROBE_ENTITY = "__llmhyper_probe__"  # a key no real entity has: the lookup reads the tables, finds nothing


def check_online(store: FeatureStore, refs: Sequence[str], join_key: str) -> None:
    """Raise StoreUnavailableError unless the online tables behind ``refs`` can be read."""
    fa.get_online(store, list(refs), [{join_key: PROBE_ENTITY}])


# --- the ranking service's per-request lookup: one prepared SQLite query per user -------------

_NUMERIC_VALUES = frozenset({"float_val", "double_val", "int32_val", "int64_val", "bool_val"})
_FLOAT_VAL_TAG = (6 << 3) | 5  # ValueProto field 6 (float_val), wire type 5 (fixed 32-bit)
_FLOAT32 = struct.Struct("<f")


class SqliteUserReader:
    """User feature vectors read straight from Feast's SQLite online tables: exact, and cheap per call.

    Reads the rows Feast wrote (its table names, its ``serialize_entity_key``, values parsed as
    Feast's ``ValueProto``) with one prepared ``SELECT ... UNION ALL ...`` per user over a
    read-only connection per thread, and returns what :func:`get_user_features` would: a value
    Feast returns as null (no row, or a row without a value) is NaN. Nothing is cached, so a
    re-materialized row is seen by the next call. Build it with :meth:`for_store` (None when the
    online store is not SQLite: use the Feast SDK there); :meth:`reopen` drops the connections
    (the SQLite file was replaced). :meth:`read_into` fills a caller's buffer (the serving hot path).
    """

    def __init__(self, store: FeatureStore, layout: dict[str, Any], refs: Sequence[str]) -> None:
        self.store = store
        self.path: Path = layout["path"]
        self.join_key: str = layout["join_key"]
        self._entity_key = layout["entity_key"]
        self._parse = layout["value"].FromString
        views = list(dict.fromkeys(r.split(":", 1)[0] for r in refs))
        # per view (the query's first column): feature name -> output position
        self._columns: tuple[dict[str, int], ...] = tuple({} for _ in views)
        for j, (v, f) in enumerate(r.split(":", 1) for r in refs):
            self._columns[views.index(v)][f] = j
        self.n = len(refs)
        self.sql = " UNION ALL ".join(
            f'SELECT {i}, feature_name, value FROM "{layout["tables"][v].replace(chr(34), chr(34) * 2)}" '
            "WHERE entity_key = ?1"
            for i, v in enumerate(views)
        )
        self._uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        self._local = threading.local()

    @classmethod
    def for_store(cls, store: FeatureStore, refs: Sequence[str]) -> SqliteUserReader | None:
        """A reader of ``refs`` (``view:feature``, output order) when the online store is SQLite, else None."""
        layout = fa.sqlite_online_layout(store, list(dict.fromkeys(r.split(":", 1)[0] for r in refs)))
        return None if layout is None else cls(store, layout, refs)

    def reopen(self) -> None:
        """Use new connections from now on (each thread's old one is closed when dropped)."""
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # read-only: a missing file is an error here instead of a new empty database
            conn = sqlite3.connect(self._uri, uri=True, timeout=5.0)
            self._local.conn = conn
        return conn

    def read(self, user_id: str) -> np.ndarray:
        """float32 [n] in ``refs`` order, NaN where Feast has no value; StoreUnavailableError when unusable."""
        return self.read_into(user_id, np.empty(self.n, np.float32))

    def read_into(self, user_id: str, out: np.ndarray) -> np.ndarray:
        """:meth:`read` into ``out`` (a writable float32 [n] array, e.g. a row of a reused buffer); returns ``out``.

        ``out`` is only written once the rows are read: a failed read leaves it as it was.
        """
        try:
            key = self._entity_key(user_id)
        except UnicodeEncodeError:
            raise InputError(
                f"The user id {user_id[:100]!r} is not valid Unicode text (it holds a lone surrogate); send the "
                "user's entity key as a proper string."
            ) from None
        try:
            rows = self._connection().execute(self.sql, (key,)).fetchall()
        except sqlite3.Error as exc:
            self.reopen()  # the next call retries with a fresh connection (e.g. after `llmhyper repair`)
            error = fa.store_unavailable_error(exc, self.store)
            if error is None:
                raise
            raise error from exc
        out.fill(np.nan)
        columns, unpack = self._columns, _FLOAT32.unpack_from
        for view, name, blob in rows:
            j = columns[view].get(name)
            if j is None:
                continue
            # Feast writes a Float32 feature as a ValueProto holding float_val only: tag byte + 4 bytes, the
            # same float32 the proto parse yields; any other encoding takes the full parse below
            if len(blob) == 5 and blob[0] == _FLOAT_VAL_TAG:
                out[j] = unpack(blob, 1)[0]
                continue
            value = self._parse(blob)
            kind = value.WhichOneof("val")
            if kind in _NUMERIC_VALUES:
                out[j] = getattr(value, kind)
        return out

    def read_many(self, user_ids: Sequence[str]) -> np.ndarray:
        """float32 [U, n]: :meth:`read` for each user."""
        out = np.empty((len(user_ids), self.n), np.float32)
        for i, u in enumerate(user_ids):
            self.read_into(u, out[i])
        return out

    def check(self) -> None:
        """Raise StoreUnavailableError unless the tables can be read (a probe key finds nothing)."""
        self.read(PROBE_ENTITY)
