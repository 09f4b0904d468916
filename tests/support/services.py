"""Store servers the integration tests start and stop themselves: redis-server, a PostgreSQL cluster, local Ray.

Each helper is a context manager that skips the test (naming the apt package) when the binary
is missing, waits until the server accepts connections, and stops it on exit, failures included.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """A redis-server on 127.0.0.1 (no persistence, files under ``workdir``); yields its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (install it, e.g. `apt-get install redis-server`, to run this test)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*cmd, "--dir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    ready, log = threading.Event(), []

    def watch() -> None:  # reads the log until redis exits, so its pipe never fills
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if "Ready to accept connections" in line:
                ready.set()
        ready.set()  # exited: stop waiting

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(STARTUP_TIMEOUT) or proc.poll() is not None:
            raise RuntimeError(f"redis-server did not start on port {port}:\n{''.join(log[-20:])}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster: where to connect (trust auth: any password is accepted)."""

    host: str
    port: int
    user: str
    database: str
    socket_dir: Path

    def conninfo(self, database: str | None = None) -> str:
        """A libpq connection string for ``database`` (default: the cluster's database)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={database or self.database}"

    def yaml_block(self, kind: str, database: str | None = None) -> str:
        """The ``offline_store:`` or ``online_store:`` block of feature_store.yaml for this cluster."""
        return (
            f"{kind}:\n  type: postgres\n  host: {self.host}\n  port: {self.port}\n"
            f"  database: {database or self.database}\n  db_schema: public\n  user: {self.user}\n"
            "  password: unused\n  sslmode: disable\n"
        )

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its name."""
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


def _pg_binary(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster in a temp dir on a free 127.0.0.1 port, stopped (fast) on exit.

    As root the cluster runs as the ``postgres`` OS user (PostgreSQL refuses to run as root).
    """
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `apt-get install postgresql` to run this")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: `pip install -e .[postgres]` to run this test")
    prefix: list[str] = []
    user = "postgres"
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root needs `runuser` (util-linux) to start PostgreSQL as the postgres user")
        prefix = [runuser, "-u", "postgres", "--"]
    # mkdtemp under /tmp, not pytest's tmp_path: the postgres user cannot enter root's 0700 pytest dirs
    root = Path(tempfile.mkdtemp(prefix="llmhyper-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if prefix:
        import pwd

        owner = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    started = False
    try:
        _run([*prefix, initdb, "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync"], "initdb")
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        # -w: pg_ctl returns once the server accepts connections
        _run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start"], "start")
        started = True
        yield Postgres("127.0.0.1", port, user, "postgres", sockets)
    finally:
        if started:
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"PostgreSQL {what} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")


def copy_frame_to_postgres(conninfo: str, table: str, df: object, types: dict[str, str]) -> None:
    """Create ``table`` with column ``types`` (SQL types, in order) and load ``df``'s rows with COPY."""
    import pandas as pd
    import psycopg

    assert isinstance(df, pd.DataFrame)
    columns = ", ".join(f'"{c}" {t}' for c, t in types.items())
    names = ", ".join(f'"{c}"' for c in types)
    with psycopg.connect(conninfo) as conn:
        conn.execute(f'CREATE TABLE "{table}" ({columns})')
        with conn.cursor() as cur, cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
            for row in df[list(types)].itertuples(index=False, name=None):
                copy.write_row([None if v is None or (isinstance(v, float) and v != v) else v for v in row])
        conn.commit()


@contextmanager
def local_ray() -> Iterator[None]:
    """Ray's local mode for one test: shut down afterwards so the next test starts from a clean process."""
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed: `pip install -e .[ray]` to run this test")
    try:
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        try:  # Feast keeps a module flag saying it initialised Ray; reset it with the shutdown
            from feast.infra import ray_initializer

            ray_initializer._ray_initialized = False
        except ImportError:
            pass
