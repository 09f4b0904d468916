"""Job: generate weights through the OpenAI Batch API, or from a ``vllm run-batch`` results file.

A batch run asks the same first-round requests an online ``generate`` would send, at the Batch
API's lower price and within its completion window:

1. *submit*: plan the requests of every ad that needs generation (same ads, same prompts, same
   cache keys as online), leave out those already answered (answer cache) or already in an
   open batch, write the JSONL input (split at 50,000 requests / 200 MB), upload it and create
   the batch. Each batch's record (id, input hash, cache keys, ads) is written to
   ``data/llm_batches.json`` before the batch is created and again right after, so a killed run
   resumes the same batch instead of paying twice.
2. *collect*: poll the open batches (progress bar), download their output and error files and
   put every answer into the answer cache under the key the online path uses; then run the
   normal generation for the ads whose requests all came back. The runner finds their answers
   in the cache; re-asks (answers that fail validation) and lines that came back with an error
   go online, which is quicker than another batch window for a few percent of the requests.
   Ads of a batch that failed, expired or was cancelled stay pending (no weights, no fallback
   rows): ``llmhyper status`` names the batch, and the next ``batch run`` submits them again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from llmhyper_feast.config import Settings
from llmhyper_feast.errors import ConfigError, DataError, InputError
from llmhyper_feast.store.files import atomic_write_bytes, atomic_write_json
from llmhyper_feast.store.layout import RepoLayout

if TYPE_CHECKING:
    from llmhyper_feast.backends.llm.base import ChatRequest
    from llmhyper_feast.backends.llm.openai_backend import OpenAIBackend
    from llmhyper_feast.features import Ad
    from llmhyper_feast.generation.batch import BatchLine
    from llmhyper_feast.generation.runner import GenerationInputs

__all__ = [
    "BatchReport",
    "Plan",
    "batch_notes",
    "collect",
    "load_records",
    "plan",
    "run",
    "submit",
]

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
OPEN = frozenset({"submitting", "validating", "in_progress", "finalizing", "cancelling"})
CLOSED_UNANSWERED = frozenset({"failed", "expired", "cancelled"})
KILL_ENV = "LLMHYPER_TEST_KILL_AT"  # test hook: batch-after-create SIGKILLs the run there
CHUNK = 8  # ads per retrieval call, as generation/runner.generate_rows (same embeddings, same neighbours)


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One first-round request of one ad and its answer-cache key."""

    ad_id: str
    key: str
    request: ChatRequest


@dataclass
class Plan:
    """The ads a generation run would ask the LLM about, and their first-round requests."""

    backend: OpenAIBackend
    ad_ids: list[str]
    requests: list[Planned]
    inputs: GenerationInputs
    ads: list[Ad]

    def keys_of(self) -> dict[str, list[str]]:
        """Ad id -> its requests' cache keys."""
        out: dict[str, list[str]] = {a: [] for a in self.ad_ids}
        for p in self.requests:
            out[p.ad_id].append(p.key)
        return out


def _openai_backend(backend: Any, settings: Settings) -> OpenAIBackend:
    from llmhyper_feast.backends.llm.openai_backend import OpenAIBackend

    if not isinstance(backend, OpenAIBackend):
        raise ConfigError(
            f"Batch jobs need the openai backend (llm.name: openai); the settings name '{settings.llm.name}'. "
            "Pass --llm openai (and --model), or use `llmhyper generate` for online calls."
        )
    return backend


def plan(
    repo: str | Path, settings: Settings, *, ad_ids: list[str] | None = None, force: bool = False, progress: bool = True
) -> Plan:
    """The first-round requests ``llmhyper generate`` (same ads, ``force``) would send, with their cache keys."""
    from llmhyper_feast.generation.runner import _requests_for, retrieve
    from llmhyper_feast.generation.staleness import needs_generation, usable_generations
    from llmhyper_feast.jobs.generate import build_index
    from llmhyper_feast.store import feast_adapter as fa

    layout = RepoLayout.of(repo)
    store, inputs = build_index(layout.root, settings, progress=progress)
    backend = _openai_backend(inputs.backend, settings)
    ads, _ = fa.read_ads(store, status=None if ad_ids else "active")
    if ad_ids:
        unknown = [a for a in ad_ids if a not in {ad.ad_id for ad in ads}]
        if unknown:
            raise DataError(f"Unknown ad id(s) {unknown[:5]}: they are not in the ad content view.")
        ads = [a for a in ads if a.ad_id in set(ad_ids)]
    else:
        ads = [a for a in ads if a.ad_id not in inputs.warm]
    if not force:
        from llmhyper_feast.generation.runner import read_log

        usable = usable_generations(
            ads, read_log(layout.generation_log, latest=False), inputs.schema, inputs.source_id, settings.generation
        )
        ads = [a for a in ads if needs_generation(usable[a.ad_id])]
    planned: list[Planned] = []
    for start in range(0, len(ads), CHUNK):
        chunk = ads[start : start + CHUNK]
        for ad, nbs in zip(chunk, retrieve(inputs, chunk, exclude_self=True)):
            requests, _ = _requests_for(ad, nbs, inputs)
            planned.extend(Planned(ad.ad_id, backend.cache_key(r), r) for r in requests)
    return Plan(backend, [a.ad_id for a in ads], planned, inputs, ads)


def request_lines(backend: OpenAIBackend, request: ChatRequest, key: str) -> list[BatchLine]:
    """The input lines asking ``request`` as the online path would: one call with ``n``, or one per sample."""
    from llmhyper_feast.generation.batch import input_line

    if request.n == 1 or backend.options.use_n:
        return [input_line(key, backend.batch_body(request, request.n, request.seed))]
    seeds = [None if request.seed is None else request.seed + i for i in range(request.n)]
    return [input_line(key, backend.batch_body(request, 1, s), i, request.n) for i, s in enumerate(seeds)]


# --- job records -------------------------------------------------------------------------------


def load_records(repo: str | Path) -> list[dict[str, Any]]:
    """Every batch record of the repo, oldest first ([] when none was made)."""
    path = RepoLayout.of(repo).llm_batches
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}). Restore it from {path}.bak if present, or delete it "
            "(batches in progress are then submitted again)."
        ) from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or not isinstance(data.get("batches"), list):
        raise DataError(f"{path} is not a batch-record file of format {RECORD_FORMAT}; delete it to start afresh.")
    return list(data["batches"])


def _save(repo: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_json(RepoLayout.of(repo).llm_batches, {"format": RECORD_FORMAT, "batches": records}, indent=1)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _kill_point(point: str) -> None:
    """Test hook only: SIGKILL this process at ``point`` when LLMHYPER_TEST_KILL_AT names it."""
    if os.environ.get(KILL_ENV, "") == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# --- talking to the Batch API ----------------------------------------------------------------


def _api(backend: OpenAIBackend, what: str, call: Callable[[], Any]) -> Any:
    import openai

    try:
        return call()
    except openai.OpenAIError as exc:
        error = backend.backend_error(exc)
        error.args = (f"Batch API ({what}): {error.args[0] if error.args else ''}", *error.args[1:])
        raise error from None


def _errors_text(batch: Any) -> str:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return "; ".join(f"{e.code or 'error'}: {e.message or ''}".strip() for e in errors[:3])


def _update(record: dict[str, Any], batch: Any) -> None:
    counts = getattr(batch, "request_counts", None)
    record.update(
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        counts={"total": counts.total, "completed": counts.completed, "failed": counts.failed} if counts else {},
    )
    if batch.status in CLOSED_UNANSWERED:
        record["error"] = _errors_text(batch) or f"the batch {batch.status}"
        record.setdefault("closed_at", _now())


def _create(backend: OpenAIBackend, client: Any, record: dict[str, Any], data: bytes, *, adopt: bool = False) -> None:
    """Upload ``data`` and create its batch; with ``adopt``, first look for the one a killed run created."""
    if adopt:  # a run was killed around batches.create: its batch carries the record's id
        page = _api(backend, "list batches", lambda: client.batches.list(limit=100))
        for batch in page.data:
            if (batch.metadata or {}).get("llmhyper_record") == record["id"]:
                record.update(batch_id=batch.id, input_file_id=batch.input_file_id)
                _update(record, batch)
                return
    upload = _api(
        backend,
        "upload input file",
        lambda: client.files.create(file=(f"llmhyper-{record['input_sha256'][:12]}.jsonl", data), purpose="batch"),
    )
    batch = _api(
        backend,
        "create batch",
        lambda: client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"llmhyper_record": record["id"]},
        ),
    )
    record.update(batch_id=batch.id, input_file_id=upload.id, created_at=_now())
    _update(record, batch)


def _file_text(backend: OpenAIBackend, client: Any, file_id: str | None) -> str:
    if not file_id:
        return ""
    return str(_api(backend, f"download file {file_id}", lambda: client.files.content(file_id)).text)


# --- reports -----------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What a batch command did."""

    batches: list[dict[str, Any]] = field(default_factory=list)  # summaries of the records touched
    submitted: int = 0  # input lines in batches created by this run
    resumed: list[str] = field(default_factory=list)  # batch ids found open and resumed instead
    written: list[str] = field(default_factory=list)  # input files written (submit --write-only)
    ingested: int = 0  # answers put into the answer cache
    line_errors: int = 0  # requests whose lines came back with an error (asked online)
    malformed: int = 0  # output lines that could not be read
    pending_ads: list[str] = field(default_factory=list)  # ads not generated: their batch is open or failed
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # the generation log rows written
    waiting: bool = False  # a batch is still open (collect without waiting)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (the CLI's --format json)."""
        origins = self.rows["origin"].value_counts().to_dict() if len(self.rows) else {}
        return {
            "batches": self.batches,
            "submitted": self.submitted,
            "resumed": self.resumed,
            "written": self.written,
            "ingested": self.ingested,
            "line_errors": self.line_errors,
            "malformed": self.malformed,
            "pending_ads": self.pending_ads,
            "generated": len(self.rows),
            "origins": origins,
            "online_calls": int(self.rows["calls"].sum()) if len(self.rows) else 0,
            "waiting": self.waiting,
            "stopped": self.rows.attrs.get("stopped", "") if len(self.rows) else "",
        }


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "batch_id", "status", "requests", "counts", "error", "created_at", "source")
    return {k: record.get(k) for k in keys if record.get(k) not in (None, "", {})} | {"ads": len(record["ads"])}


# --- submit ------------------------------------------------------------------------------------


def submit(
    repo: str | Path,
    settings: Settings,
    *,
    ad_ids: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    write_only: str | Path | None = None,
    max_requests: int | None = None,
) -> BatchReport:
    """Create batches for the requests not yet answered nor in an open batch; resume the open ones.

    With ``write_only`` the input is written there (``<stem>-<i><suffix>`` when it needs several
    files), e.g. for ``vllm run-batch -i``, and nothing is uploaded.
    """
    from llmhyper_feast.generation.batch import MAX_REQUESTS, split_lines
    from llmhyper_feast.store.lock import repo_lock

    with repo_lock(repo, "batch submit"):
        p = plan(repo, settings, ad_ids=ad_ids, force=force, progress=progress)
        backend = p.backend
        records = load_records(repo)
        mine = [r for r in records if r.get("base_url") == backend.base_url]
        report = BatchReport()
        client = backend.sync_client() if write_only is None else None
        # a record still 'submitting' was cut off around batches.create: finish it first
        for record in [r for r in mine if r.get("status") == "submitting" and client is not None]:
            data = _rebuild_input(backend, p, record)
            if data is None:  # the plan changed since: its requests are submitted afresh below
                records.remove(record)
                _save(repo, records)
                continue
            _create(backend, client, record, data, adopt=True)
            _save(repo, records)
            report.resumed.append(record["batch_id"])
        open_keys = {
            k for r in records if r.get("base_url") == backend.base_url and r.get("status") in OPEN for k in r["keys"]
        }
        cache = backend.cache
        assert cache is not None
        ads_of: dict[str, set[str]] = {}
        todo: dict[str, ChatRequest] = {}
        for item in p.requests:
            if item.key in cache or (item.key in open_keys and write_only is None):
                continue
            todo.setdefault(item.key, item.request)
            ads_of.setdefault(item.key, set()).add(item.ad_id)
        lines = [line for key, request in todo.items() for line in request_lines(backend, request, key)]
        files = split_lines(lines, max_requests=max_requests or MAX_REQUESTS)
        if write_only is not None:
            target = Path(write_only)
            for i, chunk in enumerate(files):
                path = target if len(files) == 1 else target.with_name(f"{target.stem}-{i}{target.suffix}")
                atomic_write_bytes(path, "".join(line.text + "\n" for line in chunk).encode("utf-8"))
                report.written.append(str(path))
            return report
        for chunk in files:
            data = "".join(line.text + "\n" for line in chunk).encode("utf-8")
            keys = list(dict.fromkeys(line.key for line in chunk))  # file order: _rebuild_input relies on it
            record = {
                "id": uuid.uuid4().hex[:12],
                "batch_id": None,
                "status": "submitting",
                "base_url": backend.base_url,
                "model": backend.model_id,
                "input_sha256": hashlib.sha256(data).hexdigest(),
                "requests": len(chunk),
                "keys": keys,
                "ads": sorted({a for k in keys for a in ads_of[k]}),
                "created_at": _now(),
            }
            records.append(record)
            _save(repo, records)  # before creating: a kill now leaves a record to adopt the batch from
            _create(backend, client, record, data)
            _save(repo, records)
            _kill_point("batch-after-create")
            report.submitted += len(chunk)
            report.batches.append(_summary(record))
        planned = {item.key for item in p.requests}
        for record in mine:
            if record.get("status") in OPEN and record.get("batch_id") and set(record["keys"]) & planned:
                if record["batch_id"] not in report.resumed:
                    report.resumed.append(record["batch_id"])
                report.batches.append(_summary(record))
        return report


def _rebuild_input(backend: OpenAIBackend, p: Plan, record: dict[str, Any]) -> bytes | None:
    """The exact input a 'submitting' record was made from, or None when the plan no longer holds it."""
    requests = {item.key: item.request for item in p.requests}
    if not set(record["keys"]) <= set(requests):
        return None
    lines = [line for key in record["keys"] for line in request_lines(backend, requests[key], key)]
    data = "".join(line.text + "\n" for line in lines).encode("utf-8")
    return data if hashlib.sha256(data).hexdigest() == record["input_sha256"] else None


# --- collect -----------------------------------------------------------------------------------


def _ingest(
    backend: OpenAIBackend, texts: Iterable[str], wanted: set[str] | None
) -> tuple[int, set[str], int, set[str]]:
    """Cache every complete answer in ``texts``; (cached, keys answered with an error, malformed lines, keys seen)."""
    from llmhyper_feast.generation.batch import chat_result, parse_custom_id, parse_output

    out = parse_output(texts)
    parts: dict[str, dict[int, Any]] = {}
    sizes: dict[str, int] = {}
    error_keys: set[str] = set()
    unknown = 0
    for cid, result in out.results.items():
        parsed = parse_custom_id(cid)
        if parsed is None or (wanted is not None and parsed[0] not in wanted):
            unknown += 1
            continue
        key, sample, n = parsed
        sizes[key] = n
        if result.completion is None:
            error_keys.add(key)
            log.warning("Batch line %s came back with an error (asked online instead): %s", cid, result.error)
            continue
        parts.setdefault(key, {})[sample] = result.completion
    if unknown:
        log.warning("%d batch output lines name requests this run does not plan; they were skipped.", unknown)
    for line in out.malformed:
        log.warning("Unreadable batch output %s", line)
    cached = 0
    cache = backend.cache
    assert cache is not None
    for key, got in parts.items():
        if key in error_keys or len(got) != sizes[key]:
            error_keys.add(key)
            continue
        try:
            answer = chat_result([got[i] for i in range(sizes[key])], backend.model_id)
        except DataError as exc:
            log.warning("Batch answer for request %s is unusable (asked online instead): %s", key[:12], exc)
            error_keys.add(key)
            continue
        if key not in cache:
            backend._to_cache(key, answer)
            cached += 1
    return cached, error_keys, len(out.malformed), set(parts) | error_keys


def _wait(
    backend: OpenAIBackend,
    client: Any,
    repo: str | Path,
    records: list[dict[str, Any]],
    open_records: list[dict[str, Any]],
    *,
    wait: bool,
    poll_s: float,
    progress: bool,
    on_poll: Callable[[dict[str, Any]], None] | None,
) -> None:
    from tqdm.auto import tqdm

    total = sum(r["requests"] for r in open_records)
    with tqdm(total=total, desc="LLM batch", unit="req", disable=not progress) as bar:
        while True:
            for record in open_records:
                if record["status"] not in OPEN:
                    continue
                bid: str = record["batch_id"]
                batch = _api(backend, f"poll batch {bid}", functools.partial(client.batches.retrieve, bid))
                _update(record, batch)
                if on_poll is not None:
                    on_poll(record)
            _save(repo, records)
            done = sum(
                (r.get("counts") or {}).get("completed", 0) + (r.get("counts") or {}).get("failed", 0)
                if r["status"] in OPEN
                else r["requests"]
                for r in open_records
            )
            bar.update(min(done, total) - bar.n)
            statuses = ", ".join(sorted({r["status"] for r in open_records}))
            bar.set_postfix_str(statuses, refresh=False)
            if not wait or all(r["status"] not in OPEN for r in open_records):
                return
            time.sleep(poll_s)


def collect(
    repo: str | Path,
    settings: Settings,
    *,
    ad_ids: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    wait: bool = True,
    poll_s: float = 10.0,
    results_files: Sequence[str | Path] = (),
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> BatchReport:
    """Wait for the open batches, cache their answers (and those of ``results_files``), then generate.

    Only ads whose every request came back (an answer or a line error) are generated; the
    others stay pending and are listed in ``pending_ads``. ``on_poll(record)`` is called after
    each poll (a test hook).
    """
    from llmhyper_feast.generation.runner import generate_rows
    from llmhyper_feast.store.lock import repo_lock

    layout = RepoLayout.of(repo)
    backend = _openai_backend(_make_backend(layout.root, settings), settings)
    for path in results_files:
        if not Path(path).is_file():
            raise InputError(f"Batch results file {path} does not exist; pass the file `vllm run-batch -o` wrote.")
    records = load_records(repo)
    mine = [r for r in records if r.get("base_url") == backend.base_url and r.get("batch_id")]
    open_records = [r for r in mine if r["status"] in OPEN]
    report = BatchReport()
    if open_records:
        client = backend.sync_client()
        report.resumed = [r["batch_id"] for r in open_records]
        _wait(
            backend, client, repo, records, open_records, wait=wait, poll_s=poll_s, progress=progress, on_poll=on_poll
        )
    with repo_lock(repo, "batch collect"):
        records = _merge_fresh(repo, records)
        for record in records:
            if record.get("base_url") != backend.base_url or not record.get("batch_id"):
                continue
            if record["status"] in OPEN or record.get("collected_at"):
                continue
            client = backend.sync_client()
            texts = [_file_text(backend, client, record.get(f)) for f in ("output_file_id", "error_file_id")]
            cached, errors, malformed, seen = _ingest(backend, texts, set(record["keys"]))
            record.update(collected_at=_now(), ingested=cached, error_keys=sorted(errors), answered=len(seen))
            report.ingested += cached
            report.line_errors += len(errors)
            report.malformed += malformed
            report.batches.append(_summary(record))
            _save(repo, records)
        p = plan(layout.root, settings, ad_ids=ad_ids, force=force, progress=progress)
        planned = {item.key for item in p.requests}
        for path in results_files:
            text = Path(path).read_text(encoding="utf-8")
            cached, errors, malformed, seen = _ingest(backend, [text], planned)
            record = {
                "id": uuid.uuid4().hex[:12],
                "batch_id": None,
                "source": str(Path(path).resolve()),
                "status": "completed",
                "base_url": backend.base_url,
                "model": backend.model_id,
                "requests": len(seen),
                "keys": sorted(seen),
                "ads": sorted({item.ad_id for item in p.requests if item.key in seen}),
                "created_at": _now(),
                "collected_at": _now(),
                "ingested": cached,
                "error_keys": sorted(errors),
            }
            records.append(record)
            _save(repo, records)
            report.ingested += cached
            report.line_errors += len(errors)
            report.malformed += malformed
            report.batches.append(_summary(record))
        # an ad is ready when each of its requests is answered in the cache or came back with an error
        answered_with_error = {
            k for r in records if r.get("base_url") == backend.base_url for k in r.get("error_keys", [])
        }
        still_open = {
            k for r in records if r.get("base_url") == backend.base_url and r["status"] in OPEN for k in r["keys"]
        }
        cache = backend.cache
        assert cache is not None
        ready: list[str] = []
        pending: list[str] = []
        for ad, keys in p.keys_of().items():
            ok = all(k in cache or (k in answered_with_error and k not in still_open) for k in keys)
            (ready if ok else pending).append(ad)
        report.pending_ads = pending
        report.waiting = bool(still_open & planned)
        if ready:  # the plan's inputs, not jobs.generate: no second index build; every answer is cached
            wanted = set(ready)
            ads = [ad for ad in p.ads if ad.ad_id in wanted]
            report.rows = generate_rows(ads, p.inputs, log_dir=layout.generation_log, progress=progress)
    return report


def _merge_fresh(repo: str | Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records on disk, with the polled state of ``records`` applied (another run may have added some)."""
    polled = {r["id"]: r for r in records}
    return [polled.get(r["id"], r) for r in load_records(repo)]


def _make_backend(repo: Path, settings: Settings) -> Any:
    from llmhyper_feast.jobs.generate import make_backend

    return make_backend(repo, settings)


def run(
    repo: str | Path,
    settings: Settings,
    *,
    ad_ids: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    wait: bool = True,
    poll_s: float = 10.0,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> BatchReport:
    """Submit (or resume) the batches, wait for them, cache their answers and generate."""
    sent = submit(repo, settings, ad_ids=ad_ids, force=force, progress=progress)
    got = collect(
        repo, settings, ad_ids=ad_ids, force=force, progress=progress, wait=wait, poll_s=poll_s, on_poll=on_poll
    )
    created = {b.get("batch_id") for b in sent.batches} - set(sent.resumed)
    got.submitted = sent.submitted
    got.resumed = sorted((set(sent.resumed) | set(got.resumed)) - created)
    got.batches = _dedupe(sent.batches + got.batches)
    return got


def _dedupe(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in summaries:
        out[s["id"]] = s
    return list(out.values())


# --- status ------------------------------------------------------------------------------------


def batch_notes(repo: str | Path) -> dict[str, str]:
    """Ad id -> what its newest batch says (open, failed, expired, cancelled); {} without batch records."""
    try:
        records = load_records(repo)
    except DataError as exc:
        return {"*": str(exc)}
    notes: dict[str, str] = {}
    for record in records:
        status, bid = record.get("status"), record.get("batch_id") or record.get("id")
        if status in OPEN:
            note = f"waiting for LLM batch {bid} ({status}); `llmhyper batch collect` ingests it when it is done"
        elif status == "completed" and not record.get("collected_at"):
            note = f"LLM batch {bid} is done; `llmhyper batch collect` ingests it"
        elif status in CLOSED_UNANSWERED:
            note = (
                f"LLM batch {bid} {status} ({record.get('error', '')}): not generated yet; `llmhyper batch run` "
                "submits it again, `llmhyper generate` asks online"
            )
        else:
            for ad in record.get("ads", []):
                notes.pop(ad, None)
            continue
        for ad in record.get("ads", []):
            notes[ad] = note
    return notes


def refresh(repo: str | Path, settings: Settings) -> list[dict[str, Any]]:
    """Poll every open batch of the configured server once; return every record's summary."""
    backend = _openai_backend(_make_backend(RepoLayout.of(repo).root, settings), settings)
    records = load_records(repo)
    open_records = [
        r for r in records if r.get("base_url") == backend.base_url and r.get("batch_id") and r["status"] in OPEN
    ]
    if open_records:
        client = backend.sync_client()
        _wait(backend, client, repo, records, open_records, wait=False, poll_s=0.0, progress=False, on_poll=None)
    return [_summary(r) for r in records]
