"""Generation requests online at several concurrencies vs through the Batch API, against a loopback server.

Starts the test suite's fake OpenAI server on 127.0.0.1 in a child process, answering each
online call after ``--delay-ms``. ``--ads`` ads x 2 feature batches (10 features each, ``n=2``)
are asked:

* online: ``request_weights`` (SDK, answer cache, validation) at each ``--concurrency``;
* batch: the input JSONL built as ``llmhyper batch`` builds it (``jobs.batch.request_lines``),
  uploaded, the batch created and polled (the fake server completes it after two polls,
  answering every line without the per-call delay: a real batch takes minutes to hours, so
  its wall time here measures only the client's and the loopback's work), the output
  downloaded and ingested into the answer cache, then ``request_weights`` as the runner calls it
  (every answer now a cache hit).

Prints ads/min and client CPU per request for every mode, and the batch mode's client CPU
relative to each online run.

    python benchmarks/bench_openai_batch.py [--ads 2000] [--concurrency 8 32 128] [--delay-ms 100]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_openai import FakeOpenAI  # noqa: E402

from llmhyper_feast.backends.llm import get_backend  # noqa: E402
from llmhyper_feast.backends.llm.base import ChatRequest  # noqa: E402
from llmhyper_feast.generation.answers import request_weights  # noqa: E402
from llmhyper_feast.generation.cache import AnswerCache  # noqa: E402

FEATURES = tuple(f"feature_{i}" for i in range(20))


def serve(conn, delay_ms: float) -> None:
    """Child process: run the fake server and answer 'stats' / 'stop' over ``conn``."""
    with FakeOpenAI(delay_ms=delay_ms) as server:
        conn.send(server.base_url)
        while True:
            command = conn.recv()
            if command == "stats":
                conn.send((server.calls, server.batches_created, server.batch_lines_run))
            else:
                return


def make_requests(ads: int) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=(
                {"role": "system", "content": "Write one weight per user feature for the ad's CTR model."},
                {"role": "user", "content": f"New ad to model:\nTitle: ad {i}\nFeatures batch {b}."},
            ),
            feature_names=FEATURES[10 * b : 10 * b + 10],
            n=2,
        )
        for i in range(ads)
        for b in range(2)
    ]


def backend_for(base_url: str, cache_dir: Path):
    options = {"base_url": base_url, "api_key": "sk-bench", "model": "fake-model", "max_retries": 2}
    return get_backend("openai", options, cache=AnswerCache(cache_dir))


def online(base_url: str, requests: list[ChatRequest], concurrency: int) -> tuple[float, float, int]:
    """(wall s, client CPU s, valid outcomes)."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = backend_for(base_url, Path(tmp))
        start, cpu = time.perf_counter(), time.process_time()
        outcomes = request_weights(backend, requests, concurrency=concurrency, progress=False)
        return time.perf_counter() - start, time.process_time() - cpu, sum(o.failed is None for o in outcomes)


def batch(base_url: str, requests: list[ChatRequest]) -> tuple[float, float, int, int]:
    """(wall s, client CPU s, valid outcomes, HTTP calls to the Batch API)."""
    from llmhyper_feast.generation.batch import ENDPOINT, split_lines
    from llmhyper_feast.jobs.batch import _ingest, request_lines

    with tempfile.TemporaryDirectory() as tmp:
        backend = backend_for(base_url, Path(tmp))
        start, cpu = time.perf_counter(), time.process_time()
        client = backend.sync_client()
        lines = [line for r in requests for line in request_lines(backend, r, backend.cache_key(r))]
        ids, http = [], 0
        for chunk in split_lines(lines):
            data = "".join(line.text + "\n" for line in chunk).encode()
            upload = client.files.create(file=("input.jsonl", data), purpose="batch")
            created = client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h")
            ids.append(created.id)
            http += 2
        texts = []
        for bid in ids:
            while (got := client.batches.retrieve(bid)).status not in ("completed", "failed", "expired"):
                http += 1
            http += 1
            for fid in (got.output_file_id, got.error_file_id):
                if fid:
                    texts.append(client.files.content(fid).text)
                    http += 1
        _ingest(backend, texts, None)
        outcomes = request_weights(backend, requests, concurrency=8, progress=False)
        return time.perf_counter() - start, time.process_time() - cpu, sum(o.failed is None for o in outcomes), http


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--delay-ms", type=float, default=100.0)
    args = parser.parse_args()
    requests = make_requests(args.ads)
    parent, child = mp.Pipe()
    process = mp.get_context("spawn").Process(target=serve, args=(child, args.delay_ms), daemon=True)
    process.start()
    try:
        base_url = parent.recv()
        online(base_url, requests[:4], 2)  # warm-up: SDK import, client set-up
        cpu_online = {}
        for c in args.concurrency:
            wall, cpu, valid = online(base_url, requests, c)
            cpu_online[c] = cpu
            print(
                f"online concurrency={c:>3}: {wall:6.1f} s, {60 * args.ads / wall:8.0f} ads/min, client CPU "
                f"{1000 * cpu / len(requests):5.2f} ms/request, valid {valid}/{len(requests)}"
            )
        wall, cpu, valid, http = batch(base_url, requests)
        print(
            f"batch (loopback, no queueing): {wall:6.1f} s, {60 * args.ads / wall:8.0f} ads/min, client CPU "
            f"{1000 * cpu / len(requests):5.2f} ms/request, valid {valid}/{len(requests)}, {http} Batch API HTTP calls"
        )
        parent.send("stats")
        calls, batches, lines = parent.recv()
        print(f"server: {calls} online calls, {batches} batch(es), {lines} batch lines answered")
        for c, value in cpu_online.items():
            print(f"batch client CPU / online concurrency={c} client CPU: {cpu / value:.2f}")
    finally:
        parent.send("stop")
        process.join(timeout=10)


if __name__ == "__main__":
    main()
