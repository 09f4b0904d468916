"""The user priors runner: select users, compile profiles, ask the LLM, fall back, checkpoint.

A run appends one log part per chunk of users (atomic parquet files under
``RepoLayout.user_priors_log``), so a killed run loses at most the chunk in flight, whose answers
the answer cache still holds. A user is inferred again only when their profile hash, the source
(backend and model) or the priors settings changed, or their last row was a backend-error fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmhyper_feast.backends.llm.base import ChatRequest, is_fatal
from llmhyper_feast.config import UserPriorsConfig
from llmhyper_feast.errors import BackendError
from llmhyper_feast.store.files import atomic_write
from llmhyper_feast.store.redact import redact
from llmhyper_feast.userpriors import history as hist
from llmhyper_feast.userpriors.answers import priors_format, request_priors
from llmhyper_feast.userpriors.baselines import Baselines, rank_scores
from llmhyper_feast.userpriors.candidates import candidate_pool
from llmhyper_feast.userpriors.profile import FeatureStats, Profile, compile_profile
from llmhyper_feast.userpriors.prompts import PROMPT_VERSION, build_messages, prompt_hash

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import LLMBackend
    from llmhyper_feast.features import FeatureSchema

__all__ = [
    "VIEW_COLUMNS",
    "PriorsContext",
    "RunReport",
    "build_context",
    "build_request",
    "infer",
    "interests_of",
    "pending_rows",
    "read_log",
    "run_priors",
    "settings_hash",
]

VIEW_COLUMNS = [
    "user_id",
    "advertisers",
    "scores",
    "interests",
    "llm_model",
    "origin",
    "reason",
    "prompt_hash",
    "profile_hash",
    "generated_at",
    "event_timestamp",
]
KILL_POINT = "priors-before-part"  # test hook: LLMHYPER_TEST_KILL_AT=priors-before-part:<chunk index>


@dataclass(frozen=True)
class PriorsContext:
    """Everything shared by the users of one run (or one evaluation)."""

    as_of: pd.Timestamp
    events: pd.DataFrame  # events in the profile window, at or before as_of
    advertisers: dict[str, tuple[str, str]]  # id -> (name, category)
    interests: tuple[str, ...]
    stats: FeatureStats
    users: dict[str, np.ndarray]  # user id -> feature values (schema order)
    top: list[str]
    baselines: Baselines
    config: UserPriorsConfig
    backend: LLMBackend | None
    concurrency: int = 4

    @property
    def source_id(self) -> str:
        """``<backend>:<model>``, or ``baseline:<fallback>`` without an LLM."""
        if self.backend is None:
            return f"baseline:{self.config.fallback}"
        return f"{self.backend.name}:{self.backend.model_id}"


def settings_hash(config: UserPriorsConfig) -> str:
    """Hash of the settings that change a user's prompt or answer shape."""
    keys = ("k", "max_interests", "history_days", "pool_top", "pool_max", "token_budget", "min_z", "max_features")
    payload = {key: getattr(config, key) for key in keys} | {"prompt": PROMPT_VERSION, "t": config.temperature}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_context(
    history: pd.DataFrame,
    advertisers: pd.DataFrame,
    schema: FeatureSchema,
    user_ids: Sequence[str],
    matrix: np.ndarray,
    config: UserPriorsConfig,
    backend: LLMBackend | None,
    as_of: pd.Timestamp,
    *,
    concurrency: int = 4,
) -> PriorsContext:
    """The context of a run at ``as_of``: only events at or before it are ever looked at."""
    events = hist.before(history, as_of, config.history_days)
    names = {r.advertiser_id: (str(r.name), str(r.category)) for r in advertisers.itertuples()}
    categories = set(advertisers["category"]) if len(advertisers) else set()
    interests = tuple(n for n in schema.names if n in categories) or tuple(schema.names)
    return PriorsContext(
        as_of=as_of,
        events=events,
        advertisers=names,
        interests=interests,
        stats=FeatureStats.of(schema, matrix),
        users={str(u): row for u, row in zip(user_ids, matrix)},
        top=hist.top_advertisers(hist.before(history, as_of, config.active_days), config.pool_top),
        baselines=Baselines(events),
        config=config,
        backend=backend,
        concurrency=concurrency,
    )


def profiles_for(ctx: PriorsContext, user_ids: Sequence[str]) -> list[Profile]:
    """Profiles of ``user_ids`` (users without stored features get the population mean)."""
    wanted = set(user_ids)
    events = ctx.events[ctx.events["user_id"].isin(wanted)]
    groups = {u: g for u, g in events.groupby("user_id", sort=False)} if len(events) else {}
    empty = ctx.events.iloc[:0]
    return [
        compile_profile(
            u, ctx.users.get(u, ctx.stats.mean), ctx.stats, groups.get(u, empty), ctx.advertisers, ctx.config
        )
        for u in user_ids
    ]


def build_request(ctx: PriorsContext, profile: Profile) -> tuple[ChatRequest | None, tuple, str]:
    """The request sent for ``profile`` (None without candidates), its validation spec and its prompt hash."""
    cfg = ctx.config
    pool = candidate_pool(profile.advertisers_seen, ctx.top, set(ctx.advertisers), cfg.pool_max)
    if not pool:
        return None, ((), (), 0, 0), ""
    k = min(cfg.k, len(pool))
    messages = build_messages(
        profile.text,
        pool,
        ctx.advertisers,
        ctx.interests,
        k=k,
        max_interests=cfg.max_interests,
        as_of=f"{ctx.as_of:%Y-%m-%d}",
    )
    request = ChatRequest(
        messages=tuple(messages),
        feature_names=("advertisers", "interests"),
        temperature=cfg.temperature,
        seed=cfg.seed,
        max_tokens=cfg.max_tokens,
        answer_format=priors_format(pool, ctx.interests, k, cfg.max_interests),
    )
    return request, (pool, ctx.interests, k, cfg.max_interests), prompt_hash(messages)


def interests_of(ctx: PriorsContext, user_id: str) -> list[str]:
    """The interest features on which ``user_id`` stands highest above the mean (the fallback's interests)."""
    values = ctx.users.get(user_id)
    if values is None or ctx.config.max_interests == 0:
        return []
    names = ctx.stats.schema.names
    z = (values - ctx.stats.mean) / np.where(ctx.stats.std > 0, ctx.stats.std, 1.0)
    ranked = sorted((i for i, n in enumerate(names) if n in ctx.interests), key=lambda i: -z[i])
    return [names[i] for i in ranked if z[i] > 0][: ctx.config.max_interests]


def infer(ctx: PriorsContext, profiles: Sequence[Profile]) -> tuple[list[dict[str, Any]], BackendError | None]:
    """One row per profile (LLM answer or baseline fallback) and the fatal backend error, if any."""
    cfg = ctx.config
    built = [build_request(ctx, p) for p in profiles]
    asked = [i for i, (r, _, _) in enumerate(built) if r is not None and ctx.backend is not None]
    outcomes: dict[int, Any] = {}
    if asked:
        assert ctx.backend is not None
        got = request_priors(
            ctx.backend,
            [built[i][0] for i in asked],  # type: ignore[misc]
            [built[i][1] for i in asked],
            concurrency=ctx.concurrency,
        )
        outcomes = dict(zip(asked, got))
    fatal = next((o.failed for o in outcomes.values() if o.failed is not None and is_fatal(o.failed)), None)
    now = datetime.now(UTC)
    rows = []
    for i, profile in enumerate(profiles):
        outcome = outcomes.get(i)
        row: dict[str, Any] = {
            "user_id": profile.user_id,
            "profile_hash": profile.hash,
            "prompt_hash": built[i][2],
            "profile_tokens": profile.tokens,
            "calls": outcome.calls if outcome else 0,
            "prompt_tokens": outcome.prompt_tokens if outcome else 0,
            "completion_tokens": outcome.completion_tokens if outcome else 0,
            "retried": bool(outcome.retried) if outcome else False,
            "backend_error": bool(outcome and isinstance(outcome.failed, BackendError) and not outcome.answer),
        }
        if outcome is not None and outcome.answer is not None:
            advertisers, interests = list(outcome.answer.advertisers), list(outcome.answer.interests)
            origin, reason = "llm", ""
        else:
            advertisers = ctx.baselines.rank(cfg.fallback, profile.user_id, cfg.k)
            interests = interests_of(ctx, profile.user_id)
            if ctx.backend is None:
                origin, reason = "baseline", ""
            else:
                origin = "fallback"
                reason = str(outcome.failed) if outcome is not None else "no candidate advertisers"
        row.update(
            advertisers=advertisers,
            scores=rank_scores(len(advertisers)),
            interests=interests,
            llm_model=ctx.source_id if origin != "fallback" else f"{ctx.source_id} -> baseline:{cfg.fallback}",
            origin=origin,
            reason=redact(reason)[:500],
            generated_at=now,
        )
        rows.append(row)
    return rows, fatal


# --- the checkpoint log ---------------------------------------------------------------------------


def append_part(log_dir: Path, rows: pd.DataFrame, part: str) -> Path:
    """Write one log part atomically."""
    return atomic_write(log_dir / f"part-{part}.parquet", lambda tmp: rows.to_parquet(tmp, index=False))


def read_log(log_dir: Path) -> pd.DataFrame:
    """Every row of every log part (oldest part first)."""
    parts = sorted(log_dir.glob("part-*.parquet")) if log_dir.exists() else []
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def _latest(log: pd.DataFrame) -> pd.DataFrame:
    if log.empty:
        return log
    return log.sort_values("generated_at", kind="stable").drop_duplicates("user_id", keep="last").set_index("user_id")


def pending_rows(log: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """Each user's newest log row that the view does not hold yet, in the view's columns."""
    latest = _latest(log)
    if latest.empty:
        return pd.DataFrame(columns=VIEW_COLUMNS)
    latest = latest.reset_index()
    if len(stored):
        have = pd.to_datetime(stored.set_index("user_id")["generated_at"], utc=True)
        known = latest["user_id"].map(have)
        latest = latest[known.isna() | (pd.to_datetime(latest["generated_at"], utc=True) > known)]
    out = latest.assign(event_timestamp=latest["generated_at"])
    for col in ("advertisers", "scores", "interests"):
        out[col] = out[col].map(list)
    return out[VIEW_COLUMNS].reset_index(drop=True)


@dataclass
class RunReport:
    """What a run did: users selected, skipped as unchanged, inferred (by origin), calls, rows written."""

    selected: int = 0
    unchanged: int = 0
    inferred: int = 0
    origins: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    written: int = 0
    stopped: str = ""
    as_of: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _kill_point(chunk: int) -> None:
    """Test hook: SIGKILL this process before writing chunk ``chunk``'s log part (LLMHYPER_TEST_KILL_AT)."""
    from llmhyper_feast.store.feast_adapter import TEST_KILL_ENV

    name, _, arg = os.environ.get(TEST_KILL_ENV, "").partition(":")
    if name == KILL_POINT and arg == str(chunk):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def run_priors(
    ctx: PriorsContext, user_ids: Sequence[str], log_dir: Path, *, force: bool = False, progress: bool = True
) -> RunReport:
    """Infer the users of ``user_ids`` whose inputs changed (all with ``force``), chunk by chunk, into the log."""
    from tqdm.auto import tqdm

    report = RunReport(selected=len(user_ids), as_of=ctx.as_of.isoformat())
    profiles = profiles_for(ctx, user_ids)
    setting = settings_hash(ctx.config)
    latest = _latest(read_log(log_dir))
    todo = []
    for p in profiles:
        last = latest.loc[p.user_id] if p.user_id in latest.index else None
        same = (
            last is not None
            and last["profile_hash"] == p.hash
            and last["source_id"] == ctx.source_id
            and last["settings_hash"] == setting
            and not bool(last["backend_error"])
        )
        if same and not force:
            report.unchanged += 1
        else:
            todo.append(p)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    size = ctx.config.chunk_size
    with tqdm(total=len(todo), desc=f"user priors ({ctx.source_id})", unit="user", disable=not progress) as bar:
        for c, start in enumerate(range(0, len(todo), size)):
            rows, fatal = infer(ctx, todo[start : start + size])
            frame = pd.DataFrame(rows).assign(
                run_id=run_id, source_id=ctx.source_id, settings_hash=setting, as_of=ctx.as_of
            )
            _kill_point(c)
            append_part(log_dir, frame, f"{run_id}-{start:07d}")
            report.inferred += len(rows)
            report.calls += int(frame["calls"].sum())
            for origin, n in frame["origin"].value_counts().items():
                report.origins[str(origin)] = report.origins.get(str(origin), 0) + int(n)
            bar.update(len(rows))
            if fatal is not None:
                report.stopped = redact(f"stopped after {report.inferred} of {len(todo)} users: {fatal}")
                break
    return report
