"""``tileseg predict SRC DST``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tileseg.cli.common import RESUME_HINT, configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import (
    band_list,
    int_list,
    overwrite_option,
    resampling_list,
    scene_options,
    scheduler_option,
)
from tileseg.cli.render import ProgressBar
from tileseg.config import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    OutputFormat,
    Precision,
    PredictConfig,
    ProbabilityMode,
    TtaMode,
)
from tileseg.text import counted
from tileseg.tiling.blend import WINDOWS, BlendName

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
@click.option("--model", "-m", help="Model: an smp folder (save_pretrained + tileseg.json), a "
              "TorchGeo .ckpt, a .pt/.pth/.safetensors state dict, an .onnx file, or a STAC "
              "MLM item (.json); see 'tileseg model info'. Default: the bundled land-cover model.")
@click.option("--architecture", help="The smp network of plain weights (Unet, DeepLabV3Plus, "
              "...), when no tileseg.json beside them names it.")
@click.option("--encoder", "encoder_name", help="The encoder of plain weights (resnet34, ...).")
@click.option("--format", "fmt", type=click.Choice(["gtiff", "cog", "zarr"]),
              help="Output format; default from DST's extension (.tif: cog, .gtiff: gtiff, "
              ".zarr: zarr). cog: a Cloud-Optimized GeoTIFF, overviews and tile index at the "
              "front for HTTP range reads (web viewers, /vsicurl/), made by one extra copy "
              "pass; gtiff: the same tiled, compressed GeoTIFF with internal overviews, written "
              "in place without that copy (local disks, quicker); zarr: a Zarr v3 store.")
@click.option("--zarr", "zarr_path", help="Also keep the Zarr mosaic here (GeoTIFF outputs).")
@click.option("--bands", callback=band_list, help="1-based bands to read, e.g. 4,3,2; for a "
              "STAC item, asset keys or common names, e.g. red,green,blue,nir (default: the "
              "model's band names).")
@click.option("--nodata", type=float, help="Nodata value, overriding the file's.")
@click.option("--allow-no-crs", is_flag=True, help="Accept a raster without CRS (pixel coords).")
@click.option("--tile-size", type=int, default=DEFAULT_TILE_SIZE, show_default=True,
              help="Tile size in pixels (the model sees real neighbours around it up to its "
              "input multiple).")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True,
              help="Pixels shared by neighbouring tiles.")
@click.option("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Target chunk side in pixels (rounded to whole tile cores).")
@click.option("--blend", type=click.Choice(sorted(WINDOWS)), default="hann", show_default=True,
              help="Weight window for blending overlapping logits.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--batch-size", type=int,
              help="Tiles per batch (default: 4 on a CPU; on a GPU, from its memory).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: bf16 autocast on GPU, fp32 on CPU.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model.")
@click.option("--engine", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
              show_default=True, help="auto: ONNX Runtime on the CPU when installed "
              "(pip install 'tileseg[cpu]'), else torch; torch on a GPU.")
@click.option("--output-stride", type=click.Choice(["8", "16"]),
              help="Run a DeepLab model at this output stride.")
@click.option("--atrous-rates", callback=int_list, help="DeepLab atrous rates, e.g. 6,12,18.")
@click.option("--tta", type=click.Choice(["none", "flips", "d4"]), default="none",
              show_default=True, help="Test-time augmentation: average each tile's logits over "
              "flips (4 passes a tile) or flips and 90-degree rotations (d4: 8 passes).")
@click.option("--probabilities", type=click.Choice(["none", "uint8", "float16"]), default="none",
              show_default=True, help="Also store per-class probabilities in the Zarr.")
@overwrite_option()
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same job.")
@scheduler_option()
@click.option("--workers", type=int,
              help="Threads of the in-process scheduler, chunk tasks in flight (default: 1 on a "
              "CPU, where they share the cores; 2 on a GPU).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write a JSON run report here.")
@click.option("--vectorize", help="Also write polygons here (.gpkg, .parquet, .geojson, .fgb).")
@click.option("--preview", type=click.Path(dir_okay=False),
              help="Also draw a PNG quicklook here: the classes over SRC, with a legend of "
              "class areas (see tileseg preview).")
@scene_options()
@click.option("--stac-item/--no-stac-item", default=True, show_default=True,
              help="Write a STAC item describing the outputs beside the mask "
              "(DST's name with .stac.json).")
@verbosity_options
@handle_errors(stopped=RESUME_HINT)
def command(paths: tuple[str, ...], output: str | None, model: str | None,
            architecture: str | None, encoder_name: str | None,
            fmt: OutputFormat | None, zarr_path: str | None,
            bands: tuple[int, ...] | tuple[str, ...] | None, nodata: float | None,
            allow_no_crs: bool,
            tile_size: int, overlap: int, chunk_size: int, blend: BlendName, device: str,
            batch_size: int | None, precision: Precision, compile_model: bool, engine: str,
            output_stride: str | None, atrous_rates: tuple[int, ...] | None,
            tta: TtaMode, probabilities: ProbabilityMode,
            overwrite: bool, resume: bool, scheduler: str | None, workers: int | None,
            report: str | None, vectorize: str | None, preview: str | None,
            resolution: float | str | None, resampling: str | None, aoi: str | None,
            aoi_crs: str | None, stac_item: bool, verbose: int, quiet: bool) -> None:
    """Segment SRC into a class mask DST (GeoTIFF/COG or Zarr).

    SRC is any GDAL raster; a STAC item (item.json, an https:// or s3:// item URL, or
    collection.json#ITEM_ID), whose assets are matched to the model's bands; or several
    rasters read as one (one file per band, at any resolutions and CRSs), as with rio: the
    last path is DST unless -o names it.

    DST defaults to SRC's name (an item's id) with .mask.tif (.mask.zarr for --format zarr) in
    the current folder, e.g. scene.tif -> ./scene.mask.tif. SRC, DST, --zarr, --vectorize,
    --preview and --report may be s3:// (gs://, az://) URLs; see the README, "Outputs on
    object storage". Beside DST goes its STAC item (scene.mask.stac.json).
    """
    from tileseg.outputs.naming import default_mask_path
    from tileseg.pipeline import predict

    configure_logging(verbose, quiet)
    src, dst = split_paths(paths, output)
    dst = dst or default_mask_path(src if isinstance(src, str) else src[0], fmt)
    config = PredictConfig(
        src=src, dst=dst, model=model, format=fmt, zarr_path=zarr_path, bands=bands,
        nodata=nodata, allow_no_crs=allow_no_crs, tile_size=tile_size, overlap=overlap,
        chunk_size=chunk_size, blend=blend, device=device, batch_size=batch_size,
        precision=precision,
        compile_model=compile_model,
        encoder_output_stride=int(output_stride) if output_stride else None,
        decoder_atrous_rates=atrous_rates,
        probabilities=probabilities,
        overwrite=overwrite, resume=resume, scheduler=scheduler, workers=workers,
        report=report, vectorize=vectorize, preview=preview,
        engine=engine,  # type: ignore[arg-type]
        tta=tta, architecture=architecture, encoder_name=encoder_name,
        resolution=resolution,  # type: ignore[arg-type]
        resampling=resampling_list(resampling),
        aoi=aoi, aoi_crs=aoi_crs, stac_item=stac_item,
    )
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
