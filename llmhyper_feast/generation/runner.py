"""LLM-HYPER's generation step: retrieve similar warm ads, prompt the LLM, validate, average.

Output is the generation log: one row per (run, ad) with the raw per-sample weights, the
averaged weights and their spread, the neighbours used, tokens, latency and the source
(``llm``, ``knn`` or ``fallback``). Rows are appended per chunk of ads, so a crash never
loses finished ads; LLM answers are cached, so a re-run repeats no call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from llmhyper_feast.backends.llm.base import ChatRequest, LLMBackend, is_fatal
from llmhyper_feast.config import GenerationConfig
from llmhyper_feast.errors import AnswerError, BackendError, ConfigError, DataError
from llmhyper_feast.features import Ad, FeatureSchema, Neighbour, WarmAd
from llmhyper_feast.generation.answers import answer_limit, request_weights
from llmhyper_feast.generation.priors import WeightPrior, prior_alpha
from llmhyper_feast.generation.prompts import (
    PROMPT_VERSION,
    ImagePolicy,
    build_messages,
    feature_batches,
    prompt_hash,
)
from llmhyper_feast.generation.retrieval import WarmIndex
from llmhyper_feast.generation.staleness import input_hash
from llmhyper_feast.store.files import atomic_write
from llmhyper_feast.store.redact import redact

if TYPE_CHECKING:
    from llmhyper_feast.engine import Engine

MIN_NEIGHBOURS = 5  # retrieved even for 0-shot prompts: the prior and alpha need them

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationInputs:
    """Everything one generation run needs besides the cold ads."""

    schema: FeatureSchema
    warm: dict[str, WarmAd]
    index: WarmIndex
    embedder: Any
    backend: LLMBackend | None  # None: the prior alone writes the weights
    config: GenerationConfig
    prior: WeightPrior
    images: ImagePolicy | None = None  # which images may be sent; None: no local image is read
    # where LLM work runs (llmhyper_feast/engine); a distributed engine needs backend_factory,
    # which builds this run's backend afresh in each worker
    engine: Engine | None = None
    backend_factory: Callable[[], LLMBackend | None] | None = None

    @cached_property
    def answer_scale(self) -> tuple[float, float]:
        """(limit, scale): the range the prompt states and validation accepts, and the factor
        applied to example weights (answers are divided by it). See ``answers.answer_limit``."""
        limit, scale = answer_limit((w.weights for w in self.warm.values()), self.config.max_abs)
        if scale < 1.0:
            log.info(
                "Example weights exceed generation.max_abs=%g: the prompt shows them scaled by %.3f and answers "
                "are divided by it (recorded in the log's answer_scale column).",
                limit,
                scale,
            )
        return limit, scale

    @property
    def source_id(self) -> str:
        """What writes the weights: ``<backend>:<model>``, or ``prior:<name>`` without an LLM."""
        return backend_id(self.backend) if self.backend is not None else self.prior.source_id


def backend_id(backend: LLMBackend) -> str:
    """``<backend name>:<model>``, e.g. ``openai:gpt-4o-mini``."""
    return f"{backend.name}:{backend.model_id}"


def retrieve(
    inputs: GenerationInputs, ads: Sequence[Ad], *, exclude_self: bool = True, progress: bool = False
) -> list[list[Neighbour]]:
    """Top neighbours (at least MIN_NEIGHBOURS, at least ``shots``) of each ad among the warm ads."""
    if len(inputs.index) == 0 or not ads:
        return [[] for _ in ads]
    vectors = inputs.embedder.embed(list(ads), progress=progress)
    k = max(inputs.config.shots, MIN_NEIGHBOURS)
    hits = inputs.index.search(vectors, k, exclude_ids=[a.ad_id for a in ads] if exclude_self else None)
    return [[Neighbour(inputs.warm[i], s) for i, s in row if i in inputs.warm] for row in hits]


def _image_url(ad: Ad, policy: ImagePolicy | None) -> tuple[str | None, str]:
    if not ad.image_uri:
        return None, "no image_uri"
    try:
        return (policy or ImagePolicy(roots=())).image_url(ad.image_uri), ""
    except (DataError, OSError, ValueError) as exc:
        return None, f"image unreadable, text only: {exc}"


def _requests_for(ad: Ad, neighbours: list[Neighbour], inputs: GenerationInputs) -> tuple[list[ChatRequest], str]:
    cfg = inputs.config
    image, note = _image_url(ad, inputs.images) if cfg.send_image else (None, "")
    requests = []
    for batch in feature_batches(inputs.schema, cfg.batch_size):
        messages = build_messages(
            ad,
            batch,
            inputs.schema,
            neighbours[: cfg.shots],
            reasoning=cfg.reasoning,
            include_caption=cfg.include_caption,
            image_data_url=image,
            max_abs=inputs.answer_scale[0],
            weight_scale=inputs.answer_scale[1],
        )
        requests.append(
            ChatRequest(
                messages=tuple(messages),
                feature_names=tuple(f.name for f in batch),
                n=cfg.samples,
                temperature=cfg.temperature,
                seed=cfg.seed,
                reasoning=cfg.reasoning,
                max_abs=inputs.answer_scale[0],
                max_tokens=900 if cfg.reasoning else 40 + 14 * len(batch),
            )
        )
    return requests, note


def _row(
    ad: Ad,
    neighbours: list[Neighbour],
    inputs: GenerationInputs,
    run_id: str,
    prior: np.ndarray,
    weights: np.ndarray,
    std: np.ndarray,
    raw: list,
    origin: str,
    reason: str,
    usage: dict[str, Any],
) -> dict:
    schema = inputs.schema
    return {
        "run_id": run_id,
        "ad_id": ad.ad_id,
        "input_hash": input_hash(ad, schema, inputs.source_id, inputs.config),
        "feature_names": json.dumps(schema.names),
        "feature_hash": schema.hash,
        "prompt_version": PROMPT_VERSION,
        "llm_model": inputs.source_id,
        "prior": inputs.prior.name,
        "weights": weights.tolist(),
        "weights_std": std.tolist(),
        "prior_weights": prior.tolist(),
        "prior_alpha": prior_alpha(inputs.prior, ad, neighbours),
        "raw_samples": json.dumps(raw),
        "neighbours": json.dumps([nb.warm.ad.ad_id for nb in neighbours]),
        "similarities": [float(nb.similarity) for nb in neighbours],
        "neighbour_ctrs": [float(nb.warm.mean_ctr) for nb in neighbours],
        "neighbour_norms": [float(np.linalg.norm(nb.warm.weights)) for nb in neighbours],
        "origin": origin,
        "fallback_reason": redact(reason),
        "answer_limit": inputs.answer_scale[0],
        "answer_scale": inputs.answer_scale[1],
        "generated_at": datetime.now(UTC),
        **usage,
    }


def _assemble(
    ad: Ad,
    neighbours: list[Neighbour],
    requests: list[ChatRequest],
    outcomes: list[Any],
    inputs: GenerationInputs,
    run_id: str,
    note: str,
) -> dict:
    names = inputs.schema.names
    prior = inputs.prior.predict(ad, neighbours, len(names))
    weights, std = prior.copy(), np.zeros(len(names))
    raw: list[list[list[float]] | None] = []
    failures: list[str] = []
    samples_used: list[int] = []
    for request, outcome in zip(requests, outcomes):
        cols = [names.index(f) for f in request.feature_names]
        if outcome.failed is not None or not outcome.samples:
            failures.append(f"features {list(request.feature_names)}: {outcome.failed}")
            raw.append(None)
            continue
        mat = np.array([[s[f] for f in request.feature_names] for s in outcome.samples], dtype=np.float64)
        mat /= inputs.answer_scale[1]  # back from the answer scale to the trained weights' scale
        weights[cols], std[cols] = mat.mean(axis=0), mat.std(axis=0)
        raw.append(mat.tolist())
        samples_used.append(len(mat))
    usage = {
        "prompt_hash": hashlib.sha256("".join(prompt_hash(list(r.messages)) for r in requests).encode()).hexdigest()[
            :16
        ],
        "prompt_tokens": sum(o.prompt_tokens for o in outcomes),
        "completion_tokens": sum(o.completion_tokens for o in outcomes),
        "calls": sum(o.calls for o in outcomes),
        "latency_s": float(sum(o.latency_s for o in outcomes)),
        "retried": any(o.retried for o in outcomes),
        "samples": min(samples_used) if samples_used and not failures else 0,
        # a backend failure (auth, network, timeout) is retried by the next run; invalid answers and
        # judge rejections (AnswerErrors) are not, and do not fail the run
        "backend_error": any(
            isinstance(o.failed, BackendError) and not isinstance(o.failed, AnswerError) for o in outcomes
        ),
        "image_note": redact(note),
        "clipped": json.dumps([c for r, o in zip(requests, outcomes) for c in o.clipped]),
    }
    origin = "fallback" if failures else "llm"
    return _row(ad, neighbours, inputs, run_id, prior, weights, std, raw, origin, "; ".join(failures), usage)


def generate_rows(
    ads: Sequence[Ad],
    inputs: GenerationInputs,
    *,
    log_dir: str | Path | None = None,
    exclude_self: bool = True,
    chunk_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate weights for ``ads``; appends one log part per chunk to ``log_dir`` when given.

    A fatal backend error (rejected key) stops the run after the chunk it hit; the returned
    frame's ``attrs["stopped"]`` then holds the error text, as it does when any ad hit a backend
    error (the run could not reach its backend for those ads).
    """
    from tqdm.auto import tqdm

    if _runs_on_engine(inputs):
        return _generate_rows_on_engine(
            ads, inputs, log_dir=log_dir, exclude_self=exclude_self, chunk_size=chunk_size, progress=progress
        )
    run_id = new_run_id()
    all_rows: list[dict] = []
    bar = tqdm(total=len(ads), desc=f"generate ({inputs.source_id})", unit="ad", disable=not progress)
    for start in range(0, len(ads), chunk_size):
        chunk = list(ads[start : start + chunk_size])
        neighbours = retrieve(inputs, chunk, exclude_self=exclude_self)
        fatal = None
        if inputs.backend is None:
            rows = _prior_chunk(chunk, neighbours, inputs, run_id)
        else:
            rows, fatal = _llm_chunk(chunk, neighbours, inputs, run_id)
        if log_dir is not None and rows:
            append_log(log_dir, pd.DataFrame(rows), f"{run_id}-{start:06d}")
        all_rows.extend(rows)
        bar.update(len(chunk))
        if fatal is not None:
            stopped = redact(f"stopped after {len(all_rows)} of {len(ads)} ads: {fatal}")
            break
    else:
        failed = [r for r in all_rows if r.get("backend_error")]
        # not fatal (e.g. timeouts, refused connections), but the backend still was not reached
        stopped = (
            f"{len(failed)} of {len(ads)} ads hit backend errors, e.g. {failed[0]['fallback_reason']}" if failed else ""
        )
    bar.close()
    frame = pd.DataFrame(all_rows)
    frame.attrs["stopped"] = stopped
    return frame


def new_run_id() -> str:
    """A generation run's id: UTC time and a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _prior_chunk(chunk: list[Ad], neighbours: list[list[Neighbour]], inputs: GenerationInputs, run_id: str) -> list:
    """Rows of ``chunk`` written by the prior alone (no LLM)."""
    rows = []
    for ad, nbs in zip(chunk, neighbours):
        prior = inputs.prior.predict(ad, nbs, len(inputs.schema))
        usage = {
            "prompt_hash": "",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "calls": 0,
            "latency_s": 0.0,
            "retried": False,
            "samples": 0,
            "backend_error": False,
            "image_note": "",
            "clipped": "[]",
        }
        rows.append(_row(ad, nbs, inputs, run_id, prior, prior, np.zeros(len(prior)), [], "prior", "", usage))
    return rows


def _llm_chunk(
    chunk: list[Ad], neighbours: list[list[Neighbour]], inputs: GenerationInputs, run_id: str
) -> tuple[list[dict], BaseException | None]:
    """Rows of ``chunk`` from ``inputs.backend`` (asked with its concurrency), and the fatal error if one hit."""
    assert inputs.backend is not None
    per_ad = [_requests_for(ad, nbs, inputs) for ad, nbs in zip(chunk, neighbours)]
    flat = [r for reqs, _ in per_ad for r in reqs]
    t0 = time.perf_counter()
    outcomes = request_weights(inputs.backend, flat, concurrency=inputs.config.concurrency, progress=False)
    wall = time.perf_counter() - t0
    fatal = next((o.failed for o in outcomes if o.failed is not None and is_fatal(o.failed)), None)
    judged = _judge_chunk(inputs, chunk, [reqs for reqs, _ in per_ad], outcomes)
    rows, pos = [], 0
    for ad, nbs, (reqs, note), judge_cols in zip(chunk, neighbours, per_ad, judged):
        row = _assemble(ad, nbs, reqs, outcomes[pos : pos + len(reqs)], inputs, run_id, note)
        row.update(judge_cols)
        row["wall_s"] = wall / len(chunk)
        rows.append(row)
        pos += len(reqs)
    return rows, fatal


# --- trust layer (generation/judge.py): the judge's call site and its rejections -------------


def _judge_chunk(inputs: GenerationInputs, ads: Sequence[Ad], requests: list, outcomes: list) -> list[dict]:
    """The judge's log columns per ad; regenerates or rejects flagged batches in ``outcomes``."""
    from llmhyper_feast.generation.judge import judge_chunk

    return judge_chunk(inputs, ads, requests, outcomes)


def append_log(log_dir: str | Path, rows: pd.DataFrame, part: str) -> Path:
    """Write one generation-log part atomically (fsynced temp file + rename)."""
    return atomic_write(Path(log_dir) / f"part-{part}.parquet", lambda tmp: rows.to_parquet(tmp, index=False))


def read_log(log_dir: str | Path, *, latest: bool = True) -> pd.DataFrame:
    """The generation log (every part); with ``latest`` only each ad's newest row."""
    parts = sorted(Path(log_dir).glob("part-*.parquet")) if Path(log_dir).exists() else []
    if not parts:
        return pd.DataFrame()
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    if latest:
        df = df.sort_values("generated_at", kind="stable").drop_duplicates("ad_id", keep="last").reset_index(drop=True)
    return df


# --- engines (llmhyper_feast/engine): LLM work on distributed workers ---------------------------
#
# The driver (this process) retrieves neighbours and evaluates the prior for every ad, ships
# groups of ads to the workers, and alone writes the generation log, one part per finished group.
# Each worker builds its own backend from the settings (GenerationInputs.backend_factory); its
# answers go into the repo's answer cache as they arrive (one atomically replaced file per
# answer, so concurrent workers never clash), which is why a retried or re-run group repeats no
# call that had finished.

_WORKER_BACKENDS: dict[str, LLMBackend] = {}  # per worker process: a backend is built once, then reused


class _FixedPrior(WeightPrior):
    """The driver's prior outputs for one run's ads, shipped to workers instead of the prior itself."""

    name: ClassVar[str] = "fixed"

    def __init__(self, prior: WeightPrior, weights: dict[str, np.ndarray], alphas: dict[str, float | None]) -> None:
        super().__init__()
        self.name = prior.name  # type: ignore[misc]  # rows record the real prior's name
        self._source_id = prior.source_id
        self._weights, self._alphas = weights, alphas

    @property
    def source_id(self) -> str:
        return self._source_id

    def predict(self, ad: Ad, neighbours: Sequence[Neighbour], n_features: int) -> np.ndarray:
        return self._weights[ad.ad_id].copy()

    def estimate_alpha(self, ad: Ad, neighbours: Sequence[Neighbour]) -> float | None:
        return self._alphas[ad.ad_id]


def _runs_on_engine(inputs: GenerationInputs) -> bool:
    return (
        inputs.engine is not None
        and inputs.engine.distributed
        and inputs.backend is not None
        and inputs.backend_factory is not None
    )


def _worker_backend(key: str, factory: Callable[[], LLMBackend | None]) -> LLMBackend | None:
    if key not in _WORKER_BACKENDS:
        backend = factory()
        if backend is None:
            return None
        _WORKER_BACKENDS[key] = backend
    return _WORKER_BACKENDS[key]


def _engine_group(context: dict[str, Any], group: tuple[int, list[Ad], list[list[Neighbour]]]) -> tuple:
    """One group of ads on a worker: (first ad's position, rows, fatal error text or None)."""
    start, chunk, neighbours = group
    backend = _worker_backend(context["backend_key"], context["backend_factory"])
    if backend is None or backend_id(backend) != context["source_id"]:
        got = "no backend" if backend is None else backend_id(backend)
        raise ConfigError(
            f"A worker built {got} from the settings, but this run generates with {context['source_id']}: pass "
            "the backend through the settings (llm.name, llm.options) when using a distributed engine."
        )
    shipped: GenerationInputs = context["inputs"]
    inputs = replace(shipped, backend=backend)
    inputs.__dict__["answer_scale"] = context["answer_scale"]  # computed by the driver from the warm ads
    rows, fatal = _llm_chunk(chunk, neighbours, inputs, context["run_id"])
    return start, rows, None if fatal is None else str(fatal)


def _generate_rows_on_engine(
    ads: Sequence[Ad],
    inputs: GenerationInputs,
    *,
    log_dir: str | Path | None,
    exclude_self: bool,
    chunk_size: int,
    progress: bool,
) -> pd.DataFrame:
    """:func:`generate_rows` with each chunk of ads run as one group on ``inputs.engine``."""
    import pickle

    from tqdm.auto import tqdm

    engine, factory = inputs.engine, inputs.backend_factory
    assert engine is not None and factory is not None and inputs.backend is not None
    run_id = new_run_id()
    with engine:  # connect before anything is written
        neighbours = retrieve(inputs, ads, exclude_self=exclude_self, progress=False)
        n = len(inputs.schema)
        fixed = _FixedPrior(
            inputs.prior,
            {ad.ad_id: inputs.prior.predict(ad, nbs, n) for ad, nbs in zip(ads, neighbours)},
            {ad.ad_id: inputs.prior.estimate_alpha(ad, nbs) for ad, nbs in zip(ads, neighbours)},
        )
        concurrency = engine.worker_concurrency(inputs.config.concurrency)
        shipped = replace(
            inputs,
            warm={},
            index=None,  # type: ignore[arg-type]  # Faiss indexes do not pickle; workers never retrieve
            embedder=None,
            backend=None,
            prior=fixed,
            config=inputs.config.model_copy(update={"concurrency": concurrency}),
            engine=None,
            backend_factory=None,
        )
        context = {
            "inputs": shipped,
            "answer_scale": inputs.answer_scale,
            "run_id": run_id,
            "source_id": inputs.source_id,
            "backend_factory": factory,
            "backend_key": hashlib.sha256(pickle.dumps(factory)).hexdigest(),
        }
        groups = [
            (start, list(ads[start : start + chunk_size]), neighbours[start : start + chunk_size])
            for start in range(0, len(ads), chunk_size)
        ]
        done: dict[int, list[dict]] = {}
        stopped = ""
        bar = tqdm(
            total=len(ads), desc=f"generate ({inputs.source_id}, {engine.name})", unit="ad", disable=not progress
        )
        results = engine.map_groups(_engine_group, groups, context=context, what="generate")
        try:
            for _, (start, rows, fatal) in results:
                if log_dir is not None and rows:  # the driver is the log's only writer
                    append_log(log_dir, pd.DataFrame(rows), f"{run_id}-{start:06d}")
                done[start] = rows
                bar.update(len(rows))
                if fatal is not None:
                    finished = sum(len(r) for r in done.values())
                    stopped = redact(f"stopped after {finished} of {len(ads)} ads: {fatal}")
                    break
        finally:
            results.close()  # cancels groups not finished
            bar.close()
    all_rows = [row for start in sorted(done) for row in done[start]]
    if not stopped:
        failed = [r for r in all_rows if r.get("backend_error")]
        stopped = (
            f"{len(failed)} of {len(ads)} ads hit backend errors, e.g. {failed[0]['fallback_reason']}" if failed else ""
        )
    frame = pd.DataFrame(all_rows)
    frame.attrs["stopped"] = stopped
    return frame
