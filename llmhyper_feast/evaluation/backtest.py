"""Backtest a backend on warm ads treated as cold, and the deployment gate built on it.

Each sampled retired ad is generated as if it were new (it never retrieves itself), then
compared with its trained weights (cosine, Spearman) and, through its clicks, on ranking.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmhyper_feast.config import GateConfig
from llmhyper_feast.errors import ConfigError, DataError, GateRefusedError
from llmhyper_feast.evaluation import metrics
from llmhyper_feast.store.files import atomic_write_json

# the figures a backtest is summarised by (CLI table/JSON and the HTML report)
SUMMARY_KEYS = (
    "backend",
    "cosine",
    "spearman",
    "knn_cosine",
    "knn_spearman",
    "click_gauc",
    "knn_click_gauc",
    "trained_click_gauc",
    "learned_cosine",
    "learned_spearman",
    "learned_click_gauc",
    "best_lambda",
    "fallbacks",
)
LAMBDAS = np.round(np.linspace(0.0, 1.0, 11), 2)


def _agreement(gen: np.ndarray, trained: np.ndarray) -> tuple[float, float]:
    cos = [metrics.cosine(g, t) if np.linalg.norm(g) > 0 else 0.0 for g, t in zip(gen, trained)]
    rho = [metrics.spearman(g, t) if np.ptp(g) > 0 else 0.0 for g, t in zip(gen, trained)]
    return float(np.mean(cos)), float(np.nanmean(rho))


def _click_auc(w: np.ndarray, ad_ids: list[str], imps: pd.DataFrame, users: np.ndarray, row: pd.Series) -> float:
    """AUC over the sampled ads' impressions when each ad scores with weights ``w`` (bias-free: within-ad ranking)."""
    col = {a: i for i, a in enumerate(ad_ids)}
    sub = imps[imps["ad_id"].isin(col)]
    x = users[row[sub["user_id"]].to_numpy()]
    s = np.einsum("ij,ij->i", x, w[sub["ad_id"].map(col).to_numpy()])
    return metrics.gauc(sub["ad_id"].to_numpy(), sub["clicked"].to_numpy().astype(int), s)


def run_backtest(
    inputs: Any,
    impressions: pd.DataFrame,
    user_ids: np.ndarray,
    users: np.ndarray,
    *,
    sample: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate weights for ``sample`` warm ads as if cold; compare with trained weights and clicks."""
    from llmhyper_feast.generation.priors import learned_like
    from llmhyper_feast.generation.runner import generate_rows

    ids = sorted(inputs.warm)
    if len(ids) < 2:
        raise DataError("The backtest needs at least 2 warm ads; run `llmhyper train-warm` first.")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(ids, size=min(sample, len(ids)), replace=False).tolist())
    ads = [inputs.warm[i].ad for i in chosen]
    trained = np.stack([inputs.warm[i].weights for i in chosen])
    rows = generate_rows(ads, inputs, exclude_self=True, progress=progress)
    # "knn_*" figures are the configured prior's (the gate's blend partner); "learned_*" the learned
    # prior's, whose warm-ad predictions are leave-one-out so no ad predicts from itself
    knn = generate_rows(ads, replace(inputs, backend=None), exclude_self=True, progress=False)
    learned_prior = learned_like(inputs.prior, inputs.warm, inputs.index.ids, inputs.index.embeddings, inputs.embedder)
    learned_rows = generate_rows(ads, replace(inputs, backend=None, prior=learned_prior), progress=False)
    gen, prior = np.stack(rows["weights"].to_numpy()), np.stack(knn["weights"].to_numpy())
    learned = np.stack(learned_rows["weights"].to_numpy())
    row = pd.Series(np.arange(len(user_ids)), index=user_ids)
    imps = impressions[impressions["user_id"].isin(row.index)]
    if "user_split" in imps.columns:
        imps = imps[imps["user_split"] == "test"]
    blends = {float(lam): _agreement(lam * gen + (1 - lam) * prior, trained)[0] for lam in LAMBDAS}
    best = max(blends, key=lambda lam: (blends[lam], lam))
    cos, rho = _agreement(gen, trained)
    kcos, krho = _agreement(prior, trained)
    lcos, lrho = _agreement(learned, trained)
    return {
        "backend": inputs.source_id,
        "prior": inputs.prior.source_id,
        "feature_hash": inputs.schema.hash,
        "ads": chosen,
        "cosine": cos,
        "spearman": rho,
        "knn_cosine": kcos,
        "knn_spearman": krho,
        "click_gauc": _click_auc(gen, chosen, imps, users, row),
        "knn_click_gauc": _click_auc(prior, chosen, imps, users, row),
        "trained_click_gauc": _click_auc(trained, chosen, imps, users, row),
        "learned_cosine": lcos,
        "learned_spearman": lrho,
        "learned_click_gauc": _click_auc(learned, chosen, imps, users, row),
        "fallbacks": int((rows["origin"] == "fallback").sum()),
        "blend_cosine": blends,
        "best_lambda": best,
        "per_ad_cosine": [metrics.cosine(g, t) if np.linalg.norm(g) > 0 else 0.0 for g, t in zip(gen, trained)],
        "generated": gen.tolist(),
        "trained": trained.tolist(),
    }


def gate_decision(
    gate: GateConfig, backtest: dict[str, Any] | None, backend: str, prior: str | None = None
) -> tuple[str, float]:
    """What materialize does with LLM weights: (decision text, lambda applied to llm vs prior).

    ``prior`` (the configured prior's source id), when given, must be the prior the backtest
    compared with: the blend partner is the configured prior.
    """
    if gate.mode == "off" or backend.startswith("prior:"):
        return "no gate", 1.0
    if backtest is None or backtest.get("backend") != backend:
        raise ConfigError(
            f"The deployment gate (gate.mode={gate.mode}) needs a backtest of backend '{backend}'. "
            "Run `llmhyper backtest` with the same backend options first, or set gate.mode: off."
        )
    if prior is not None and backtest.get("prior", "prior:knn") != prior:
        raise ConfigError(
            f"The deployment gate (gate.mode={gate.mode}) needs a backtest against the configured prior '{prior}', "
            f"but the saved one compared with '{backtest.get('prior', 'prior:knn')}'. "
            "Run `llmhyper backtest` with the same --prior first, or set gate.mode: off."
        )
    worse = backtest["cosine"] < backtest["knn_cosine"]  # knn_cosine: the configured prior's
    prior = str(backtest.get("prior", "prior:knn")).removeprefix("prior:").split("[", 1)[0]
    if gate.mode == "blend":
        lam = float(backtest["best_lambda"])
        return f"blend:{lam:.2f}", lam
    if worse and gate.mode == "refuse":
        raise GateRefusedError(
            f"Backend '{backend}' backtests worse than the {'kNN' if prior == 'knn' else repr(prior)} prior "
            f"(cosine {backtest['cosine']:.3f} < {backtest['knn_cosine']:.3f}); materialize refused. "
            "Use --llm none (the prior alone), a stronger model, or gate.mode: blend."
        )
    return (f"warn:worse-than-{prior}" if worse else "pass"), 1.0


def save(path: str | Path, result: dict[str, Any]) -> None:
    """Write a backtest result atomically."""
    atomic_write_json(path, result, default=float)


def load(path: str | Path) -> dict[str, Any] | None:
    return json.loads(Path(path).read_text()) if Path(path).exists() else None
