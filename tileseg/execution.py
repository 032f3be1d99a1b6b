"""Where dask graphs run: in-process threads, one task at a time, processes, or a cluster.

One place resolves a scheduler (a name, a cluster address, a ``distributed.Client`` or a
``get``-like callable, as dask's own ``get_scheduler`` accepts), opens a client and runs a graph
with a callback per finished task. predict, vectorize and batch all use it. It imports neither
torch nor the model code: polygonizing a mask must not load a deep-learning framework.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from tileseg.errors import ConfigError, RunError, TilesegError

logger = logging.getLogger(__name__)

SCHEDULER_ENV = "TILESEG_SCHEDULER"
DASK_CONFIG_KEY = "tileseg.scheduler"
CONNECT_TIMEOUT_KEY = "tileseg.connect-timeout"  # dask config: how long to try a scheduler
DEFAULT_CONNECT_TIMEOUT = "20s"
# dask config: how long a run waits on a cluster that has no worker left before it gives up
NO_WORKER_TIMEOUT_KEY = "tileseg.no-worker-timeout"
DEFAULT_NO_WORKER_TIMEOUT = "10 minutes"
_IDLE_S = 0.05  # between two looks at the finished tasks while none is ready
_RESULT_WAIT_S = 1.0  # for one finished task's (small) result before looking at the others

SchedulerKind = Literal["threads", "sync", "processes", "distributed", "callable"]
LOCAL_NAMES: dict[str, SchedulerKind] = {
    "threads": "threads", "threading": "threads",
    "sync": "sync", "synchronous": "sync", "single-threaded": "sync",
    "processes": "processes", "multiprocessing": "processes",
}
TaskCallback = Callable[[Hashable, Any], None]


@dataclass(frozen=True)
class Scheduler:
    """A resolved scheduler: a local kind, a cluster ``address``, a ``client`` or a ``get``."""

    kind: SchedulerKind
    address: str | None = None
    client: Any = None
    get: Callable[..., Any] | None = None

    @property
    def is_distributed(self) -> bool:
        return self.kind == "distributed"

    def describe(self) -> str:
        if self.client is not None:
            return str(self.client.scheduler.address)
        return self.address or self.kind


def scheduler_address(scheduler: str | None) -> str | None:
    """A distributed scheduler address, else None (in-process). First of: the value given,
    ``$TILESEG_SCHEDULER``, and ``tileseg.scheduler`` in dask's configuration (a YAML file in
    ``~/.config/dask/`` or ``$DASK_CONFIG``, or ``$DASK_TILESEG__SCHEDULER``), so a platform can
    point every job at its cluster once."""
    value = configured_scheduler(scheduler)
    if value is None or value.lower() in LOCAL_NAMES:
        return None
    if not _looks_like_address(value.strip()):
        raise ConfigError(f"scheduler {value!r}: not a scheduler; use threads, sync or a "
                          "dask.distributed address such as tcp://host:8786")
    return value.strip()


def configured_scheduler(scheduler: str | None) -> str | None:
    """The scheduler value in force: the one given, else the environment, else dask's config."""
    if scheduler:
        return scheduler
    if os.environ.get(SCHEDULER_ENV):
        return os.environ[SCHEDULER_ENV]
    import dask

    value = dask.config.get(DASK_CONFIG_KEY, default=None)
    return str(value) if value else None


def resolve_scheduler(
    scheduler: str | Any | None,
    *,
    allow: Sequence[SchedulerKind] = ("threads", "sync", "processes", "distributed", "callable"),
) -> Scheduler:
    """Turn a scheduler value into a :class:`Scheduler`, or raise :class:`ConfigError`.

    Parameters
    ----------
    scheduler
        ``None`` (the environment or dask's configuration, else threads), a name (``threads``,
        ``sync``, ``processes``), a cluster address (``tcp://host:8786``, ``host:8786``), a
        ``distributed.Client`` or a callable with dask's ``get`` signature.
    allow
        The kinds the caller can run; anything else is refused with a message listing them.

    Examples
    --------
    >>> resolve_scheduler("sync").kind
    'sync'
    >>> resolve_scheduler("tcp://10.0.0.5:8786").address
    'tcp://10.0.0.5:8786'
    """
    resolved = _resolve(scheduler)
    if resolved.kind not in allow:
        raise ConfigError(f"scheduler {_shown(scheduler)!r}: not usable here; use "
                          f"{_choices(allow)}")
    return resolved


def _resolve(scheduler: str | Any | None) -> Scheduler:
    if scheduler is not None and not isinstance(scheduler, str):
        if hasattr(scheduler, "scheduler") and hasattr(scheduler, "get"):
            return Scheduler("distributed", client=scheduler)
        if callable(scheduler):
            return Scheduler("callable", get=scheduler)
        raise ConfigError(f"scheduler {scheduler!r}: not a name, address, Client or callable")
    value = configured_scheduler(scheduler)
    if value is None:
        return Scheduler("threads")
    name = value.strip()
    if name.lower() in LOCAL_NAMES:
        return Scheduler(LOCAL_NAMES[name.lower()])
    if _looks_like_address(name):
        return Scheduler("distributed", address=name)
    raise ConfigError(f"scheduler {name!r}: not a scheduler; use threads, sync, processes or a "
                      "cluster address such as tcp://host:8786")


def _looks_like_address(value: str) -> bool:
    if "://" in value:
        scheme, _, rest = value.partition("://")
        return bool(scheme) and bool(rest)
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit())


def _shown(scheduler: Any) -> str:
    return scheduler if isinstance(scheduler, str) else type(scheduler).__name__


def _choices(allow: Sequence[SchedulerKind]) -> str:
    words = {"threads": "threads", "sync": "sync", "processes": "processes",
             "distributed": "a cluster address such as tcp://host:8786",
             "callable": "a dask get function"}
    return ", ".join(words[k] for k in allow)


def _distributed() -> Any:
    from tileseg.deps import require

    return require("distributed", "a cluster scheduler")


@contextmanager
def open_client(scheduler: Scheduler, timeout: str | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for a distributed scheduler (None for a local one).

    A client the caller passed in is used as it is and left open; one opened here is closed.
    ``timeout`` defaults to dask's ``tileseg.connect-timeout`` setting, else 20 s.
    """
    if not scheduler.is_distributed:
        yield None
        return
    if scheduler.client is not None:
        yield scheduler.client
        return
    distributed = _distributed()
    if timeout is None:
        import dask

        timeout = str(dask.config.get(CONNECT_TIMEOUT_KEY, default=DEFAULT_CONNECT_TIMEOUT))
    try:
        client = distributed.Client(scheduler.address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {scheduler.address} ({exc}); "
                          "start it or fix the scheduler address") from exc
    try:
        yield client
    finally:
        client.close()


def check_reachable(scheduler: Scheduler, timeout: str | None = None) -> None:
    """Fail now (before any output exists) when a cluster address does not answer."""
    if scheduler.is_distributed and scheduler.client is None:
        with open_client(scheduler, timeout):
            pass


def run_graph(
    graph: Mapping[Hashable, Any],
    groups: Sequence[tuple[Sequence[Hashable], Mapping[str, float] | None]],
    scheduler: Scheduler,
    *,
    on_result: TaskCallback,
    workers: int | None = None,
    client: Any = None,
) -> None:
    """Compute the keys of ``groups`` and call ``on_result(key, value)`` as each one finishes.

    Each group is a list of keys and the worker resources its tasks need on a cluster (for
    example ``{"GPU": 1}``); locally resources are ignored. Keys are computed in group order on
    a local scheduler; on a cluster all groups are submitted at once and share their common
    dependencies (the keys are deterministic). A task that fails on a cluster with anything
    but a :class:`TilesegError` becomes a :class:`RunError` naming the task.
    """
    keys: list[Any] = [k for group, _ in groups for k in group]
    wanted = set(keys)
    if scheduler.is_distributed:
        with open_client(scheduler) if client is None else _given(client) as cluster:
            _run_on_cluster(cluster, graph, groups, on_result)
        return
    import dask
    from dask.callbacks import Callback

    class _Finished(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in wanted:
                on_result(key, result)

    with _Finished():
        if scheduler.kind == "sync":
            dask.get(dict(graph), keys)
        elif scheduler.kind == "threads":
            from dask.threaded import get

            get(dict(graph), keys, num_workers=workers or 2)
        elif scheduler.kind == "processes":
            from dask.multiprocessing import get as get_processes

            get_processes(dict(graph), keys, num_workers=workers)
        else:
            assert scheduler.get is not None
            scheduler.get(dict(graph), keys)


@contextmanager
def _given(client: Any) -> Iterator[Any]:
    yield client


def _run_on_cluster(client: Any, graph: Mapping[Hashable, Any],
                    groups: Sequence[tuple[Sequence[Hashable], Mapping[str, float] | None]],
                    on_result: TaskCallback) -> None:
    distributed = _distributed()
    watch = WorkerWatch(client, no_worker_timeout())  # a bad setting fails before any task
    futures: list[Any] = []
    for keys, resources in groups:
        if keys:
            futures += client.get(dict(graph), list(keys), sync=False,
                                  resources=dict(resources) if resources else None)
    # a finished task's result is fetched with a short timeout, never by a blocking
    # future.result(): one whose worker died after finishing it would wait for its
    # recomputation, for ever if no worker is left (a cluster without a nanny to start
    # another), without a word. (as_completed's own result fetching is not used either: a
    # fetch that fails other than by cancellation leaves its future out, and it waits for ever)
    finished = distributed.as_completed(futures)
    waiting: list[Any] = []  # finished tasks whose result has not arrived yet
    try:
        while waiting or not finished.is_empty():
            waiting += finished.next_batch(block=False)
            arrived = [future for future in waiting if _finished_task(future, on_result)]
            waiting = [future for future in waiting if future not in arrived]
            if not arrived:
                watch.check()
                time.sleep(_IDLE_S)
    except BaseException:
        client.cancel(futures)  # nothing of this run stays queued on a shared cluster
        raise


def _finished_task(future: Any, on_result: TaskCallback) -> bool:
    """Hand a finished task's result to ``on_result``; False while it has not arrived."""
    if future.status == "error":
        exc = future.exception()
        if isinstance(exc, TilesegError):
            raise exc
        raise RunError(f"task {future.key} failed on the cluster: {exc}; rerun with "
                       "resume once fixed", params=("resume",)) from exc
    if future.status == "cancelled":
        raise RunError(f"task {future.key} was cancelled on the cluster; rerun with resume",
                       params=("resume",))
    try:
        value = future.result(timeout=_RESULT_WAIT_S)
    except TimeoutError:
        return False  # its worker is gone and it is computed again, or the fetch is slow
    on_result(future.key, value)
    return True


def no_worker_timeout() -> float:
    """Seconds a run waits on a cluster without any worker before it fails: dask's
    ``tileseg.no-worker-timeout`` setting (``DASK_TILESEG__NO_WORKER_TIMEOUT``), else
    :data:`DEFAULT_NO_WORKER_TIMEOUT`; raise it for clusters that scale up from none."""
    import dask
    from dask.utils import parse_timedelta

    value = dask.config.get(NO_WORKER_TIMEOUT_KEY, default=DEFAULT_NO_WORKER_TIMEOUT)
    try:
        seconds = parse_timedelta(value, default="s")
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"dask setting {NO_WORKER_TIMEOUT_KEY} = {value!r}: not a duration; "
                          "use e.g. 10 minutes or 600s") from exc
    if seconds is None or seconds <= 0:
        raise ConfigError(f"dask setting {NO_WORKER_TIMEOUT_KEY} = {value!r}: must be a "
                          "positive duration")
    return float(seconds)


class WorkerWatch:
    """Says when a cluster has had no worker for ``timeout`` seconds (:class:`RunError`,
    exit 5: the finished chunks are kept, a rerun with resume continues once workers run).

    The first poll that finds no worker logs a warning, so the wait is never silent.
    """

    def __init__(self, client: Any, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.poll_s = min(2.0, max(timeout / 4, _IDLE_S))  # between two counts of the workers
        self._empty_since: float | None = None
        self._polled = time.monotonic()

    def check(self) -> None:
        """Count the workers (at most every ``poll_s``); raise once there was none for long."""
        if time.monotonic() - self._polled < self.poll_s:
            return
        self._polled = time.monotonic()
        try:
            workers = len(self.client.nthreads())
        except Exception:  # noqa: BLE001 - the scheduler gone is the client's own error to raise
            logger.debug("cannot count the cluster's workers", exc_info=True)
            return
        now = time.monotonic()
        if workers:
            self._empty_since = None
            return
        if self._empty_since is None:
            self._empty_since = now
            logger.warning("the dask cluster at %s has no worker; waiting up to %.0f s for one",
                           _address(self.client), self.timeout)
            return
        if now - self._empty_since >= self.timeout:
            raise RunError(
                f"the dask cluster at {_address(self.client)} has had no worker for "
                f"{self.timeout:.0f} s (the last one stopped or was killed); start workers, "
                "then rerun with resume to keep the finished chunks", params=("resume",))


def _address(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except AttributeError:
        return "?"


def gpu_workers(client: Any) -> int:
    """How many of the cluster's workers advertise a ``GPU`` resource."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer versions list 5 workers by default
    except TypeError:
        info = client.scheduler_info()
    return sum(1 for w in info.get("workers", {}).values()
               if (w.get("resources") or {}).get("GPU", 0) >= 1)
