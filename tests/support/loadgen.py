"""HTTP load generator for ``POST /rank``: N keep-alive clients sending a mix of valid and hostile requests.

Runs in its own process (``python tests/support/loadgen.py --url ... --users-file ...``) so its
CPU does not count against the server's, and prints one JSON document: requests, wall time,
req/s, latency percentiles (ms), status counts (overall and per request kind), transport
errors, and the server's RSS over time (``VmRSS`` of ``--pid`` from ``/proc``).

Closed loop by default (each client sends its next request when the previous answer arrives);
``--rate R`` switches to an open loop: request i is due at ``start + i / R`` and its latency is
measured from that moment, so queueing in front of a saturated server is counted.

Only the standard library is used (uvloop when installed), raw sockets and pre-encoded
requests, to keep the generator's own cost per request small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EXPECTED", "KINDS", "LoadResult", "build_requests", "main", "run"]

# Request kinds and the statuses a correct server answers them with.
EXPECTED: dict[str, set[int]] = {
    "valid": {200},
    "valid_ads": {200},
    "unknown_user": {404},
    "unknown_ads": {404},
    "k_str": {422},
    "k_float": {422},
    "k_bool": {422},
    "k_zero": {422},
    "k_huge": {422},
    "k_bignum": {422},
    "extra_key": {422},
    "bad_json": {422},
    "not_object": {422},
    "deep_json": {422},
    "long_user_id": {413, 422},
    "surrogate_user_id": {404, 422},
    "oversized": {413},
    "oversized_chunked": {413},
}
KINDS = tuple(EXPECTED)
DEFAULT_MIX = {"valid": 60, "valid_ads": 10, **{k: 2 for k in KINDS if k not in ("valid", "valid_ads")}}
OVERSIZED_BYTES = 100_000


@dataclass
class LoadResult:
    """What one run measured (``as_dict`` is the JSON the CLI prints)."""

    requests: int
    seconds: float
    latencies_ms: list[float]
    status: Counter[int]
    by_kind: dict[str, Counter[int]]
    errors: Counter[str]
    rss_kb: list[tuple[float, int]] = field(default_factory=list)
    server_cpu_s: float | None = None  # user + system CPU the server used during the run
    kind_latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def percentile(self, q: float, kind: str | None = None) -> float:
        """Latency percentile ``q`` in [0, 100] (nearest rank), in ms, of every request or of one kind."""
        samples = self.latencies_ms if kind is None else self.kind_latencies_ms.get(kind, [])
        if not samples:
            return float("nan")
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    def unexpected(self) -> dict[str, dict[int, int]]:
        """Per kind, the statuses outside :data:`EXPECTED` (transport errors count as status -1)."""
        out = {}
        for kind, counts in self.by_kind.items():
            bad = {s: n for s, n in counts.items() if s not in EXPECTED[kind]}
            if bad:
                out[kind] = bad
        return out

    def as_dict(self) -> dict[str, Any]:
        rss = [kb for _, kb in self.rss_kb]
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p99_ms": round(self.percentile(99), 2),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 2),
            "p99_ms_by_kind": {k: round(self.percentile(99, k), 2) for k in sorted(self.kind_latencies_ms)},
            "status": {str(s): n for s, n in sorted(self.status.items())},
            "server_errors": sum(n for s, n in self.status.items() if s >= 500),
            "server_cpu_ms_per_request": (
                round(self.server_cpu_s * 1e3 / self.requests, 3) if self.server_cpu_s and self.requests else None
            ),
            "transport_errors": dict(self.errors),
            "unexpected": {k: {str(s): n for s, n in v.items()} for k, v in self.unexpected().items()},
            "rss_kb": {
                "start": rss[0] if rss else None,
                "end": rss[-1] if rss else None,
                "max": max(rss) if rss else None,
                "samples": [[round(t, 2), kb] for t, kb in self.rss_kb],
            },
        }


def _post(host: str, path: str, body: bytes, *, chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    chunks = [body[i : i + 8192] for i in range(0, len(body), 8192)]
    return (
        f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
        + b"0\r\n\r\n"
    )


def _body(kind: str, rng: random.Random, users: Sequence[str], ads: Sequence[str]) -> bytes:
    user = rng.choice(users)
    doc: Any
    if kind == "valid":
        doc = {"user_id": user, "k": rng.choice([1, 5, 10, 50])}
    elif kind == "valid_ads":
        doc = {"user_id": user, "ads": rng.sample(list(ads), min(20, len(ads))), "k": 10}
    elif kind == "unknown_user":
        doc = {"user_id": f"ghost_{rng.randrange(10**9)}", "k": 10}
    elif kind == "unknown_ads":
        doc = {"user_id": user, "ads": [ads[0], f"zz_{rng.randrange(10**9)}"], "k": 3}
    elif kind == "k_str":
        doc = {"user_id": user, "k": "5"}
    elif kind == "k_float":
        doc = {"user_id": user, "k": 2.0}
    elif kind == "k_bool":
        doc = {"user_id": user, "k": True}
    elif kind == "k_zero":
        doc = {"user_id": user, "k": 0}
    elif kind == "k_huge":
        doc = {"user_id": user, "k": 10**9}
    elif kind == "k_bignum":
        return f'{{"user_id": "{user}", "k": 1{"0" * 400}}}'.encode()
    elif kind == "extra_key":
        doc = {"user_id": user, "k": 3, "debug": True}
    elif kind == "bad_json":
        return b'{"user_id": "' + user.encode() + b'", "k": '
    elif kind == "not_object":
        doc = rng.choice([[user], user, 5, None])
    elif kind == "deep_json":
        return b"[" * 5000 + b"]" * 5000
    elif kind == "long_user_id":
        doc = {"user_id": "x" * 20_000, "k": 3}
    elif kind == "surrogate_user_id":
        return b'{"user_id": "\\ud800\\udfff\\ud800", "k": 3}'
    elif kind in ("oversized", "oversized_chunked"):
        doc = {"user_id": user, "ads": ["a" * 98] * (OVERSIZED_BYTES // 100), "k": 3}
    else:
        raise ValueError(f"Unknown request kind {kind!r}; expected one of {KINDS}.")
    return json.dumps(doc).encode()


def build_requests(
    n: int,
    url: str,
    users: Sequence[str],
    ads: Sequence[str],
    mix: dict[str, float] | None = None,
    seed: int = 0,
) -> list[tuple[str, bytes]]:
    """``n`` (kind, raw HTTP/1.1 request) pairs drawn from ``mix`` (kind -> weight)."""
    parts = urlsplit(url)
    host, path = parts.netloc, (parts.path or "/rank")
    weights = mix or DEFAULT_MIX
    unknown = set(weights) - set(KINDS)
    if unknown:
        raise ValueError(f"Unknown request kinds {sorted(unknown)}; expected some of {list(KINDS)}.")
    rng = random.Random(seed)
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=n)
    return [(k, _post(host, path, _body(k, rng, users, ads), chunked=k == "oversized_chunked")) for k in kinds]


class _Closed(Exception):
    """The server closed the connection (normal after some error answers)."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep_alive) of one response; the body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("connection") != "close"


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` and its threads so far (None if it is gone)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sample_rss(pid: int, interval: float, out: list[tuple[float, int]], start: float) -> None:
    path = Path(f"/proc/{pid}/status")
    while True:
        try:
            for line in path.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append((time.perf_counter() - start, int(line.split()[1])))
        except OSError:
            return
        await asyncio.sleep(interval)


async def run(
    url: str,
    requests: Sequence[tuple[str, bytes]],
    *,
    concurrency: int = 32,
    rate: float | None = None,
    pid: int | None = None,
    rss_interval: float = 0.2,
    timeout: float = 30.0,
) -> LoadResult:
    """Send ``requests`` over ``concurrency`` keep-alive connections to ``url``'s host and port."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    status: Counter[int] = Counter()
    by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    errors: Counter[str] = Counter()
    kind_latencies: dict[str, list[float]] = defaultdict(list)
    rss: list[tuple[float, int]] = []
    start = time.perf_counter()
    cpu0 = _cpu_seconds(pid) if pid else None
    sampler = asyncio.create_task(_sample_rss(pid, rss_interval, rss, start)) if pid else None

    async def feed() -> None:
        for i in range(len(requests)):
            if rate is None:
                queue.put_nowait((i, 0.0))
                continue
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((i, due))
        for _ in range(concurrency):
            queue.put_nowait(None)  # one stop sign per client

    async def client() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (item := await queue.get()) is not None:
            i, due = item
            kind, raw = requests[i]
            t0 = due or time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reader, writer = conn
                writer.write(raw)
                await writer.drain()
                code, keep = await asyncio.wait_for(_read_response(reader), timeout)
            except (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError, IndexError) as exc:
                code, keep = -1, False
                errors[type(exc).__name__] += 1
            latencies.append((time.perf_counter() - t0) * 1e3)
            kind_latencies[kind].append(latencies[-1])
            status[code] += 1
            by_kind[kind][code] += 1
            if not keep and conn is not None:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(feed(), *(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    cpu1 = _cpu_seconds(pid) if pid else None
    if sampler:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return LoadResult(len(latencies), seconds, latencies, status, dict(by_kind), errors, rss, cpu, dict(kind_latencies))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run a load and print the result as one JSON document."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/rank")
    ap.add_argument("--users-file", type=Path, required=True, help='JSON {"users": [...], "ads": [...]}')
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=None, help="Open loop at this many requests/s (default: closed).")
    ap.add_argument("--mix", default=None, help='JSON {kind: weight}; "valid" for valid requests only.')
    ap.add_argument("--pid", type=int, default=None, help="Server pid whose VmRSS is sampled.")
    ap.add_argument("--warmup", type=int, default=0, help="Valid requests sent (and not counted) first.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ids = json.loads(args.users_file.read_text())
    mix = None if args.mix is None else ({"valid": 1.0} if args.mix == "valid" else json.loads(args.mix))
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uvloop.install()
    except ImportError:
        pass
    if args.warmup:
        warm = build_requests(args.warmup, args.url, ids["users"], ids["ads"], {"valid": 1.0}, seed=args.seed + 1)
        asyncio.run(run(args.url, warm, concurrency=args.concurrency))
    reqs = build_requests(args.requests, args.url, ids["users"], ids["ads"], mix, seed=args.seed)
    result = asyncio.run(run(args.url, reqs, concurrency=args.concurrency, rate=args.rate, pid=args.pid))
    json.dump(result.as_dict(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
