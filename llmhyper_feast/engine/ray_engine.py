"""The Ray engine: groups run as Ray tasks on a local Ray instance or on the cluster at ``ray.address``.

Ray is imported only when the engine starts. A task whose worker dies is retried
(``ray.max_retries``); when the retries run out the run stops with an UnavailableError and what
finished before is kept by the caller.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from llmhyper_feast.engine.base import Engine, crash_point
from llmhyper_feast.errors import ConfigError, LLMHyperError, UnavailableError

if TYPE_CHECKING:
    from llmhyper_feast.config import RayConfig, Settings

C = TypeVar("C")
G = TypeVar("G")
R = TypeVar("R")

INSTALL_HINT = "pip install 'llmhyper-feast[ray]'"
_PROBE_TIMEOUT_S = 3.0
_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # a local instance; the default (30% of RAM) is far more than jobs need


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"engine: ray needs the package 'ray', which is not installed. Install it with: {INSTALL_HINT} "
            "(or set engine: local)."
        ) from None
    return ray


def check_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for ``auto``; ConfigError otherwise."""
    if address == "auto":
        return None
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"ray.address must be host:port (the head's GCS port, e.g. 10.0.0.5:6379), ray://host:10001 or auto; "
            f"got {address!r}. Leave it empty to start a local Ray instance."
        )
    return host.strip("[]"), int(port)


def _probe(address: str) -> None:
    """Fail fast (before anything is written) when the cluster's port does not answer."""
    target = check_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise UnavailableError(
            f"Cannot reach the Ray cluster at ray.address={address} ({exc.strerror or exc}). Start it "
            f"(`ray start --head` on that machine) or fix ray.address (empty starts a local Ray instance); "
            "nothing was written."
        ) from None


def _run_group(fn: Callable[[Any, Any], Any], context: Any, group: Any) -> Any:
    result = fn(context, group)
    crash_point()  # test hook: a worker dying after the work, before its result reaches the driver
    return result


class RayEngine(Engine):
    """Groups run as Ray tasks (one CPU each); results come back to the calling process as they finish."""

    name: ClassVar[str] = "ray"
    distributed: ClassVar[bool] = True

    def __init__(self, settings: Settings | None = None) -> None:
        from llmhyper_feast.config import RayConfig

        super().__init__(settings)
        self.config: RayConfig = settings.ray if settings is not None else RayConfig()
        self._owned = False

    def _start(self) -> None:
        ray = import_ray()
        cfg = self.config
        if cfg.address:
            _probe(cfg.address)
        if ray.is_initialized():  # a session opened by the caller (or a test) is reused, not closed
            self._owned = False
            return
        common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        try:
            if cfg.address:
                ray.init(address=cfg.address, **common)
            else:
                ray.init(num_cpus=cfg.num_cpus, object_store_memory=_OBJECT_STORE_BYTES, **common)
        except LLMHyperError:
            raise
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            where = f"the Ray cluster at ray.address={cfg.address}" if cfg.address else "a local Ray instance"
            raise UnavailableError(
                f"Could not connect to {where}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}. "
                "Check that the cluster runs the same Ray version, or set engine: local; nothing was written."
            ) from None
        self._owned = True

    def _stop(self) -> None:
        if self._owned:
            import_ray().shutdown()
            self._owned = False

    @property
    def workers(self) -> int:
        ray = import_ray()
        if ray.is_initialized():
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self.config.num_cpus or 1

    def worker_concurrency(self, default: int) -> int:
        return self.config.max_concurrency_per_worker or default

    def map_groups(
        self, fn: Callable[[C, G], R], groups: Sequence[G], *, context: C, what: str = "work"
    ) -> Generator[tuple[int, R], None, None]:
        ray = import_ray()
        from ray.exceptions import RayError, RayTaskError

        self.start()
        pending: dict[Any, int] = {}
        try:
            task = ray.remote(_run_group).options(
                num_cpus=1, max_retries=self.config.max_retries, retry_exceptions=False, name=f"llmhyper-{what}"
            )
            shared = ray.put(context)
            pending = {task.remote(fn, shared, g): i for i, g in enumerate(groups)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:  # the group raised: surface our own error as it was
                        cause = exc.cause if isinstance(exc.cause, BaseException) else None
                        if cause is not None:
                            raise cause from None
                        raise
                    except RayError as exc:
                        raise UnavailableError(
                            f"A Ray worker running {what} died {self.config.max_retries + 1} time(s) "
                            f"({type(exc).__name__}); groups that finished are kept. Re-run the command to finish "
                            "the rest; raise ray.max_retries if workers die often (e.g. out of memory)."
                        ) from None
                    yield i, result
        finally:
            for ref in pending:
                ray.cancel(ref)
            self.stop()
