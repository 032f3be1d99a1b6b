"""``tileseg predict SRC DST``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from tileseg.cli.common import RESUME_HINT, configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import (
    model_options,
    option,
    output_options,
    overwrite_option,
    runtime_options,
    scene_options,
    scheduler_option,
    tiling_options,
)
from tileseg.cli.render import ProgressBar
from tileseg.config import PredictConfig
from tileseg.text import counted

if TYPE_CHECKING:
    from tileseg.pipeline import PredictResult

EPILOG = """\b
Examples:
  tileseg predict scene.tif                      # writes scene.mask.tif here
  tileseg predict scene.tif landcover.tif
  tileseg predict scene.tif mask.zarr --model models/buildings --probabilities uint8
  tileseg predict s2.tif mask.tif --bands 4,3,2 --overlap 128 --report run.json
  tileseg predict huge.vrt mask.tif --scheduler tcp://scheduler:8786 --resume
  tileseg predict scene.tif mask.tif --vectorize polygons.gpkg
  tileseg predict scene.tif mask.tif -m epoch=9.ckpt --tta flips   # a TorchGeo checkpoint
  tileseg predict scene.tif mask.tif -m unet.onnx                  # + tileseg.json beside it
  tileseg predict S2B_31UFT_20240601_0_L2A.json --model models/s2 --resolution model
  tileseg predict https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/ID
  tileseg predict item.json mask.tif --bands red,green,blue,nir --aoi fields.gpkg
  tileseg predict B04.tif B03.tif B02.tif B08.tif -o mask.tif   # one file per band
  tileseg predict scene.tif --aoi 2.20,48.80,2.45,48.92          # a bbox in lon/lat
"""


@click.command(epilog=EPILOG)
@click.argument("paths", nargs=-1, required=True, metavar="SRC... [DST]")
@click.option("--output", "-o", "output", help="DST: the mask to write; with it every path "
              "given is a source (several files are read as one raster, one band file each, "
              "as rio stack).")
@model_options()
@scene_options()
@tiling_options()
@runtime_options()
@output_options()
@overwrite_option()
@option("resume", is_flag=True, help="Continue an interrupted run of the same job.")
@scheduler_option()
@verbosity_options
@handle_errors(stopped=RESUME_HINT)
def command(paths: tuple[str, ...], output: str | None, verbose: int, quiet: bool,
            **options: Any) -> None:
    """Segment SRC into a class mask DST (GeoTIFF/COG or Zarr).

    SRC is any GDAL raster; a STAC item (item.json, an https:// or s3:// item URL, or
    collection.json#ITEM_ID), whose assets are matched to the model's bands; or several
    rasters read as one (one file per band, at any resolutions and CRSs), as with rio: the
    last path is DST unless -o names it.

    DST defaults to SRC's name (an item's id) with .mask.tif (.mask.zarr for --format zarr) in
    the current folder, e.g. scene.tif -> ./scene.mask.tif. SRC, DST, --zarr, --vectorize,
    --preview and --report may be s3:// (gs://, az://) URLs; see "Outputs on object
    storage" in the docs (docs/cloud/outputs.md). Beside DST goes its STAC item (scene.mask.stac.json).
    """
    from tileseg.outputs.naming import default_mask_path
    from tileseg.pipeline import predict

    configure_logging(verbose, quiet)
    src, dst = split_paths(paths, output)
    dst = dst or default_mask_path(src if isinstance(src, str) else src[0], options["format"])
    # every option is a PredictConfig parameter of the same name (tileseg.cli.options)
    config = PredictConfig(src=src, dst=dst, **options)
    bar = ProgressBar("predict", enabled=not quiet)
    try:
        result = predict(config, progress=bar)
    finally:
        bar.close()
    if not quiet:
        click.echo(summary_line(result), err=True)
        polygons = result.report.get("vectorize")
        if polygons:
            click.echo(f"{polygons['dst']}: {counted(polygons['features'], 'polygon')}",
                       err=True)
        if result.report.get("preview"):
            click.echo(f"{result.report['preview']['path']}: preview", err=True)


def split_paths(paths: tuple[str, ...], output: str | None
                ) -> tuple[str | tuple[str, ...], str | None]:
    """SRC and DST from the positional paths, as rio does: with ``-o`` every path is a source;
    without it one path is SRC, two are SRC DST, and more are sources then DST."""
    if output is not None:
        return (paths[0] if len(paths) == 1 else paths), output
    if len(paths) == 1:
        return paths[0], None
    if len(paths) == 2:
        return paths[0], paths[1]
    return paths[:-1], paths[-1]


def summary_line(result: PredictResult) -> str:
    """One line: what was written, the tiles, the inference time with the rate of exactly those
    tiles over exactly that time, what ran them, and the whole run's time."""
    report = result.report
    if "seconds" not in report:  # nothing run (e.g. --resume of a finished output)
        return f"{result.dst}: {report.get('status', 'done')}"
    compute = report["seconds"]["compute"]
    shown = f"{compute:.2f}" if compute < 10 else f"{compute:.1f}"
    rate = result.tiles_inferred / float(shown) if float(shown) > 0 else 0.0
    batch = report.get("batch_size")
    ran_on = ", ".join(str(v) for v in (report.get("device"), report.get("precision"))
                       if v is not None)
    engine = report.get("engine")
    line = (f"{result.dst}: {counted(result.tiles_inferred, 'tile')} inferred in {shown} s "
            f"({rate:.1f} tiles/s on {ran_on or 'the cluster'}"
            f"{f', batch {batch}' if batch else ''}{f', engine {engine}' if engine else ''})")
    extra = []
    if report.get("tta", "none") != "none":
        extra.append(f"tta {report['tta']}: {report['forward_passes_per_tile']} forward passes "
                     "a tile")
    if result.tiles_skipped_nodata:
        extra.append(f"{counted(result.tiles_skipped_nodata, 'nodata tile')} skipped")
    if result.tiles_skipped_aoi:
        extra.append(f"{counted(result.tiles_skipped_aoi, 'tile')} outside the AOI skipped")
    if report.get("tiles_reused"):
        extra.append(f"{counted(report['tiles_reused'], 'tile')} of "
                     f"{counted(report['chunks_resumed'], 'chunk')} reused from the interrupted "
                     "run")
    extra.append(f"{result.seconds:.1f} s in all")
    return f"{line}; {'; '.join(extra)}"
