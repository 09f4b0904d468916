"""The LLM backend interface: requests, results, and the shared batching/caching machinery.

A backend implements one coroutine, :meth:`LLMBackend.acomplete`. The base class does the
rest in :meth:`LLMBackend.complete_many`: cache look-ups, bounded concurrency on asyncio, a
progress bar, usage statistics, and isolation of failures (a failed request returns its
BackendError in its slot and never loses the others).
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from llmhyper_feast.errors import BackendError, InputError
from llmhyper_feast.plugins import coerce_options

if TYPE_CHECKING:
    from llmhyper_feast.generation.cache import AnswerCache

__all__ = ["AnswerFormat", "BackendStats", "ChatRequest", "ChatResult", "LLMBackend", "is_fatal", "mark_fatal"]


@dataclass(frozen=True)
class AnswerFormat:
    """A request's own answer shape, replacing the weights shape: a strict JSON schema (what the
    openai backend sends as ``response_format``) and a regular expression matching the same answers
    (what the local backend constrains generation to)."""

    name: str
    schema: dict[str, Any]
    pattern: str


@dataclass(frozen=True)
class ChatRequest:
    """One prompt to answer with ``n`` JSON samples holding a number per feature.

    With ``answer_format`` the answers take that shape instead (e.g. the judge's verdicts);
    ``feature_names`` then names the features the request is about.
    """

    messages: tuple[dict, ...]
    feature_names: tuple[str, ...]
    n: int = 1
    temperature: float = 0.5
    seed: int | None = 0
    max_tokens: int = 600
    reasoning: bool = False
    max_abs: float = 3.0
    answer_format: AnswerFormat | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not isinstance(self.feature_names, tuple):
            object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if not self.messages or not all(isinstance(m, dict) and "role" in m for m in self.messages):
            raise InputError(
                "ChatRequest.messages must be a non-empty sequence of {'role': ..., 'content': ...} dicts."
            )
        if not self.feature_names:
            raise InputError("ChatRequest.feature_names must name at least one feature.")
        for attr, ok, rule in (
            ("n", isinstance(self.n, int) and self.n >= 1, "an int >= 1"),
            (
                "temperature",
                isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2,
                "a number in [0, 2]",
            ),
            ("max_tokens", isinstance(self.max_tokens, int) and self.max_tokens >= 1, "an int >= 1"),
            (
                "max_abs",
                isinstance(self.max_abs, (int, float)) and 0 < self.max_abs < float("inf"),
                "a finite number > 0",
            ),
            ("seed", self.seed is None or isinstance(self.seed, int), "an int or None"),
        ):
            if not ok:
                raise InputError(
                    f"The '{attr}' parameter of ChatRequest must be {rule}. Got {getattr(self, attr)!r} instead."
                )

    def params(self) -> dict[str, Any]:
        """The generation parameters (everything but the messages), JSON-serialisable."""
        out = asdict(self)
        out.pop("messages")
        if self.answer_format is None:  # absent, so cache keys of weight requests stay as they were
            out.pop("answer_format")
        out["feature_names"] = list(self.feature_names)
        return out


@dataclass
class ChatResult:
    """The raw answers to one ChatRequest.

    ``truncated[i]`` is True when sample ``i`` stopped at the token limit (finish_reason
    "length"); answers validation then rejects it. Cached results keep the token counts of
    the call that produced them, with ``calls=0`` and ``cached=True``.
    """

    samples: list[str]
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 1
    latency_s: float = 0.0
    cached: bool = False
    truncated: list[bool] = field(default_factory=list)


@dataclass
class BackendStats:
    """Running totals for one backend instance."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    failures: int = 0


def mark_fatal(error: BackendError) -> BackendError:
    """Flag ``error`` as one that every other request would hit too (bad key, unreachable server).

    complete_many still runs every request; callers may use :func:`is_fatal` to stop early.
    """
    error.fatal = True  # type: ignore[attr-defined]
    return error


def is_fatal(error: BaseException) -> bool:
    """True for errors flagged by :func:`mark_fatal`: retrying or re-asking is pointless."""
    return bool(getattr(error, "fatal", False))


class LLMBackend(ABC):
    """Base class of LLM backends. Subclasses set ``name``, ``Options`` and implement ``acomplete``."""

    name: ClassVar[str]
    Options: ClassVar[type[pydantic.BaseModel]]

    def __init__(self, options: pydantic.BaseModel | dict | None = None, *, cache: AnswerCache | None = None) -> None:
        self.options = self._coerce_options(options)
        self.cache = cache
        self.stats = BackendStats()

    @classmethod
    def _coerce_options(cls, options: pydantic.BaseModel | dict | None) -> Any:
        return coerce_options(cls.Options, options, f"LLM backend '{cls.name}'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model this backend answers with (part of every cache key)."""

    @abstractmethod
    async def acomplete(self, request: ChatRequest) -> ChatResult:
        """Answer one request; raise BackendError with a message that says how to fix the cause."""

    def cache_params(self) -> dict[str, Any]:
        """Backend options that change the answers, added to cache keys (override when needed)."""
        return {}

    def cache_key(self, request: ChatRequest) -> str:
        """The AnswerCache key of ``request`` on this backend and model."""
        from llmhyper_feast.generation.cache import key_for

        params = request.params()
        params["backend_options"] = self.cache_params()
        return key_for(self.name, self.model_id, request.messages, params)

    async def _arun(self, requests: list[ChatRequest], concurrency: int, bar: Any) -> list[ChatResult | BaseException]:
        """Run uncached requests; backends that batch prompts natively may override this."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(request: ChatRequest) -> ChatResult | BaseException:
            async with semaphore:
                try:
                    result = await self.acomplete(request)
                    if self.cache is not None:  # cache at once: a killed run keeps every finished answer
                        self._to_cache(self.cache_key(request), result)
                    return result
                except BackendError as exc:
                    return exc
                except Exception as exc:  # noqa: BLE001 - one bad request must not lose the others
                    err = BackendError(f"LLM backend '{self.name}' failed unexpectedly: {type(exc).__name__}: {exc}")
                    err.__cause__ = exc
                    return err
                finally:
                    bar.update(1)

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await self.aclose()

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release per-event-loop resources (HTTP clients); called after each complete_many batch."""

    def complete_many(
        self, requests: Sequence[ChatRequest], *, concurrency: int = 4, progress: bool = True
    ) -> list[ChatResult | BackendError]:
        """Answer ``requests`` (cache first, then the backend with at most ``concurrency`` in flight).

        Returns one ChatResult or BackendError per request, in order.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InputError(
                f"The 'concurrency' parameter of complete_many must be an int >= 1. Got {concurrency!r} instead."
            )
        requests = list(requests)
        out: list[ChatResult | BackendError | None] = [None] * len(requests)
        keys: list[str | None] = [None] * len(requests)
        misses: list[int] = []
        for i, request in enumerate(requests):
            if not isinstance(request, ChatRequest):
                raise InputError(f"complete_many expects ChatRequest items. Got {type(request).__name__} at index {i}.")
            if self.cache is not None:
                key = keys[i] = self.cache_key(request)
                hit = self._from_cache(key)
                if hit is not None:
                    out[i] = hit
                    self.stats.cache_hits += 1
                    continue
            misses.append(i)
        if misses:
            from tqdm.auto import tqdm

            with tqdm(total=len(misses), desc=f"LLM ({self.name})", unit="req", disable=not progress) as bar:
                results = _run_coroutine(self._arun([requests[i] for i in misses], concurrency, bar))
            for i, result in zip(misses, results):
                if isinstance(result, ChatResult):
                    self.stats.calls += result.calls
                    self.stats.prompt_tokens += result.prompt_tokens
                    self.stats.completion_tokens += result.completion_tokens
                    if (
                        keys[i] is not None and self.cache is not None and str(keys[i]) not in self.cache
                    ):  # backends overriding _arun
                        self._to_cache(str(keys[i]), result)
                else:
                    self.stats.failures += 1
                out[i] = result
        return out  # type: ignore[return-value]

    def _from_cache(self, key: str) -> ChatResult | None:
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is None or not isinstance(entry.get("samples"), list):
            return None
        return ChatResult(
            samples=[str(s) for s in entry["samples"]],
            model=str(entry.get("model", self.model_id)),
            prompt_tokens=int(entry.get("prompt_tokens", 0)),
            completion_tokens=int(entry.get("completion_tokens", 0)),
            calls=0,
            latency_s=0.0,
            cached=True,
            truncated=[bool(t) for t in entry.get("truncated", [])],
        )

    def _to_cache(self, key: str, result: ChatResult) -> None:
        assert self.cache is not None
        self.cache.put(
            key,
            {
                "samples": result.samples,
                "model": result.model,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "truncated": result.truncated,
                "created": time.time(),
            },
        )


def _run_coroutine(coro: Any) -> Any:
    """asyncio.run, also from code that already runs an event loop (notebooks, servers)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="llmhyper-complete-many")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
