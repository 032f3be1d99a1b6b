"""``tileseg batch MANIFEST``: many scenes, idempotently; also the entry point of scheduled
jobs (cron, systemd, Kubernetes, Slurm: see workflows/)."""

from __future__ import annotations

from typing import Any

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import (
    model_options,
    option,
    option_group,
    output_options,
    runtime_options,
    scene_options,
    scheduler_option,
    tiling_options,
)
from tileseg.execution import DEFAULT_WAIT_TIMEOUT, LocalWorkers, SlurmJobs
from tileseg.outputs.naming import DEFAULT_SUFFIX
from tileseg.text import counted

EPILOG = """\b
Examples:
  tileseg batch scenes.txt --output-dir masks/ --model models/landcover
  tileseg batch scenes.csv --scheduler tcp://scheduler:8786 --summary runs/summary.json
  tileseg batch scenes.yaml --concurrent-scenes 2   # per-scene model, bands, overlap...
  tileseg batch s3://jobs/scenes.txt --output-dir s3://results/run1/   # all on the store
  tileseg batch search.json -o masks/ -m models/s2 --aoi fields.gpkg   # a STAC ItemCollection

\b
Manifests (relative paths are relative to the manifest's folder):
  .txt   one source per line (# comments); writes OUTPUT_DIR/<stem><suffix>
  .csv   header src,dst[,model,bands,overlap,probabilities,vectorize,...]
  .yaml  - {src: a.tif, dst: a_mask.zarr, bands: [4, 3, 2], probabilities: uint8}
         - {src: [B04.tif, B03.tif, B02.tif], dst: b_mask.tif}   # one file per band
         - {src: item.json, bands: [red, green, blue], resolution: model}
  .json  a STAC ItemCollection (a saved search): one scene an item, OUTPUT_DIR/<id><suffix>

\b
Complete outputs are skipped, interrupted ones resumed, failures recorded in the summary and
retried by running the same command again. Exit code 0 only if every scene succeeded.
Beside the JSON/CSV summary, SUMMARY.html shows every scene with a thumbnail (in
SUMMARY.previews/), its status, tiles, time and area per class.
"""


# Where the batch runs: an existing cluster, or one it starts (worker processes here, Slurm
# jobs), what it waits for, and a scheduled job's lock.
cluster_options = option_group(
    scheduler_option(help="threads (default), sync, or a dask.distributed address shared "
                     "by all scenes. Default: $TILESEG_SCHEDULER, else tileseg.scheduler in "
                     "dask's config, else threads."),
    option("local_workers", type=int,
           help="Start a cluster of N worker processes on this machine for the batch."),
    option("slurm_jobs", type=int,
           help="Start N Slurm jobs of one worker each for the batch (dask-jobqueue; "
           "released when it ends)."),
    option("wait_workers", type=int,
           help="Wait for this many workers before the first scene (default: 1 on a "
           "cluster started here, else none)."),
    option("wait_timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, show_default=True,
           help="Seconds to wait for them (exit 5 when fewer join)."),
    option("slurm_queue", help="Slurm partition of the jobs."),
    option("slurm_account", help="Slurm account of the jobs."),
    option("slurm_cores", type=int, default=SlurmJobs.cores, show_default=True,
           help="CPU cores a job."),
    option("slurm_memory", default=SlurmJobs.memory, show_default=True, help="Memory a job."),
    option("slurm_gpu", is_flag=True,
           help="One GPU a job (--gres=gpu:1), advertised to dask as GPU=1."),
    option("slurm_walltime", default=SlurmJobs.walltime, show_default=True,
           help="Time limit of a job."),
    option("lock", type=click.Path(dir_okay=False),
           help="Lock file for a scheduled job: when another run holds it, exit 75 at once "
           "(cron fired while the previous run is still going)."),
)


@click.command(epilog=EPILOG)
@click.argument("manifest", type=click.Path(dir_okay=False))
@option("output_dir", "-o", type=click.Path(file_okay=False),
        help="Folder (or s3:// prefix) for scenes without a dst (text manifests).")
@option("suffix", default=DEFAULT_SUFFIX, show_default=True,
        help="Destination name <src stem><suffix> (.tif, .zarr...).")
@option("summary", type=click.Path(dir_okay=False),
        help="JSON summary path, a CSV beside it. Default: MANIFEST's file name + .summary.json "
        "(scenes.csv.summary.json) beside MANIFEST, or under --output-dir when that is an s3:// "
        "prefix.")
@model_options(defaults=False)
@scene_options(defaults=False)
@tiling_options(defaults=False)
@runtime_options(defaults=False)
@output_options(defaults=False, files=False)
@option("concurrent_scenes", type=int, default=1, show_default=True,
        help="Scenes in flight at once (keeps a big cluster busy between scenes).")
@cluster_options
@click.option("--no-previews", is_flag=True,
              help="Skip the scenes' thumbnails and class areas on the summary's HTML page.")
@verbosity_options
@handle_errors(stopped="run the same command again to continue: finished scenes are skipped, "
               "the interrupted one resumed")
def command(manifest: str, output_dir: str | None, suffix: str, summary: str | None,
            concurrent_scenes: int, scheduler: str | None, local_workers: int | None,
            slurm_jobs: int | None, wait_workers: int | None, wait_timeout: float,
            slurm_queue: str | None, slurm_account: str | None, slurm_cores: int,
            slurm_memory: str, slurm_gpu: bool, slurm_walltime: str, lock: str | None,
            no_previews: bool, verbose: int, quiet: bool, **options: Any) -> None:
    """Segment every scene listed in MANIFEST (text, CSV, YAML or a STAC ItemCollection),
    idempotently.

    The predict options given here are the defaults of every scene; a scene's own options in
    the manifest override them. A scheduled job adds --lock, and starts its cluster
    (--local-workers, --slurm-jobs) or waits for one's workers (--wait-workers).
    """
    from tileseg.batch import BatchConfig, SceneResult, default_summary_path, run_manifest

    configure_logging(verbose, quiet)
    # every predict option is a PredictConfig parameter of the same name (tileseg.cli.options);
    # those not given stay the scenes' own
    defaults = {k: v for k, v in options.items() if v is not None and v != ()}
    cluster: LocalWorkers | SlurmJobs | None = None
    if local_workers is not None and slurm_jobs is not None:
        raise click.UsageError("--local-workers and --slurm-jobs both start a cluster; give one")
    if local_workers is not None:
        cluster = LocalWorkers(local_workers)
    elif slurm_jobs is not None:
        cluster = SlurmJobs(slurm_jobs, queue=slurm_queue, account=slurm_account,
                            cores=slurm_cores, memory=slurm_memory, gpu=slurm_gpu,
                            walltime=slurm_walltime)
    config = BatchConfig(output_dir=output_dir, suffix=suffix, defaults=defaults,
                         scheduler=scheduler, cluster=cluster, wait_workers=wait_workers,
                         wait_timeout=wait_timeout, lock=lock,
                         summary=summary or default_summary_path(manifest, output_dir),
                         concurrent_scenes=concurrent_scenes, previews=not no_previews)

    def echo(scene: object, result: SceneResult) -> None:
        if quiet:
            return
        figures = (f"{result.tiles_inferred}/{counted(result.tiles_total, 'tile')}, "
                   f"{result.seconds:.1f} s")
        detail = figures if result.status in ("succeeded", "resumed") else result.error
        if result.status == "skipped" and result.tiles_total:  # figures of the earlier run
            detail = f"done earlier: {figures}"
        click.echo(f"{result.status:9} {result.dst}" + (f"  ({detail})" if detail else ""),
                   err=True)

    result = run_manifest(manifest, config, on_scene=echo)
    if not quiet:
        counts = ", ".join(f"{n} {status}" for status, n in result.counts().items() if n)
        click.echo(f"{counted(len(result.scenes), 'scene')}: {counts} in {result.seconds:.1f} s; "
                   f"summary {result.summary} (and .csv, .html)", err=True)
    result.raise_for_failures()
