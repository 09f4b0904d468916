"""Per-ad logistic regressions for warm ads, and the LR_cold baseline."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmhyper_feast.config import WarmConfig
from llmhyper_feast.errors import DataError
from llmhyper_feast.features import FeatureSchema, LinearModel
from llmhyper_feast.store.files import atomic_write_json

if TYPE_CHECKING:
    from llmhyper_feast.engine import Engine

REQUIRED_COLUMNS = ("user_id", "ad_id", "clicked")


@dataclass
class WarmTrainingResult:
    """Trained rows (one per ad, ready for the warm weights view) and per-ad skips."""

    rows: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def weights(self) -> np.ndarray:
        return np.stack(self.rows["weights"].to_numpy()) if len(self.rows) else np.zeros((0, 0))


def check_impressions(df: pd.DataFrame) -> pd.DataFrame:
    """Validate an impressions table (user_id, ad_id, clicked 0/1, optional user_split)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"The impressions table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}.")
    if not df["clicked"].isin([0, 1, True, False]).all():
        raise DataError("The impressions column 'clicked' must hold 0/1 values only.")
    return df


def fit_ad(x: np.ndarray, y: np.ndarray, l2_c: float, seed: int = 0) -> tuple[np.ndarray, float, float, float]:
    """Fit one L2 logistic regression; returns weights, bias, mean predicted CTR, training AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.asarray(x, np.float64)
    if not np.isfinite(x).all():
        cols = sorted({int(j) for j in np.flatnonzero(~np.isfinite(x).all(axis=0))})
        raise DataError(
            f"The training features hold NaN or inf (columns {cols[:10]}); a regression cannot be fitted. "
            "Read users with store.feast_adapter.read_user_matrix, which imputes them."
        )
    clf = LogisticRegression(C=l2_c, max_iter=500, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    p = clf.predict_proba(x)[:, 1]
    return clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), float(p.mean()), float(roc_auc_score(y, p))


def train_warm_models(
    impressions: pd.DataFrame,
    user_ids: np.ndarray,
    users: np.ndarray,
    schema: FeatureSchema,
    ad_ids: list[str],
    config: WarmConfig,
    *,
    split: str | None = "train",
    progress: bool = True,
    engine: Engine | None = None,
) -> WarmTrainingResult:
    """Train one model per ad in ``ad_ids`` on its impressions by users of ``split`` (None = all).

    ``engine`` runs the fits (default: in this process); any engine gives the same weights.
    """
    check_impressions(impressions)
    users = np.asarray(users, np.float64)
    if users.ndim != 2 or users.shape[1] != len(schema):
        raise DataError(f"users must have shape [n_users, {len(schema)}] (schema order). Got shape {users.shape}.")
    bad = ~np.isfinite(users)
    if bad.any():
        names = [n for n, b in zip(schema.names, bad.any(axis=0)) if b]
        raise DataError(
            f"User features {names[:10]} hold {int(bad.sum())} NaN or inf value(s); warm models cannot be trained "
            "on them. Read users with store.feast_adapter.read_user_matrix, which imputes them with the "
            "feature's finite mean (inputs.max_missing_share)."
        )
    imps = impressions[impressions["ad_id"].isin(ad_ids)]
    if split is not None and "user_split" in imps.columns:
        imps = imps[imps["user_split"] == split]
    row_of = pd.Series(np.arange(len(user_ids)), index=user_ids)
    known = imps["user_id"].isin(row_of.index)
    imps = imps[known]
    now = datetime.now(UTC)
    skipped: dict[str, str] = {}
    plan: list[tuple[str, np.ndarray, np.ndarray]] = []  # (ad id, user rows, clicks) of each ad to fit
    groups: dict[str, pd.DataFrame] = dict(tuple(imps.groupby("ad_id", sort=False)))
    for ad_id in ad_ids:
        g = groups.get(ad_id)
        n, clicks = (0, 0) if g is None else (len(g), int(g["clicked"].sum()))
        if g is None or n < config.min_impressions or clicks < config.min_clicks or clicks == n:
            skipped[ad_id] = (
                f"{n} impressions / {clicks} clicks; needs >= {config.min_impressions} impressions "
                f"and >= {config.min_clicks} clicks (and some non-clicks)"
            )
            continue
        plan.append((ad_id, row_of[g["user_id"]].to_numpy(), g["clicked"].to_numpy().astype(int)))
    fitted = _fit_all(users, plan, config.l2_c, engine, progress)
    rows = []
    for ad_id, _, y in plan:
        w, b, mean_ctr, auc = fitted[ad_id]
        rows.append(
            {
                "ad_id": ad_id,
                "weights": w.astype(np.float32),
                "bias": np.float32(b),
                "mean_ctr": np.float32(mean_ctr),
                "impressions": len(y),
                "clicks": int(y.sum()),
                "train_auc": np.float32(auc),
                "feature_hash": schema.names_hash,
                "trained_at": now,
                "event_timestamp": now,
            }
        )
    return WarmTrainingResult(pd.DataFrame(rows), skipped)


_FIT = tuple[np.ndarray, float, float, float]
_ADS_PER_LOCAL_GROUP = 16
_GROUPS_PER_WORKER = 4  # several groups per worker, so a slow group does not idle the others


def _fit_group(context: tuple[np.ndarray, float], group: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, _FIT]:
    """Fit each ad of ``group``: (ad id, rows of the shared user matrix, clicks) -> fit_ad's result."""
    from threadpoolctl import threadpool_limits

    users, l2_c = context
    # one BLAS thread per fit: a 20-feature regression is far too small to split, and letting BLAS
    # spread each one over every core made the local engine 3-4x slower on a busy machine
    # (bench_ray_training.py); Ray workers run single-threaded already
    with threadpool_limits(limits=1):
        return {ad_id: fit_ad(users[rows], y, l2_c) for ad_id, rows, y in group}


def _fit_all(
    users: np.ndarray,
    plan: list[tuple[str, np.ndarray, np.ndarray]],
    l2_c: float,
    engine: Engine | None,
    progress: bool,
) -> dict[str, _FIT]:
    """Every planned ad's fit, the groups run by ``engine`` (in this process when None)."""
    from tqdm.auto import tqdm

    from llmhyper_feast.engine import get_engine, split_even

    engine = engine or get_engine()
    fitted: dict[str, _FIT] = {}
    with engine, tqdm(total=len(plan), desc=f"train warm ads ({engine.name})", disable=not progress) as bar:
        n_groups = (  # workers is known once the engine has started
            engine.workers * _GROUPS_PER_WORKER if engine.distributed else -(-len(plan) // _ADS_PER_LOCAL_GROUP)
        )
        groups = split_even(plan, n_groups) if plan else []
        for _, result in engine.map_groups(_fit_group, groups, context=(users, l2_c), what="train-warm"):
            fitted.update(result)
            bar.update(len(result))
    return fitted


@dataclass(frozen=True, eq=False)
class LRCold(LinearModel):
    """The cold-start baseline: per-feature median of warm ads' weights and bias."""

    mean_ctr: float = 0.0
    feature_hash: str = ""
    n_ads: int = 0

    def save(self, path: str | Path) -> None:
        """Write the baseline as JSON, atomically."""
        data = {
            "weights": np.asarray(self.weights).tolist(),
            "bias": self.bias,
            "mean_ctr": self.mean_ctr,
            "feature_hash": self.feature_hash,
            "n_ads": self.n_ads,
        }
        atomic_write_json(path, data, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> LRCold:
        d = json.loads(Path(path).read_text())
        return cls(np.asarray(d["weights"], np.float64), d["bias"], d["mean_ctr"], d["feature_hash"], d["n_ads"])


def lr_cold(warm: pd.DataFrame, schema: FeatureSchema) -> LRCold:
    """Median weights/bias over warm rows (those trained on the current feature names and order)."""
    current = warm[warm["feature_hash"] == schema.names_hash] if len(warm) else warm
    if current.empty:
        raise DataError("No warm ad models match the current feature definitions; run `llmhyper train-warm` first.")
    w = np.stack([np.asarray(v, np.float64) for v in current["weights"]])
    return LRCold(
        np.median(w, axis=0),
        float(np.median(current["bias"])),
        float(np.mean(current["mean_ctr"])),
        schema.names_hash,
        len(current),
    )
