"""Scenes as users hold them: a raster, several rasters read as one, or a STAC item; the pixel
size to run at; an area of interest.

:func:`open_scene` turns a run's ``src`` into the :class:`~tileseg.sources.raster.RasterInfo` the rest
of tileseg reads (a stack of files is one, with its :class:`~tileseg.sources.stack.StackSpec`),
and keeps the STAC item it came from, if any, for the output item.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from tileseg.errors import ConfigError, InputError

if TYPE_CHECKING:
    from tileseg.config import PredictConfig
    from tileseg.models.metadata import ModelMetadata
    from tileseg.scenes.stac import SceneItem
    from tileseg.sources.raster import RasterInfo
    from tileseg.sources.stack import StackSpec

logger = logging.getLogger(__name__)

GSD_TOLERANCE = 0.10  # beyond this relative difference, the input's pixel size is worth a word


@dataclass(frozen=True)
class Scene:
    """What a run reads: the raster facts, and the STAC item when the source was one."""

    raster: RasterInfo
    item: SceneItem | None = None


def is_item_source(src: Any) -> bool:
    from tileseg.scenes.stac import is_stac_source

    if isinstance(src, str):
        return is_stac_source(src)
    return not isinstance(src, tuple)


def source_label(src: Any) -> str:
    """How messages and reports name a source."""
    if isinstance(src, str):
        return src
    if isinstance(src, tuple):
        return stack_label(src)
    href = getattr(src, "get_self_href", lambda: None)()
    return href or f"STAC item {getattr(src, 'id', '?')}"


def stack_label(files: tuple[str, ...]) -> str:
    names = [PurePosixPath(f.split("?", 1)[0]).name or f for f in files]
    if len(names) <= 3:
        return "+".join(names)
    return f"{names[0]}+...+{names[-1]} ({len(names)} files)"


def source_files(src: Any) -> list[str]:
    """The paths a run reads (for the checks that no output replaces an input): local files
    with their sidecars, remote URLs as they are; a local item and its local assets."""
    from tileseg.sources.raster import raster_files
    from tileseg.sources.remote import is_remote

    if isinstance(src, tuple):
        return [f for path in src for f in ([path] if is_remote(path) else raster_files(path))]
    if not isinstance(src, str):
        return []
    if not is_item_source(src):
        return [src] if is_remote(src) else raster_files(src)
    from tileseg.scenes.stac import split_fragment

    location, _ = split_fragment(src)
    files = [location]
    if not is_remote(location) and Path(location).is_file():
        try:
            from tileseg.scenes.stac import load_item

            item = load_item(src)
            files += [a["href"] for a in item.assets.values() if not is_remote(a["href"])]
        except InputError:  # open_scene says why, later
            pass
    return files


def target_resolution(resolution: Any, gsd: float | None, label: str) -> float | None:
    if resolution == "model":
        if gsd is None:
            raise ConfigError(f"resolution model: the model states no pixel size (gsd in its "
                              f"tileseg.json); give the pixel size to run {label} at",
                              params=("resolution",))
        return float(gsd)
    return None if resolution is None else float(resolution)


def resampling_choices(entries: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """``resampling`` entries as (defaults by kind, methods by band name casefolded)."""
    defaults: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for entry in entries:
        name, _, method = entry.rpartition("=")
        if name:
            by_name[name.casefold()] = method
        else:
            defaults["continuous"] = method
    return defaults, by_name


def open_scene(config: PredictConfig, model: ModelMetadata | None) -> Scene:
    """Open ``config.src`` for a run with a model described by ``model`` (its band names, input
    count and gsd; None: unknown yet, as for ``info`` without a model)."""
    src = config.src
    label = source_label(src)
    gsd = model.gsd if model is not None else None
    resolution = target_resolution(config.resolution, gsd, label)
    defaults, by_name = resampling_choices(config.resampling)
    if isinstance(src, tuple):
        spec = _file_stack(src, config, resolution, defaults, by_name)
        return Scene(stack_info(spec, config.nodata))
    if is_item_source(src):
        from tileseg.scenes.stac import band_requests, load_item
        from tileseg.sources.stack import build_stack

        if config.bands is not None and not all(isinstance(b, str) for b in config.bands):
            raise InputError(f"{label}: bands of a STAC item are named, not numbered: give asset "
                             "keys or common names, e.g. bands red,green,blue",
                             params=("bands",))
        item = load_item(src)
        names = tuple(str(b) for b in config.bands) if config.bands is not None else None
        requests = band_requests(item, names, model.bands if model else (),
                                 model.in_channels if model else 3, by_name)
        spec = build_stack(requests, resolution=resolution, label=item.label,
                           default_resampling=defaults)
        return Scene(stack_info(spec, config.nodata), item)
    return Scene(_single_raster(src, config, resolution, defaults, by_name))


def _single_raster(src: str, config: PredictConfig, resolution: float | None,
                   defaults: dict[str, str], by_name: dict[str, str]) -> RasterInfo:
    from tileseg.sources.raster import open_raster

    if config.bands is not None and not all(isinstance(b, int) for b in config.bands):
        raise InputError(f"{src}: bands {','.join(map(str, config.bands))} are names, which only "
                         "a STAC item's assets have; give 1-based band numbers, e.g. bands 3,2,1",
                         params=("bands",))
    bands = tuple(int(b) for b in config.bands) if config.bands is not None else None
    info = open_raster(src, bands=bands, nodata=config.nodata, allow_no_crs=config.allow_no_crs)
    if resolution is None:
        return info
    t = info.affine
    native = math.sqrt(abs(t.determinant))
    if math.isclose(native, resolution, rel_tol=1e-9) and not (t.b or t.d):
        return info
    from tileseg.sources.stack import BandRequest, build_stack

    requests = [BandRequest(src, b, name=f"band {b}",
                            resampling=by_name.get(str(b)))
                for b in info.indexes]
    spec = build_stack(requests, resolution=resolution, label=src, default_resampling=defaults)
    return stack_info(spec, config.nodata)


def _file_stack(files: tuple[str, ...], config: PredictConfig, resolution: float | None,
                defaults: dict[str, str], by_name: dict[str, str]) -> StackSpec:
    """Every band of every file, in order; ``bands`` numbers pick among them."""
    from tileseg.sources.datasets import gdal_message, open_dataset
    from tileseg.sources.remote import is_remote
    from tileseg.sources.stack import BandRequest, build_stack

    label = stack_label(files)
    requests: list[BandRequest] = []
    for path in files:
        if not is_remote(path) and not Path(path).exists():
            raise InputError(f"{path}: no such file; check the path")
        try:
            with open_dataset(path) as src:
                count = src.count
        except Exception as exc:  # noqa: BLE001 - rasterio's errors: one line naming the file
            raise InputError(f"{path}: not a raster GDAL can read ({gdal_message(exc)}); pass "
                             "GeoTIFF/COG files") from None
        stem = PurePosixPath(path.split("?", 1)[0]).stem
        for band in range(1, count + 1):
            name = stem if count == 1 else f"{stem}[{band}]"
            n = len(requests) + 1
            method = next((by_name[k] for k in (name.casefold(), stem.casefold(), str(n))
                           if k in by_name), None)
            requests.append(BandRequest(path, band, name=name, resampling=method))
    if config.bands is not None:
        if not all(isinstance(b, int) for b in config.bands):
            raise InputError(f"{label}: bands {','.join(map(str, config.bands))} are names; for "
                             "several files give 1-based band numbers in file order",
                             params=("bands",))
        bad = [b for b in config.bands if not 1 <= int(b) <= len(requests)]
        if bad:
            raise InputError(f"{label}: has {len(requests)} bands in all, bands {bad} out of "
                             "range (1-based, in file order)", params=("bands",))
        requests = [requests[int(b) - 1] for b in config.bands]
    return build_stack(requests, resolution=resolution, label=label, default_resampling=defaults)


def stack_info(spec: StackSpec, nodata: float | None) -> RasterInfo:
    """The :class:`RasterInfo` of a stack: its grid, dtype, bands and validity."""
    from rasterio.crs import CRS

    from tileseg.sources.pinning import current_version
    from tileseg.sources.raster import RasterInfo, _check_nodata_fits
    from tileseg.sources.stack import WARP_BLOCK

    grid = spec.grid
    if nodata is not None:
        _check_nodata_fits(spec.label, nodata, spec.dtype)
    crs = CRS.from_wkt(grid.crs_wkt)
    try:
        units = crs.linear_units_factor
        metric = units[0].lower() in ("metre", "meter") and math.isclose(units[1], 1.0)
    except Exception:  # noqa: BLE001 - geographic CRSs have no linear units
        metric = False
    has_mask = (nodata is not None or any(b.nodata is not None for b in spec.bands)
                or any(s.mask_from_gdal for s in spec.sources))
    count = len(spec.bands)
    return RasterInfo(
        path=spec.label, height=grid.height, width=grid.width, count=count,
        indexes=tuple(range(1, count + 1)), dtype=spec.dtype, crs_wkt=grid.crs_wkt,
        transform=grid.transform, nodata=nodata, has_mask=has_mask,
        block_shape=(min(WARP_BLOCK, grid.height), min(WARP_BLOCK, grid.width)),
        band_descriptions=tuple(b.name for b in spec.bands), crs_is_metric=metric, stack=spec,
        # every band file pinned, as a single raster's file is (tileseg.sources.pinning)
        version=current_version(spec.label, spec.hrefs))


def pixel_size_m(raster: RasterInfo) -> float | None:
    """The raster's pixel size in metres (approximately, for a geographic CRS), or None."""
    t = raster.affine
    size = math.sqrt(abs(t.determinant))
    if raster.crs_is_metric:
        return size
    if raster.crs_wkt is None:
        return None
    from rasterio.crs import CRS

    crs = CRS.from_wkt(raster.crs_wkt)
    if not crs.is_geographic:
        return None
    centre_y = t.f + t.e * raster.height / 2
    return size * 111_320.0 * math.cos(math.radians(centre_y))


def gsd_note(raster: RasterInfo, gsd: float | None, flags: bool = True) -> str | None:
    """A sentence when the raster's pixel size differs from the model's ``gsd`` by more than
    :data:`GSD_TOLERANCE`, with both numbers; None when they agree or either is unknown. It
    names the option as a flag (``--resolution``) with ``flags``, else as the parameter."""
    size = pixel_size_m(raster)
    if gsd is None or size is None or gsd <= 0:
        return None
    if abs(size - gsd) / gsd <= GSD_TOLERANCE:
        return None
    from tileseg.errors import flag_for

    option = f"{flag_for('resolution')} model" if flags else "resolution='model'"
    looks = "larger" if size < gsd else "smaller"
    return (f"{raster.path}: pixel size {size:g} m but the model was trained at {gsd:g} m; "
            f"objects look {looks} to it than in training ({option} runs at the model's pixel "
            "size)")


def check_named_bands_fit(config: PredictConfig) -> None:
    """Named bands are for STAC items only: a raster or a list of files takes numbers."""
    if config.bands and all(isinstance(b, str) for b in config.bands) \
            and not is_item_source(config.src):
        raise InputError(f"{source_label(config.src)}: bands "
                         f"{','.join(map(str, config.bands))} are names, which only a STAC "
                         "item's assets have; give 1-based band numbers, e.g. bands 3,2,1",
                         params=("bands",))



def overview_has_valid_pixel(raster: RasterInfo, side: int = 64) -> bool:
    """True when a coarse look (about ``side`` pixels a side, nearest neighbour: overviews
    where the files have them) finds a pixel valid in every band. A value read by nearest
    neighbour is a real pixel's, so a yes is sure; a no proves nothing (the caller checks in
    full). Masks only: float bands (NaN) and a nodata given by the caller answer no."""
    from rasterio.enums import Resampling

    from tileseg.sources.raster import open_source

    if raster.nodata is not None or raster.dtype.startswith("float"):
        return False
    shape = (len(raster.indexes), max(1, min(side, raster.height)),
             max(1, min(side, raster.width)))
    with open_source(raster) as src:
        masks = src.read_masks(raster.indexes, out_shape=shape, resampling=Resampling.nearest)
    return bool((np.asarray(masks) != 0).all(axis=0).any())
