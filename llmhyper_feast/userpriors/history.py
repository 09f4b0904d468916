"""Questions asked of the user history (one row per impression, click or conversion)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pandas as pd

from llmhyper_feast.errors import DataError

__all__ = [
    "EVENT_WEIGHT",
    "active_users",
    "before",
    "first_conversions",
    "is_heldout",
    "parse_time",
    "split_users",
    "top_advertisers",
]

#: How much one event says about a user's taste for an advertiser (used to order and count).
EVENT_WEIGHT = {"impression": 0.1, "click": 1.0, "conversion": 3.0}


def parse_time(value: str | pd.Timestamp | None, history: pd.DataFrame) -> pd.Timestamp:
    """``value`` as a UTC timestamp; None: the newest event in ``history``."""
    if value is None:
        if history.empty:
            raise DataError("The user history is empty: load events into the user_history view first.")
        return pd.Timestamp(history["event_timestamp"].max())
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"'{value}' is not a date or time; use ISO format, e.g. 2026-10-01.") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def before(history: pd.DataFrame, when: pd.Timestamp, days: int | None = None) -> pd.DataFrame:
    """Events at or before ``when`` (and after ``when - days`` when given)."""
    mask = history["event_timestamp"] <= when
    if days is not None:
        mask &= history["event_timestamp"] > when - pd.Timedelta(days=days)
    return history[mask]


def active_users(history: pd.DataFrame, as_of: pd.Timestamp, days: int) -> list[str]:
    """Users with at least one event in the ``days`` before ``as_of``, sorted."""
    return sorted(before(history, as_of, days)["user_id"].unique())


def top_advertisers(events: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` advertisers with the most weighted events (conversions count most); ties by id."""
    if n <= 0 or events.empty:
        return []
    score = events["event"].map(EVENT_WEIGHT).groupby(events["advertiser_id"]).sum()
    return sorted(score.index, key=lambda a: (-score[a], a))[:n]


def first_conversions(history: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    """Each user's first conversion advertiser in ``(start, end]`` (index user_id)."""
    window = history[
        (history["event"] == "conversion") & (history["event_timestamp"] > start) & (history["event_timestamp"] <= end)
    ]
    first = window.sort_values(["user_id", "event_timestamp"], kind="stable").drop_duplicates("user_id")
    return first.set_index("user_id")["advertiser_id"]


def is_heldout(user_id: str, share: float, seed: int = 0) -> bool:
    """Whether ``user_id`` is in the evaluation split: a stable hash of (seed, id) below ``share``."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_users(user_ids: Iterable[str], share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training users, held-out users) of ``user_ids``, each in the given order."""
    train: list[str] = []
    held: list[str] = []
    for u in user_ids:
        (held if is_heldout(u, share, seed) else train).append(u)
    return train, held
