"""The 'openai' backend: any OpenAI-compatible chat-completions server through the official SDK.

Works with OpenAI itself and with servers speaking its wire format (vLLM, Ollama, llama.cpp
server, Gemini's compatible endpoint). Retries with exponential backoff and jitter on 429,
5xx, timeouts and connection errors are the SDK's (``max_retries``). A server that rejects
``n``, ``response_format`` or ``max_tokens`` is remembered and asked without it.

A sample cut at the token limit (finish_reason "length") is returned with
``ChatResult.truncated[i] = True``; answer validation rejects it and the re-ask doubles
``max_tokens``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any, ClassVar

import pydantic

from llmhyper_feast.backends.llm.base import ChatRequest, ChatResult, LLMBackend, mark_fatal
from llmhyper_feast.errors import BackendError
from llmhyper_feast.generation.answers import answer_schema
from llmhyper_feast.store.redact import redact, register_secret

__all__ = ["OpenAIBackend"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_MENTIONS_N = re.compile(r"['\"`]n['\"`]|\bparameter:?\s+n\b|\bn\s+(?:must|is|should|>|=|not)\b", re.IGNORECASE)


def _default_model() -> str:
    return os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"


class OpenAIBackend(LLMBackend):
    """Chat completions with a strict JSON schema, ``n`` samples per call, SDK retries."""

    name: ClassVar[str] = "openai"

    class Options(pydantic.BaseModel):
        """Options of the 'openai' backend."""

        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

        model: str = pydantic.Field(default_factory=_default_model, min_length=1)
        base_url: str | None = None
        api_key: pydantic.SecretStr | None = None
        timeout_s: float = pydantic.Field(60.0, gt=0)
        max_retries: int = pydantic.Field(4, ge=0)
        use_n: bool = True
        structured: bool = True

    def __init__(self, options: pydantic.BaseModel | dict | None = None, *, cache: Any = None) -> None:
        super().__init__(options, cache=cache)
        key = self.options.api_key.get_secret_value() if self.options.api_key else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise BackendError(
                "No API key for the 'openai' backend. Set the environment variable OPENAI_API_KEY, or the backend "
                "option 'api_key' (any non-empty string for servers that do not check keys, e.g. vLLM or Ollama)."
            )
        self._api_key = key
        register_secret(key)  # servers may echo it in error messages
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        self._n_supported = self.options.use_n
        self._schema_supported = self.options.structured
        self._token_param = "max_tokens"

    @property
    def model_id(self) -> str:
        return self.options.model

    @property
    def base_url(self) -> str:
        """The server URL in use (option, then OPENAI_BASE_URL, then OpenAI's)."""
        return self.options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL

    def cache_params(self) -> dict[str, Any]:
        return {"structured": self.options.structured, "base_url": self.base_url}

    def _client(self) -> Any:
        # An async HTTP client belongs to the event loop it was created on.
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        import openai

        client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.options.timeout_s,
            max_retries=self.options.max_retries,
        )
        self._clients[id(loop)] = (loop, client)
        return client

    # --- Batch API support (jobs/batch.py) ---------------------------------------------------
    def batch_body(self, request: ChatRequest, n: int, seed: int | None) -> dict[str, Any]:
        """The chat-completions body an online call would send (a Batch API input line's body)."""
        return self._body(request, n, seed)

    def sync_client(self) -> Any:
        """A blocking ``openai.OpenAI`` client with this backend's key, URL, timeout and retries."""
        import openai

        return openai.OpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.options.timeout_s,
            max_retries=self.options.max_retries,
        )

    def backend_error(self, exc: BaseException) -> BackendError:
        """The BackendError (secrets redacted, fix named) for an ``openai`` SDK error."""
        return self._translate(exc)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        entry = self._clients.pop(id(loop), None)
        if entry is not None:
            await entry[1].close()

    def _body(self, request: ChatRequest, n: int, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            self._token_param: request.max_tokens,
        }
        if n > 1:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
        if self._schema_supported:
            if request.answer_format is not None:
                name, schema = request.answer_format.name, request.answer_format.schema
            else:
                name = "ad_feature_weights"
                schema = answer_schema(request.feature_names, reasoning=request.reasoning, max_abs=request.max_abs)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "strict": True, "schema": schema},
            }
        return body

    async def _call(self, request: ChatRequest, n: int, seed: int | None) -> Any:
        import openai

        while True:
            try:
                return await self._client().chat.completions.create(**self._body(request, n, seed))
            except openai.BadRequestError as exc:
                if not self._drop_rejected_parameter(exc, n):
                    raise self._translate(exc) from None
            except openai.OpenAIError as exc:
                # from None: the SDK's exception text may hold what the server echoed (the key)
                raise self._translate(exc) from None

    def _drop_rejected_parameter(self, exc: Any, n: int) -> bool:
        """Stop sending a parameter the server rejected; True when a retry without it makes sense."""
        message = _error_message(exc)
        param = getattr(exc, "param", None)
        if n > 1 and (param == "n" or _MENTIONS_N.search(message)):
            self._n_supported = False
            raise _FallBackToRepeatedCalls()
        if self._schema_supported and (
            param == "response_format" or "response_format" in message or "json_schema" in message
        ):
            self._schema_supported = False
            return True
        if self._token_param == "max_tokens" and (param == "max_tokens" or "max_completion_tokens" in message):
            self._token_param = "max_completion_tokens"
            return True
        return False

    def _translate(self, exc: BaseException) -> BackendError:
        """A BackendError for an SDK error, secrets redacted from its text."""
        error = self._describe(exc)
        error.args = (redact(error.args[0] if error.args else ""), *error.args[1:])
        return error

    def _describe(self, exc: BaseException) -> BackendError:
        import openai

        where = f"the OpenAI-compatible server at {self.base_url}"
        retries = self.options.max_retries
        if isinstance(exc, openai.AuthenticationError):
            return mark_fatal(
                BackendError(
                    f"{where} rejected the API key (HTTP 401: {_error_message(exc)}). Check OPENAI_API_KEY "
                    "(or the 'api_key' option of the openai backend)."
                )
            )
        if isinstance(exc, openai.PermissionDeniedError):
            return mark_fatal(
                BackendError(
                    f"{where} refused access to model '{self.model_id}' (HTTP 403: {_error_message(exc)}). Check that "
                    "OPENAI_API_KEY may use this model."
                )
            )
        if isinstance(exc, openai.NotFoundError):
            return mark_fatal(
                BackendError(
                    f"{where} answered 404 for model '{self.model_id}' ({_error_message(exc)}). "
                    "Check the 'model' option "
                    "or OPENAI_MODEL, and that base_url ends with the API prefix (e.g. /v1)."
                )
            )
        if isinstance(exc, openai.RateLimitError):
            return BackendError(
                f"{where} rate limited after {retries} retries (HTTP 429: {_error_message(exc)}). Lower the "
                "concurrency, raise the 'max_retries' option, or check the account's quota."
            )
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(
                f"{where} did not answer within {self.options.timeout_s:g} s (after {retries} retries). Raise the "
                "'timeout_s' option or lower max_tokens."
            )
        if isinstance(exc, openai.APIConnectionError):
            return mark_fatal(
                BackendError(
                    f"Could not reach {where} after {retries} retries ({exc.__cause__ or exc}). Check the 'base_url' "
                    "option or OPENAI_BASE_URL, and that the server is running."
                )
            )
        if isinstance(exc, openai.APIStatusError):
            kind = "server error" if exc.status_code >= 500 else "request rejected"
            tail = f" after {retries} retries" if exc.status_code >= 500 else ""
            return BackendError(f"{where}: {kind} (HTTP {exc.status_code}{tail}): {_error_message(exc)}")
        return BackendError(f"{where}: {type(exc).__name__}: {exc}")

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        """Ask for ``request.n`` samples: one call with ``n`` when allowed, else one call per sample."""
        start = time.perf_counter()
        responses: list[Any] = []
        if request.n > 1 and self._n_supported:
            try:
                responses.append(await self._call(request, request.n, request.seed))
            except _FallBackToRepeatedCalls:
                pass
        if not responses:
            for i in range(request.n):
                # Distinct seeds, or repeated calls would return the same sample.
                seed = None if request.seed is None else request.seed + i
                responses.append(await self._call(request, 1, seed))
        samples: list[str] = []
        truncated: list[bool] = []
        prompt_tokens = completion_tokens = 0
        model = self.model_id
        for response in responses:
            model = getattr(response, "model", None) or model
            usage = getattr(response, "usage", None)
            if usage is not None:
                prompt_tokens += usage.prompt_tokens or 0
                completion_tokens += usage.completion_tokens or 0
            for choice in sorted(response.choices or [], key=lambda c: c.index):
                message = choice.message
                text = message.content if message.content is not None else (getattr(message, "refusal", None) or "")
                samples.append(text)
                truncated.append(choice.finish_reason == "length")
        if not samples:
            raise BackendError(
                f"The OpenAI-compatible server at {self.base_url} returned no choices for model '{model}'."
            )
        return ChatResult(
            samples=samples,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            calls=len(responses),
            latency_s=time.perf_counter() - start,
            cached=False,
            truncated=truncated,
        )


class _FallBackToRepeatedCalls(Exception):
    """The server rejected ``n``: ask once per sample instead."""


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", None) or exc)
