"""A self-contained HTML report of an evaluation run (and of the backtest, when there is one).

Plots are PNGs drawn with matplotlib's Agg canvas and embedded as base64, so the file opens
offline and can be mailed or attached to a CI run as is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmhyper_feast.errors import DataError
from llmhyper_feast.evaluation.backtest import SUMMARY_KEYS
from llmhyper_feast.store.files import atomic_write_text
from llmhyper_feast.store.layout import RepoLayout

BASELINE = "lr_cold"
METRICS = [
    ("auc", "AUC"),
    ("gauc", "GAUC"),
    ("ndcg@5", "NDCG@5"),
    ("ndcg@10", "NDCG@10"),
    ("ece", "ECE"),
    ("hr@5", "HR@5"),
    ("coverage@5", "Coverage@5"),
    ("mean_pred", "mean pred."),
    ("latency_us", "latency µs"),
]
DIFFS = [("d_ndcg@10_vs_lr_cold", "Δ NDCG@10 vs LR_cold [95% CI]"), ("d_gauc_vs_lr_cold", "Δ GAUC vs LR_cold [95% CI]")]
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.sig{font-weight:bold;color:#1a6b1a}
.neg{font-weight:bold;color:#a11}figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
.warn{color:#a11}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, (list, dict, str)) or not math.isfinite(float(value)):
        return "–" if not isinstance(value, str) else _e(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.1f}" if abs(float(value)) >= 100 else f"{float(value):.{digits}f}"


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read {what} at {path}: {exc}. Re-run the command that writes it.") from exc


def load_inputs(repo: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, pd.DataFrame | None]:
    """The evaluation results, the backtest (or None) and the demo world's true weights (or None)."""
    layout = RepoLayout(Path(repo))
    path = layout.evaluation
    if not path.exists():
        raise DataError(
            f"No evaluation results at {path}. Run `llmhyper evaluate --repo {repo}` first, then `llmhyper report`."
        )
    ev = _load_json(path, "evaluation results")
    if not isinstance(ev.get("rows"), list) or not ev["rows"]:
        raise DataError(
            f"{path} has no 'rows' (expected a list of per-model metrics). Re-run `llmhyper evaluate --repo {repo}`."
        )
    bt = _load_json(layout.backtest, "backtest results") if layout.backtest.exists() else None
    truth = pd.read_parquet(layout.demo_truth).set_index("ad_id") if layout.demo_truth.exists() else None
    return ev, bt, truth


def _img(fig: Any, alt: str, caption: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's matplotlib backend alone

    return Figure(figsize=(width, height), layout="constrained")


def _facts(ev: dict[str, Any], generated: str) -> str:
    facts = [
        ("LLM backend / model", ev.get("llm_model", "?")),
        ("feature definitions hash", ev.get("feature_hash", "?")),
        ("active (cold) ads", ev.get("n_active_ads", "?")),
        ("user features", len(ev.get("feature_names", []))),
        ("test impressions", ev.get("n_test_impressions", "?")),
        ("observed test CTR", _num(ev["rows"][0].get("observed_ctr"))),
        ("report generated", generated),
    ]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>"


def _ci_cell(ci: Any) -> str:
    if not isinstance(ci, list) or len(ci) != 3:
        return "<td>–</td>"
    d, lo, hi = (float(v) for v in ci)
    cls = ' class="sig"' if lo > 0 else ' class="neg"' if hi < 0 else ""
    return f"<td{cls}>{d:+.4f} [{lo:+.4f}, {hi:+.4f}]</td>"


def _table(rows: list[dict[str, Any]]) -> str:
    known = {k for k, _ in METRICS} | {k for k, _ in DIFFS} | {"model", "observed_ctr"}
    extras = sorted(
        {
            k
            for r in rows
            for k, v in r.items()
            if k not in known and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    cols = [*METRICS, *[(k, k) for k in extras]]
    head = "".join(f"<th>{_e(label)}</th>" for label in ["model", *(c[1] for c in cols), *(d[1] for d in DIFFS)])
    body = "".join(
        "<tr><td>"
        + _e(r.get("model", "?"))
        + "</td>"
        + "".join(f"<td>{_num(r.get(k))}</td>" for k, _ in cols)
        + "".join(_ci_cell(r.get(k)) for k, _ in DIFFS)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_plot(rows: list[dict[str, Any]]) -> str:
    fig = _figure(11, 4)
    names = [str(r["model"]) for r in rows]
    base = next((r for r in rows if r["model"] == BASELINE), None)
    for ax, (key, label) in zip(fig.subplots(1, 2), [("ndcg@10", "NDCG@10"), ("gauc", "GAUC")]):
        values = np.array([float(r.get(key, np.nan)) for r in rows])
        x, top = np.arange(len(rows)), float(np.nanmax(np.r_[values, 1e-9]))
        ax.bar(x, values, color=["#999" if n == BASELINE else "#4878a8" for n in names])
        if base is not None:
            ref = float(base[key])
            ax.axhline(ref, color="#444", ls="--", lw=1, label=f"{BASELINE} = {ref:.3f}")
            for i, r in enumerate(rows):
                ci = r.get(f"d_{key}_vs_lr_cold")
                if isinstance(ci, list) and len(ci) == 3:
                    d, lo, hi = (float(v) for v in ci)
                    ax.errorbar(i, ref + d, yerr=[[d - lo], [hi - d]], fmt="o", color="#c44", ms=4, capsize=4)
                    top = max(top, ref + hi)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
        ax.set_ylim(0, 1.05 * top)
    return _img(
        fig,
        "NDCG@10 and GAUC per model",
        "Bars: metric per model. Red: LR_cold + the paired-bootstrap 95% CI of the per-user difference "
        "(GAUC differences are over per-user AUCs); a CI clear of the dashed line is a significant change.",
    )


def _calibration_plot(curves: dict[str, dict[str, list]], rows: list[dict[str, Any]]) -> str:
    ece = {r["model"]: r.get("ece") for r in rows}
    ncol = min(4, len(curves))
    nrow = math.ceil(len(curves) / ncol)
    fig = _figure(3.2 * ncol, 3.1 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, (name, c) in zip(axes, curves.items()):
        p, o, n = (np.asarray(c[k], dtype=float) for k in ("mean_predicted", "observed_rate", "count"))
        keep = (n > 0) & np.isfinite(p) & np.isfinite(o)
        top = 1.15 * max(0.01, float(np.max(np.r_[p[keep], o[keep]])) if keep.any() else 0.01)
        ax.plot([0, top], [0, top], color="#999", ls="--", lw=1)
        ax.plot(p[keep], o[keep], "-", color="#4878a8", lw=1)
        ax.scatter(p[keep], o[keep], s=10 + 60 * np.sqrt(n[keep] / max(1, n[keep].max())), color="#4878a8", zorder=3)
        ax.set(
            xlim=(0, top),
            ylim=(0, top),
            xlabel="mean predicted",
            ylabel="observed click rate",
            title=f"{name} (ECE {_num(ece.get(name))})",
        )
        ax.title.set_fontsize(9)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    return _img(
        fig,
        "calibration per model",
        "Mean predicted CTR against the observed click rate per probability "
        "bin (non-empty bins only; marker area grows with the bin's impressions). Dashed: perfect calibration.",
    )


def _pick_model(weights: dict[str, Any]) -> str | None:
    return next((m for m in weights if m.startswith("llm_hyper")), "knn_prior" if "knn_prior" in weights else None)


def _row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return float(np.mean(np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok]))) if ok.any() else float("nan")


def _heatmap(ev: dict[str, Any], truth: pd.DataFrame | None) -> str:
    weights, ads, feats = ev.get("weights", {}), list(ev.get("ad_ids", [])), list(ev.get("feature_names", []))
    model = _pick_model(weights)
    if model is None or not ads or not feats:
        return "<p>No LLM-HYPER or kNN-prior weights in the evaluation results; no weight heatmap.</p>"
    panels = [(model, np.asarray(weights[model], dtype=float))]
    if truth is not None and set(ads) <= set(truth.index) and set(feats) <= set(truth.columns):
        panels.append(("true weights (demo world)", truth.loc[ads, feats].to_numpy(float)))
    elif "lr_warm" in weights:
        panels.append(("lr_warm (trained on clicks)", np.asarray(weights["lr_warm"], dtype=float)))
    fig = _figure(5.5 * len(panels), min(20.0, 2.0 + 0.2 * len(ads)))
    for ax, (title, w) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        lim = float(np.nanmax(np.abs(w))) or 1.0
        im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(feats)), feats, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ads)), ads if len(ads) <= 80 else [""] * len(ads), fontsize=6)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    note = (
        ""
        if len(panels) == 1
        else f" Mean per-ad cosine between the panels: {_num(_row_cosine(panels[0][1], panels[1][1]), 3)}."
    )
    return _img(
        fig,
        f"weights of {model}",
        f"Per-ad weights (rows: ads, columns: user features) of {model}"
        f"{' next to ' + panels[1][0] if len(panels) > 1 else ''}; each panel has its own symmetric colour "
        f"scale.{note}",
    )


def _backtest(bt: dict[str, Any], feature_hash: str | None) -> str:
    gen, trained = np.asarray(bt.get("generated", []), float), np.asarray(bt.get("trained", []), float)
    facts = [("warm ads treated as cold", len(bt.get("ads", [])))] + [(k, bt[k]) for k in SUMMARY_KEYS if k in bt]
    out = (
        "<table>"
        + "".join(
            f"<tr><th>{_e(k)}</th><td>{_num(v, 3) if not isinstance(v, str) else _e(v)}</td></tr>" for k, v in facts
        )
        + "</table>"
    )
    if feature_hash and bt.get("feature_hash") not in (None, feature_hash):
        out += (
            f"<p class='warn'>The backtest used feature hash {_e(bt['feature_hash'])}, the evaluation "
            f"{_e(feature_hash)}: re-run `llmhyper backtest`.</p>"
        )
    if gen.size == 0 or gen.shape != trained.shape:
        return out + "<p>The backtest file holds no generated/trained weight matrices to plot.</p>"
    fig = _figure(11, 4.2)
    ax, bx = fig.subplots(1, 2)
    ax.scatter(trained.ravel(), gen.ravel(), s=8, alpha=0.5, color="#4878a8")
    lim = float(np.nanmax(np.abs(np.r_[trained.ravel(), gen.ravel()]))) or 1.0
    ax.axhline(0, color="#ccc", lw=0.8)
    ax.axvline(0, color="#ccc", lw=0.8)
    ax.set(
        xlim=(-lim, lim),
        xlabel="trained weight",
        ylabel="generated weight",
        title=f"{bt.get('backend', '?')}: generated vs trained (cosine {_num(bt.get('cosine'), 3)})",
    )
    ax.title.set_fontsize(9)
    blend = sorted((float(k), float(v)) for k, v in bt.get("blend_cosine", {}).items())
    if blend:
        lam, cos = zip(*blend)
        bx.plot(lam, cos, "o-", color="#4878a8")
        if "best_lambda" in bt:
            best = float(bt["best_lambda"])
            bx.axvline(best, color="#c44", ls="--", lw=1, label=f"best λ = {best:.2f}")
            bx.legend(fontsize=8)
        bx.set(
            xlabel="λ (LLM share; 1-λ is the kNN prior)",
            ylabel="mean cosine with trained weights",
            title="blend of LLM and kNN-prior weights",
        )
        bx.title.set_fontsize(9)
    return out + _img(
        fig,
        "backtest: generated vs trained weights",
        f"Every (ad, feature) weight of the "
        f"{gen.shape[0]} backtested warm ads; right: cosine of the blend λ·LLM + (1-λ)·kNN prior.",
    )


def _latency_plot(rows: list[dict[str, Any]]) -> str:
    pts = [
        (str(r["model"]), float(r["latency_us"]))
        for r in rows
        if isinstance(r.get("latency_us"), (int, float)) and math.isfinite(r["latency_us"]) and r["latency_us"] > 0
    ]
    if not pts:
        return "<p>No latency measurements in the evaluation results.</p>"
    fig = _figure(8, 0.5 + 0.45 * len(pts))
    ax = fig.subplots()
    names, vals = zip(*pts)
    ax.barh(range(len(pts)), vals, color="#4878a8")
    ax.set_yticks(range(len(pts)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("µs to score one user against every active ad (median)")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
    return _img(fig, "latency per model", "Median time to score one user against all active ads, log scale.")


def _robustness(rob: dict[str, Any]) -> str:
    """Direction accuracy per counterfactual variant (``llmhyper robustness``)."""
    head = "<tr><th>variant</th><th>pairs</th><th>correct</th><th>accuracy</th><th>mean change</th></tr>"
    body = []
    for variant, s in {**rob.get("by_variant", {}), "overall": rob.get("overall", {})}.items():
        body.append(
            f"<tr><td>{_e(variant)}</td><td>{_e(s.get('n', 0))}</td><td>{_e(s.get('correct', 0))}</td>"
            f"<td>{_num(s.get('accuracy'), 3)}</td><td>{_num(s.get('mean_change'), 3)}</td></tr>"
        )
    note = (
        f"<p>Source {_e(rob.get('source', '?'))}, variants from {_e(rob.get('variants_from', '?'))}, "
        f"{_e(rob.get('ads', '?'))} ads; {len(rob.get('skipped', []))} pairs skipped (fallbacks). "
        f"{_e(rob.get('note', ''))}. A weight is right when it goes up for an enhanced ad, down for a "
        "diminished one and toward 0 for a neutralized one.</p>"
    )
    return f"<table>{head}{''.join(body)}</table>{note}"


def _user_priors(res: dict[str, Any]) -> str:
    """Recall@K of the next advertiser per method (``llmhyper priors evaluate``), with bootstrap CIs."""
    ks = sorted({int(key.split("@")[1]) for m in res.get("methods", {}).values() for key in m if "@" in key})
    head = "<tr><th>method</th>" + "".join(f"<th>recall@{k} [95% CI]</th>" for k in ks) + "</tr>"
    body = []
    for method, m in res.get("methods", {}).items():
        cells = "".join(
            f"<td>{_num(m.get(f'recall@{k}', {}).get('mean'), 3)} [{_num(m.get(f'recall@{k}', {}).get('lo'), 3)}, "
            f"{_num(m.get(f'recall@{k}', {}).get('hi'), 3)}]</td>"
            for k in ks
        )
        body.append(f"<tr><td>{_e(method)}</td>{cells}</tr>")
    sources = "; ".join(
        f"{key}: {_e(res[key].get('source', '?'))}"
        for key in ("llm", "llm_compare")
        if key in res.get("methods", {}) and res.get(key, {}).get("source")
    )
    note = (
        f"<p>Snapshot {_e(res.get('snapshot', '?'))}, labels from the next {_e(res.get('window_days', '?'))} days, "
        f"{_e(res.get('users', '?'))} held-out users (label in the candidate pool "
        f"{_num(res.get('label_in_pool'), 2)}, advertiser seen before {_num(res.get('label_seen_before'), 2)}). "
        f"{sources or 'No LLM row: the baselines only.'}</p>"
    )
    return f"<table>{head}{''.join(body)}</table>{note}"


def build_html(
    ev: dict[str, Any],
    bt: dict[str, Any] | None,
    truth: pd.DataFrame | None,
    generated: str | None = None,
    robustness: dict[str, Any] | None = None,
    user_priors: dict[str, Any] | None = None,
) -> str:
    """The report page for loaded evaluation results (``bt``/``truth``/``robustness``/``user_priors`` may be None)."""
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = ev["rows"]
    parts = [
        f"<h1>LLM-HYPER evaluation report</h1>{_facts(ev, generated)}",
        f"<h2>Metrics by model</h2>{_table(rows)}",
        _metrics_plot(rows),
    ]
    if ev.get("calibration"):
        parts.append("<h2>Calibration</h2>" + _calibration_plot(ev["calibration"], rows))
    parts.append("<h2>Generated weights</h2>" + _heatmap(ev, truth))
    if bt is not None:
        parts.append("<h2>Backtest on warm ads</h2>" + _backtest(bt, ev.get("feature_hash")))
    if robustness is not None:
        parts.append("<h2>Counterfactual robustness</h2>" + _robustness(robustness))
    if user_priors is not None:
        parts.append("<h2>User priors: next advertiser</h2>" + _user_priors(user_priors))
    parts.append("<h2>Serving latency</h2>" + _latency_plot(rows))
    title = f"LLM-HYPER report: {ev.get('llm_model', '')}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(repo: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of ``<repo>/data/evaluation.json`` and return its path."""
    ev, bt, truth = load_inputs(repo)
    layout = RepoLayout(Path(repo))
    rob = _load_json(layout.robustness, "robustness results") if layout.robustness.exists() else None
    priors_path = layout.user_priors_evaluation
    priors = _load_json(priors_path, "user priors evaluation") if priors_path.exists() else None
    out = Path(out_path) if out_path is not None else layout.report
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, build_html(ev, bt, truth, robustness=rob, user_priors=priors))
    return out
