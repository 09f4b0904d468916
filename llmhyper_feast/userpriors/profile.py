"""A user's profile as compact text: informative registered features and recent advertiser events.

The text holds no "as of" date and no relative ages, only absolute dates, so it (and its hash)
changes only when the user's features or events change: that is what makes daily runs incremental.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmhyper_feast.config import UserPriorsConfig
from llmhyper_feast.errors import DataError
from llmhyper_feast.features import FeatureSchema

__all__ = ["FeatureStats", "Profile", "compile_profile", "estimate_tokens", "short_description"]

_MORE = " (+999 more)"
_FIRST_CLAUSE = re.compile(r"^(.*?)(?::|\.\s|\.$|\(|$)")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate (about four characters per token for English)."""
    return math.ceil(len(text) / 4)


def short_description(description: str, limit: int = 110) -> str:
    """The first clause of a registered feature description, at most ``limit`` characters."""
    match = _FIRST_CLAUSE.match(description.strip())
    text = (match.group(1) if match else description).strip() or description.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@dataclass(frozen=True)
class FeatureStats:
    """The registered user features with their population mean and standard deviation."""

    schema: FeatureSchema
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, schema: FeatureSchema, matrix: np.ndarray) -> FeatureStats:
        """Statistics of ``matrix`` [users, features] (schema order)."""
        if matrix.ndim != 2 or matrix.shape[1] != len(schema.names) or matrix.shape[0] == 0:
            raise DataError(f"User feature matrix of shape {matrix.shape} does not fit {len(schema.names)} features.")
        return cls(schema, matrix.mean(axis=0), matrix.std(axis=0))


@dataclass(frozen=True)
class Profile:
    """One user's profile text, its hash, and what it was built from."""

    user_id: str
    text: str
    hash: str
    features_shown: tuple[str, ...]
    advertisers_seen: tuple[str, ...]  # the user's own advertisers, most telling first

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.text)


def _own_advertisers(events: list[tuple[pd.Timestamp, str, str]]) -> list[str]:
    """The user's advertisers ordered by conversions, then clicks, then latest event (``events`` newest first)."""
    stats: dict[str, list[Any]] = {}
    for when, adv, kind in events:
        entry = stats.setdefault(adv, [0, 0, when])
        entry[0] += kind == "conversion"
        entry[1] += kind == "click"
        entry[2] = max(entry[2], when)
    return sorted(stats, key=lambda a: (-stats[a][0], -stats[a][1], -stats[a][2].value, a))


def compile_profile(
    user_id: str,
    values: np.ndarray,
    stats: FeatureStats,
    events: pd.DataFrame,
    advertisers: Mapping[str, tuple[str, str]],
    config: UserPriorsConfig,
) -> Profile:
    """The profile of one user from feature ``values`` (schema order) and their ``events`` (already cut to
    the profile window), fitted into ``config.token_budget`` estimated tokens.

    Sections, most telling first (lines that would pass the budget are left out): conversions,
    features far from the population mean (``config.min_z`` standard deviations, at most
    ``config.max_features``) with their registered descriptions, clicks, and event counts per category.
    """
    names = stats.schema.names
    defs = {f.name: f.description for f in stats.schema.features}
    z = (np.asarray(values, np.float64) - stats.mean) / np.where(stats.std > 0, stats.std, 1.0)
    order = [int(j) for j in np.argsort(-np.abs(z), kind="stable") if abs(z[j]) >= config.min_z]
    order = order[: config.max_features]
    ordered = events.sort_values("event_timestamp", ascending=False, kind="stable")
    rows = list(
        zip(
            ordered["event_timestamp"].tolist(),
            ordered["advertiser_id"].tolist(),
            ordered["event"].tolist(),
        )
    )

    def label(adv: str) -> str:
        name, category = advertisers.get(adv, (adv, "?"))
        return f"{name} [{category}]"

    conversions = [f"{t:%Y-%m-%d} {label(a)}" for t, a, e in rows if e == "conversion"]
    converted = {a for _, a, e in rows if e == "conversion"}
    clicks = [f"{t:%Y-%m-%d} {label(a)}" for t, a, e in rows if e == "click" and a not in converted]
    features = [
        f"{names[j]} = {values[j]:.2f} (population mean {stats.mean[j]:.2f}; {'high' if z[j] > 0 else 'low'}): "
        f"{short_description(defs[names[j]])}"
        for j in order
    ]
    per_category = Counter(advertisers.get(a, (a, "?"))[1] for _, a, _ in rows)
    counts = [f"{c}: {n}" for c, n in sorted(per_category.items(), key=lambda cn: (-cn[1], cn[0]))]

    lines: list[str] = []
    budget = config.token_budget

    def add_section(title: str, items: list[str], joiner: str, empty: str) -> None:
        head = f"{title}:"
        if estimate_tokens("\n".join([*lines, head])) > budget:
            return
        lines.append(head)
        if not items:
            lines[-1] += f" {empty}"
            return
        kept = 0
        for item in items:
            trial = lines[-1] + (" " if kept == 0 and joiner != "\n" else joiner) + ("- " if joiner == "\n" else "")
            candidate = lines[:-1] + [trial + item + _MORE]  # leave room for the "(+n more)" note
            if estimate_tokens("\n".join(candidate)) > budget:
                break
            lines[-1] = trial + item
            kept += 1
        if kept < len(items):
            lines[-1] += f" (+{len(items) - kept} more)"

    add_section("Conversions, newest first", conversions, "; ", "none")
    add_section("Stands out on these user features", features, "\n", "none")
    add_section("Clicks without a conversion, newest first", clicks, "; ", "none")
    add_section("Events per category", counts, ", ", "none")
    text = "\n".join(lines)
    return Profile(
        user_id=user_id,
        text=text,
        hash=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        features_shown=tuple(names[j] for j in order),
        advertisers_seen=tuple(_own_advertisers(rows)),
    )
