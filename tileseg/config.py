"""Configuration of a predict run, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tileseg.choices import (  # noqa: F401 (Engine re-exported; each set is declared there)
    BlendName,
    Engine,
    OutputFormat,
    OutputStride,
    Precision,
    ProbabilityMode,
    TtaMode,
    check_choices,
)
from tileseg.errors import ConfigError
from tileseg.tiling.blend import DEFAULT_BLEND

# the pixel size to run at: a number (in the CRS's units), "model" (the model's gsd), or None
# (the source's own; for several files, the finest one's)
Resolution = float | Literal["model"] | None

DEFAULT_TILE_SIZE = 513
DEFAULT_OVERLAP = 64
DEFAULT_CHUNK_SIZE = 2048
# A DeepLabV3+ needs about 0.6 GB of activations per 528 px tile in bf16: a 16384 px tile needs
# some 580 GB, beyond any single device. Larger values are typing mistakes; smaller ones larger
# than the raster are clamped to it (see tileseg.plan.make_plan).
MAX_TILE_SIZE = 16384


@dataclass(frozen=True)
class TilingConfig:
    """How the raster is cut and blended; the grid (:class:`tileseg.tiling.grid.TileGrid`) derives
    the stride and halo from it."""

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    # requested pixels per chunk side; the grid rounds it to whole cores (TileGrid.chunk_side)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    blend: BlendName = DEFAULT_BLEND


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the model runs; ``auto`` values resolve on the process running the tasks
    (:mod:`tileseg.inference.device`)."""

    device: str = "auto"
    precision: Precision = "auto"
    batch_size: int | None = None
    compile_model: bool = False
    engine: Engine = "auto"
    tta: TtaMode = "none"  # test-time augmentation (tileseg.inference.tta)


@dataclass(frozen=True)
class PredictConfig:
    """Everything ``predict`` needs besides the model object (see :func:`tileseg.pipeline`).

    Examples
    --------
    >>> PredictConfig(src="scene.tif", dst="mask.tif", overlap=128).tile_size
    513
    """

    # a raster (path or URL), a STAC item (.json path or URL, collection.json#ID, or a
    # pystac.Item), or several rasters read as one (a tuple of paths: one band file each...)
    src: str | tuple[str, ...] | Any
    dst: str
    # model folder or file (smp folder, TorchGeo .ckpt, state dict, .onnx, STAC MLM item);
    # None: the bundled default model
    model: str | None = None
    format: OutputFormat | None = None  # None: from dst's extension
    zarr_path: str | None = None  # also keep the Zarr mosaic here when dst is a GeoTIFF
    # 1-based band numbers, as rasterio; for a STAC item, asset keys or common names
    bands: tuple[int, ...] | tuple[str, ...] | None = None
    nodata: float | None = None  # overrides the file's nodata
    allow_no_crs: bool = False
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    chunk_size: int = DEFAULT_CHUNK_SIZE  # requested chunk side in pixels, rounded to whole cores
    blend: BlendName = DEFAULT_BLEND
    device: str = "auto"
    batch_size: int | None = None  # None: chosen from the device's memory
    precision: Precision = "auto"
    compile_model: bool = False
    encoder_output_stride: OutputStride | None = None
    decoder_atrous_rates: tuple[int, ...] | None = None
    probabilities: ProbabilityMode = "none"
    overwrite: bool = False
    resume: bool = False
    scheduler: str | None = None  # None/"threads", "sync", or a dask.distributed address
    workers: int | None = None  # threads of the in-process scheduler
    report: str | None = None  # write a JSON run report here
    vectorize: str | None = None  # also write polygons here (GPKG, GeoParquet, ...)
    preview: str | None = None  # also draw a PNG quicklook here (tileseg.preview)
    engine: Engine = "auto"  # auto: ONNX Runtime on the CPU when installed, else torch
    tta: TtaMode = "none"  # test-time augmentation: none, flips (4 passes a tile), d4 (8)
    architecture: str | None = None  # the network of plain weights (a state dict file)
    encoder_name: str | None = None
    resolution: Resolution = None  # run at this pixel size (see Resolution)
    # resampling onto the run's grid: "METHOD" for every continuous band, "NAME=METHOD" for one
    # band (an asset key, common name, or 1-based band number); default bilinear, nearest
    # for categorical bands (tileseg.sources.stack)
    resampling: tuple[str, ...] = ()
    aoi: str | None = None  # area of interest: a vector file, or a bbox "W,S,E,N"
    aoi_crs: str | None = None  # the bbox's CRS (default EPSG:4326), or a file's without one
    stac_item: bool = True  # write a STAC item describing the outputs beside the mask

    @property
    def tiling(self) -> TilingConfig:
        return TilingConfig(self.tile_size, self.overlap, self.chunk_size, self.blend)

    @property
    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(self.device, self.precision, self.batch_size, self.compile_model,
                             self.engine, self.tta)

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ConfigError(f"tile_size must be at least 16, got {self.tile_size}", params=("tile_size",))
        if self.tile_size > MAX_TILE_SIZE:
            raise ConfigError(f"tile_size must be at most {MAX_TILE_SIZE}, got "
                              f"{self.tile_size}; 512 to 2048 suit most models and devices",
                              params=("tile_size",))
        if not 0 <= self.overlap < self.tile_size:
            raise ConfigError(
                f"overlap must be between 0 and {self.tile_size - 1}, got {self.overlap}",
                params=("overlap",))
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be positive, got {self.chunk_size}", params=("chunk_size",))
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}", params=("batch_size",))
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}", params=("workers",))
        # format, blend, precision, encoder_output_stride, probabilities, engine, tta
        check_choices(self)
        self._normalize_sources()
        if self.bands is not None:
            self._check_bands()
        self._check_resolution()
        from tileseg.sources.stack import check_resampling

        for entry in self.resampling:
            name, _, method = entry.rpartition("=")
            if not method or (_ and not name):
                raise ConfigError(f"resampling {entry!r}: give METHOD or NAME=METHOD, e.g. "
                                  "resampling cubic,scl=nearest", params=("resampling",))
            check_resampling(method, f"resampling {entry!r}")
        if self.aoi_crs is not None and self.aoi is None:
            raise ConfigError("aoi_crs names the CRS of an aoi; give aoi too",
                              params=("aoi_crs", "aoi"))
        if self.aoi is not None and not str(self.aoi).strip():
            raise ConfigError("aoi is empty; give a vector file or a bbox W,S,E,N",
                              params=("aoi",))
        rates = self.decoder_atrous_rates
        if rates is not None and (not rates or min(rates) < 1):
            raise ConfigError(f"decoder_atrous_rates takes positive dilation rates, e.g. 6,12,18; got "
                              f"{','.join(str(r) for r in rates)}", params=("decoder_atrous_rates",))
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other; pick one",
                              params=("resume", "overwrite"))

    def _normalize_sources(self) -> None:
        if isinstance(self.src, list | tuple):
            files = tuple(str(f) for f in self.src)
            if not files or any(not f for f in files):
                raise ConfigError("src lists no file; give one raster, or several to read as "
                                  "one")
            object.__setattr__(self, "src", files[0] if len(files) == 1 else files)
        if isinstance(self.bands, list):
            object.__setattr__(self, "bands", tuple(self.bands))
        if isinstance(self.resampling, str):
            object.__setattr__(self, "resampling", tuple(
                p for p in self.resampling.replace(" ", "").split(",") if p))
        elif isinstance(self.resampling, list):
            object.__setattr__(self, "resampling", tuple(self.resampling))

    def _check_bands(self) -> None:
        bands = self.bands or ()
        if bands and all(isinstance(b, str) for b in bands):
            if any(not b.strip() for b in bands):  # type: ignore[union-attr]
                raise ConfigError("bands lists an empty name; give asset keys or common names, "
                                  "e.g. bands red,green,blue", params=("bands",))
            return
        numbers = [b for b in bands if isinstance(b, int) and not isinstance(b, bool)]
        if not bands or len(numbers) != len(bands) or min(numbers) < 1:
            raise ConfigError("bands takes 1-based band numbers, e.g. bands 3,2,1 (or, for a "
                              "STAC item, asset keys or common names)", params=("bands",))

    def _check_resolution(self) -> None:
        value = self.resolution
        if value is None or value == "model":
            return
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
            raise ConfigError(f"resolution {value!r}: give a positive pixel size (in the CRS's "
                              "units, e.g. 10 for 10 m) or model", params=("resolution",))
        object.__setattr__(self, "resolution", number)
