"""Run the fake OpenAI server (tests/support/fake_openai.py) as its own process, until killed.

    python -m tests.support.serve_fake_openai --port 0 --delay-ms 300 --default good \
        --requests-log /tmp/requests.jsonl

Prints one line ``ready <base_url>`` on stdout once it listens (``--port 0`` picks a free
port). With ``--requests-log`` every request body is appended to that file as one JSON line
when it arrives, so another process can count and inspect the calls.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .fake_openai import BEHAVIOURS, FakeOpenAI, _Handler


class ServedFakeOpenAI(FakeOpenAI):
    """FakeOpenAI on a chosen port, optionally logging each request body to a JSONL file."""

    def __init__(self, *, port: int = 0, requests_log: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.port = port
        self.requests_log = requests_log
        self._log_lock = threading.Lock()

    def __enter__(self) -> ServedFakeOpenAI:
        if self.port == 0:
            super().__enter__()
            return self
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        behaviour = super()._next(body, headers)
        if self.requests_log is not None:
            line = json.dumps({"behaviour": behaviour, "body": body}) + "\n"
            with self._log_lock, self.requests_log.open("a", encoding="utf-8") as fh:
                fh.write(line)
        return behaviour


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, start the server, print ``ready <base_url>`` and block until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="Port on 127.0.0.1 (0 = any free port).")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="Delay before every answer, in milliseconds.")
    parser.add_argument("--default", default="good", choices=sorted(BEHAVIOURS), help="Behaviour of every call.")
    parser.add_argument("--requests-log", type=Path, default=None, help="Append each request body (JSONL) here.")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ServedFakeOpenAI(
        port=args.port, requests_log=args.requests_log, default=args.default, delay_ms=args.delay_ms
    ) as fake:
        print(f"ready {fake.base_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
