"""Options shared by commands, declared once: each predict option, and the groups commands apply.

A predict option's flag comes from the one parameter-to-flag table
(:func:`tileseg.errors.flag_for`) and its value reaches the command under the library
parameter's name, so a command passes its options on to :class:`~tileseg.config.PredictConfig`
as they are; a fixed choice set comes from :mod:`tileseg.choices`. The groups, as rasterio's
``rio/options.py`` has them:

``model_options``    which model: --model, --architecture, --encoder (+ DeepLab's network options)
``scene_options``    how SRC is read: --bands, --nodata, --allow-no-crs, --resolution, ...
``tiling_options``   --tile-size, --overlap, --chunk-size, --blend
``runtime_options``  --device, --batch-size, --precision, --compile, --engine, --tta, --workers
``output_options``   --format, --probabilities, --stac-item/--no-stac-item (+ predict's files)

``predict`` applies them with the library's defaults (shown in --help); ``batch`` with none, so
that what is not given stays the manifest's (or predict's) default; ``info`` the ones that
change what it shows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from tileseg.choices import (
    BLEND_WINDOWS,
    DEVICE_KINDS,
    ENGINES,
    OUTPUT_FORMATS,
    OUTPUT_STRIDES,
    PRECISIONS,
    PROBABILITY_MODES,
    RESAMPLING_METHODS,
    TTA_MODES,
    VECTOR_FORMATS,
)
from tileseg.errors import TilesegError, flag_for, flagged_message

F = TypeVar("F", bound=Callable[..., Any])


def cli_message(exc: TilesegError) -> str:
    """``exc``'s message as the CLI shows it: parameters written as their flags."""
    return flagged_message(exc)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def option(param: str, *short: str, name: str | None = None, **attrs: Any) -> Callable[[F], F]:
    """``click.option`` for the library parameter ``param``: its flag from the one table
    (:func:`~tileseg.errors.flag_for`; ``--no-X`` there is the pair ``--X/--no-X``), ``short``
    names such as ``-m``, and the value passed to the command as ``param`` (or ``name``, for a
    parameter that is not a Python name, such as ``holdout.side``)."""
    flag = flag_for(param)
    if flag.startswith("--no-"):  # a switch that is on by default: the table names its off
        flag = f"--{flag[len('--no-'):]}/{flag}"
    return click.option(flag, *short, name or param, **attrs)


def choice(values: Sequence[object]) -> click.Choice:  # type: ignore[type-arg]
    """The ``click.Choice`` of a choice set of :mod:`tileseg.choices` (values as text)."""
    return click.Choice([str(v) for v in values])


def choice_option(param: str, values: Sequence[object], *short: str,
                  **attrs: Any) -> Callable[[F], F]:
    """:func:`option` taking one of ``values`` (a set of :mod:`tileseg.choices`); the command
    gets the value itself (``8``, not ``"8"``, for a set of numbers)."""
    by_text = {str(v): v for v in values}

    def typed(ctx: click.Context, param_: click.Parameter, value: str | None) -> object:
        return None if value is None else by_text[value]

    return option(param, *short, type=choice(values), callback=typed, **attrs)


@functools.cache
def _defaults() -> dict[str, Any]:
    from tileseg.config import PredictConfig

    return {f.name: f.default for f in dataclasses.fields(PredictConfig)
            if f.default is not dataclasses.MISSING}


def _predict_option(param: str, *short: str, defaults: bool, values: Sequence[object] = (),
                    **attrs: Any) -> Callable[[F], F]:
    """A predict option: with ``defaults``, PredictConfig's default (shown in --help);
    without, None when not given (a batch's scenes then keep their own)."""
    default = _defaults()[param] if defaults else None
    attrs = {"default": default, "show_default": defaults and default not in (None, False, ()),
             **attrs}
    if values:
        return choice_option(param, values, *short, **attrs)
    return option(param, *short, **attrs)


def option_group(*options: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``options``, listed top-down as --help shows them."""

    def decorate(func: F) -> F:
        for apply in reversed(options):
            func = apply(func)
        return func

    return decorate


# --------------------------------------------------------------------------------------------
# Value parsers
# --------------------------------------------------------------------------------------------


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


def resampling_list(value: str | None) -> tuple[str, ...]:
    """``"cubic,scl=nearest"`` -> ``("cubic", "scl=nearest")``."""
    return tuple(p for p in (value or "").replace(" ", "").split(",") if p)


def _resampling(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return resampling_list(value)


# --------------------------------------------------------------------------------------------
# Options of more than one command
# --------------------------------------------------------------------------------------------


def scheduler_option(help: str | None = None) -> Callable[[F], F]:
    """``--scheduler``; unset, the library reads ``$TILESEG_SCHEDULER``, then dask's config."""
    return option(
        "scheduler",
        help=help or ("threads, sync, or a dask.distributed address (tcp://host:8786). Default: "
                      "$TILESEG_SCHEDULER, else tileseg.scheduler in dask's config, else threads."))


def overwrite_option(help: str = "Replace an existing output.") -> Callable[[F], F]:
    return option("overwrite", is_flag=True, help=help)


def verbosity_options(func: F) -> F:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return func


# --------------------------------------------------------------------------------------------
# The predict option groups
# --------------------------------------------------------------------------------------------


def plain_weights_options(*, defaults: bool = True) -> Callable[[F], F]:
    """The network of plain weights (a state dict file): --architecture, --encoder."""
    return option_group(
        _predict_option("architecture", defaults=defaults,
                        help="The smp network of plain weights (Unet, DeepLabV3Plus, ...), when "
                        "no tileseg.json beside them names it."),
        _predict_option("encoder_name", defaults=defaults,
                        help="The encoder of plain weights (resnet34, ...)."),
    )


def model_options(*, defaults: bool = True, network: bool = True) -> Callable[[F], F]:
    """Which model runs: --model, --architecture, --encoder, and (``network``) DeepLab's
    --output-stride and --atrous-rates."""
    options = [
        _predict_option(
            "model", "-m", defaults=defaults,
            help="Model: an smp folder (save_pretrained + tileseg.json), a TorchGeo .ckpt, a "
            ".pt/.pth/.safetensors state dict, an .onnx file, or a STAC MLM item (.json); see "
            "'tileseg model info'. Default: the bundled land-cover model."),
        plain_weights_options(defaults=defaults),
    ]
    if network:
        options += [
            _predict_option("encoder_output_stride", defaults=defaults, values=OUTPUT_STRIDES,
                            help="Run a DeepLab model at this output stride."),
            _predict_option("decoder_atrous_rates", defaults=defaults, callback=int_list,
                            help="DeepLab atrous rates, e.g. 6,12,18."),
        ]
    return option_group(*options)


def scene_options(*, defaults: bool = True, aoi: bool = True) -> Callable[[F], F]:
    """How SRC is read: its bands, nodata, CRS, pixel size, resampling and (``aoi``) area of
    interest."""
    options = [
        _predict_option("bands", defaults=defaults, callback=band_list,
                        help="1-based bands to read, e.g. 4,3,2; for a STAC item, asset keys or "
                        "common names, e.g. red,green,blue,nir (default: the model's band "
                        "names)."),
        _predict_option("nodata", defaults=defaults, type=float,
                        help="Nodata value, overriding the file's."),
        _predict_option("allow_no_crs", defaults=defaults, is_flag=True,
                        help="Accept a raster without CRS (pixel coords)."),
        _predict_option(
            "resolution", defaults=defaults, callback=resolution_value,
            help="Run at this pixel size (in the CRS's units, e.g. 10), or 'model' for the "
            "model's own (gsd in tileseg.json); bands are resampled on the fly and the mask is "
            "written on that grid. Default: the source's own (for several files or a STAC "
            "item, the finest band's)."),
        _predict_option(
            "resampling", defaults=False, callback=_resampling,
            help="How bands are resampled onto the grid: METHOD for every continuous band "
            "and/or NAME=METHOD for one band (asset key, common name or band number), "
            f"comma-separated, e.g. cubic,scl=nearest. METHOD: {', '.join(RESAMPLING_METHODS)}."
            " Default: bilinear, nearest for categorical bands (classification assets, integer "
            "nodata-only bands, colour tables)."),
    ]
    if aoi:
        options += [
            _predict_option(
                "aoi", defaults=defaults,
                help="Area of interest: a vector file of polygons (GeoPackage, GeoJSON, "
                "Shapefile..., any CRS) or a bbox W,S,E,N. The output is cropped to its bounds, "
                "pixels outside the polygons are nodata, tiles without an AOI pixel are not "
                "inferred."),
            _predict_option("aoi_crs", defaults=defaults,
                            help="CRS of a --aoi bbox (default EPSG:4326, longitude/latitude), "
                            "or of an AOI file that has none, e.g. EPSG:32631."),
        ]
    return option_group(*options)


def tiling_options(*, defaults: bool = True, blend: bool = True) -> Callable[[F], F]:
    """How the raster is cut into tiles and chunks, and (``blend``) how tiles are blended."""
    options = [
        _predict_option("tile_size", defaults=defaults, type=int,
                        help="Tile size in pixels (the model sees real neighbours around it up "
                        "to its input multiple)."),
        _predict_option("overlap", defaults=defaults, type=int,
                        help="Pixels shared by neighbouring tiles."),
        _predict_option("chunk_size", defaults=defaults, type=int,
                        help="Target chunk side in pixels (rounded to whole tile cores)."),
    ]
    if blend:
        options.append(_predict_option("blend", defaults=defaults, values=BLEND_WINDOWS,
                                       help="Weight window for blending overlapping logits."))
    return option_group(*options)


def batch_size_option(*, defaults: bool = True, help: str | None = None) -> Callable[[F], F]:
    return _predict_option("batch_size", defaults=defaults, type=int, help=help or (
        "Tiles per batch (default: 4 on a CPU; on a GPU, from its memory)."))


def runtime_options(*, defaults: bool = True) -> Callable[[F], F]:
    """Where and how the model runs (resolved on the process running the tasks)."""
    options = [
        _predict_option("device", defaults=defaults,
                        help=f"{', '.join(DEVICE_KINDS)}, cuda:N (on a cluster: the workers')."),
        batch_size_option(defaults=defaults),
        _predict_option("precision", defaults=defaults, values=PRECISIONS,
                        help="auto: bf16 autocast on GPU, fp32 on CPU."),
        _predict_option("compile_model", defaults=defaults, is_flag=True,
                        help="torch.compile the model."),
        _predict_option("engine", defaults=defaults, values=ENGINES,
                        help="auto: ONNX Runtime on the CPU when installed "
                        "(pip install 'tileseg[cpu]'), else torch; torch on a GPU."),
        _predict_option("tta", defaults=defaults, values=TTA_MODES,
                        help="Test-time augmentation: average each tile's logits over flips (4 "
                        "passes a tile) or flips and 90-degree rotations (d4: 8 passes)."),
        _predict_option("workers", defaults=defaults, type=int,
                        help="Threads of the in-process scheduler, chunk tasks in flight "
                        "(default: 1 on a CPU, where they share the cores; 2 on a GPU)."),
    ]
    return option_group(*options)


def output_options(*, defaults: bool = True, files: bool = True) -> Callable[[F], F]:
    """What is written: the mask's format, probabilities and STAC item, and (``files``, one
    path each: predict's) the other outputs."""
    options = [
        _predict_option(
            "format", defaults=defaults, values=OUTPUT_FORMATS,
            help="Output format; default from DST's extension (.tif: cog, .gtiff: gtiff, "
            ".zarr: zarr). cog: a Cloud-Optimized GeoTIFF, overviews and tile index at the "
            "front for HTTP range reads (web viewers, /vsicurl/), made by one extra copy pass; "
            "gtiff: the same tiled, compressed GeoTIFF with internal overviews, written in place "
            "without that copy (local disks, quicker); zarr: a Zarr v3 store."),
        _predict_option("probabilities", defaults=defaults, values=PROBABILITY_MODES,
                        help="Also store per-class probabilities in the Zarr."),
        _predict_option("stac_item", defaults=defaults, is_flag=True,
                        help="Write a STAC item describing the outputs beside the mask "
                        "(DST's name with .stac.json)."),
    ]
    if files:
        options += [
            _predict_option("zarr_path", defaults=defaults,
                            help="Also keep the Zarr mosaic here (GeoTIFF outputs)."),
            _predict_option("vectorize", defaults=defaults,
                            help="Also write polygons here "
                            f"({', '.join('.' + f for f in VECTOR_FORMATS)})."),
            _predict_option("preview", defaults=defaults, type=click.Path(dir_okay=False),
                            help="Also draw a PNG quicklook here: the classes over SRC, with a "
                            "legend of class areas (see tileseg preview)."),
            _predict_option("report", defaults=defaults, type=click.Path(dir_okay=False),
                            help="Write a JSON run report here."),
        ]
    return option_group(*options)
