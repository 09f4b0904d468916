"""Offline evaluation on cold (active) ads and held-out test users: baselines, metrics, CIs.

Every model is a per-ad linear model ``sigmoid(W x + b)`` except the text-embedding
baseline, which scores by cosine between a text summary of the user and the ad's text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmhyper_feast.calibration.rows import calibrate_row
from llmhyper_feast.config import Settings
from llmhyper_feast.errors import DataError
from llmhyper_feast.evaluation import metrics
from llmhyper_feast.features import Ad, FeatureSchema
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.training.warm import LRCold, fit_ad

BASELINE = "lr_cold"
CEILING = "lr_warm"  # ndcg@10_gap_closed: the share of the BASELINE -> CEILING gap a model closes


@dataclass
class EvalData:
    """Active ads, users and their test impressions (row/column indices into users/ads)."""

    schema: FeatureSchema
    ads: list[Ad]
    user_ids: np.ndarray
    users: np.ndarray
    test_user: np.ndarray
    test_ad: np.ndarray
    test_clicked: np.ndarray
    train: pd.DataFrame
    truth: pd.DataFrame | None


@dataclass
class ModelResult:
    """One model's scores on the test impressions, and its weights when it is linear."""

    name: str
    scores: np.ndarray
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    latency_us: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def load_eval_data(repo: str | Path, store: Any, schema: FeatureSchema, impressions: pd.DataFrame) -> EvalData:
    """Active ads, every user, and the impressions split into train (LR_warm) and test (evaluation)."""
    ads, _ = fa.read_ads(store, status="active")
    if not ads:
        raise DataError("No active (cold) ads to evaluate: mark some ads status='active' in the ad content source.")
    user_ids, users = fa.read_user_matrix(store, schema)
    if "user_split" not in impressions.columns:
        raise DataError("Evaluation needs a 'user_split' column (train/test) in the impressions table.")
    col = {a.ad_id: i for i, a in enumerate(ads)}
    row = pd.Series(np.arange(len(user_ids)), index=user_ids)
    imps = impressions[impressions["ad_id"].isin(col) & impressions["user_id"].isin(row.index)]
    test = imps[imps["user_split"] == "test"]
    if test.empty or test["clicked"].nunique() < 2:
        raise DataError("The test users have no impressions (or no clicks) on the active ads; nothing to evaluate.")
    truth_path = RepoLayout(Path(repo)).demo_truth
    truth = pd.read_parquet(truth_path).set_index("ad_id") if truth_path.exists() else None
    return EvalData(
        schema,
        ads,
        user_ids,
        users,
        row[test["user_id"]].to_numpy(),
        test["ad_id"].map(col).to_numpy(),
        test["clicked"].to_numpy().astype(int),
        imps[imps["user_split"] == "train"],
        truth,
    )


def linear_result(name: str, data: EvalData, w: np.ndarray, b: np.ndarray, **extra: Any) -> ModelResult:
    """Score the test impressions with per-ad linear models and time ranking one user over all ads."""
    x = data.users[data.test_user]
    z = np.einsum("ij,ij->i", x, w[data.test_ad]) + b[data.test_ad]
    one = data.users[:1].astype(np.float64)
    timings = []
    for _ in range(200):
        t0 = time.perf_counter()
        _ = 1 / (1 + np.exp(-(one @ w.T + b)))
        timings.append(time.perf_counter() - t0)
    return ModelResult(name, 1 / (1 + np.exp(-z)), w, b, float(np.median(timings) * 1e6), extra)


def calibrated_result(
    name: str,
    data: EvalData,
    rows: pd.DataFrame,
    settings: Settings,
    lr_cold: LRCold,
    users: np.ndarray,
    override: np.ndarray | None = None,
) -> ModelResult:
    """Normalise + calibrate each ad's weights (from generation rows, or ``override``) and score."""
    by_ad = rows.set_index("ad_id")
    w, b, sources = np.zeros((len(data.ads), len(data.schema))), np.zeros(len(data.ads)), []
    for i, ad in enumerate(data.ads):
        r = by_ad.loc[ad.ad_id].to_dict()
        if override is not None:
            r = {**r, "weights": override, "origin": name, "fallback_reason": ""}
        cal = calibrate_row(r, users, settings.calibration, lr_cold)
        w[i], b[i] = cal["weights"], cal["bias"]
        sources.append(cal["origin"])
    return linear_result(name, data, w, b, fallbacks=int(sum(s == "fallback" for s in sources)))


def lr_warm_result(data: EvalData, settings: Settings) -> ModelResult:
    """The ceiling: per-ad models trained on the active ads' train-user clicks."""
    row = pd.Series(np.arange(len(data.user_ids)), index=data.user_ids)
    groups = dict(tuple(data.train.groupby("ad_id")))
    w, b = np.zeros((len(data.ads), len(data.schema))), np.zeros(len(data.ads))
    for i, ad in enumerate(data.ads):
        g = groups.get(ad.ad_id)
        if g is None or g["clicked"].nunique() < 2:
            raise DataError(f"Active ad {ad.ad_id} has no train clicks, so LR_warm cannot be trained for it.")
        w[i], b[i], _, _ = fit_ad(
            data.users[row[g["user_id"]].to_numpy()], g["clicked"].to_numpy().astype(int), settings.warm.l2_c
        )
    return linear_result("lr_warm", data, w, b)


def oracle_result(data: EvalData) -> ModelResult | None:
    """The demo world's hidden true weights (only when demo_truth.parquet exists)."""
    if data.truth is None:
        return None
    t = data.truth.loc[[a.ad_id for a in data.ads]]
    return linear_result("oracle", data, t[data.schema.names].to_numpy(float), t["bias"].to_numpy(float))


def user_summary(values: np.ndarray, names: list[str], top: int = 2) -> str:
    """A short text profile of a user: their strongest features, for the text-embedding baseline."""
    best = np.argsort(-values, kind="stable")[:top]
    return "Shopper interested in " + " and ".join(names[i].replace("_", " ") for i in best)


def embedding_result(data: EvalData, embedder: Any) -> ModelResult:
    """Cosine between an embedded user summary and the embedded ad text (the paper's EmbT5 analogue)."""
    summaries = np.array([user_summary(v, data.schema.names) for v in data.users[np.unique(data.test_user)]])
    uniq, inverse = np.unique(summaries, return_inverse=True)
    profile_ads = [Ad(f"user-profile-{i}", s) for i, s in enumerate(uniq)]
    u_vec = embedder.embed(profile_ads, progress=False)
    a_vec = embedder.embed(data.ads, progress=False)
    slot = np.full(len(data.user_ids), -1)
    slot[np.unique(data.test_user)] = inverse
    scores = np.einsum("ij,ij->i", u_vec[slot[data.test_user]], a_vec[data.test_ad])
    timings = []
    for _ in range(20):
        t0 = time.perf_counter()
        v = embedder.embed([profile_ads[0]], progress=False)
        _ = a_vec @ v[0]
        timings.append(time.perf_counter() - t0)
    return ModelResult("emb_cosine", scores, latency_us=float(np.median(timings) * 1e6))


def _per_user(data: EvalData, scores: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    order = np.argsort(data.test_user, kind="stable")
    users, starts = np.unique(data.test_user[order], return_index=True)
    rel = np.split(data.test_clicked[order], starts[1:])
    sc = np.split(scores[order], starts[1:])
    return users, rel, sc


def _user_auc(rel: list[np.ndarray], sc: list[np.ndarray]) -> np.ndarray:
    out = np.full(len(rel), np.nan)
    for i, (r, s) in enumerate(zip(rel, sc)):
        if 0 < r.sum() < len(r):
            out[i] = metrics.auc(r, s)
    return out


def score_table(
    data: EvalData,
    results: list[ModelResult],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    true_top: list[list[int]] | None = None,
) -> list[dict[str, Any]]:
    """Metrics per model, with paired-bootstrap CIs of the difference to LR_cold and the share of the
    LR_cold -> LR_warm NDCG@10 gap closed."""
    y = data.test_clicked
    per_user: dict[str, dict[str, np.ndarray]] = {}
    rows = []
    for res in results:
        _, rel, sc = _per_user(data, res.scores)
        per_user[res.name] = {"ndcg@10": metrics.ndcg_at_k_per_user(rel, sc, 10), "auc": _user_auc(rel, sc)}
        is_prob = res.weights is not None
        row = {
            "model": res.name,
            "auc": metrics.auc(y, res.scores),
            "gauc": metrics.gauc(data.test_user, y, res.scores),
            "ndcg@5": metrics.ndcg_at_k(rel, sc, 5),
            "ndcg@10": float(np.nanmean(per_user[res.name]["ndcg@10"])),
            "ece": metrics.expected_calibration_error(y, res.scores) if is_prob else float("nan"),
            "mean_pred": float(res.scores.mean()) if is_prob else float("nan"),
            "observed_ctr": float(y.mean()),
            "latency_us": res.latency_us,
            **res.extra,
        }
        if true_top is not None and res.weights is not None:
            row["hr@5"] = metrics.hit_rate_at_k(res.weights, [{t[0]} for t in true_top], 5)
            row["coverage@5"] = metrics.coverage_at_k(res.weights, [set(t) for t in true_top], 5)
        rows.append(row)
    by_model = {r["model"]: r for r in rows}
    if BASELINE in by_model and CEILING in by_model:
        gap = by_model[CEILING]["ndcg@10"] - by_model[BASELINE]["ndcg@10"]
        for row in rows:
            row["ndcg@10_gap_closed"] = (row["ndcg@10"] - by_model[BASELINE]["ndcg@10"]) / gap if gap else float("nan")
    if BASELINE in per_user:
        for row in rows:
            for key in ("ndcg@10", "auc"):
                if row["model"] == BASELINE:
                    continue
                d, lo, hi = metrics.paired_bootstrap_ci(
                    per_user[row["model"]][key], per_user[BASELINE][key], n_boot=n_boot, seed=seed
                )
                row[f"d_{'gauc' if key == 'auc' else key}_vs_lr_cold"] = [d, lo, hi]
    return rows


def true_top_features(data: EvalData, reference: ModelResult | None, k: int = 5) -> list[list[int]] | None:
    """Labelled important features per ad, best first: true weights (demo) or LR_warm (real data)."""
    if data.truth is not None:
        w = data.truth.loc[[a.ad_id for a in data.ads], data.schema.names].to_numpy(float)
    elif reference is not None and reference.weights is not None:
        w = reference.weights
    else:
        return None
    return [list(r) for r in np.argsort(-w, axis=1, kind="stable")[:, :k]]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A readable fixed-width table of the main metrics."""
    cols = ["model", "auc", "gauc", "ndcg@5", "ndcg@10", "ece", "hr@5", "coverage@5", "latency_us"]
    width = max(12, *(len(r["model"]) for r in rows))
    lines = ["  ".join([f"{cols[0]:<{width}}"] + [f"{c:>12}" for c in cols[1:]]) + "   d_ndcg@10 vs lr_cold [95% CI]"]
    for r in rows:
        cells = [f"{r['model']:<{width}}"] + [
            f"{r.get(c, float('nan')):>12.4f}" if c != "latency_us" else f"{r.get(c, float('nan')):>12.1f}"
            for c in cols[1:]
        ]
        ci = r.get("d_ndcg@10_vs_lr_cold")
        lines.append("  ".join(cells) + (f"   {ci[0]:+.4f} [{ci[1]:+.4f}, {ci[2]:+.4f}]" if ci else ""))
    return "\n".join(lines)
