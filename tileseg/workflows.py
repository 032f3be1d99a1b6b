"""Scheduled batch entry point: run a manifest on a Dask cluster, idempotently.

Give it the cluster's scheduler address (``--scheduler`` or ``$TILESEG_SCHEDULER``), or let it
start one: ``--local-workers N`` (worker processes on this machine) or ``--slurm-jobs N``
(dask-jobqueue workers as Slurm jobs). Scenes already complete are skipped, interrupted ones
resumed, failures recorded in the summary; a later run retries only those.

Exit codes: 0 every scene succeeded; 5 some failed (see the summary); 2 bad manifest or options;
75 another run holds the lock (cron fired while the previous run is still going).

Examples
--------
    python -m tileseg.workflows scenes.yaml --scheduler tcp://head:8786 --lock /tmp/tb.lock
    python -m tileseg.workflows scenes.txt -o masks/ --model models/landcover --local-workers 2
    python -m tileseg.workflows scenes.csv --slurm-jobs 4 --slurm-gpu --slurm-queue gpu
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from tileseg.batch import BatchConfig, SceneResult, default_summary_path, run_manifest
from tileseg.errors import ConfigError, DependencyError, RunError, TilesegError, flagged_message
from tileseg.logs import flag_handlers, quiet_libraries, route_warnings
from tileseg.scheduler import SCHEDULER_ENV
from tileseg.text import counted

logger = logging.getLogger(__name__)

EXIT_LOCKED = 75  # EX_TEMPFAIL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tileseg.workflows", description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="text, CSV or YAML manifest of scenes")
    p.add_argument("-o", "--output-dir", help="folder for scenes without a dst")
    p.add_argument("--suffix", default="_mask.tif", help="destination name <stem><suffix>")
    p.add_argument("--summary", help="summary JSON (a CSV beside it); default beside MANIFEST")
    p.add_argument("--model", help="default model directory (the manifest may override)")
    p.add_argument("--device", help="device on the workers: auto, cpu, cuda")
    p.add_argument("--tile-size", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--probabilities", choices=["none", "uint8", "float16"])
    p.add_argument("--concurrent-scenes", type=int, default=1)
    p.add_argument("--lock", help="lock file: exit 75 at once if another run holds it")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=os.environ.get(SCHEDULER_ENV),
                       help=f"dask scheduler address (default ${SCHEDULER_ENV})")
    where.add_argument("--local-workers", type=int, help="start N worker processes here")
    where.add_argument("--slurm-jobs", type=int, help="start N Slurm jobs of workers")
    p.add_argument("--wait-workers", type=int, default=1,
                   help="wait for this many workers before starting (default 1)")
    p.add_argument("--wait-timeout", type=float, default=600, help="seconds to wait for them")
    slurm = p.add_argument_group("dask-jobqueue SLURMCluster (with --slurm-jobs)")
    slurm.add_argument("--slurm-queue")
    slurm.add_argument("--slurm-account")
    slurm.add_argument("--slurm-cores", type=int, default=8)
    slurm.add_argument("--slurm-memory", default="32GB")
    slurm.add_argument("--slurm-gpu", action="store_true",
                       help="one GPU per job, one worker process per job (--resources GPU=1)")
    slurm.add_argument("--slurm-walltime", default="04:00:00")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@contextlib.contextmanager
def exclusive(lock_path: str | None) -> Iterator[bool]:
    """Hold an flock on ``lock_path`` (True), or yield False when another process holds it."""
    if lock_path is None:
        yield True
        return
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield True


@contextlib.contextmanager
def cluster_client(args: argparse.Namespace) -> Iterator[Any]:
    """A distributed Client for the chosen cluster, or None for in-process threads."""
    if args.scheduler in (None, "", "threads", "sync") and not (args.local_workers
                                                                  or args.slurm_jobs):
        yield None
        return
    from distributed import Client, LocalCluster

    cluster: Any = None
    if args.local_workers:
        cluster = LocalCluster(n_workers=args.local_workers, processes=True,
                               threads_per_worker=2, dashboard_address=":0")
    elif args.slurm_jobs:
        cluster = slurm_cluster(args)
        cluster.scale(jobs=args.slurm_jobs)
    try:
        client = Client(cluster if cluster is not None else args.scheduler, timeout="30s")
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"cannot reach the dask scheduler at {args.scheduler} ({exc}); start "
                          "it or fix --scheduler") from exc
    try:
        wanted = min(args.wait_workers, args.local_workers or args.wait_workers)
        logger.info("waiting for %d worker(s) at %s", wanted, client.scheduler.address)
        try:
            client.wait_for_workers(wanted, timeout=args.wait_timeout)
        except TimeoutError as exc:
            raise RunError(f"fewer than {wanted} dask workers joined within "
                           f"{args.wait_timeout:.0f} s; start workers or lower --wait-workers"
                           ) from exc
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def slurm_cluster(args: argparse.Namespace) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise DependencyError("--slurm-jobs needs dask-jobqueue; pip install dask-jobqueue") from exc
    extra: list[str] = []
    worker_args: list[str] = []
    if args.slurm_gpu:
        # One GPU per job and one worker process per job: Slurm sets CUDA_VISIBLE_DEVICES to the
        # job's card, so "cuda" on that worker is its own GPU. Scale with --slurm-jobs = GPUs.
        extra.append("--gres=gpu:1")
        worker_args += ["--resources", "GPU=1"]
    return SLURMCluster(
        queue=args.slurm_queue, account=args.slurm_account, cores=args.slurm_cores,
        memory=args.slurm_memory, processes=1, walltime=args.slurm_walltime,
        job_extra_directives=extra, worker_extra_args=worker_args,
        job_script_prologue=[f"export {SCHEDULER_ENV}="],  # workers never chain to another cluster
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # dask's scheduler, nanny and client log every start, connection and shutdown at INFO (some
    # 30 lines a run): a job's log keeps their warnings and errors, and tileseg's own lines
    quiet_libraries(logging.WARNING)
    flag_handlers()
    route_warnings(logger)
    defaults = {k: v for k, v in dict(model=args.model, device=args.device,
                                      tile_size=args.tile_size, overlap=args.overlap,
                                      batch_size=args.batch_size,
                                      probabilities=args.probabilities).items() if v is not None}
    with exclusive(args.lock) as mine:
        if not mine:
            print(f"another run holds {args.lock}; nothing to do", file=sys.stderr)
            return EXIT_LOCKED
        try:
            config = BatchConfig(output_dir=args.output_dir, suffix=args.suffix,
                                 defaults=defaults,
                                 summary=args.summary or default_summary_path(args.manifest,
                                                                         args.output_dir),
                                 concurrent_scenes=args.concurrent_scenes,
                                 scheduler=None if args.local_workers or args.slurm_jobs
                                 else args.scheduler)
            with cluster_client(args) as client:
                result = run_manifest(args.manifest, config, client=client, on_scene=_log_scene)
        except TilesegError as exc:  # parameters as this command's flags, as in tileseg batch
            print(f"Error: {flagged_message(exc)}", file=sys.stderr)
            return exc.exit_code
    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items() if n)
    print(f"{counted(len(result.scenes), 'scene')}: {counts} in {result.seconds:.1f} s; summary "
          f"{result.summary}", file=sys.stderr)
    return 0 if result.ok else 5


def _log_scene(scene: object, result: SceneResult) -> None:
    detail = result.error or f"{result.tiles_inferred}/{counted(result.tiles_total, 'tile')}"
    print(f"{result.status:9} {result.dst} ({detail}, {result.seconds:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
