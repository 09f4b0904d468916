"""Non-LLM rankers of a user's next advertisers: the evaluation's baselines and the runner's fallbacks.

* ``popularity``: the advertisers with the most weighted events overall;
* ``frequent``: the user's own advertisers by weighted events (conversions count most);
* ``cooccurrence``: advertisers that users with the same advertisers also engaged with
  (P(b | a) from co-engagement, summed over the user's advertisers).

Every list is padded with the popular advertisers up to ``k``. All three see only the events
they are given: pass the events before the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from llmhyper_feast.errors import InputError
from llmhyper_feast.userpriors.history import EVENT_WEIGHT

__all__ = ["BASELINES", "Baselines", "rank_scores"]

BASELINES = ("popularity", "frequent", "cooccurrence")


def rank_scores(n: int) -> list[float]:
    """Scores stored with a ranked list of ``n``: (n - i) / n, so 1 for the first and > 0 for the last."""
    return [(n - i) / n for i in range(n)]


class Baselines:
    """The three baselines fitted on ``events`` (one row per event)."""

    def __init__(self, events: pd.DataFrame) -> None:
        weight = events["event"].map(EVENT_WEIGHT).astype(np.float64)
        self.advertisers = sorted(events["advertiser_id"].unique())
        index = {a: j for j, a in enumerate(self.advertisers)}
        totals = weight.groupby(events["advertiser_id"]).sum()
        self.popular = sorted(totals.index, key=lambda a: (-totals[a], a))
        users = sorted(events["user_id"].unique())
        self._row = {u: i for i, u in enumerate(users)}
        matrix = np.zeros((len(users), len(self.advertisers)))
        if len(events):
            np.add.at(
                matrix,
                (events["user_id"].map(self._row).to_numpy(), events["advertiser_id"].map(index).to_numpy()),
                weight.to_numpy(),
            )
        self._x = matrix
        engaged = (matrix >= EVENT_WEIGHT["click"]).astype(np.float64)  # impressions alone do not co-occur
        co = engaged.T @ engaged
        self._p_next = co / np.maximum(np.diag(co)[:, None], 1.0)  # P(b | a)

    def _pad(self, ranked: Sequence[str], k: int) -> list[str]:
        out = list(dict.fromkeys(ranked))
        for a in self.popular:
            if len(out) >= k:
                break
            if a not in out:
                out.append(a)
        return out[:k]

    def rank(self, method: str, user_id: str, k: int) -> list[str]:
        """The top ``k`` advertisers of ``user_id`` under ``method`` (one of :data:`BASELINES`)."""
        if method not in BASELINES:
            raise InputError(f"Unknown baseline '{method}'; choose one of {list(BASELINES)}.")
        row = self._row.get(user_id)
        if method == "popularity" or row is None:
            return self._pad([], k)
        x = self._x[row]
        scores = x if method == "frequent" else (x / max(x.sum(), 1e-12)) @ self._p_next
        order = [int(j) for j in np.lexsort((np.arange(len(scores)), -scores)) if scores[j] > 0]
        return self._pad([self.advertisers[j] for j in order], k)
