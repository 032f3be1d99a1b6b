"""``tileseg info SRC``: raster facts and the tiling plan, without running the model."""

from __future__ import annotations

import json
from typing import Any

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import batch_size_option, model_options, scene_options, tiling_options
from tileseg.config import PredictConfig


@click.command()
@click.argument("src", nargs=-1, required=True, metavar="SRC...")
@model_options(network=False)
@scene_options(aoi=False)
@tiling_options(blend=False)
@batch_size_option(help="Batch size to count batches with (default: predict's, 4 on a CPU).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: snake_case keys, numbers as numbers, sizes as [height, width].")
@verbosity_options
@handle_errors
def command(src: tuple[str, ...], as_json: bool, verbose: int, quiet: bool,
            **options: Any) -> None:
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
    # every option is a PredictConfig parameter of the same name (tileseg.cli.options)
    config = PredictConfig(src=src, dst="-.tif", **options)
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
