"""Where dask graphs run: in-process threads, one task at a time, processes, or a cluster.

The one scheduling module. A run resolves its scheduler once (:func:`resolve_scheduler`: a
name, a cluster address, a ``distributed.Client`` or a ``get``-like callable, as dask's own
``get_scheduler`` accepts, or a cluster to start here: worker processes or Slurm jobs) and hands
the :class:`Scheduler` down; :func:`open_client` is the one place a dask client is opened (or a
caller's borrowed), and :func:`run_graph` runs a graph with a callback per finished task
(:func:`run_mosaic` for predict's mosaic: infer tasks hold a GPU on clusters that advertise
one). predict, vectorize and batch all use it. It imports neither torch nor the model code:
polygonizing a mask must not load a deep-learning framework.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tileseg.choices import SchedulerKind
from tileseg.errors import ConfigError, RunError, TilesegError

if TYPE_CHECKING:
    from tileseg.inference.mosaic import MosaicGraph

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

# what a mosaic runs on: worker processes cannot take an in-process model (a cluster of local
# processes, dask scheduler + dask worker, does the same job with resume and model caching)
MOSAIC_KINDS: tuple[SchedulerKind, ...] = ("threads", "sync", "distributed", "callable")
DEFAULT_WAIT_TIMEOUT = 600.0  # seconds to wait for the workers a run asks for
LOCAL_NAMES: dict[str, SchedulerKind] = {
    "threads": "threads", "threading": "threads",
    "sync": "sync", "synchronous": "sync", "single-threaded": "sync",
    "processes": "processes", "multiprocessing": "processes",
}
TaskCallback = Callable[[Hashable, Any], None]
ResultCallback = Callable[[dict[str, Any], str], None]


@dataclass(frozen=True)
class LocalWorkers:
    """A cluster of ``workers`` worker processes on this machine, started for the run."""

    workers: int
    threads_per_worker: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"local_workers must be at least 1, got {self.workers}",
                              params=("local_workers",))


@dataclass(frozen=True)
class SlurmJobs:
    """Workers as ``jobs`` Slurm jobs (dask-jobqueue), one worker process each, started for the
    run and released when it ends; ``gpu``: one GPU per job, advertised as ``GPU=1``."""

    jobs: int
    queue: str | None = None
    account: str | None = None
    cores: int = 8
    memory: str = "32GB"
    gpu: bool = False
    walltime: str = "04:00:00"

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"slurm_jobs must be at least 1, got {self.jobs}",
                              params=("slurm_jobs",))
        if self.cores < 1:
            raise ConfigError(f"slurm_cores must be at least 1, got {self.cores}",
                              params=("slurm_cores",))


@dataclass(frozen=True)
class Scheduler:
    """A resolved scheduler: a local kind, a cluster ``address``, a ``client``, a cluster to
    ``start`` here, or a ``get``; on a cluster, how many workers to wait for before any task."""

    kind: SchedulerKind
    address: str | None = None
    client: Any = None
    get: Callable[..., Any] | None = None
    start: LocalWorkers | SlurmJobs | None = None
    wait_workers: int = 0
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT

    @property
    def is_distributed(self) -> bool:
        return self.kind == "distributed"

    def describe(self) -> str:
        if self.client is not None:
            return str(self.client.scheduler.address)
        if isinstance(self.start, LocalWorkers):
            return f"{self.start.workers} local worker process(es)"
        if isinstance(self.start, SlurmJobs):
            return f"{self.start.jobs} Slurm job(s)"
        return self.address or self.kind


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
    start: LocalWorkers | SlurmJobs | None = None,
    wait_workers: int | None = None,
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
) -> Scheduler:
    """Turn a scheduler value into a :class:`Scheduler`, or raise :class:`ConfigError`: once a
    run, before anything is written; the run hands the result down.

    Parameters
    ----------
    scheduler
        ``None`` (the environment or dask's configuration, else threads), a name (``threads``,
        ``sync``, ``processes``), a cluster address (``tcp://host:8786``, ``host:8786``), a
        ``distributed.Client``, a callable with dask's ``get`` signature, or a
        :class:`Scheduler` resolved already (returned as it is).
    allow
        The kinds the caller can run; anything else is refused with a message listing them.
    start
        A cluster to start for the run instead (``scheduler`` must then be None: the
        environment and dask's configuration are not read).
    wait_workers
        On a cluster, wait for this many workers before any task (at most ``wait_timeout``
        seconds); default none, or one on a cluster started here.

    Examples
    --------
    >>> resolve_scheduler("sync").kind
    'sync'
    >>> resolve_scheduler("tcp://10.0.0.5:8786").address
    'tcp://10.0.0.5:8786'
    >>> resolve_scheduler(None, start=LocalWorkers(2)).describe()
    '2 local worker process(es)'
    """
    if isinstance(scheduler, Scheduler):
        resolved = scheduler
    elif start is not None:
        if scheduler is not None:
            which = "local_workers" if isinstance(start, LocalWorkers) else "slurm_jobs"
            raise ConfigError(f"scheduler and {which} both say where to run; give one",
                              params=("scheduler", which))
        resolved = Scheduler("distributed", start=start)
    else:
        resolved = _resolve(scheduler)
    if resolved.kind not in allow:
        raise ConfigError(f"scheduler {_shown(scheduler)!r}: not usable here; use "
                          f"{_choices(allow)}")
    if wait_workers is not None and wait_workers < 0:
        raise ConfigError(f"wait_workers must be zero or more, got {wait_workers}",
                          params=("wait_workers",))
    if not wait_timeout > 0:
        raise ConfigError(f"wait_timeout must be positive, got {wait_timeout}",
                          params=("wait_timeout",))
    if resolved.is_distributed and (wait_workers is not None or start is not None):
        wanted = 1 if wait_workers is None else wait_workers
        if isinstance(start, LocalWorkers):  # they are all there once the cluster has started
            wanted = min(wanted, start.workers)
        resolved = replace(resolved, wait_workers=wanted, wait_timeout=wait_timeout)
    return resolved


def resolve_mosaic_scheduler(scheduler: str | Any | None, **kwargs: Any) -> Scheduler:
    """:func:`resolve_scheduler` for a mosaic: worker processes are refused (see
    :data:`MOSAIC_KINDS`)."""
    return resolve_scheduler(scheduler, allow=MOSAIC_KINDS, **kwargs)


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
    if isinstance(scheduler, Scheduler):
        return scheduler.describe()
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
    """Yield a ``distributed.Client`` for a distributed scheduler (None for a local one): the
    one place tileseg opens a dask client.

    A client the caller passed in is borrowed: used as it is and left open. Otherwise one is
    opened to the address, or to a cluster started here (:class:`LocalWorkers`,
    :class:`SlurmJobs`), and closed with that cluster when the ``with`` body ends. Then, when
    the scheduler says so, the run waits for its workers (:class:`RunError` when too few join).
    ``timeout`` (of the connection) defaults to dask's ``tileseg.connect-timeout`` setting, else
    20 s. An address that does not answer is a :class:`ConfigError` (exit 2), raised before the
    caller writes anything.
    """
    if not scheduler.is_distributed:
        yield None
        return
    if scheduler.client is not None:
        _wait_for_workers(scheduler.client, scheduler)
        yield scheduler.client
        return
    distributed = _distributed()
    if timeout is None:
        import dask

        timeout = str(dask.config.get(CONNECT_TIMEOUT_KEY, default=DEFAULT_CONNECT_TIMEOUT))
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(_started_cluster(scheduler.start))
        try:
            client = distributed.Client(cluster if cluster is not None else scheduler.address,
                                        timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler.describe()} "
                              f"({exc}); start it or fix the scheduler address") from exc
        stack.callback(client.close)  # closed before its cluster
        _wait_for_workers(client, scheduler)
        yield client


@contextmanager
def _started_cluster(start: LocalWorkers | SlurmJobs | None) -> Iterator[Any]:
    """The cluster ``start`` asks for, closed at the end (None: none to start)."""
    if start is None:
        yield None
        return
    distributed = _distributed()
    if isinstance(start, LocalWorkers):
        cluster = distributed.LocalCluster(n_workers=start.workers, processes=True,
                                           threads_per_worker=start.threads_per_worker,
                                           dashboard_address=":0")
    else:
        cluster = _slurm_cluster(start)
        cluster.scale(jobs=start.jobs)
    try:
        yield cluster
    finally:
        cluster.close()


def _slurm_cluster(start: SlurmJobs) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        from tileseg.deps import missing_dependency

        raise missing_dependency(exc, "slurm_jobs", params=("slurm_jobs",)) from exc
    extra: list[str] = []
    worker_args: list[str] = []
    if start.gpu:
        # One GPU per job and one worker process per job: Slurm sets CUDA_VISIBLE_DEVICES to the
        # job's card, so "cuda" on that worker is its own GPU. Scale with the jobs = GPUs.
        extra.append("--gres=gpu:1")
        worker_args += ["--resources", "GPU=1"]
    return SLURMCluster(
        queue=start.queue, account=start.account, cores=start.cores, memory=start.memory,
        processes=1, walltime=start.walltime, job_extra_directives=extra,
        worker_extra_args=worker_args,
        job_script_prologue=[f"export {SCHEDULER_ENV}="],  # workers never chain to another cluster
    )


def _wait_for_workers(client: Any, scheduler: Scheduler) -> None:
    wanted = scheduler.wait_workers
    if wanted < 1:
        return
    logger.info("waiting for %d worker(s) at %s", wanted, _address(client))
    try:
        client.wait_for_workers(wanted, timeout=scheduler.wait_timeout)
    except TimeoutError as exc:
        raise RunError(f"fewer than {wanted} dask workers joined within "
                       f"{scheduler.wait_timeout:.0f} s; start workers or lower wait_workers",
                       params=("wait_workers",)) from exc


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
        with open_client(scheduler if client is None else replace(scheduler, client=client,
                                                                  wait_workers=0)) as cluster:
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


def run_mosaic(
    mosaic: MosaicGraph,
    scheduler: Scheduler,
    on_result: ResultCallback,
    *,
    client: Any = None,
    workers: int | None = None,
    device: str = "auto",
) -> None:
    """Compute every infer and finalize task of ``mosaic`` on ``scheduler`` (``client``: the
    run's open client on a cluster), calling ``on_result(value, kind)`` as each one finishes.

    On a cluster whose workers advertise a ``GPU`` resource (``dask worker --resources GPU=1``),
    each infer task requests one GPU unless ``device`` is ``cpu``, so a worker runs one at a
    time whatever its thread count; finalize tasks need no GPU and run beside them.
    """
    kinds = {k: "infer" for k in mosaic.infer_keys} | {k: "finalize" for k in mosaic.finalize_keys}

    def finished(key: Any, value: Any) -> None:
        on_result(value, kinds[key])

    infer_resources = None
    if client is not None and device != "cpu":
        gpus = gpu_workers(client)
        if gpus:
            logger.info("%s a GPU: each infer task requests GPU=1",
                        "1 worker advertises" if gpus == 1 else f"{gpus} workers advertise")
            infer_resources = {"GPU": 1}
    run_graph(mosaic.graph, [(mosaic.infer_keys, infer_resources), (mosaic.finalize_keys, None)],
              scheduler, on_result=finished, client=client,
              workers=workers or (None if scheduler.is_distributed else default_workers(device)))


def default_workers(device: str) -> int:
    """Threads of the in-process scheduler when ``--workers`` is not given.

    On a GPU, 2: one chunk task feeds the card while the other reads, blends and writes. On a
    CPU, 1: a forward pass already uses every core, reading runs in the task's prefetch thread,
    and a second task in flight mostly holds another chunk's buffers (``benchmarks/bench_engine.py``:
    2 was 1-12% faster at 1024-px chunks but no faster at 2048, for 9-26% more peak memory).
    """
    from tileseg.inference.device import resolve_device

    return 2 if resolve_device(device).type == "cuda" else 1
