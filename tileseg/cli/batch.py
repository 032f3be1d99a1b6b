"""``tileseg batch MANIFEST``."""

from __future__ import annotations

from typing import Any

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import band_list, resampling_list, scene_options, scheduler_option
from tileseg.text import counted
from tileseg.tiling.blend import WINDOWS

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


@click.command(epilog=EPILOG)
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False),
              help="Folder (or s3:// prefix) for scenes without a dst (text manifests).")
@click.option("--suffix", default="_mask.tif", show_default=True,
              help="Destination name <src stem><suffix> (.tif, .zarr...).")
@click.option("--summary", type=click.Path(dir_okay=False),
              help="JSON summary path, a CSV beside it. Default: MANIFEST's file name + "
              ".summary.json (scenes.csv.summary.json) "
              "beside MANIFEST, or under --output-dir when that is an s3:// prefix.")
@click.option("--model", "-m", help="Default model directory (a scene's model overrides it).")
@click.option("--bands", callback=band_list, help="Default 1-based bands, e.g. 4,3,2 (for "
              "STAC items, asset keys or common names, e.g. red,green,blue).")
@click.option("--tile-size", type=int, help="Default tile size in pixels.")
@click.option("--overlap", type=int, help="Default overlap in pixels.")
@click.option("--chunk-size", type=int, help="Default chunk side in pixels.")
@click.option("--blend", type=click.Choice(sorted(WINDOWS)), help="Default blend window.")
@click.option("--device", help="auto, cpu, cuda, cuda:N (on the workers).")
@click.option("--batch-size", type=int,
              help="Tiles per batch (default: 4 on a CPU; on a GPU, from its memory).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@click.option("--probabilities", type=click.Choice(["none", "uint8", "float16"]))
@click.option("--engine", type=click.Choice(["auto", "torch", "onnxruntime"]),
              help="Default inference engine (auto: ONNX Runtime on the CPU when installed).")
@click.option("--tta", type=click.Choice(["none", "flips", "d4"]),
              help="Default test-time augmentation (flips: 4 passes a tile, d4: 8).")
@scheduler_option(
              help="threads (default), sync, or a dask.distributed address shared by all scenes.")
@click.option("--workers", type=int,
              help="Threads of the in-process scheduler (default: 1 on a CPU, 2 on a GPU).")
@click.option("--concurrent-scenes", type=int, default=1, show_default=True,
              help="Scenes in flight at once (keeps a big cluster busy between scenes).")
@scene_options()
@click.option("--no-stac-item", is_flag=True, help="Write no STAC item beside each mask.")
@click.option("--no-previews", is_flag=True,
              help="Skip the scenes' thumbnails and class areas on the summary's HTML page.")
@verbosity_options
@handle_errors(stopped="run the same command again to continue: finished scenes are skipped, "
               "the interrupted one resumed")
def command(manifest: str, output_dir: str | None, suffix: str, summary: str | None,
            model: str | None, bands: tuple[int, ...] | tuple[str, ...] | None,
            tile_size: int | None,
            overlap: int | None, chunk_size: int | None, blend: str | None, device: str | None,
            batch_size: int | None, precision: str | None, probabilities: str | None,
            engine: str | None, tta: str | None, scheduler: str | None, workers: int | None,
            concurrent_scenes: int, resolution: float | str | None, resampling: str | None,
            aoi: str | None, aoi_crs: str | None, no_stac_item: bool, no_previews: bool,
            verbose: int, quiet: bool) -> None:
    """Segment every scene listed in MANIFEST (text, CSV or YAML), idempotently."""
    from tileseg.batch import BatchConfig, SceneResult, default_summary_path, run_manifest

    configure_logging(verbose, quiet)
    defaults: dict[str, Any] = {
        k: v for k, v in dict(
            model=model, bands=bands, tile_size=tile_size, overlap=overlap,
            chunk_size=chunk_size, blend=blend, device=device, batch_size=batch_size,
            precision=precision, probabilities=probabilities, workers=workers, engine=engine,
            tta=tta,
            resolution=resolution, resampling=resampling_list(resampling) or None, aoi=aoi,
            aoi_crs=aoi_crs, stac_item=False if no_stac_item else None,
        ).items() if v is not None
    }
    config = BatchConfig(output_dir=output_dir, suffix=suffix, defaults=defaults,
                         scheduler=scheduler,
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
