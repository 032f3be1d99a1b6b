"""``tileseg preview MASK``."""

from __future__ import annotations

from pathlib import Path

import click

from tileseg.choices import AREA_METHODS, AreaMethod
from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import choice_option, int_list
from tileseg.text import counted

EPILOG = """\b
Examples:
  tileseg preview landcover.tif                       # landcover.png beside it
  tileseg preview landcover.tif --over scene.tif -o quicklook.png --size 2048
  tileseg preview mask.zarr --over s2.tif --bands 4,3,2 --areas estimate

\b
The picture is one decimated read of the mask (from its overviews when it has them), so it
takes the same memory for any mask size. Areas: 'exact' counts every pixel in a pass over the
mask block by block (seconds per few hundred megapixels); 'estimate' scales the picture's own
pixel counts (no extra read, good to a few percent for classes larger than a picture pixel).
km² come from the CRS units; for a geographic CRS from each row's pixel area on the WGS84
ellipsoid ('~' in the legend); without a CRS only percentages are shown.
"""


@click.command(epilog=EPILOG)
@click.argument("mask")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="PNG to write (a path or an s3:// URL). Default: MASK's name with .png, "
              "beside it (on the store too).")
@click.option("--over", help="Raster to draw beneath the classes (usually predict's SRC).")
@click.option("--bands", callback=int_list,
              help="--over bands as red,green,blue (or one for grey). Default: the bands tagged "
              "red/green/blue, else the first three.")
@click.option("--size", type=int, default=1024, show_default=True,
              help="Longest side of the picture in pixels, legend included.")
@click.option("--opacity", type=float, default=0.55, show_default=True,
              help="How strongly the classes cover --over (0-1).")
@choice_option("areas", AREA_METHODS, default="exact", show_default=True,
               help="Class areas from every pixel, or from the picture.")
@click.option("--no-legend", is_flag=True, help="Only the map.")
@verbosity_options
@handle_errors
def command(mask: str, output: str | None, over: str | None, bands: tuple[int, ...] | None,
            size: int, opacity: float, areas: AreaMethod, no_legend: bool, verbose: int,
            quiet: bool) -> None:
    """Draw a class MASK as a PNG quicklook with its palette and a legend of class areas."""
    from tileseg.preview import PreviewConfig, make_preview

    configure_logging(verbose, quiet)
    config = PreviewConfig(size=size, over=over, bands=bands, opacity=opacity,
                           areas=areas,
                           legend=not no_legend)
    dst = output or _beside(mask.rstrip("/"), ".png")
    result = make_preview(mask, dst, config)
    if not quiet:
        click.echo(f"{result.path}: {result.width}x{result.height} px, "
                   f"{counted(len(result.areas), 'class')}", err=True)


def _beside(mask: str, suffix: str) -> str:
    if "://" in mask:  # an object URL: the same prefix, only the name's extension changes
        head, _, name = mask.rpartition("/")
        return f"{head}/{Path(name).with_suffix(suffix).name}"
    return str(Path(mask).with_suffix(suffix))
