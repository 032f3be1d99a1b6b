"""The plan of a predict run: the raster, the model and the tile grid, before anything is
computed or written.

:func:`make_plan` opens the source (a file, a stack of band files, a STAC item; see
:mod:`tileseg.scenes`) and the model, checks that one fits the other, and lays out the tiles and
chunks on the model's input grid (:mod:`tileseg.tiling.grid`), cut to an area of interest
when one is given. It reads no pixels. :func:`tileseg.pipeline.predict` runs a plan;
``tileseg info`` (:mod:`tileseg.info`) reports one, and :mod:`tileseg.memory` sizes one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, ModelError, log_params
from tileseg.models import BUNDLED_MODEL
from tileseg.models.formats import load_model
from tileseg.models.loaded import LoadedModel, warn_once
from tileseg.models.registry import ModelRef
from tileseg.sources.raster import RasterInfo
from tileseg.tiling.grid import TileGrid, aligned_overlap, round_up

if TYPE_CHECKING:
    from tileseg.models.metadata import ModelMetadata
    from tileseg.scenes.aoi import AoiPlan
    from tileseg.scenes.stac import SceneItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """The raster, model and tiling plan of a run, before anything is computed."""

    raster: RasterInfo
    model: LoadedModel
    grid: TileGrid
    context: int
    model_ref: ModelRef | None = None  # how the tasks get the model (set by predict)
    model_source: str = ""  # the model directory; "" for a caller's model object
    aoi: AoiPlan | None = None  # an area of interest: raster is then its window
    item: SceneItem | None = None  # the STAC item the source was, if any

    @property
    def output_raster(self) -> RasterInfo:
        """The grid of the published outputs: the raster's, or the AOI's crop of it."""
        return self.aoi.output_raster() if self.aoi is not None else self.raster


def resolve_model(config: PredictConfig, raster: RasterInfo) -> tuple[LoadedModel, str]:
    path = config.model
    if path is None:
        if not (BUNDLED_MODEL / "config.json").is_file():
            raise ModelError("no model given and no bundled one is installed; pass model DIR",
                             params=("model",))
        path = str(BUNDLED_MODEL)
        warn_once(
            logger, "bundled-model",
            "no model given: the bundled land-cover one is used (Landsat, 7 classes; see "
            "tileseg/models/landcover/MODEL_CARD.md); it suits 30 m Landsat-like scenes only",
            params=("model",),
        )
    model = load_model(path, encoder_output_stride=config.encoder_output_stride,
                       decoder_atrous_rates=config.decoder_atrous_rates, raster_dtype=raster.dtype,
                       architecture=config.architecture, encoder_name=config.encoder_name)
    return model, path


def check_model_fits(model: LoadedModel, raster: RasterInfo) -> None:
    meta = model.metadata
    if meta.in_channels != len(raster.indexes):
        if raster.count < meta.in_channels:
            # no --bands can help: suggest only what is possible
            raise ModelError(
                f"{raster.path}: has {raster.count} band{'s' if raster.count > 1 else ''} but "
                f"the model takes {meta.in_channels}; the raster has too few bands for this "
                f"model: use a model trained on {raster.count}-band input"
            )
        selected = "" if len(raster.indexes) == raster.count else " selected"
        raise ModelError(
            f"{raster.path}: has {len(raster.indexes)} bands{selected} but the model takes "
            f"{meta.in_channels}; choose {meta.in_channels} of its {raster.count} bands with "
            f"bands (e.g. bands {','.join(str(i + 1) for i in range(meta.in_channels))})",
            params=("bands",),
        )
    if meta.dtype is not None and meta.dtype != raster.dtype:
        reason = lossy_cast_reason(raster.dtype, meta.dtype)
        if reason is not None:
            raise ModelError(
                f"{raster.path}: dtype {raster.dtype} but the model was trained on {meta.dtype}, "
                f"and {reason}; use a model for {raster.dtype}, or convert the raster yourself "
                "if you know its values fit (gdal_translate -ot)"
            )
        logger.info("%s: %s values are cast to %s (the model's dtype) on the fly; no value changes",
                    raster.path, raster.dtype, meta.dtype)


def lossy_cast_reason(src: str, dst: str) -> str | None:
    """Why casting a ``src`` raster to a model's ``dst`` dtype would lose values, or None.

    numpy's "safe" casting is the rule: every value of ``src`` (a nodata value included, being
    one of them) is exactly a value of ``dst``. The tiles reach the model as float32 either way
    (``infer``), so a safe cast feeds exactly what a raster converted beforehand would.
    """
    if np.can_cast(np.dtype(src), np.dtype(dst), casting="safe"):
        return None
    return f"{src} values cannot be stored as {dst} without loss"


def make_plan(config: PredictConfig, model: LoadedModel | None = None, *,
              check_fits: bool = True, raster: RasterInfo | None = None,
              note_resolution: bool = True) -> Plan:
    """Open the raster and model and build the tiling plan (reads no pixels).

    ``check_fits=False`` plans even for a model that does not take the raster (``info`` reports
    the mismatch instead of failing). ``raster``: the raster already opened from ``config``.
    """
    item = None
    if raster is None:
        scene = open_scene(config, model_hint(config, model))
        raster, item = scene.raster, scene.item
    if model is None:
        model, _ = resolve_model(config, raster)
    if check_fits:
        check_model_fits(model, raster)
    if note_resolution:
        warn_resolution(config, raster, model)
    tile_size = clamped_tile_size(config, raster, model.divisor)
    if model.input_size is not None:
        tile_size = fixed_input_tile_size(model, tile_size, config.overlap)
    # The tile step is rounded down to the model's input multiple so every network input
    # window sits on the phase a whole-raster pass would use (see tileseg.tiling.grid).
    overlap = aligned_overlap(tile_size, config.overlap, model.divisor)
    grid = TileGrid.for_raster(raster.height, raster.width, tile_size, overlap,
                               config.chunk_size, divisor=model.divisor)
    aoi = None
    if config.aoi is not None:
        from tileseg.scenes.aoi import plan_aoi

        # the window's tiles are the whole raster's: the same tile size, step and phase
        aoi = plan_aoi(config.aoi, config.aoi_crs, raster, grid)
        raster = aoi.raster
        grid = TileGrid.for_raster(raster.height, raster.width, tile_size, overlap,
                                   config.chunk_size, divisor=model.divisor)
    return Plan(raster, model, grid, model.context_size(tile_size), aoi=aoi, item=item)


def open_scene(config: PredictConfig, model: ModelMetadata | None) -> Any:
    """The run's source (:func:`tileseg.scenes.open_scene`)."""
    from tileseg.scenes import open_scene as open_source_scene

    return open_source_scene(config, model)


def model_hint(config: PredictConfig, model: LoadedModel | None) -> ModelMetadata | None:
    """What the model says about its input before it is loaded: band names (to find a STAC
    item's assets), input count and pixel size (``tileseg.json``); None when it says nothing."""
    from tileseg.models.metadata import load_metadata

    if model is not None:
        return model.metadata
    path = Path(config.model) if config.model is not None else BUNDLED_MODEL
    if config.model is not None and not (path.exists() or path.is_symlink()):
        load_model(path)  # the model's own error (exit 2), before any word about the source
    if not path.is_dir():
        return None  # resolve_model says what is wrong with it
    return load_metadata(path)


def warn_resolution(config: PredictConfig, raster: RasterInfo, model: LoadedModel) -> None:
    """Say once when the input's pixel size is far from the model's (both numbers)."""
    from tileseg.scenes import gsd_note

    if config.resolution == "model":
        return
    note = gsd_note(raster, model.metadata.gsd)
    if note is not None:
        warn_once(logger, "gsd", note)


def fixed_input_tile_size(model: LoadedModel, tile_size: int, overlap: int) -> int:
    """The tile size for a network that takes one input size: at most that size (its input
    is the tile with context around it, never more)."""
    size = model.input_size
    assert size is not None
    if tile_size > size:
        logger.info("the model takes %d x %d inputs only: tiles of %d px", size, size, size)
        tile_size = size
    if overlap >= tile_size:
        raise ConfigError(f"{model.source}: the model takes {size} px inputs only, so tiles are "
                          f"at most {size} px; use an overlap below that (e.g. overlap "
                          f"{max(size // 8, 1)})", params=("overlap",))
    return tile_size


def clamped_tile_size(config: PredictConfig, raster: RasterInfo, divisor: int = 1) -> int:
    """``config.tile_size``, or less when one tile core would cover the whole raster anyway: a
    4096 px tile over a 50 x 70 raster would infer 16 million reflected pixels for 3,500 real
    ones. The grid keeps one tile either way: the core is the raster's longest side rounded up
    to the model's ``divisor``, so the aligned step still covers it."""
    largest = round_up(max(raster.height, raster.width), divisor) + config.overlap
    if config.tile_size > largest:
        logger.info("tile_size %d is larger than the raster (%d x %d): using %d",
                    config.tile_size, raster.height, raster.width, largest,
                    extra=log_params("tile_size"))
        return largest
    return config.tile_size
