"""Option parsers shared by commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tileseg.errors import TilesegError, flag_for, flagged_message  # noqa: F401

F = TypeVar("F", bound=Callable[..., Any])

def cli_message(exc: TilesegError) -> str:
    """``exc``'s message as the CLI shows it: parameters written as their flags."""
    return flagged_message(exc)


def scheduler_option(help: str | None = None) -> Callable[[F], F]:
    """``--scheduler``, read from ``$TILESEG_SCHEDULER`` when not given."""
    return click.option(
        "--scheduler", envvar="TILESEG_SCHEDULER",
        help=help or ("threads, sync, or a dask.distributed address (tcp://host:8786). Default: "
                      "$TILESEG_SCHEDULER, else tileseg.scheduler in dask's config, else threads."))


def overwrite_option(help: str = "Replace an existing output.") -> Callable[[F], F]:
    return click.option("--overwrite", is_flag=True, help=help)


def verbosity_options(func: F) -> F:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return func


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Parse ``"3,2,1"`` into ``(3, 2, 1)``."""
    if value is None or value == "":
        return None
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def band_list(ctx: click.Context, param: click.Parameter,
              value: str | None) -> tuple[int, ...] | tuple[str, ...] | None:
    """``"4,3,2"`` -> ``(4, 3, 2)``; ``"red,nir"`` (a STAC item's asset keys or common names)
    -> ``("red", "nir")``."""
    if value is None or value == "":
        return None
    parts = [v.strip() for v in value.split(",")]
    if any(not p for p in parts):
        raise click.BadParameter(f"{value!r} has an empty item; give e.g. 4,3,2 or red,green,blue")
    if all(p.lstrip("-").isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return tuple(parts)


def resolution_value(ctx: click.Context, param: click.Parameter,
                     value: str | None) -> float | str | None:
    """``--resolution 10`` (a pixel size) or ``--resolution model``."""
    if value is None:
        return None
    if value.strip().lower() == "model":
        return "model"
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a pixel size (e.g. 10) or model") from None


def scene_options(aoi: bool = True) -> Callable[[F], F]:
    """Options that say how a scene is read: its pixel size, resampling and (``aoi``) area of
    interest."""

    def decorate(func: F) -> F:
        if aoi:
            func = click.option(
                "--aoi-crs", help="CRS of a --aoi bbox (default EPSG:4326, longitude/latitude),"
                " or of an AOI file that has none, e.g. EPSG:32631.")(func)
            func = click.option(
                "--aoi", help="Area of interest: a vector file of polygons (GeoPackage, GeoJSON,"
                " Shapefile..., any CRS) or a bbox W,S,E,N. The output is cropped to its bounds,"
                " pixels outside the polygons are nodata, tiles without an AOI pixel are not "
                "inferred.")(func)
        func = click.option(
            "--resampling", help="How bands are resampled onto the grid: METHOD for every "
            "continuous band and/or NAME=METHOD for one band (asset key, common name or band "
            "number), comma-separated, e.g. cubic,scl=nearest. Default: bilinear, nearest for "
            "categorical bands (classification assets, integer nodata-only bands, colour "
            "tables).")(func)
        func = click.option(
            "--resolution", callback=resolution_value, help="Run at this pixel size (in the "
            "CRS's units, e.g. 10), or 'model' for the model's own (gsd in tileseg.json); bands "
            "are resampled on the fly and the mask is written on that grid. Default: the "
            "source's own (for several files or a STAC item, the finest band's).")(func)
        return func

    return decorate


def resampling_list(value: str | None) -> tuple[str, ...]:
    """``"cubic,scl=nearest"`` -> ``("cubic", "scl=nearest")``."""
    return tuple(p for p in (value or "").replace(" ", "").split(",") if p)
