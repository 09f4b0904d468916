"""User priors in ranking: limit or boost the candidate ads to the user's predicted advertisers.

Policy (``user_priors.filter`` in llmhyper.yaml; the ranker's ``candidates="priors"``). Only the first
``advertisers`` ids of the user's stored list count ("predicted advertisers"):

* ``restrict``: ``ceil(quota * k)`` of the k slots are reserved for ads of the predicted advertisers
  (their highest-CTR ads); the remaining slots go to the highest-CTR ads left, whoever runs them.
  With fewer predicted ads than reserved slots, the best other ads back-fill. The returned list is
  ordered by CTR. ``quota: 1`` shows only predicted advertisers' ads while there are enough of them.
* ``boost``: every candidate is ordered by ``ctr * (1 + boost * s)``, where ``s`` is the stored score
  (in (0, 1], 1 for the first) of the ad's advertiser among the predicted ones, else 0. The CTR
  reported stays the model's.

A user without a stored list is ranked as with ``candidates="all"``. Ads map to advertisers through
the ad content view's ``advertiser_id`` column, read once per loaded export (:class:`PriorsIndex`).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from llmhyper_feast.errors import FeatureRepoError, InputError
from llmhyper_feast.store import feast_adapter as fa

if TYPE_CHECKING:
    from feast import FeatureStore

    from llmhyper_feast.config import PriorsFilterConfig

__all__ = [
    "CANDIDATE_MODES",
    "PriorsIndex",
    "PriorsReader",
    "coverage",
    "first_event_ads",
    "select_columns",
]

CANDIDATE_MODES = ("all", "priors")
ADVERTISER_COLUMN = "advertiser_id"


def select_columns(
    ctr: np.ndarray,
    idx: np.ndarray | None,
    weight: np.ndarray,
    k: int,
    policy: PriorsFilterConfig,
) -> np.ndarray:
    """Export columns of the top ``k`` under ``policy``, best first.

    ``ctr`` [M] scores every exported ad, ``idx`` the allowed columns (None: all), ``weight`` [M] the prior
    score of each ad's advertiser (0 when it is not predicted).
    """
    cand = np.arange(len(ctr)) if idx is None else idx
    c, w = ctr[cand], weight[cand]
    if policy.mode == "boost":
        order = np.argsort(-(c * (1.0 + policy.boost * w)), kind="stable")[:k]
        return cand[order]
    by_ctr = np.argsort(-c, kind="stable")
    predicted = by_ctr[w[by_ctr] > 0]
    reserved = predicted[: min(k, math.ceil(policy.quota * k))]
    taken = np.zeros(len(cand), bool)
    taken[reserved] = True
    rest = by_ctr[~taken[by_ctr]][: k - len(reserved)]
    chosen = np.concatenate([reserved, rest])
    return cand[chosen[np.argsort(-c[chosen], kind="stable")]]


def coverage(shown: Sequence[Sequence[int] | np.ndarray], n_ads: int) -> float:
    """Share of the ``n_ads`` ads that appear in at least one of the ``shown`` lists."""
    seen: set[int] = set()
    for row in shown:
        seen.update(int(c) for c in row)
    return len(seen) / n_ads if n_ads else 0.0


def first_event_ads(history: Any, start: Any, end: Any, event: str = "conversion") -> dict[str, str]:
    """Each user's first ``event`` ad in ``(start, end]`` (user id -> ad id)."""
    window = history[
        (history["event"] == event) & (history["event_timestamp"] > start) & (history["event_timestamp"] <= end)
    ]
    first = window.sort_values(["user_id", "event_timestamp"], kind="stable").drop_duplicates("user_id")
    return dict(zip(first["user_id"].astype(str), first["ad_id"].astype(str)))


class PriorsReader:
    """One user's stored (advertisers, scores) from the online ``user_llm_priors`` view: a direct read of
    Feast's SQLite table when the online store is SQLite (Feast's key serialization and value format),
    else the Feast SDK (always, with ``direct=False``). Nothing is cached."""

    def __init__(self, store: FeatureStore, view: str, *, direct: bool = True) -> None:
        self.store, self.view = store, view
        layout = fa.sqlite_online_layout(store, [view]) if direct else None
        self.join_key: str = layout["join_key"] if layout else store.get_feature_view(view).join_keys[0]
        self._layout = layout
        if layout is not None:
            table = layout["tables"][view].replace('"', '""')
            self._sql = (
                f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?1 '
                "AND feature_name IN ('advertisers', 'scores')"
            )
            self._uri = f"file:{urllib.parse.quote(str(layout['path']))}?mode=ro"
        self._local = threading.local()

    @property
    def lookup(self) -> str:
        """ "sqlite" (direct read) or "feast" (the SDK)."""
        return "feast" if self._layout is None else "sqlite"

    def reopen(self) -> None:
        """Use new connections from now on (the SQLite file was replaced)."""
        self._local = threading.local()

    def read(self, user_id: str) -> tuple[list[str], list[float]]:
        """(advertisers, scores) of ``user_id``, best first; both empty when the user has no stored list."""
        if self._layout is None:
            data = fa.get_online(
                self.store, [f"{self.view}:advertisers", f"{self.view}:scores"], [{self.join_key: user_id}]
            )
            advertisers, scores = data["advertisers"][0], data["scores"][0]
            return list(advertisers or []), [float(s) for s in scores or []]
        try:
            key = self._layout["entity_key"](user_id)
        except UnicodeEncodeError:
            raise InputError(
                f"The user id {user_id[:100]!r} is not valid Unicode text (a lone surrogate); send a proper string."
            ) from None
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._local.conn = sqlite3.connect(self._uri, uri=True, timeout=5.0)
            rows = conn.execute(self._sql, (key,)).fetchall()
        except sqlite3.Error as exc:
            self.reopen()
            error = fa.store_unavailable_error(exc, self.store)
            if error is None:
                raise
            raise error from exc
        values = {name: self._layout["value"].FromString(blob) for name, blob in rows}
        advertisers = list(values["advertisers"].string_list_val.val) if "advertisers" in values else []
        scores = [float(s) for s in values["scores"].float_list_val.val] if "scores" in values else []
        return advertisers, scores


@dataclass(frozen=True)
class PriorsIndex:
    """What ``candidates="priors"`` needs for one loaded export: each column's advertiser and the prior reader."""

    ad_codes: np.ndarray  # [M] advertiser code of each export column; -1: unknown advertiser
    codes: Mapping[str, int]
    reader: PriorsReader | None
    problem: str | None = None  # why the filter cannot run (reader None)

    @classmethod
    def load(cls, store: FeatureStore, ad_ids: Sequence[str], *, direct: bool = True) -> PriorsIndex:
        """Map the export's ``ad_ids`` to advertisers (ad content view) and open the priors view's reader
        (``direct``: read Feast's SQLite table itself when the online store is SQLite)."""
        try:
            view = fa.user_priors_view(store).name
        except FeatureRepoError as exc:
            return cls(np.full(len(ad_ids), -1, np.int32), {}, None, str(exc))
        content = fa.read_latest(store, fa.view_for_role(store, fa.AD_CONTENT_ROLE).name)
        if ADVERTISER_COLUMN not in content.columns:
            return cls(
                np.full(len(ad_ids), -1, np.int32),
                {},
                None,
                f"The ad content view has no '{ADVERTISER_COLUMN}' field, so ads cannot be matched to the predicted "
                f"advertisers; add Field(name='{ADVERTISER_COLUMN}', dtype=String) to it and run `llmhyper apply`.",
            )
        owner = dict(zip(content["ad_id"].astype(str), content[ADVERTISER_COLUMN]))
        advertisers = sorted({str(a) for a in owner.values() if isinstance(a, str) and a})
        codes = {a: i for i, a in enumerate(advertisers)}
        ad_codes = np.fromiter((codes.get(str(owner.get(a)), -1) for a in ad_ids), np.int32, len(ad_ids))
        return cls(ad_codes, codes, PriorsReader(store, view, direct=direct))

    def weights(self, user_id: str, top: int) -> np.ndarray | None:
        """[M] prior score of each column's advertiser among the user's first ``top`` (None: no stored list)."""
        if self.reader is None:
            raise FeatureRepoError(f"candidates='priors' cannot be served: {self.problem}")
        advertisers, scores = self.reader.read(user_id)
        return self.weights_of(advertisers, scores, top)

    def weights_of(self, advertisers: Sequence[str], scores: Sequence[float], top: int) -> np.ndarray | None:
        """[M] prior score of each column's advertiser among the first ``top`` of ``advertisers`` (None: empty list)."""
        if not advertisers:
            return None
        per = np.zeros(len(self.codes) + 1, np.float32)  # the last slot: ads of unknown advertisers
        for i, adv in enumerate(advertisers[:top]):
            code = self.codes.get(adv)
            if code is not None:  # a missing or 0 score still marks a predicted advertiser
                per[code] = max(float(scores[i]) if i < len(scores) else 1.0, 1e-6)
        return per[self.ad_codes]
