"""HTTP ranking service through a real uvicorn server on 127.0.0.1: success, errors, fallback, load."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from exporters import read_manifest
from llmhyper_feast.serving.export import export_repo
from llmhyper_feast.serving.http import create_app
from llmhyper_feast.serving.ranker import Ranker
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def exported(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The session's demo repo (read only) and an all-ads export of it."""
    models = tmp_path_factory.mktemp("serving") / "models"
    export_repo(demo_repo, models, per_ad=False)
    return demo_repo, models


@pytest.fixture(scope="module")
def ranker(exported: tuple[Path, Path]) -> Ranker:
    return Ranker(*exported, reload_interval=None)


@pytest.fixture(scope="module")
def server(ranker: Ranker):
    with ServerThread(create_app(ranker)) as srv:
        yield srv


@pytest.fixture(scope="module")
def user_ids(ranker: Ranker) -> list[str]:
    ids, _ = fa.read_user_matrix(ranker.store, fa.read_feature_schema(ranker.store))
    return [str(u) for u in np.random.default_rng(3).choice(ids, 200, replace=False)]


def test_health(server: ServerThread, ranker: Ranker, exported: tuple[Path, Path]) -> None:
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    body, manifest = r.json(), read_manifest(exported[1])
    assert body["model_version"] == ranker.model_version and len(body["model_version"]) == 16
    assert body["n_ads"] == len(manifest.ad_ids) and body["feature_hash"] == manifest.feature_hash
    assert body["n_features"] == len(manifest.feature_names) and body["status"] == "ok"


def test_rank_matches_the_ranker(server: ServerThread, ranker: Ranker, user_ids: list[str]) -> None:
    with httpx.Client(base_url=server.url) as client:
        for u in user_ids[:20]:
            r = client.post("/rank", json={"user_id": u, "k": 7})
            assert r.status_code == 200, r.text
            body, direct = r.json(), ranker.rank(u, k=7)
            assert [(i["ad_id"], i["source"]) for i in body["items"]] == [(a, s) for a, _, s in direct]
            np.testing.assert_allclose([i["ctr"] for i in body["items"]], [c for _, c, _ in direct], rtol=1e-7)
            assert [i["rank"] for i in body["items"]] == list(range(1, 8))
            assert body["model_version"] == ranker.model_version and body["user_fallback"] is None
        cand = list(ranker.ad_ids[5:12])
        r = client.post("/rank", json={"user_id": user_ids[0], "ads": cand, "k": 100})
        assert r.status_code == 200 and r.json()["candidates"] == len(cand)
        assert [i["ad_id"] for i in r.json()["items"]] == [a for a, _, _ in ranker.rank(user_ids[0], cand, 100)]
        r = client.post("/rank", json={"user_id": user_ids[0]})  # k defaults to 10
        assert r.status_code == 200 and len(r.json()["items"]) == 10


def test_unknown_user_and_ads_are_404(server: ServerThread, ranker: Ranker, user_ids: list[str]) -> None:
    with httpx.Client(base_url=server.url) as client:
        r = client.post("/rank", json={"user_id": "ghost_user"})
        assert r.status_code == 404
        assert r.json()["error"] == "unknown_user" and "ghost_user" in r.json()["detail"]
        r = client.post("/rank", json={"user_id": user_ids[0], "ads": [ranker.ad_ids[0], "zz_1", "zz_2"]})
        assert r.status_code == 404
        body = r.json()
        assert body["error"] == "unknown_ads" and body["ad_ids"] == ["zz_1", "zz_2"]
        assert "zz_1" in body["detail"] and "zz_2" in body["detail"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"k": 3}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": 12}, "user_id"),
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": "ten"}, "k"),
        ({"user_id": "u", "k": 10_001}, "k"),
        ({"user_id": "u", "ads": "ad00001"}, "ads"),
        ({"user_id": "u", "ads": []}, "ads"),
        ({"user_id": "u", "ads": [""]}, "ads"),
        ({"user_id": "u", "colour": "red"}, "colour"),
        (["u"], "body"),
    ],
)
def test_malformed_bodies_are_422(server: ServerThread, body: object, field: str) -> None:
    r = httpx.post(f"{server.url}/rank", json=body)
    assert r.status_code == 422, r.text
    out = r.json()
    assert out["error"] == "invalid_request" and field in out["detail"] and "Expected a JSON object" in out["detail"]
    assert any(field in [str(p) for p in e["loc"]] for e in out["errors"])


def test_invalid_json_is_422(server: ServerThread) -> None:
    r = httpx.post(f"{server.url}/rank", content=b"{user_id: nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_population_mean_fallback_over_http(exported: tuple[Path, Path]) -> None:
    fallback = Ranker(*exported, unknown_user="population_mean", reload_interval=None)
    with ServerThread(create_app(fallback)) as srv:
        r = httpx.post(f"{srv.url}/rank", json={"user_id": "ghost_user", "k": 4})
    assert r.status_code == 200
    body, direct = r.json(), fallback.rank("ghost_user", k=4)
    assert body["user_fallback"] == "population_mean"
    assert [i["ad_id"] for i in body["items"]] == [a for a, _, _ in direct]


def test_bounded_load(server: ServerThread, ranker: Ranker, user_ids: list[str]) -> None:
    n_requests, n_threads = 500, 8
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(n_requests):
        body = {"user_id": user_ids[i % len(user_ids)], "k": 10}
        if i % 4 == 0:
            body["ads"] = list(rng.choice(ranker.ad_ids, 20, replace=False))
        bodies.append(body)
    local = threading.local()

    def call(body: dict) -> tuple[int, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=30)
        t = time.perf_counter()
        try:
            status = local.client.post("/rank", json=body).status_code
        except httpx.HTTPError:
            status = -1
        return status, time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(call, bodies))
    wall = time.perf_counter() - start
    statuses = [s for s, _ in results]
    lat_ms = np.array([t for _, t in results]) * 1e3
    print(
        f"\nload: {n_requests} requests / {n_threads} threads in {wall:.2f} s = {n_requests / wall:.0f} req/s; "
        f"p50 {np.percentile(lat_ms, 50):.2f} ms, p99 {np.percentile(lat_ms, 99):.2f} ms"
    )
    assert statuses.count(200) == n_requests, {s: statuses.count(s) for s in set(statuses)}


def test_ranker_reads_a_triton_layout(
    exported: tuple[Path, Path], ranker: Ranker, user_ids: list[str], tmp_path: Path
) -> None:
    repo, _ = exported
    manifest = export_repo(repo, tmp_path / "triton", layout="triton", per_ad=False)
    assert manifest.models["all_ads"].path == "all_ads/1/model.onnx"
    assert (tmp_path / "triton" / "all_ads" / "config.pbtxt").is_file()
    triton = Ranker(repo, tmp_path / "triton", reload_interval=None)
    np.testing.assert_array_equal(triton.score_users(user_ids), ranker.score_users(user_ids))


def test_serve_command_starts_uvicorn(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from llmhyper_feast.cli import cli as group

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    repo, models = exported
    res = CliRunner().invoke(group, ["serve", "--repo", str(repo), "--models", str(models), "--port", "8123"])
    assert res.exit_code == 0, res.output
    ((app, kw),) = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert {"/rank", "/health"} <= {route.path for route in app.routes}
    assert "http://127.0.0.1:8123" in res.output
