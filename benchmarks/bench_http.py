"""The HTTP ranking service under load: ``llmhyper serve`` against its Feast-SDK lookup path.

The servers rank with the same export of the same repo, each in its own process, and are
loaded one at a time (alternating, ``--rounds`` times) by ``tests/support/loadgen.py`` in
another process:

* sdk: ``llmhyper serve --online-lookup feast``: the user's row through Feast's
  ``get_online_features`` (the reference path, and the only one for non-SQLite stores);
* direct: ``llmhyper serve`` (the default): the row read straight from Feast's SQLite online
  tables with one prepared query, and ``POST /rank`` answered by a plain ASGI handler;
* legacy (only with ``--legacy``): the app as it was before the hardening, reproduced here
  (sync route in FastAPI's thread pool, lax pydantic models, access log, Feast's eager
  ``import torch``).

Loads: ``valid`` (closed loop, valid requests only), ``hostile`` (closed loop, the loadgen's
mix of valid, malformed, oversized and absurd-k requests), ``open500`` (valid requests
arriving at 500/s over the same clients; latency counted from each request's due time) and
``host500`` (the hostile mix arriving at 500/s). For the hostile closed loop, the slowest
request kinds by p99 are printed too.
Prints req/s, p50/p99 latency, server CPU per request, 5xx and wrong statuses, RSS, and the
direct/sdk ratios. With C closed-loop clients, mean latency = C / throughput (Little's law),
so p99 < 50 ms at 32 clients needs well over 640 req/s; ``open500`` shows the latency at the
target rate itself.

    python benchmarks/bench_http.py --requests 4000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "tests" / "support" / "loadgen.py"
TARGET_RPS, TARGET_P99_MS = 500, 50.0
CPU = "server_cpu_ms_per_request"


# The previous request/response models, at module level so FastAPI can resolve the route's
# (string) annotations.
class LegacyRankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1)
    ads: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, max_length=100_000)
    k: int = Field(10, ge=1, le=1000)


class LegacyRankedItem(BaseModel):
    rank: int
    ad_id: str
    ctr: float
    source: str


class LegacyRankResponse(BaseModel):
    user_id: str
    items: list[LegacyRankedItem]
    model_version: str
    feature_hash: str
    candidates: int
    imputed_features: list[str]
    user_fallback: str | None


def legacy_app(ranker: Any) -> Any:
    """The service as it was before: sync route, lax models, pydantic response serialisation."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from llmhyper_feast.errors import LLMHyperError, UnknownAdError, UnknownUserError

    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
        return JSONResponse({"error": "invalid_request", "errors": errors, "detail": f"Invalid ({where})."}, 422)

    @app.exception_handler(LLMHyperError)
    async def our_error(_: Request, exc: LLMHyperError) -> JSONResponse:
        extra = {"user_ids": exc.user_ids} if isinstance(exc, UnknownUserError) else {}
        extra = {"ad_ids": exc.ad_ids} if isinstance(exc, UnknownAdError) else extra
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc), **extra}, exc.http_status)

    @app.post("/rank", response_model=LegacyRankResponse)
    def rank(body: LegacyRankRequest) -> LegacyRankResponse:
        res = ranker.rank(body.user_id, body.ads, body.k)
        return LegacyRankResponse(
            user_id=res.user_id,
            model_version=res.model_version,
            feature_hash=res.feature_hash,
            candidates=res.candidates,
            imputed_features=list(res.imputed),
            user_fallback=res.user_fallback,
            items=[LegacyRankedItem(rank=i + 1, ad_id=a, ctr=c, source=s) for i, (a, c, s) in enumerate(res.items)],
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return dict(ranker.health())

    return app


def serve_legacy(repo: Path, models: Path, port: int) -> None:
    """Run the 'before' server in this process (uvicorn defaults, access log on)."""
    import uvicorn

    from llmhyper_feast.serving.ranker import Ranker

    uvicorn.run(legacy_app(Ranker(repo, models)), host="127.0.0.1", port=port, log_level="info")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    env = {**os.environ, "FEAST_USAGE": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"server on port {port} did not answer /health in 600 s")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)


def load(port: int, pid: int, ids: Path, requests: int, concurrency: int, mix: str | None, rate: float | None) -> dict:
    cmd = [sys.executable, str(LOADGEN), "--url", f"http://127.0.0.1:{port}/rank", "--users-file", str(ids)]
    cmd += ["--requests", str(requests), "--concurrency", str(concurrency), "--pid", str(pid), "--warmup", "200"]
    cmd += ["--mix", mix] if mix else []
    cmd += ["--rate", str(rate)] if rate else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=None, help="Existing repo with warm models (default: build one).")
    ap.add_argument("--users", type=int, default=3000, help="Users in the built demo world.")
    ap.add_argument("--requests", type=int, default=4000, help="Requests per load run.")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="Alternating rounds over the servers (medians reported).")
    ap.add_argument("--legacy", action="store_true", help="Also load the pre-hardening app.")
    ap.add_argument("--serve-legacy", nargs=3, metavar=("REPO", "MODELS", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("FEAST_USAGE", "False")
    if args.serve_legacy:
        repo, models, port = args.serve_legacy
        serve_legacy(Path(repo), Path(models), int(port))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_ranking import build_world

    from llmhyper_feast.serving.export import export_repo
    from llmhyper_feast.store import feast_adapter as fa

    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = args.repo or build_world(tmp, args.users, 64, 16, 11)
        models = tmp / "models"
        manifest = export_repo(repo, models, per_ad=False)
        store = fa.open_store(repo)
        users, _ = fa.read_user_matrix(store, fa.read_feature_schema(store))
        ids = tmp / "ids.json"
        ids.write_text(json.dumps({"users": [str(u) for u in users[:1000]], "ads": list(manifest.ad_ids)}))

        names = ("legacy", "sdk", "direct") if args.legacy else ("sdk", "direct")
        ports = {name: free_port() for name in names}
        serve = [sys.executable, "-m", "llmhyper_feast", "serve", "--repo", str(repo), "--models", str(models)]
        cmds = {
            "legacy": [sys.executable, __file__, "--serve-legacy", str(repo), str(models), str(ports.get("legacy", 0))],
            "sdk": [*serve, "--port", str(ports["sdk"]), "--log-level", "warning", "--online-lookup", "feast"],
            "direct": [*serve, "--port", str(ports["direct"]), "--log-level", "warning"],
        }
        procs, idle = {}, {}
        try:
            for name in names:  # one at a time: startup is CPU-heavy (Feast import)
                procs[name] = start(cmds[name], ports[name], tmp / f"{name}.log")
                idle[name] = rss_kb(procs[name].pid)
            loads = {
                "valid": ("valid", None),
                "hostile": (None, None),
                "open500": ("valid", float(TARGET_RPS)),
                "host500": (None, float(TARGET_RPS)),
            }
            runs: dict[tuple[str, str], list[dict]] = {}
            for r in range(args.rounds):
                for load_name, (mix, rate) in loads.items():
                    for name in names if r % 2 == 0 else names[::-1]:
                        res = load(ports[name], procs[name].pid, ids, args.requests, args.concurrency, mix, rate)
                        runs.setdefault((load_name, name), []).append(res)
            final = {name: rss_kb(p.pid) for name, p in procs.items()}
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(30)

    def med(load_name: str, name: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in runs[(load_name, name)])

    print(f"\n{args.requests} requests per run, {args.concurrency} clients, {args.rounds} rounds (medians)")
    cols = ("req/s", "p50 ms", "p99 ms", "cpu ms/req", "5xx+err", "wrong")
    print(f"{'load':<8} {'server':<7} " + " ".join(f"{c:>10}" for c in cols))
    for load_name in loads:
        for name in names:
            xs = runs[(load_name, name)]
            wrong = sum(sum(v.values()) for x in xs for v in x["unexpected"].values())
            errs = sum(x["server_errors"] + sum(x["transport_errors"].values()) for x in xs)
            rps, p50, p99 = (med(load_name, name, key) for key in ("rps", "p50_ms", "p99_ms"))
            print(
                f"{load_name:<8} {name:<7} {rps:>10.0f} {p50:>10.1f} {p99:>10.1f} "
                f"{med(load_name, name, CPU):>10.2f} {errs:>10} {wrong:>10}"
            )
        ratio = med(load_name, "direct", "rps") / med(load_name, "sdk", "rps")
        p99_gain = med(load_name, "sdk", "p99_ms") / med(load_name, "direct", "p99_ms")
        cpu = med(load_name, "sdk", CPU) / med(load_name, "direct", CPU)
        print(f"{load_name:<8} direct/sdk: throughput x{ratio:.2f}, p99 /{p99_gain:.2f}, CPU per request /{cpu:.2f}")
    worst = {}
    for x in runs[("hostile", "direct")]:
        for kind, p99 in x["p99_ms_by_kind"].items():
            worst.setdefault(kind, []).append(p99)
    slowest = sorted(((statistics.median(v), k) for k, v in worst.items()), reverse=True)[:4]
    print("hostile direct, slowest kinds by p99: " + ", ".join(f"{k} {v:.1f} ms" for v, k in slowest))
    print(
        "\nRSS MB idle -> after all runs: "
        + ", ".join(f"{n} {idle[n] / 1024:.0f} -> {final[n] / 1024:.0f}" for n in names)
    )
    hostile = med("host500", "direct", "p99_ms")
    verdict = "under" if hostile < TARGET_P99_MS else "OVER"
    print(f"hostile mix at {TARGET_RPS}/s offered: p99 {hostile:.1f} ms ({verdict} {TARGET_P99_MS:.0f} ms)")
    rps, p99 = med("valid", "direct", "rps"), med("open500", "direct", "p99_ms")
    print(
        f"target {TARGET_RPS} req/s with p99 < {TARGET_P99_MS:.0f} ms at {args.concurrency} clients: "
        f"closed-loop {rps:.0f} req/s (p99 {med('valid', 'direct', 'p99_ms'):.1f} ms); at {TARGET_RPS}/s offered "
        f"p99 {p99:.1f} ms -> {'met' if rps >= TARGET_RPS and p99 < TARGET_P99_MS else 'NOT met'}"
        f" (load avg now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)"
    )


if __name__ == "__main__":
    main()
