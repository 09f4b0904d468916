"""The HTTP ranking service under hostile input: strict types, bounded bodies, no 5xx, flat memory;
and the direct SQLite lookup it uses, checked value for value against the Feast SDK.

One ``llmhyper serve`` subprocess (the real command, on a free 127.0.0.1 port) serves an
export of the session's demo repo; the load runs in another subprocess
(``tests/support/loadgen.py``). Performance figures live in ``benchmarks/bench_http.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from support import loadgen

from llmhyper_feast.errors import StoreUnavailableError, UnknownUserError
from llmhyper_feast.serving.export import export_repo
from llmhyper_feast.serving.http import MAX_BODY_BYTES, MAX_ERRORS
from llmhyper_feast.serving.ranker import Ranker
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration

SMALL_BODY = 2048  # bytes: the most an error answer may take, whatever the request held
RSS_GROWTH_KB = 64 * 1024  # allowed growth of the server's RSS over the load run
IDLE_RSS_KB = 500 * 1024  # torch alone would take the service past this


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    users: list[str]
    ads: list[str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``llmhyper serve`` on an all-ads export of the demo repo, ready to answer."""
    tmp = tmp_path_factory.mktemp("http")
    models = tmp / "models"
    manifest = export_repo(demo_repo, models, per_ad=False)
    ids, _ = fa.read_user_matrix(fa.open_store(demo_repo), fa.read_feature_schema(fa.open_store(demo_repo)))
    port = _free_port()
    log = (tmp / "serve.log").open("w")
    cmd = [sys.executable, "-m", "llmhyper_feast", "serve", "--repo", str(demo_repo), "--models", str(models)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "FEAST_USAGE": "False"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:  # an external process's readiness: poll /health until it answers
            assert proc.poll() is None, f"llmhyper serve exited {proc.returncode}: {(tmp / 'serve.log').read_text()}"
            assert time.monotonic() < deadline, "llmhyper serve did not answer /health within 300 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield Server(url, proc.pid, [str(u) for u in ids[:300]], list(manifest.ad_ids))
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _post(client: httpx.Client, content: bytes | Iterator[bytes]) -> httpx.Response:
    return client.post("/rank", content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("k", ["5", 2.0, True, 0, -1, 10**9, 10**30], ids=repr)
def test_k_must_be_a_json_integer_in_range(client: httpx.Client, server: Server, k: object) -> None:
    r = client.post("/rank", json={"user_id": server.users[0], "k": k})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request" and [e["loc"] for e in body["errors"]] == [["body", "k"]]
    assert "JSON integer" in body["detail"]


def test_a_valid_request_still_ranks(client: httpx.Client, server: Server) -> None:
    r = client.post("/rank", json={"user_id": server.users[0], "ads": server.ads[:5], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["rank"] for i in body["items"]] == [1, 2, 3] and body["candidates"] == 5
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_ten_megabyte_user_id_is_refused_with_a_small_body(client: httpx.Client, chunked: bool) -> None:
    raw = json.dumps({"user_id": "x" * 10_000_000, "k": 3}).encode()
    content = iter([raw[i : i + 65536] for i in range(0, len(raw), 65536)]) if chunked else raw
    r = _post(client, content)
    assert r.status_code == 413 and len(r.content) < SMALL_BODY, (r.status_code, len(r.content))
    assert r.json()["error"] == "body_too_large" and "--max-body-bytes" in r.json()["detail"]


def test_oversized_body_is_refused_before_parsing(client: httpx.Client) -> None:
    junk = b"{" + b"x" * (MAX_BODY_BYTES + 1)  # not JSON: only the size can be judged
    r = _post(client, junk)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_long_ids_under_the_size_cap_are_422_without_echo(client: httpx.Client, server: Server) -> None:
    for body in ({"user_id": "u" * 20_000}, {"user_id": server.users[0], "ads": ["a" * 5_000]}):
        r = client.post("/rank", json=body)
        assert r.status_code == 422 and len(r.content) < SMALL_BODY, (r.status_code, len(r.content))
        assert "at most 256 characters" in r.text


def test_extra_keys_are_422_without_echo(client: httpx.Client, server: Server) -> None:
    r = client.post("/rank", json={"user_id": server.users[0], "k": 3, "debug": True})
    assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [["body", "debug"]]
    r = client.post("/rank", json={"user_id": server.users[0], "y" * 30_000: 1})  # a huge key name
    assert r.status_code == 422 and len(r.content) < SMALL_BODY, (r.status_code, len(r.content))
    r = client.post("/rank", json={"user_id": server.users[0], **{f"key{i}": i for i in range(2000)}})
    assert r.status_code == 422 and len(r.content) < SMALL_BODY, (r.status_code, len(r.content))
    assert len(r.json()["errors"]) == MAX_ERRORS and f"{2000 - MAX_ERRORS} more" in r.json()["detail"]


def test_serve_does_not_load_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "libtorch" not in maps, "llmhyper serve mapped libtorch: Feast's eager `import torch` was not avoided"
    assert _rss_kb(server.pid) < IDLE_RSS_KB


def test_hostile_load_gives_no_5xx_and_flat_memory(server: Server, tmp_path: Path) -> None:
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"users": server.users, "ads": server.ads}))
    cmd = [sys.executable, loadgen.__file__, "--url", f"{server.url}/rank", "--users-file", str(ids)]
    cmd += ["--requests", "2000", "--concurrency", "32", "--pid", str(server.pid), "--warmup", "200"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout)
    assert res["requests"] == 2000 and res["server_errors"] == 0, res["status"]
    assert res["transport_errors"] == {} and res["unexpected"] == {}, (res["transport_errors"], res["unexpected"])
    assert set(res["status"]) == {"200", "404", "413", "422"}, res["status"]  # every kind of answer was exercised
    rss = res["rss_kb"]
    assert rss["max"] - rss["start"] < RSS_GROWTH_KB, rss["samples"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


# --- the direct SQLite lookup against the Feast SDK (the reference path) --------------------------


def _pair(repo: Path, models: Path) -> tuple[Ranker, Ranker]:
    direct = Ranker(repo, models, reload_interval=0, unknown_user="error")
    sdk = Ranker(repo, models, reload_interval=0, unknown_user="error", online_lookup="feast")
    assert (direct.lookup, sdk.lookup) == ("sqlite", "feast")
    return direct, sdk


def _same_vectors(direct: Ranker, sdk: Ranker, users: list[str]) -> None:
    for got, want in zip(direct.user_vectors(users), sdk.user_vectors(users), strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)


def test_direct_lookup_matches_the_feast_sdk(demo_copy: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from llmhyper_feast.serving.http import create_app

    models = tmp_path / "models"
    export_repo(demo_copy, models, per_ad=False)
    store = fa.open_store(demo_copy)
    ids, _ = fa.read_user_matrix(store, fa.read_feature_schema(store))
    users = [str(u) for u in ids[:400]] + ["ghost_1", "", "u" * 300]
    direct, sdk = _pair(demo_copy, models)
    _same_vectors(direct, sdk, users)
    for u in users[:60]:
        assert direct.rank(u, k=1000) == sdk.rank(u, k=1000)
    for ranker in (direct, sdk):  # unknown users: 404 on both paths
        with pytest.raises(UnknownUserError):
            ranker.rank("ghost_1")

    # missing values: a user with one view's row only, and with a null value in it
    behaviour = fa.read_latest(store, "user_behaviour")
    row = behaviour.iloc[[0]].copy()
    row["user_id"], row["vegetarian"] = "partial_user", None
    row["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    store.write_to_online_store("user_behaviour", row.reset_index(drop=True))
    _same_vectors(direct, sdk, ["partial_user"])
    res = direct.rank("partial_user", k=1000)
    assert res == sdk.rank("partial_user", k=1000)
    assert "vegetarian" in res.imputed and "toys_games" in res.imputed and res.user_fallback is None

    # fresh values after a re-materialize: the next request sees them (nothing cached)
    interests = fa.read_latest(store, "user_interests")
    target = str(ids[0])
    before = direct.user_vectors([target])[0]
    fresh = interests[interests["user_id"] == target].copy()
    cols = [c for c in fresh.columns if c not in ("user_id", "event_timestamp")]
    fresh[cols] = 1.0 - fresh[cols].to_numpy()
    fresh["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    store.write_to_online_store("user_interests", fresh.reset_index(drop=True))
    after = direct.user_vectors([target])[0]
    assert not np.array_equal(before, after)
    _same_vectors(direct, sdk, [target, *users[:50]])
    assert direct.rank(target, k=1000) == sdk.rank(target, k=1000)

    # a missing, then a corrupt online store: 503 with one line naming the fix, on both paths
    client = TestClient(create_app(direct))
    online = demo_copy / "data" / "online_store.db"
    online.unlink()
    for damage in ("missing", "corrupt"):
        if damage == "corrupt":
            online.write_bytes(b"this is not a database" * 1000)
        for ranker in (direct, sdk):
            with pytest.raises(StoreUnavailableError, match="llmhyper repair --repo"):
                ranker.rank(target)
        r = client.post("/rank", json={"user_id": target, "k": 3})
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable", r.text
        assert "\n" not in r.json()["detail"] and "llmhyper repair --repo" in r.json()["detail"]


def test_surrogate_user_id_is_an_input_error(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/rank",
        content=b'{"user_id": "\\ud800x", "k": 3}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code in (404, 422) and len(r.content) < SMALL_BODY, r.text
