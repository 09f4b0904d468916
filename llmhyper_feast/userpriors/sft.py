"""Supervised fine-tuning examples: the prompts ``priors generate`` sends, answered with the true next advertiser.

One example per (training user, snapshot): the system and user messages are exactly those of
:func:`generate.build_request` for a run as of the snapshot, so profile, candidate pool and
baselines see only events at or before it. The assistant message is an answer in the request's
own format whose first advertiser is the label (the user's first conversion advertiser in the
``window_days`` after the snapshot); the rest of the list is the frequent baseline's order
restricted to the pool, then the pool's own order, without repeats, up to ``k``; the interests are
the fallback's (the interest features the user stands highest on). Only the first id carries the
label: the rest is an honest but uninformed filler that keeps the answer in the trained format.

Users with a label outside their candidate pool are skipped (the answer could not name it), and
held-out users (:func:`history.is_heldout`, the split ``priors evaluate`` samples from) never appear.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from llmhyper_feast.errors import DataError
from llmhyper_feast.userpriors import history as hist
from llmhyper_feast.userpriors.answers import parse_priors
from llmhyper_feast.userpriors.generate import PriorsContext, build_request, interests_of, profiles_for

__all__ = ["SftReport", "assistant_answer", "default_snapshots", "sft_examples"]


@dataclass
class SftReport:
    """What ``sft-data`` wrote and left out, per snapshot."""

    examples: int = 0
    users: int = 0
    snapshots: list[str] = field(default_factory=list)
    labelled: int = 0
    heldout_skipped: int = 0
    label_not_in_pool: int = 0
    mean_prompt_chars: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_snapshots(evaluation_snapshot: pd.Timestamp, window_days: int, count: int = 2) -> list[pd.Timestamp]:
    """``count`` snapshots ``window_days`` apart, the last one window before the evaluation snapshot, so every
    label window ends at or before it."""
    return [evaluation_snapshot - pd.Timedelta(days=window_days * i) for i in range(count, 0, -1)]


def assistant_answer(ctx: PriorsContext, user_id: str, label: str, pool: Sequence[str], k: int) -> str:
    """The answer JSON: ``label`` first, then the frequent baseline's order within ``pool``, then the pool's."""
    inside = set(pool)
    ranked = [label]
    for adv in [*ctx.baselines.rank("frequent", user_id, len(ctx.baselines.advertisers) or k), *pool]:
        if adv in inside and adv not in ranked:
            ranked.append(adv)
    return json.dumps({"advertisers": ranked[:k], "interests": interests_of(ctx, user_id)})


def sft_examples(
    ctx: PriorsContext, history: pd.DataFrame, window_days: int, report: SftReport
) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(example, provenance) pairs of the training users labelled in the window after ``ctx.as_of``."""
    cfg = ctx.config
    labels = hist.first_conversions(history, ctx.as_of, ctx.as_of + pd.Timedelta(days=window_days))
    report.labelled += len(labels)
    train, held = hist.split_users(sorted(str(u) for u in labels.index), cfg.eval_share, cfg.seed)
    report.heldout_skipped += len(held)
    out = []
    for profile in profiles_for(ctx, train):
        request, spec, _ = build_request(ctx, profile)
        label = str(labels[profile.user_id])
        if request is None or label not in spec[0]:
            report.label_not_in_pool += 1
            continue
        pool, interests, k, max_interests = spec
        answer = assistant_answer(ctx, profile.user_id, label, pool, k)
        # the answer must pass the same checks (and constraint) a served answer passes
        parse_priors(answer, pool, interests, k, max_interests)
        if request.answer_format is not None and not re.fullmatch(request.answer_format.pattern, answer):
            raise DataError(f"Internal error: the training answer of user {profile.user_id} breaks the answer format.")
        messages = [dict(m) for m in request.messages] + [{"role": "assistant", "content": answer}]
        out.append(
            (
                {"messages": messages},
                {"user_id": profile.user_id, "snapshot": ctx.as_of.isoformat(), "label": label},
            )
        )
    return out
