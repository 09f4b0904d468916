"""Recall@1/5/20 of the next converting advertiser on held-out users, LLM versus baselines.

The snapshot splits time: profiles, candidate pools and baselines see only events at or before
it; the label is each user's first conversion advertiser in the ``window_days`` after it. Users
are sampled among the held-out users (``user_priors.eval_share`` of all, by a hash of the id: see
:func:`history.is_heldout`; ``sft-data`` never uses them) that have a label; intervals are
percentile bootstraps over users.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.errors import DataError
from llmhyper_feast.evaluation.metrics import paired_bootstrap_ci
from llmhyper_feast.userpriors import history as hist
from llmhyper_feast.userpriors.baselines import BASELINES
from llmhyper_feast.userpriors.candidates import candidate_pool
from llmhyper_feast.userpriors.generate import PriorsContext, infer, profiles_for
from llmhyper_feast.userpriors.profile import Profile

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import LLMBackend

__all__ = ["KS", "evaluate_lists", "format_table", "run_evaluation"]

KS = (1, 5, 20)


def _ci(hits: np.ndarray, other: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    mean, lo, hi = paired_bootstrap_ci(hits, other, n_boot=n_boot, seed=seed)
    return {"mean": round(mean, 4), "lo": round(lo, 4), "hi": round(hi, 4)}


def evaluate_lists(
    lists: dict[str, list[list[str]]], labels: list[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """recall@k (k in :data:`KS`) with bootstrap intervals per method; ``lists[m][i]`` ranks user ``i``."""
    if len(labels) < 2:
        raise DataError(f"Evaluation needs at least 2 labelled users; got {len(labels)}. Widen the window.")
    zeros = np.zeros(len(labels))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, ranked in lists.items():
        out[method] = {}
        for k in KS:
            hits = np.array([float(label in r[:k]) for r, label in zip(ranked, labels)])
            out[method][f"recall@{k}"] = _ci(hits, zeros, n_boot, seed)
    return out


def _llm_lists(ctx: PriorsContext, profiles: list[Profile], progress: bool) -> tuple[list[list[str]], dict[str, Any]]:
    """Each profile's ranked list from ``ctx.backend`` (fallbacks included) and what it took."""
    from tqdm.auto import tqdm

    ranked: list[list[str]] = []
    origins: dict[str, int] = {}
    calls = 0
    started = time.perf_counter()
    desc = f"evaluate user priors ({ctx.source_id})"
    with tqdm(total=len(profiles), desc=desc, unit="user", disable=not progress) as bar:
        for start in range(0, len(profiles), ctx.config.chunk_size):
            rows, fatal = infer(ctx, profiles[start : start + ctx.config.chunk_size])
            for row in rows:
                ranked.append(list(row["advertisers"]))
                origins[row["origin"]] = origins.get(row["origin"], 0) + 1
                calls += int(row["calls"])
            bar.update(len(rows))
            if fatal is not None:
                raise fatal
    return ranked, {"origins": origins, "calls": calls, "seconds": round(time.perf_counter() - started, 1)}


def run_evaluation(
    ctx: PriorsContext, history: pd.DataFrame, *, compare: LLMBackend | None = None, progress: bool = True
) -> dict[str, Any]:
    """Evaluate at ``ctx.as_of`` (the snapshot) with labels from the window after it.

    ``ctx.backend`` gives the row ``llm``; ``compare`` (e.g. a fine-tuned checkpoint) the row ``llm_compare``,
    both on the same users, profiles and pools.
    """
    cfg = ctx.config
    end = ctx.as_of + pd.Timedelta(days=cfg.window_days)
    labels = hist.first_conversions(history, ctx.as_of, end)
    if labels.empty:
        raise DataError(
            f"No user converts between {ctx.as_of} and {end}: pick an earlier --snapshot or a longer window "
            "(user_priors.window_days)."
        )
    rng = np.random.default_rng(cfg.seed)
    users = sorted(u for u in labels.index if hist.is_heldout(str(u), cfg.eval_share, cfg.seed))
    if len(users) < 2:
        raise DataError(
            f"Only {len(users)} held-out user(s) convert between {ctx.as_of} and {end}: raise "
            "user_priors.eval_share or pick an earlier --snapshot."
        )
    if len(users) > cfg.eval_users:
        users = sorted(rng.choice(users, size=cfg.eval_users, replace=False).tolist())
    truth = [str(labels[u]) for u in users]
    k = max(cfg.k, max(KS))
    lists = {m: [ctx.baselines.rank(m, u, k) for u in users] for m in BASELINES}
    profiles = profiles_for(ctx, users)
    pools = [candidate_pool(p.advertisers_seen, ctx.top, set(ctx.advertisers), cfg.pool_max) for p in profiles]
    llm: dict[str, Any] = {"source": ctx.source_id}
    llm_rows: dict[str, list[list[str]]] = {}
    result_compare: dict[str, Any] = {}
    if ctx.backend is not None:
        llm_rows["llm"], info = _llm_lists(ctx, profiles, progress)
        llm.update(info)
    if compare is not None:
        other = replace(ctx, backend=compare)
        llm_rows["llm_compare"], info = _llm_lists(other, profiles, progress)
        result_compare = {"source": other.source_id, **info}
    lists = {**llm_rows, **lists}
    metrics = evaluate_lists(lists, truth, n_boot=cfg.bootstrap, seed=cfg.seed)
    diffs: dict[str, dict[str, float]] = {}
    for name in llm_rows:
        for kk in KS:
            a = np.array([float(t in r[:kk]) for r, t in zip(lists[name], truth)])
            b = np.array([float(t in r[:kk]) for r, t in zip(lists["frequent"], truth)])
            key = f"recall@{kk}" if name == "llm" else f"{name}:recall@{kk}"
            diffs[key] = _ci(a, b, cfg.bootstrap, cfg.seed)
    return {
        "snapshot": ctx.as_of.isoformat(),
        "window_days": cfg.window_days,
        "users": len(users),
        "labelled_users": int(len(labels)),
        "label_in_pool": round(float(np.mean([t in p for t, p in zip(truth, pools)])), 4),
        "label_seen_before": round(float(np.mean([t in p.advertisers_seen for t, p in zip(truth, profiles)])), 4),
        "k": cfg.k,
        "llm": llm,
        **({"llm_compare": result_compare} if compare is not None else {}),
        "methods": metrics,
        "llm_minus_frequent": diffs,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_evaluation`'s result."""
    head = f"{'method':<14}" + "".join(f"{'recall@' + str(k):>24}" for k in KS)
    lines = [
        f"snapshot {result['snapshot']}, window {result['window_days']} days, {result['users']} users "
        f"(label in pool {result['label_in_pool']:.2f}, seen before {result['label_seen_before']:.2f})",
        head,
    ]
    for method, m in result["methods"].items():
        cells = "".join(
            f"{m[f'recall@{k}']['mean']:>8.3f} [{m[f'recall@{k}']['lo']:.3f}, {m[f'recall@{k}']['hi']:.3f}]" for k in KS
        )
        lines.append(f"{method:<14}{cells}")
    for key in ("llm", "llm_compare"):
        info = result.get(key) or {}
        if info.get("origins"):
            lines.append(
                f"{key}: {info['source']}, origins {info['origins']}, calls {info['calls']}, {info['seconds']} s"
            )
    return "\n".join(lines)
