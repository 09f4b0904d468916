"""Job: user priors (``llmhyper priors``): generate each active user's next advertisers, and evaluate them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.errors import ConfigError, DataError, FeatureRepoError, UnknownUserError
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store.files import atomic_write_json
from llmhyper_feast.store.layout import RepoLayout
from llmhyper_feast.store.lock import locked

if TYPE_CHECKING:
    from feast import FeatureStore

    from llmhyper_feast.userpriors.generate import PriorsContext, RunReport

__all__ = [
    "FILTER_SOURCES",
    "evaluate_priors_filter",
    "evaluate_user_priors",
    "generate_user_priors",
    "prior_features_view",
    "priors_context",
    "read_user_priors",
    "write_prior_features",
    "write_sft_data",
]


PRIOR_FEATURES_TAG = "llmhyper.derived"  # value "user_priors": the view of features derived from the priors
PRIOR_FEATURE_PREFIX = "prior_"


def prior_features_view(store: FeatureStore) -> Any | None:
    """The view tagged ``llmhyper.derived: user_priors`` (None when the repo defines none)."""
    views = store.list_feature_views(allow_cache=False)
    views = [fv for fv in views if fv.tags.get(PRIOR_FEATURES_TAG) == "user_priors"]
    return views[0] if views else None


def _read_inputs(store: FeatureStore, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, Any, list[str], Any]:
    """(history, advertisers, schema, user ids, matrix); features derived from the priors are left out of
    the schema, so a profile never shows the priors their own answer produced."""
    from llmhyper_feast.features import FeatureSchema

    schema = fa.read_feature_schema(store)
    derived = prior_features_view(store)
    if derived is not None:
        schema = FeatureSchema(tuple(f for f in schema.features if f.view != derived.name))
    ids, matrix = fa.read_user_matrix(store, schema, inputs=settings.inputs)
    return fa.read_history(store), fa.read_advertisers(store), schema, [str(u) for u in ids], matrix


def priors_context(
    repo: str | Path, settings: Settings, as_of: str | pd.Timestamp | None, *, back_days: int = 0
) -> tuple[FeatureStore, PriorsContext, pd.DataFrame]:
    """(store, context at ``as_of`` (default: the newest event minus ``back_days``), full history)."""
    from llmhyper_feast.jobs.generate import make_backend
    from llmhyper_feast.userpriors import history as hist
    from llmhyper_feast.userpriors.generate import build_context

    layout = RepoLayout.of(repo)
    store = fa.open_store(layout.root)
    history, advertisers, schema, ids, matrix = _read_inputs(store, settings)
    when = hist.parse_time(as_of, history)
    if as_of is None:
        when -= pd.Timedelta(days=back_days)
    ctx = build_context(
        history,
        advertisers,
        schema,
        ids,
        matrix,
        settings.user_priors,
        make_backend(layout.root, settings),
        when,
        concurrency=settings.generation.concurrency,
    )
    return store, ctx, history


@locked("priors generate")
def generate_user_priors(
    repo: str | Path,
    settings: Settings,
    *,
    users: list[str] | None = None,
    as_of: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> RunReport:
    """Infer the selected users whose profile changed, then write every new row to the user priors view.

    Selected: ``users``, else users with an event in the ``user_priors.active_days`` before ``as_of``
    (default: the newest event). Rows a killed run left in the log are written too.
    """
    from llmhyper_feast.userpriors import history as hist
    from llmhyper_feast.userpriors.generate import pending_rows, read_log, run_priors

    layout = RepoLayout.of(repo)
    store, ctx, history = priors_context(layout.root, settings, as_of)
    if users:
        known = set(ctx.users) | set(history["user_id"])
        unknown = [u for u in users if u not in known]
        if unknown:
            raise UnknownUserError(
                f"Unknown user id(s) {unknown[:5]}: they have no features and no history. Check --user.", unknown
            )
        selected = list(dict.fromkeys(users))
    else:
        selected = hist.active_users(history, ctx.as_of, settings.user_priors.active_days)
    report = run_priors(ctx, selected, layout.user_priors_log, force=force, progress=progress)
    fa.ensure_user_priors_sources(store)
    pending = pending_rows(read_log(layout.user_priors_log), fa.read_latest(store, fa.user_priors_view(store).name))
    fa.write_user_priors(store, pending)
    report.written = len(pending)
    return report


def evaluate_user_priors(
    repo: str | Path,
    settings: Settings,
    *,
    snapshot: str | None = None,
    compare_model: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """recall@1/5/20 of the LLM and the baselines (see :mod:`llmhyper_feast.userpriors.evaluate`); saved as JSON.

    ``compare_model``: a second model of the same backend (e.g. a ``priors finetune`` checkpoint) scored on
    the same users as the row ``llm_compare``.
    """
    from llmhyper_feast.jobs.generate import make_backend
    from llmhyper_feast.userpriors.evaluate import run_evaluation

    layout = RepoLayout.of(repo)
    _, ctx, history = priors_context(layout.root, settings, snapshot, back_days=settings.user_priors.window_days)
    compare = None
    if compare_model is not None:
        if ctx.backend is None:
            raise ConfigError("--compare-model needs an LLM backend: pass --llm local (or openai) with it.")
        compare = make_backend(layout.root, settings.with_overrides(**{"llm.options.model": compare_model}))
    result = run_evaluation(ctx, history, compare=compare, progress=progress)
    atomic_write_json(layout.user_priors_evaluation, result, indent=1)
    return result


def write_sft_data(
    repo: str | Path,
    settings: Settings,
    out: str | Path,
    *,
    snapshots: list[str] | None = None,
    window_days: int | None = None,
) -> dict[str, Any]:
    """Write chat-format fine-tuning examples (see :mod:`llmhyper_feast.userpriors.sft`) to ``out`` (JSONL).

    Default snapshots: two, ``window_days`` apart, the later one a window before the evaluation snapshot.
    Next to ``out``, ``<out>.meta.json`` lists each line's user, snapshot and label, and the counts.
    """
    import json

    from llmhyper_feast.store.files import atomic_write, atomic_write_text
    from llmhyper_feast.userpriors import history as hist
    from llmhyper_feast.userpriors.generate import build_context
    from llmhyper_feast.userpriors.sft import SftReport, default_snapshots, sft_examples

    cfg = settings.user_priors
    window = window_days or cfg.window_days
    store = fa.open_store(RepoLayout.of(repo).root)
    history, advertisers, schema, ids, matrix = _read_inputs(store, settings)
    if snapshots:
        when = [hist.parse_time(s, history) for s in snapshots]
    else:
        when = default_snapshots(hist.parse_time(None, history) - pd.Timedelta(days=cfg.window_days), window)
    report = SftReport(snapshots=[w.isoformat() for w in when])
    lines: list[str] = []
    meta: list[dict[str, str]] = []
    for snapshot in when:
        ctx = build_context(history, advertisers, schema, ids, matrix, cfg, None, snapshot)
        for example, origin in sft_examples(ctx, history, window, report):
            lines.append(json.dumps(example, ensure_ascii=False))
            meta.append(origin)
    if not lines:
        raise DataError(
            f"No training example: no non-held-out user converts in the {window} days after {report.snapshots}. "
            "Pass earlier --snapshots or a longer --window-days."
        )
    report.examples = len(lines)
    report.users = len({m["user_id"] for m in meta})
    report.mean_prompt_chars = round(
        sum(len(m["content"]) for ln in lines for m in json.loads(ln)["messages"][:2]) / len(lines), 1
    )
    target = Path(out)
    atomic_write(target, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    summary = {**report.as_dict(), "out": str(target), "window_days": window, "eval_share": cfg.eval_share}
    atomic_write_text(Path(f"{target}.meta.json"), json.dumps({**summary, "rows": meta}, indent=1))
    return summary


def write_prior_features(repo: str | Path, settings: Settings) -> dict[str, Any]:
    """Write the view tagged ``llmhyper.derived: user_priors``: per user and category, the share of the
    priors list's scores that falls on the category's advertisers.

    Every user with features gets a row (it is a user feature view: training joins them all): the stored
    priors list when there is one, else the ``user_priors.fallback`` baseline on the user's history.
    """
    from datetime import UTC, datetime

    from llmhyper_feast.userpriors.features import category_shares

    layout = RepoLayout.of(repo)
    store = fa.open_store(layout.root)
    view = prior_features_view(store)
    if view is None:
        raise FeatureRepoError(
            f"No feature view is tagged {PRIOR_FEATURES_TAG}: user_priors in {layout.root}; define one (see the "
            "demo repo's user_prior_features) and run `llmhyper apply`."
        )
    _, ctx, _ = priors_context(layout.root, settings.with_overrides(**{"llm.name": "none"}), None)
    fa.ensure_user_priors_sources(store)
    stored = fa.read_latest(store, fa.user_priors_view(store).name)
    lists: dict[str, tuple[list[str], list[float]]] = {
        str(r.user_id): (list(r.advertisers), [float(x) for x in r.scores]) for r in stored.itertuples()
    }
    fields = [f.name for f in view.features]
    categories = [f[len(PRIOR_FEATURE_PREFIX) :] for f in fields]
    k = settings.user_priors.k
    rows, from_priors = [], 0
    for user in sorted(ctx.users):
        if user in lists:
            advertisers, scores = lists[user]
            from_priors += 1
        else:
            advertisers = ctx.baselines.rank(settings.user_priors.fallback, user, k)
            scores = [(len(advertisers) - i) / len(advertisers) for i in range(len(advertisers))]
        rows.append([user, *category_shares(advertisers, scores, ctx.advertisers, categories)])
    df = pd.DataFrame(rows, columns=[view.join_keys[0], *fields])
    df[fields] = df[fields].astype("float32")
    df["event_timestamp"] = pd.Timestamp(datetime.now(UTC))
    fa.write_view(store, view.name, df)
    return {"view": view.name, "users": len(df), "from_priors": from_priors, "from_baseline": len(df) - from_priors}


def read_user_priors(repo: str | Path, user_ids: list[str]) -> dict[str, list[Any]]:
    """The online user priors of ``user_ids`` through the Feast SDK (None values for users without a row)."""
    store = fa.open_store(repo)
    view = fa.user_priors_view(store).name
    columns = ["advertisers", "scores", "interests", "llm_model", "origin", "profile_hash", "generated_at"]
    return fa.get_online(store, [f"{view}:{c}" for c in columns], [{"user_id": u} for u in user_ids])


FILTER_SOURCES = ("frequent", "popularity", "cooccurrence", "stored")
FILTER_KS = (1, 5, 10)


def filter_variants(settings: Settings) -> dict[str, Any]:
    """The candidate policies ``evaluate_priors_filter`` compares: plain ranking, the configured policy, and
    restrict/boost at two strengths (all with the configured number of predicted advertisers)."""
    base = settings.user_priors.filter
    variants: dict[str, Any] = {"all": None}
    for name, update in (
        ("restrict quota=1", {"mode": "restrict", "quota": 1.0}),
        ("restrict quota=0.5", {"mode": "restrict", "quota": 0.5}),
        ("boost 1", {"mode": "boost", "boost": 1.0}),
        ("boost 4", {"mode": "boost", "boost": 4.0}),
    ):
        variants[name] = base.model_copy(update=update)
    if base not in variants.values():  # the llmhyper.yaml policy, unless the grid has it already
        variants[f"configured ({base.mode})"] = base
    return variants


def evaluate_priors_filter(
    repo: str | Path,
    model_dir: str | Path,
    settings: Settings,
    *,
    source: str = "frequent",
    snapshot: str | None = None,
    event: str = "conversion",
    ks: tuple[int, ...] = FILTER_KS,
    max_users: int | None = None,
) -> dict[str, Any]:
    """Recall@k of each held-out user's next ``event`` ad and coverage (share of exported ads shown to at least
    one user), ranking with every ad versus ``candidates="priors"`` under each of :func:`filter_variants`.

    The priors are ``source``: a baseline fitted on the events up to the snapshot (default: the newest event
    minus ``user_priors.window_days``), or ``stored`` (the user_llm_priors view's latest rows, which may have
    seen later events). The label is the user's first ``event`` ad in the window after the snapshot; users are
    the held-out split's (``user_priors.eval_share``), at most ``max_users`` (default ``eval_users``). Scores
    come from the exported all-ads model (:meth:`Ranker.score_users`; content rules are not applied); the
    selection is the ranker's own (:func:`~llmhyper_feast.userpriors.filter.select_columns`).
    """
    import numpy as np

    from llmhyper_feast.evaluation.metrics import paired_bootstrap_ci
    from llmhyper_feast.serving.ranker import Ranker
    from llmhyper_feast.userpriors import history as hist
    from llmhyper_feast.userpriors.baselines import BASELINES, rank_scores
    from llmhyper_feast.userpriors.filter import PriorsIndex, coverage, first_event_ads, select_columns

    if source not in FILTER_SOURCES:
        raise ConfigError(f"Unknown priors source '{source}'; choose one of {list(FILTER_SOURCES)}.")
    cfg = settings.user_priors
    layout = RepoLayout.of(repo)
    none = settings.with_overrides(**{"llm.name": "none"})
    store, ctx, history = priors_context(layout.root, none, snapshot, back_days=cfg.window_days)
    end = ctx.as_of + pd.Timedelta(days=cfg.window_days)
    labels = first_event_ads(history, ctx.as_of, end, event)
    users = sorted(u for u in labels if hist.is_heldout(u, cfg.eval_share, cfg.seed))
    limit = max_users or cfg.eval_users
    if len(users) > limit:
        users = sorted(np.random.default_rng(cfg.seed).choice(users, size=limit, replace=False).tolist())
    if len(users) < 2:
        raise DataError(
            f"Only {len(users)} held-out user(s) have a {event} between {ctx.as_of} and {end}: pick an earlier "
            "snapshot or raise user_priors.eval_share."
        )
    if source in BASELINES:
        lists = {u: ctx.baselines.rank(source, u, cfg.k) for u in users}
        prior = {u: (a, rank_scores(len(a))) for u, a in lists.items()}
    else:
        fa.ensure_user_priors_sources(store)
        rows = fa.read_latest(store, fa.user_priors_view(store).name)
        prior = {str(r.user_id): (list(r.advertisers), [float(x) for x in r.scores]) for r in rows.itertuples()}
    ranker = Ranker(layout.root, model_dir, unknown_user="population_mean", reload_interval=None)
    ids = ranker.ad_ids
    index = PriorsIndex.load(store, ids)
    if index.reader is None:
        raise FeatureRepoError(f"The priors filter cannot be measured: {index.problem}")
    ctr = ranker.score_users(users)
    column = {a: i for i, a in enumerate(ids)}
    top = cfg.filter.advertisers
    w = [index.weights_of(*prior.get(u, ([], [])), top) for u in users]
    label_col = [column.get(labels[u], -1) for u in users]
    result: dict[str, Any] = {
        "snapshot": ctx.as_of.isoformat(),
        "window_days": cfg.window_days,
        "event": event,
        "source": source,
        "users": len(users),
        "ads": len(ids),
        "predicted_advertisers": top,
        "users_with_prior": int(sum(x is not None for x in w)),
        "label_in_export": round(float(np.mean([c >= 0 for c in label_col])), 4),
        "label_advertiser_predicted": round(
            float(np.mean([c >= 0 and x is not None and x[c] > 0 for c, x in zip(label_col, w)])), 4
        ),
        "variants": {},
    }
    zeros = np.zeros(len(users))
    for name, policy in filter_variants(settings).items():
        out: dict[str, Any] = {}
        for k in ks:
            shown = []
            for i, x in enumerate(w):
                if policy is None or x is None:
                    shown.append(np.argsort(-ctr[i], kind="stable")[:k])
                else:
                    shown.append(select_columns(ctr[i], None, x, k, policy))
            hits = np.array([float(c in s) for c, s in zip(label_col, shown)])
            mean, lo, hi = paired_bootstrap_ci(hits, zeros, n_boot=cfg.bootstrap, seed=cfg.seed)
            out[f"recall@{k}"] = {"mean": round(mean, 4), "lo": round(lo, 4), "hi": round(hi, 4)}
            out[f"coverage@{k}"] = round(coverage(shown, len(ids)), 4)
        result["variants"][name] = {"policy": None if policy is None else policy.model_dump(), **out}
    return result


def format_filter_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_priors_filter`'s result."""
    ks = sorted(int(key.split("@")[1]) for key in next(iter(result["variants"].values())) if key.startswith("recall@"))
    head = f"{'candidates':<22}" + "".join(f"{'recall@' + str(k):>24}{'cov@' + str(k):>8}" for k in ks)
    lines = [
        f"snapshot {result['snapshot']}, next {result['event']} ad within {result['window_days']} days, "
        f"{result['users']} held-out users, {result['ads']} ads; priors: {result['source']} (first "
        f"{result['predicted_advertisers']} advertisers; label's advertiser among them for "
        f"{result['label_advertiser_predicted']:.2f})",
        head,
    ]
    for name, v in result["variants"].items():
        cells = "".join(
            f"{v[f'recall@{k}']['mean']:>8.3f} [{v[f'recall@{k}']['lo']:.3f}, {v[f'recall@{k}']['hi']:.3f}]"
            f"{v[f'coverage@{k}']:>8.3f}"
            for k in ks
        )
        lines.append(f"{name:<22}{cells}")
    return "\n".join(lines)
