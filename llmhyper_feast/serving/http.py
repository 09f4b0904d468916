"""HTTP ranking service: ``POST /rank`` and ``GET /health`` over a :class:`~.ranking.Ranker`.

Status codes: 200 ranked; 404 unknown user or unknown candidate ads (the body says which);
422 malformed body or bad values; 503 the export no longer matches the registry; 500 other
errors of this package. Error bodies are ``{"error": code, "detail": message, ...}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field

from llmhyper_feast.errors import InputError, LLMHyperError, StaleExportError, UnknownAdError, UnknownUserError
from llmhyper_feast.serving.ranker import Ranker

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["RankRequest", "RankResponse", "create_app", "serve"]

MAX_K = 1000
MAX_CANDIDATES = 100_000
EXAMPLE: dict[str, Any] = {"user_id": "u000001", "ads": None, "k": 10}


class RankRequest(BaseModel):
    """Body of ``POST /rank``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=cast(Any, {"examples": [EXAMPLE]}))
    user_id: str = Field(min_length=1, description="The user's entity key in the Feast user views.")
    ads: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, max_length=MAX_CANDIDATES, description="Candidate ad ids; null ranks every ad."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="How many ads to return (all candidates if fewer).")


class RankedItem(BaseModel):
    rank: int
    ad_id: str
    ctr: float
    source: str = Field(description="warm, generated or lr_cold: which model scored the ad.")


class RankResponse(BaseModel):
    user_id: str
    items: list[RankedItem]
    model_version: str
    feature_hash: str
    candidates: int
    imputed_features: list[str] = Field(description="Features missing for the user, replaced by the population mean.")
    user_fallback: str | None = Field(description="'population_mean' when the user was unknown, else null.")


def _validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    # ctx/input may hold exceptions or bytes that JSON cannot encode: keep what a client needs
    items = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    where = "; ".join(f"{'.'.join(str(p) for p in i['loc']) or 'body'}: {i['msg']}" for i in items)
    return {
        "error": "invalid_request",
        "errors": items,
        "detail": f"Invalid request body ({where}). Expected a JSON object like {EXAMPLE} where user_id is a "
        f"non-empty string, ads is null or a non-empty list of ad ids and k is an int in [1, {MAX_K}].",
    }


def create_app(ranker: Ranker) -> FastAPI:
    """A FastAPI app that ranks with ``ranker`` (which reloads newer exports by itself)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(
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
        if isinstance(exc, UnknownUserError):
            return JSONResponse({"error": "unknown_user", "detail": str(exc), "user_ids": exc.user_ids}, 404)
        if isinstance(exc, UnknownAdError):
            return JSONResponse({"error": "unknown_ads", "detail": str(exc), "ad_ids": exc.ad_ids}, 404)
        if isinstance(exc, StaleExportError):
            return JSONResponse({"error": "stale_export", "detail": str(exc)}, exc.http_status)
        if isinstance(exc, InputError):
            return JSONResponse({"error": "invalid_request", "detail": str(exc)}, exc.http_status)
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, exc.http_status)

    @app.post(
        "/rank",
        response_model=RankResponse,
        responses={404: {"description": "Unknown user or ads"}, 422: {"description": "Malformed body"}},
    )
    def rank(body: RankRequest) -> RankResponse:  # sync: FastAPI runs it in its thread pool
        res = ranker.rank(body.user_id, body.ads, body.k)
        return RankResponse(
            user_id=res.user_id,
            model_version=res.model_version,
            feature_hash=res.feature_hash,
            candidates=res.candidates,
            imputed_features=list(res.imputed),
            user_fallback=res.user_fallback,
            items=[RankedItem(rank=i + 1, ad_id=a, ctr=c, source=s) for i, (a, c, s) in enumerate(res.items)],
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Loaded model version, number of ads, feature hash and reload state."""
        return ranker.health()

    return app


def serve(ranker: Ranker, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(ranker), host=host, port=port, log_level=log_level)
