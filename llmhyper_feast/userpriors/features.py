"""Ranking features derived from the user priors: the predicted share of a user's next conversions per category.

They live in a described user view (tag ``llmhyper.derived: user_priors``, fields ``prior_<category>``),
written by ``llmhyper priors features``. The view counts as user features (so warm training and
LLM-HYPER weigh it) only when ``user_priors.use_as_features`` is on at ``feast apply`` time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["category_shares"]


def category_shares(
    advertisers: Sequence[str],
    scores: Sequence[float],
    names: Mapping[str, tuple[str, str]],
    categories: Sequence[str],
) -> list[float]:
    """Per category, the share of the list's scores on its advertisers (0 for all when the list is empty).

    Advertisers of other categories (or unknown ones) still count in the denominator: the shares of
    ``categories`` sum to at most 1.
    """
    total = float(sum(scores))
    if total <= 0:
        return [0.0] * len(categories)
    per: dict[str, float] = {}
    for adv, score in zip(advertisers, scores):
        category = names.get(adv, (adv, ""))[1]
        per[category] = per.get(category, 0.0) + float(score)
    return [per.get(c, 0.0) / total for c in categories]
