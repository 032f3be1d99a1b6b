"""``tileseg vectorize MASK DST``."""

from __future__ import annotations

import warnings

import click

from tileseg.choices import AREA_UNITS, CONNECTIVITIES, AreaUnit, Connectivity
from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import choice_option, int_list, overwrite_option, scheduler_option
from tileseg.cli.render import ProgressBar
from tileseg.text import counted

EPILOG = """\b
Examples:
  tileseg vectorize scene.mask.tif               # writes scene.mask.gpkg here
  tileseg vectorize mask.tif landcover.gpkg
  tileseg vectorize mask.zarr buildings.parquet --classes 3 --min-area 20 --connectivity 8
  tileseg vectorize mask.tif fields.fgb --min-area 500 --min-area-unit map --simplify 1
  tileseg vectorize mask.tif water.geojson --classes 1 --to-crs EPSG:4326
  tileseg vectorize s3://results/t32.zarr s3://results/t32.gpkg   # on the store, one upload
"""


@click.command(epilog=EPILOG)
@click.argument("mask")
@click.argument("dst", required=False)
@click.option("--classes", callback=int_list,
              help="Class ids to keep, e.g. 1,3 (default: every class but the background).")
@click.option("--drop", "drop_classes", callback=int_list,
              help="Class ids to leave out. Default: the class named background (or "
              "unlabelled, void, nodata) in the mask's metadata, none if no class has such a "
              "name (land cover), or 0 for a plain integer mask without class names.")
@click.option("--min-area", type=float, default=0.0, show_default=True,
              help="Drop polygons smaller than this (exact area, before simplifying).")
@choice_option("min_area_unit", AREA_UNITS, default="pixels", show_default=True,
               help="Unit of --min-area: pixels, or squared CRS units (m²).")
@choice_option("connectivity", CONNECTIVITIES, default="4", show_default=True,
               help="4: pixels sharing a side form one polygon; 8: sharing a corner too.")
@click.option("--simplify", type=float, default=0.0, show_default=True,
              help="Simplify tolerance in pixels; the whole coverage is simplified together so "
              "neighbours keep a shared border (0: exact pixel edges).")
@click.option("--to-crs", help="Reproject the polygons, e.g. EPSG:4326 (area stays in the "
              "mask's CRS units). Default: the mask's CRS, except GeoJSON, which is written in "
              "OGC:CRS84 longitude/latitude as RFC 7946 requires; GeoJSON in another CRS "
              "names its EPSG code (a CRS without one: use .gpkg, .fgb or .parquet).")
@click.option("--allow-no-crs", is_flag=True,
              help="Accept a mask without CRS (polygons in its transform units).")
@click.option("--no-probabilities", is_flag=True,
              help="Skip mean_probability even when the Zarr mask stores probabilities.")
@click.option("--chunk-size", type=int,
              help="Chunk side in pixels (default: the Zarr chunks, or 2048 for GeoTIFF).")
@overwrite_option(
              help="Replace an existing DST, only if tileseg wrote it (any other file stays: "
              "exit 4).")
@scheduler_option()
@click.option("--workers", type=int, help="Threads of the in-process scheduler.")
@verbosity_options
@handle_errors
def command(mask: str, dst: str | None, classes: tuple[int, ...] | None,
            drop_classes: tuple[int, ...] | None, min_area: float, min_area_unit: AreaUnit,
            connectivity: Connectivity, simplify: float, to_crs: str | None, allow_no_crs: bool,
            no_probabilities: bool, chunk_size: int | None, overwrite: bool,
            scheduler: str | None, workers: int | None, verbose: int, quiet: bool) -> None:
    """Write the connected components of a class MASK (GeoTIFF or Zarr) as polygons to DST.

    The format follows DST's extension: .gpkg, .parquet (GeoParquet), .geojson or .fgb (default:
    MASK's name with .gpkg in the current folder, e.g. scene.mask.tif -> ./scene.mask.gpkg). Each
    feature has class_id, class_name, pixels, area and, when the Zarr stores probabilities,
    mean_probability. The layer is in the mask's CRS; GeoJSON in OGC:CRS84 (lon/lat) unless
    --to-crs is given. Chunks are processed in parallel and joined exactly: the polygons equal
    those of vectorizing the whole mask at once.
    """
    from rasterio.errors import NotGeoreferencedWarning

    from tileseg.outputs.naming import default_polygons_path
    from tileseg.vectorization import VectorizeConfig, vectorize

    configure_logging(verbose, quiet)
    dst = dst or default_polygons_path(mask)
    # rasterio hides this warning for its in-memory label copies with catch_warnings, which is not
    # thread-safe, so it can leak from the dask threads; it never concerns the user's mask.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    config = VectorizeConfig(
        classes=classes, drop_classes=drop_classes, min_area=min_area,
        min_area_unit=min_area_unit, connectivity=connectivity,
        simplify=simplify, to_crs=to_crs, allow_no_crs=allow_no_crs,
        probabilities=not no_probabilities, chunk_size=chunk_size, overwrite=overwrite,
        scheduler=scheduler, workers=workers,
    )
    bar = ProgressBar("vectorize", enabled=not quiet)
    try:
        result = vectorize(mask, dst, config, progress=bar)
    finally:
        bar.close()
    if not quiet:
        per_class = ", ".join(f"{result.class_names[c]}: {n}" for c, n in result.counts.items())
        click.echo(f"{result.dst}: {counted(result.features, 'polygon')} ({per_class or 'none'}) "
                   f"from {counted(result.chunks, 'chunk')} in {result.seconds:.1f} s", err=True)
