"""Jobs: evaluate every baseline and the configured source on the cold ads; backtest on warm ads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.errors import ConfigError
from llmhyper_feast.jobs.generate import build_index
from llmhyper_feast.jobs.train import load_lr_cold, read_impressions
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.files import atomic_write_json
from llmhyper_feast.store.layout import RepoLayout

ABLATIONS: dict[str, tuple[str, list[Any]]] = {
    "shots": ("generation.shots", [0, 3, 5]),
    "caption": ("generation.include_caption", [True, False]),
    "batch_size": ("generation.batch_size", [1, 5, 10, 0]),
    "samples": ("generation.samples", [1, 3, 5]),
    "scale": ("calibration.scale", ["unit", "neighbours"]),
    "reasoning": ("generation.reasoning", [False, True]),
    "alpha": ("calibration.alpha_source", ["neighbours", "learned"]),
}
CALIBRATION_ABLATIONS = ("scale", "alpha")  # need no LLM: they only change how weights are calibrated
ALPHA_SOURCES = ("neighbours", "learned")


def with_learned_alpha(rows: pd.DataFrame, learned_rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` whose missing ``prior_alpha`` is filled with the learned prior's estimate for the same ad."""
    est = learned_rows.set_index("ad_id")["prior_alpha"]
    own = rows["prior_alpha"] if "prior_alpha" in rows else pd.Series(np.nan, index=rows.index)
    return rows.assign(prior_alpha=own.fillna(rows["ad_id"].map(est)))


def evaluate(
    repo: str | Path,
    settings: Settings,
    *,
    ablations: Sequence[str] = (),
    impressions_path: str | Path | None = None,
    n_boot: int = 1000,
    progress: bool = True,
) -> list[dict]:
    """Every baseline, the configured backend and the requested ablations on the cold ads; saved as JSON."""
    from llmhyper_feast.evaluation import evaluate as ev
    from llmhyper_feast.evaluation.metrics import calibration_table
    from llmhyper_feast.generation.priors import KnnPrior, WeightPrior, learned_like
    from llmhyper_feast.generation.runner import generate_rows

    layout = RepoLayout.of(repo)
    for name in ablations:
        if name not in ABLATIONS:
            raise ConfigError(f"Unknown ablation '{name}'. Choose from: {', '.join(ABLATIONS)}.")
    store, inputs = build_index(layout.root, settings, progress=progress)
    if inputs.backend is None:
        prompt_only = [n for n in ablations if n not in CALIBRATION_ABLATIONS]
        if prompt_only:
            raise ConfigError(
                f"The {', '.join(prompt_only)} ablation needs an LLM backend (--llm local/openai); "
                f"with --llm none the prior writes the weights and only {' and '.join(CALIBRATION_ABLATIONS)} apply."
            )
    schema = inputs.schema
    data = ev.load_eval_data(layout.root, store, schema, read_impressions(layout.root, impressions_path))
    _, users = fa.read_user_matrix(
        store, schema, sample=settings.calibration.user_sample, seed=settings.generation.seed
    )
    cold = load_lr_cold(layout.root)
    # the knn and learned priors are baselines whatever prior is configured; every row may be
    # calibrated to the learned mean-CTR estimate (the alpha ablation), so all rows carry it
    learned = learned_like(inputs.prior, inputs.warm, inputs.index.ids, inputs.index.embeddings, inputs.embedder)
    learned.prepare(data.ads)
    priors: dict[str, WeightPrior] = {"knn": KnnPrior(), "learned": learned, inputs.prior.name: inputs.prior}
    rows_of = {
        name: generate_rows(data.ads, replace(inputs, backend=None, prior=p), progress=False)
        for name, p in priors.items()
    }
    rows_of = {name: with_learned_alpha(rows, rows_of["learned"]) for name, rows in rows_of.items()}
    prior_label = f"{inputs.prior.name}_prior"
    prior_rows = rows_of[inputs.prior.name]
    results = [
        ev.calibrated_result("lr_cold", data, prior_rows, settings, cold, users, override=cold.weights),
        ev.lr_warm_result(data, settings),
        *(ev.calibrated_result(f"{name}_prior", data, rows, settings, cold, users) for name, rows in rows_of.items()),
    ]
    other = next(a for a in ALPHA_SOURCES if a != settings.calibration.alpha_source)
    varied_alpha = settings.with_overrides(**{"calibration.alpha_source": other})
    results.append(
        ev.calibrated_result(f"learned_prior[alpha={other}]", data, rows_of["learned"], varied_alpha, cold, users)
    )
    results.append(ev.embedding_result(data, inputs.embedder))

    def llm_row(label: str, s: Settings) -> None:
        rows = generate_rows(data.ads, replace(inputs, config=s.generation), progress=progress)
        rows = with_learned_alpha(rows, rows_of["learned"])
        res = ev.calibrated_result(label, data, rows, s, cold, users)
        res.extra.update(llm_calls=int(rows["calls"].sum()), prompt_tokens=int(rows["prompt_tokens"].sum()))
        results.append(res)

    if inputs.backend is not None:
        llm_row(f"llm_hyper[{inputs.backend.name}]", settings)
    for name in ablations:
        key, values = ABLATIONS[name]
        for value in values:
            varied = settings.with_overrides(**{key: value})
            if inputs.backend is not None:
                llm_row(f"llm[{name}={value}]", varied)
            else:
                results.append(
                    ev.calibrated_result(f"{prior_label}[{name}={value}]", data, prior_rows, varied, cold, users)
                )
    oracle = ev.oracle_result(data)
    if oracle is not None:
        results.append(oracle)
    warm = next(r for r in results if r.name == "lr_warm")
    table = ev.score_table(
        data, results, n_boot=n_boot, seed=settings.generation.seed, true_top=ev.true_top_features(data, warm)
    )
    curves = {
        r.name: {k: v.tolist() for k, v in calibration_table(data.test_clicked, r.scores, 20).items()}
        for r in results
        if r.weights is not None
    }
    out: dict[str, Any] = {
        "rows": table,
        "n_test_impressions": int(len(data.test_clicked)),
        "n_active_ads": len(data.ads),
        "feature_hash": schema.hash,
        "llm_model": inputs.source_id,
        "weights": {r.name: r.weights.tolist() for r in results if r.weights is not None},
        "ad_ids": [a.ad_id for a in data.ads],
        "feature_names": schema.names,
        "calibration": curves,
    }
    atomic_write_json(layout.evaluation, out, default=float)
    return table


def run_backtest(
    repo: str | Path,
    settings: Settings,
    *,
    sample: int = 30,
    impressions_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Backtest the configured source on ``sample`` warm ads and save the result for the gate."""
    from llmhyper_feast.evaluation import backtest

    layout = RepoLayout.of(repo)
    store, inputs = build_index(layout.root, settings, progress=progress)
    user_ids, users = fa.read_user_matrix(store, inputs.schema)
    result = backtest.run_backtest(
        inputs,
        read_impressions(layout.root, impressions_path),
        user_ids,
        users,
        sample=sample,
        seed=settings.generation.seed,
        progress=progress,
    )
    backtest.save(layout.backtest, result)
    return result
