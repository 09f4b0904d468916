"""The candidate pool of a user: the advertisers an answer may name (the schema's enum)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["candidate_pool"]


def candidate_pool(own: Sequence[str], top: Sequence[str], known: set[str], pool_max: int) -> list[str]:
    """The user's own advertisers (in the given order), then the period's ``top`` ones, without repeats.

    Only advertisers in ``known`` enter; at most ``pool_max``, own advertisers first.
    """
    pool: list[str] = []
    seen: set[str] = set()
    for adv in [*own, *top]:
        if adv in known and adv not in seen:
            seen.add(adv)
            pool.append(adv)
        if len(pool) >= pool_max:
            break
    return pool
