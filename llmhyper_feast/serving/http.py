"""HTTP ranking service: ``POST /rank`` and ``GET /health`` over a :class:`~llmhyper_feast.serving.ranker.Ranker`.

Status codes: 200 ranked; 404 unknown user or unknown candidate ads (the body says which);
413 request body larger than the cap (64 KiB by default); 422 malformed body or bad values
(types are strict: ``k`` must be a JSON integer, not ``"5"``, ``2.0`` or ``true``); 503 the
export no longer matches the registry, or the online store is missing or corrupt
(``store_unavailable``: run ``llmhyper repair``; ``GET /health`` then answers 503 too); 500 other
errors of this package. Error bodies are
``{"error": code, "detail": message, ...}`` and never echo more than ~100 characters of input.

``POST /rank`` is answered by a plain ASGI handler in front of FastAPI's routing (FastAPI's
request/response machinery cost more CPU than the ranking itself); every other path, the
OpenAPI schema included, goes through FastAPI.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request  # at module level: FastAPI resolves the route's annotations here

from llmhyper_feast.errors import (
    InputError,
    LLMHyperError,
    StaleExportError,
    StoreUnavailableError,
    UnknownAdError,
    UnknownUserError,
)
from llmhyper_feast.serving.ranker import Ranker, RankResult

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["MAX_BODY_BYTES", "RankRequest", "RankResponse", "create_app", "serve", "without_torch"]

MAX_K = 1000
MAX_CANDIDATES = 10_000
MAX_ID_CHARS = 256
MAX_BODY_BYTES = 64 * 1024
ECHO_CHARS = 100  # longest piece of a request that an error body repeats
MAX_ERRORS = 10  # validation errors listed in one error body
EXAMPLE: dict[str, Any] = {"user_id": "u000001", "ads": None, "k": 10}
_Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
_JSON_HEADERS = [(b"content-type", b"application/json")]
logger = logging.getLogger(__name__)


class RankRequest(BaseModel):
    """Body of ``POST /rank``; strict JSON types, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=cast(Any, {"examples": [EXAMPLE]}))
    user_id: _Id = Field(description="The user's entity key in the Feast user views.")
    ads: list[_Id] | None = Field(
        None, min_length=1, max_length=MAX_CANDIDATES, description="Candidate ad ids; null ranks every ad."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="How many ads to return (all candidates if fewer).")
    candidates: Literal["all", "priors"] = Field(
        "all",
        description="'priors': limit or boost the ads of the user's predicted advertisers (user_priors.filter in "
        "llmhyper.yaml); users without stored priors are ranked as with 'all'.",
    )


class RankedItem(BaseModel):
    rank: int
    ad_id: str
    ctr: float
    source: str = Field(description="warm, generated or lr_cold: which model scored the ad.")


class RankResponse(BaseModel):
    """Body of a 200 answer (documentation only: the route encodes it by hand, see :func:`_encode`)."""

    user_id: str
    items: list[RankedItem]
    model_version: str
    feature_hash: str
    candidates: int = Field(description="Candidate ads scored (those the content rules allow for this user).")
    excluded: int = Field(0, description="Candidate ads dropped by the content rules (llmhyper_policy.yaml).")
    imputed_features: list[str] = Field(description="Features missing for the user, replaced by the population mean.")
    user_fallback: str | None = Field(description="'population_mean' when the user was unknown, else null.")
    prior_filter: str | None = Field(
        None,
        description="Only with candidates 'priors': 'restrict' or 'boost' (the policy applied), or 'no_prior' (the "
        "user has no stored priors: plain ranking).",
    )


def _clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} chars)"


def _validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    # ctx/input may hold exceptions, bytes or megabytes of the request: keep what a client needs,
    # with every echoed piece (a key name in loc, a message) clipped
    items = [
        {"loc": [_clip(p) for p in e.get("loc", ())], "msg": _clip(e.get("msg", "")), "type": _clip(e.get("type", ""))}
        for e in errors[:MAX_ERRORS]
    ]
    where = "; ".join(f"{'.'.join(i['loc']) or 'body'}: {i['msg']}" for i in items)
    more = f"; and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
    return {
        "error": "invalid_request",
        "errors": items,
        "detail": f"Invalid request body ({where}{more}). Expected a JSON object like {EXAMPLE} where user_id is "
        f"a string of 1-{MAX_ID_CHARS} chars, ads is null or a list of 1-{MAX_CANDIDATES} ad ids and k is a JSON "
        f'integer in [1, {MAX_K}], candidates is "all" (default) or "priors"; no other keys.',
    }


def _too_large(limit: int) -> dict[str, Any]:
    return {
        "error": "body_too_large",
        "detail": f"The request body is larger than {limit} bytes. Send fewer candidate ads, or raise the cap "
        "with `llmhyper serve --max-body-bytes N`.",
    }


def _error_body(exc: LLMHyperError) -> dict[str, Any]:
    """The JSON body answering one of our errors (status: ``exc.http_status``)."""
    if isinstance(exc, UnknownUserError):
        return {"error": "unknown_user", "detail": str(exc), "user_ids": exc.user_ids}
    if isinstance(exc, UnknownAdError):
        return {"error": "unknown_ads", "detail": str(exc), "ad_ids": exc.ad_ids}
    if isinstance(exc, StaleExportError):
        return {"error": "stale_export", "detail": str(exc)}
    if isinstance(exc, StoreUnavailableError):
        return {"error": "store_unavailable", "detail": str(exc)}
    if isinstance(exc, InputError):
        return {"error": "invalid_request", "detail": str(exc)}
    return {"error": type(exc).__name__, "detail": str(exc)}


def _encode(res: RankResult) -> bytes:
    """The JSON of a :class:`RankResponse` for ``res`` (built directly: pydantic costs more than the ranking)."""
    doc = {
        "user_id": res.user_id,
        "items": [{"rank": i, "ad_id": a, "ctr": c, "source": s} for i, (a, c, s) in enumerate(res.items, 1)],
        "model_version": res.model_version,
        "feature_hash": res.feature_hash,
        "candidates": res.candidates,
        "excluded": res.excluded,
        "imputed_features": list(res.imputed),
        "user_fallback": res.user_fallback,
    }
    if res.prior_filter is not None:
        doc["prior_filter"] = res.prior_filter
    return json.dumps(doc, separators=(",", ":")).encode()


def create_app(ranker: Ranker, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """A FastAPI app that ranks with ``ranker`` (which reloads newer exports by itself).

    ``max_body_bytes``: larger ``POST /rank`` bodies are answered 413 before any parsing.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    app = _ranking_app(
        ranker,
        max_body_bytes,
        title="llmhyper ranking",
        version=str(ranker.health()["producer"].get("version", "")),
        description="Ranks ads for a user with the exported LLM-HYPER CTR models.",
    )
    app.state.ranker = ranker

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(LLMHyperError)
    async def our_error(_: Request, exc: LLMHyperError) -> JSONResponse:
        return JSONResponse(_error_body(exc), exc.http_status)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None once it is known to exceed ``max_body_bytes`` (declared or streamed)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked bodies have no length: count as they arrive
            size += len(chunk)
            if size > max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(
        "/rank",
        responses={
            200: {"model": RankResponse, "description": "Top k ads, best first"},
            404: {"description": "Unknown user or ads"},
            413: {"description": "Body larger than the cap"},
            422: {"description": "Malformed body"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": RankRequest.model_json_schema()}},
            }
        },
    )
    async def rank(request: Request) -> Response:
        # reached only when _RankingApp hands /rank to FastAPI (never in practice): kept so the
        # route, its OpenAPI description and its behaviour stay in one place
        # async and inline: Ranker.rank is ~0.3 ms of CPU, less than a thread-pool round trip
        raw = await read_body(request)
        if raw is None:  # close: the unread rest of the body must not be parsed as a next request
            return JSONResponse(_too_large(max_body_bytes), 413, headers={"connection": "close"})
        try:
            body = RankRequest.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            return JSONResponse(_validation_body([{**e, "loc": ("body", *e["loc"])} for e in errors]), 422)
        res = ranker.rank(body.user_id, body.ads, body.k, candidates=body.candidates)
        return Response(_encode(res), media_type="application/json")

    @app.get("/health", responses={503: {"description": "The online store is unusable"}})
    def health() -> JSONResponse:
        """Loaded model version, number of ads, feature hash, reload state and whether the online store is usable."""
        body = ranker.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else StoreUnavailableError.http_status)

    return app


def _rank_app_class() -> type:
    """FastAPI subclass answering ``POST /rank`` itself (built lazily: FastAPI is imported in functions)."""
    from fastapi import FastAPI

    class RankingApp(FastAPI):
        def __init__(self, ranker: Ranker, max_body_bytes: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._ranker, self._max_body = ranker, max_body_bytes

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/rank" and scope["method"] == "POST":
                await _rank_asgi(self._ranker, self._max_body, scope, receive, send)
            else:
                await super().__call__(scope, receive, send)

    return RankingApp


def _ranking_app(ranker: Ranker, max_body_bytes: int, **kwargs: Any) -> FastAPI:
    return cast("FastAPI", _rank_app_class()(ranker, max_body_bytes, **kwargs))


async def _send(send: Any, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def _rank_asgi(ranker: Ranker, max_body: int, scope: Any, receive: Any, send: Any) -> None:
    """``POST /rank`` as a plain ASGI handler: same statuses and bodies as the FastAPI route."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_body:
            await _send(send, 413, _dumps(_too_large(max_body)), close=True)  # the unread rest must not be parsed
            return
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:  # chunked bodies have no declared length: count as they arrive
            await _send(send, 413, _dumps(_too_large(max_body)), close=True)
            return
        chunks.append(chunk)
        more = message.get("more_body", False)
    try:
        body = RankRequest.model_validate_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        await _send(send, 422, _dumps(_validation_body([{**e, "loc": ("body", *e["loc"])} for e in errors])))
        return
    try:
        res = ranker.rank(body.user_id, body.ads, body.k, candidates=body.candidates)
    except LLMHyperError as exc:
        await _send(send, exc.http_status, _dumps(_error_body(exc)))
        return
    except Exception:
        logger.exception("POST /rank failed")
        await _send(send, 500, _dumps({"error": "internal_error", "detail": "Internal error; see the server log."}))
        return
    await _send(send, 200, _encode(res))


def serve(
    ranker: Ranker,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Run the app with uvicorn (one process; uvloop and httptools when installed) until interrupted."""
    import importlib.util

    import uvicorn

    uvicorn.run(
        create_app(ranker, max_body_bytes=max_body_bytes),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,  # one log line per request costs more than the ranking itself
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
    )


@contextmanager
def without_torch() -> Iterator[None]:
    """Inside, ``import torch`` fails (unless torch is already loaded); afterwards it works again.

    Feast 0.67 imports torch at import time (``feast.torch_wrapper``) for tensor outputs that
    ranking never asks for; torch alone is ~500 MB of the service's resident memory. Feast
    catches the failed import and carries on without tensor support.
    """
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # None in sys.modules makes the import fail
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
