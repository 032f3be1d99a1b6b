"""``tileseg info SRC``: raster facts and the tiling plan, without running the model."""

from __future__ import annotations

import json

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import band_list, resampling_list, scene_options
from tileseg.config import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, PredictConfig


@click.command()
@click.argument("src", nargs=-1, required=True, metavar="SRC...")
@click.option("--model", "-m", help="Model (as predict takes it; default: the bundled model).")
@click.option("--architecture", help="The smp network of plain weights (Unet, ...).")
@click.option("--encoder", "encoder_name", help="The encoder of plain weights (resnet34, ...).")
@click.option("--bands", callback=band_list, help="1-based bands to read, e.g. 4,3,2; for a STAC "
              "item, asset keys or common names.")
@click.option("--nodata", type=float, help="Nodata value, overriding the file's.")
@click.option("--allow-no-crs", is_flag=True, help="Accept a raster without CRS.")
@click.option("--tile-size", type=int, default=DEFAULT_TILE_SIZE, show_default=True)
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True)
@click.option("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, show_default=True)
@click.option("--batch-size", type=int,
              help="Batch size to count batches with (default: predict's, 4 on a CPU).")
@scene_options(aoi=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: snake_case keys, numbers as numbers, sizes as [height, width].")
@verbosity_options
@handle_errors
def command(src: tuple[str, ...], model: str | None, architecture: str | None,
            encoder_name: str | None, bands: tuple[int, ...] | tuple[str, ...] | None,
            nodata: float | None,
            allow_no_crs: bool, tile_size: int, overlap: int, chunk_size: int,
            batch_size: int | None, resolution: float | str | None, resampling: str | None,
            as_json: bool, verbose: int, quiet: bool) -> None:
    """Show SRC's facts and how predict would tile it.

    SRC is a raster, a STAC item, or several rasters read as one (as for predict). The raster's
    pixel size and the model's (gsd) are both shown; a model that does not take SRC (band count,
    dtype, pixel size) is one warning line, not an error.

    \b
    Examples:
      tileseg info scene.tif --overlap 128
      tileseg info item.json -m models/s2 --resolution model
    """
    from tileseg.info import describe

    configure_logging(verbose, quiet)
    config = PredictConfig(src=src, dst="-.tif", model=model, bands=bands, nodata=nodata,
                           allow_no_crs=allow_no_crs, tile_size=tile_size, overlap=overlap,
                           chunk_size=chunk_size, batch_size=batch_size,
                           architecture=architecture, encoder_name=encoder_name,
                           resolution=resolution,  # type: ignore[arg-type]
                           resampling=resampling_list(resampling))
    facts = describe(config, flags=True)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for section, values in facts.items():
        if section == "warnings":
            continue
        click.echo(f"{section}:")
        for key, value in values.items():
            click.echo(f"  {key.replace('_', ' '):<24} {_text(key, value)}")
    for warning in facts["warnings"]:
        click.echo(f"Warning: {warning}", err=True)


def _text(key: str, value: object) -> str:
    if isinstance(value, list):
        sep = " x " if key in SIZE_KEYS else ", "
        return sep.join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


SIZE_KEYS = {"size", "pixel_size", "internal_block", "network_input", "tile_grid"}
