"""Throughput of the 'openai' backend at concurrency 1 vs N against a fake server with fixed latency.

Starts the test suite's fake OpenAI server on 127.0.0.1 with ``--delay-ms`` per call, in a
child process (so that its CPU work does not share the client's interpreter lock), sends
``--requests`` chat requests through the real SDK at concurrency 1 and at ``--concurrency``,
and prints requests/second for both and their ratio (the target is >= 8x at 16). It also
prints the most requests the server saw in flight, which must not exceed the concurrency.

    python benchmarks/bench_openai_concurrency.py [--requests 64] [--concurrency 16] [--delay-ms 100]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_openai import FakeOpenAI  # noqa: E402

from llmhyper_feast.backends.llm import get_backend  # noqa: E402
from llmhyper_feast.backends.llm.base import ChatRequest  # noqa: E402
from llmhyper_feast.generation.answers import request_weights  # noqa: E402

FEATURES = tuple(f"feature_{i}" for i in range(10))


def serve(conn, delay_ms: float) -> None:
    """Child process: run the fake server and answer 'reset' / 'in_flight' / 'stop' over ``conn``."""
    with FakeOpenAI(delay_ms=delay_ms) as server:
        conn.send(server.base_url)
        while True:
            command = conn.recv()
            if command == "reset":
                server.reset()
                conn.send(None)
            elif command == "in_flight":
                conn.send((server.max_in_flight, server.calls))
            else:
                return


def measure(
    conn, base_url: str, requests: list[ChatRequest], concurrency: int
) -> tuple[float, float, int, tuple[int, int]]:
    """(wall seconds, client CPU seconds, valid outcomes, (max in flight, HTTP calls))."""
    conn.send("reset")
    conn.recv()
    backend = get_backend("openai", {"base_url": base_url, "api_key": "sk-bench", "model": "fake-model"})
    start, cpu = time.perf_counter(), time.process_time()
    outcomes = request_weights(backend, requests, concurrency=concurrency, progress=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    valid = sum(1 for o in outcomes if o.failed is None)
    conn.send("in_flight")
    return elapsed, cpu, valid, conn.recv()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    args = parser.parse_args()
    requests = [
        ChatRequest(messages=({"role": "user", "content": f"Weights for ad {i}."},), feature_names=FEATURES, n=2)
        for i in range(args.requests)
    ]
    parent, child = mp.Pipe()
    process = mp.get_context("spawn").Process(target=serve, args=(child, args.delay_ms), daemon=True)
    process.start()
    try:
        base_url = parent.recv()
        measure(parent, base_url, requests[:2], 2)  # warm-up: SDK import, client set-up
        rows = {}
        for concurrency in (1, args.concurrency):
            elapsed, cpu, valid, (in_flight, calls) = measure(parent, base_url, requests, concurrency)
            rows[concurrency] = len(requests) / elapsed
            print(
                f"concurrency={concurrency:>3}: {elapsed:6.2f} s for {len(requests)} requests ({calls} HTTP calls) = "
                f"{rows[concurrency]:6.1f} req/s, client CPU {1000 * cpu / len(requests):.1f} ms/request, "
                f"valid {valid}/{len(requests)}, max in flight {in_flight}"
            )
    finally:
        parent.send("stop")
        process.join(timeout=10)
    ratio = rows[args.concurrency] / rows[1]
    ideal = min(args.concurrency, len(requests))
    print(f"throughput ratio concurrency {args.concurrency} vs 1: {ratio:.1f}x (ideal {ideal}x, target >= 8x)")


if __name__ == "__main__":
    main()
