"""Training data: aligned image/label sources, random crops read by window, holdout regions.

Nothing here reads a whole raster: crops, validation tiles, label checks and normalization
statistics all read windows (statistics from a decimated read of at most 1024x1024 pixels).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from tileseg.errors import InputError, InputNotFoundError
from tileseg.sources.raster import check_aligned
from tileseg.sources.subdatasets import raster_exists
from tileseg.text import counted
from tileseg.training.config import IGNORE_INDEX, Holdout, TrainConfig, TrainSource

logger = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".parquet")
_STRIP = 512  # rows per read when scanning a label raster


@dataclass(frozen=True)
class Region:
    """A pixel rectangle of a raster: ``(row_off, col_off, height, width)``."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        return Window(self.col_off, self.row_off, self.width, self.height)

    @property
    def area(self) -> int:
        return self.height * self.width


def split_holdout(height: int, width: int, holdout: Holdout) -> tuple[Region, Region]:
    """Split a raster into ``(train, validation)`` regions along one side."""
    if holdout.side in ("left", "right"):
        n = max(1, round(width * holdout.fraction))
        val_col = 0 if holdout.side == "left" else width - n
        train_col = n if holdout.side == "left" else 0
        return (Region(0, train_col, height, width - n), Region(0, val_col, height, n))
    n = max(1, round(height * holdout.fraction))
    val_row = 0 if holdout.side == "top" else height - n
    train_row = n if holdout.side == "top" else 0
    return (Region(train_row, 0, height - n, width), Region(val_row, 0, n, width))


def is_vector(path: str) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


class VectorLabels:
    """Polygons rasterized on the fly, window by window, from a class attribute."""

    def __init__(self, path: str, attribute: str | None, config: TrainConfig,
                 crs: Any, image: str) -> None:
        import pyogrio
        import shapely
        from rasterio.warp import transform_geom

        if attribute is None:
            raise InputError(
                f"{path}: vector labels need the class attribute; pass class_attribute FIELD",
                params=("class_attribute",)
            )
        try:
            info = pyogrio.read_info(path)
        except Exception as exc:  # noqa: BLE001 - pyogrio raises several unrelated types
            raise InputError(f"{path}: not a readable vector file ({exc})") from exc
        fields = [str(f) for f in info["fields"]]
        if attribute not in fields:
            raise InputError(
                f"{path}: no attribute {attribute!r}; it has {', '.join(fields) or 'no fields'} "
                "(pass one of them with class_attribute)", params=("class_attribute",)
            )
        _meta, _fids, wkb, field_data = pyogrio.raw.read(path, columns=[attribute])
        geoms = shapely.from_wkb(wkb)
        values = field_data[0]
        src_crs = info.get("crs")
        if src_crs is None:
            raise InputError(f"{path}: vector labels have no CRS; set one (ogr2ogr -a_srs)")
        class_ids = self._class_ids(path, attribute, values, config)
        if rasterio.crs.CRS.from_user_input(src_crs) != crs:
            geoms = np.array([
                shapely.geometry.shape(transform_geom(src_crs, crs, shapely.geometry.mapping(g)))
                for g in geoms
            ], dtype=object)
        keep = ~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)
        self.geoms = geoms[keep]
        self.class_ids = class_ids[keep]
        self.tree = shapely.STRtree(self.geoms)
        self.fill = IGNORE_INDEX if config.background_class is None else config.background_class
        logger.info("%s: %d label polygons for %s", path, len(self.geoms), image)

    @staticmethod
    def _class_ids(path: str, attribute: str, values: np.ndarray,
                   config: TrainConfig) -> np.ndarray:
        if values.dtype.kind in "iuf":
            lookup = {v: i for i, v in enumerate(config.values)}
            ids = []
            for v in values:
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    ids.append(IGNORE_INDEX)
                    continue
                if int(v) not in lookup:
                    raise InputError(
                        f"{path}: attribute {attribute!r} has class value {int(v)}, beyond the "
                        f"{config.num_classes} configured classes {list(config.values)}; add the "
                        "class (class_names/class_values) or drop those features",
                        params=("class_names", "class_values")
                    )
                ids.append(lookup[int(v)])
            return np.asarray(ids, dtype=np.uint8)
        names = {n: i for i, n in enumerate(config.class_names)}
        out = []
        for v in values:
            if v is None:
                out.append(IGNORE_INDEX)
            elif str(v) in names:
                out.append(names[str(v)])
            else:
                raise InputError(
                    f"{path}: attribute {attribute!r} has class {v!r}, which is not one of the "
                    f"configured classes {list(config.class_names)}; add it with class_names",
                    params=("class_names",)
                )
        return np.asarray(out, dtype=np.uint8)

    def read(self, window: Window, transform: Any) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize
        from rasterio.windows import bounds
        from rasterio.windows import transform as window_transform

        height, width = int(window.height), int(window.width)
        left, bottom, right, top = bounds(window, transform)
        hits = self.tree.query(shapely.box(left, bottom, right, top))
        if len(hits) == 0:
            return np.full((height, width), self.fill, dtype=np.uint8)
        hits = np.sort(hits)  # file order: later features paint over earlier ones
        return rasterize(
            zip(self.geoms[hits], self.class_ids[hits].tolist(), strict=True),
            out_shape=(height, width), transform=window_transform(window, transform),
            fill=self.fill, dtype="uint8",
        )


class Source:
    """An opened image with its labels, checked for alignment and label values."""

    def __init__(self, spec: TrainSource, config: TrainConfig) -> None:
        self.spec = spec
        for path in (spec.image, spec.labels):
            if not raster_exists(str(path)):  # a file, or a subdataset name of one
                raise InputNotFoundError(f"{path}: no such file; check the path")
        try:
            self.image = rasterio.open(spec.image)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{spec.image}: not a readable raster ({exc})") from exc
        img = self.image
        self.indexes = tuple(spec.indexes) if spec.indexes else tuple(range(1, img.count + 1))
        if max(self.indexes) > img.count:
            raise InputError(f"{spec.image}: has {counted(img.count, 'band')}; indexes "
                             f"{self.indexes} is out of range", params=("indexes",))
        self.height, self.width = img.height, img.width
        self.transform = img.transform
        self.crs = img.crs
        self.dtype = img.dtypes[self.indexes[0] - 1]
        self.vector: VectorLabels | None = None
        self.label: Any = None
        self.lookup = np.full(65536, 254, dtype=np.uint8)  # 254: "beyond the configured classes"
        if is_vector(spec.labels):
            self.vector = VectorLabels(spec.labels, spec.class_attribute, config, img.crs,
                                       spec.image)
        else:
            try:
                self.label = rasterio.open(spec.labels)
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(f"{spec.labels}: not a readable raster ({exc})") from exc
            check_aligned(img, self.label)
            self._build_lookup(config)
            self.check_label_values(config)

    def _build_lookup(self, config: TrainConfig) -> None:
        for cid, value in enumerate(config.values):
            if not 0 <= value < 65536:
                raise InputError(f"class value {value} must be within 0..65535")
            self.lookup[value] = cid

    def label_ids(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Map label values to class ids; label nodata becomes the ignore index."""
        nodata = self.label.nodata
        bad = ~np.isfinite(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
        if nodata is not None:
            bad |= raw == nodata
        if raw.dtype.kind in "iu":
            inrange = (raw >= 0) & (raw < 65536)
        else:
            inrange = np.isfinite(raw) & (raw >= 0) & (raw < 65536) & (raw == np.round(raw))
        idx = np.where(inrange & ~bad, raw, 0).astype(np.int64)
        ids = self.lookup[idx]
        ids[~inrange & ~bad] = 254
        ids[bad] = IGNORE_INDEX
        if valid is not None:
            ids[~valid] = IGNORE_INDEX
        return ids

    def check_label_values(self, config: TrainConfig) -> None:
        """Scan the label raster strip by strip for values beyond the configured classes."""
        lab = self.label
        for row in range(0, lab.height, _STRIP):
            h = min(_STRIP, lab.height - row)
            raw = lab.read(1, window=Window(0, row, lab.width, h))
            ids = self.label_ids(raw)
            if (ids == 254).any():
                vals = np.unique(raw[ids == 254])[:5]
                raise InputError(
                    f"{self.spec.labels}: label values {vals.tolist()} are beyond the "
                    f"{config.num_classes} configured classes (values {list(config.values)}); "
                    "add classes with class_names/class_values or set those pixels to nodata",
                    params=("class_names", "class_values")
                )

    def label_colors(self, values: tuple[int, ...]) -> tuple[tuple[int, int, int], ...] | None:
        """The colour of each class value in the label raster's colour table, or None when it has
        none (or one that gives every class the same colour, i.e. no real legend)."""
        if self.label is None:
            return None
        try:
            cmap = self.label.colormap(1)
        except ValueError:  # rasterio: no colour table
            return None
        colors = tuple(tuple(int(v) for v in cmap.get(value, (0, 0, 0))[:3]) for value in values)
        if len(set(colors)) < 2:
            return None
        return colors  # type: ignore[return-value]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read ``(image float32 (bands, h, w), valid bool (h, w), class ids uint8 (h, w))``."""
        image = self.image.read(self.indexes, window=window).astype(np.float32)
        masks = self.image.read_masks(self.indexes, window=window)
        valid = (masks > 0).all(axis=0) & np.isfinite(image).all(axis=0)
        if self.vector is not None:
            labels = self.vector.read(window, self.transform)
            labels[~valid] = IGNORE_INDEX
        else:
            labels = self.label_ids(self.label.read(1, window=window), valid)
        return image, valid, labels

    def close(self) -> None:
        self.image.close()
        if self.label is not None:
            self.label.close()


@dataclass(frozen=True)
class Crop:
    """One training example: ``image`` float32 (bands, h, w) normalized, ``labels`` uint8."""

    image: np.ndarray
    labels: np.ndarray


class CropSampler:
    """Random crops as in DeepLab: random scale, window read, flips and 90-degree turns.

    A crop of ``crop_size`` at scale ``s`` reads a ``crop_size / s`` window (native resolution)
    from the training region only and resizes it (bilinear for the image, nearest for labels);
    where the region is smaller than the window the crop is padded with ignored pixels.
    """

    def __init__(self, sources: list[Source], regions: list[Region], config: TrainConfig,
                 coefficients: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> None:
        self.sources = sources
        self.regions = regions
        self.config = config
        self.a, self.b = coefficients
        self.rng = rng
        areas = np.array([r.area for r in regions], dtype=np.float64)
        self.weights = areas / areas.sum()

    def sample(self) -> Crop:
        import torch
        import torch.nn.functional as F

        cfg, rng = self.config, self.rng
        i = int(rng.choice(len(self.sources), p=self.weights))
        src, reg = self.sources[i], self.regions[i]
        low, high = cfg.scale_range
        # log-uniform scale keeps zoom-in and zoom-out equally likely
        scale = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        size = cfg.crop_size
        need = max(1, round(size / scale))
        h, w = min(need, reg.height), min(need, reg.width)
        row = reg.row_off + int(rng.integers(0, reg.height - h + 1))
        col = reg.col_off + int(rng.integers(0, reg.width - w + 1))
        image, valid, labels = src.read(Window(col, row, w, h))
        image = image * self.a[:, None, None] + self.b[:, None, None]
        image[:, ~valid] = 0.0
        out_h, out_w = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
        if (out_h, out_w) != (h, w):
            t = torch.from_numpy(image)[None]
            image = F.interpolate(t, size=(out_h, out_w), mode="bilinear",
                                  align_corners=False)[0].numpy()
            lt = torch.from_numpy(labels)[None, None]
            labels = F.interpolate(lt, size=(out_h, out_w), mode="nearest")[0, 0].numpy()
        img_out = np.zeros((image.shape[0], size, size), dtype=np.float32)
        lab_out = np.full((size, size), IGNORE_INDEX, dtype=np.uint8)
        r0, c0 = int(rng.integers(0, size - out_h + 1)), int(rng.integers(0, size - out_w + 1))
        img_out[:, r0:r0 + out_h, c0:c0 + out_w] = image
        lab_out[r0:r0 + out_h, c0:c0 + out_w] = labels
        if cfg.flips != "none" and rng.random() < 0.5:
            img_out, lab_out = img_out[:, :, ::-1], lab_out[:, ::-1]
        if cfg.flips == "dihedral":
            # overhead imagery has no "up": vertical flips and quarter turns are valid too
            k = int(rng.integers(0, 4))
            img_out, lab_out = np.rot90(img_out, k, axes=(1, 2)), np.rot90(lab_out, k)
        return Crop(np.ascontiguousarray(img_out), np.ascontiguousarray(lab_out))

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        crops = [self.sample() for _ in range(n)]
        return (np.stack([c.image for c in crops]), np.stack([c.labels for c in crops]))


def band_statistics(sources: list[Source], regions: list[Region],
                    max_side: int = 1024) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band mean and std over valid pixels of the training regions (decimated read)."""
    total = 0
    sums: np.ndarray | None = None
    sq: np.ndarray | None = None
    for src, reg in zip(sources, regions, strict=True):
        factor = max(1, math.ceil(max(reg.height, reg.width) / max_side))
        shape = (max(1, reg.height // factor), max(1, reg.width // factor))
        data = src.image.read(src.indexes, window=reg.window, out_shape=(len(src.indexes), *shape),
                              resampling=rasterio.enums.Resampling.nearest).astype(np.float64)
        masks = src.image.read_masks(src.indexes, window=reg.window,
                                     out_shape=(len(src.indexes), *shape),
                                     resampling=rasterio.enums.Resampling.nearest)
        valid = (masks > 0).all(axis=0) & np.isfinite(data).all(axis=0)
        pix = data[:, valid]
        total += pix.shape[1]
        s, q = pix.sum(axis=1), (pix ** 2).sum(axis=1)
        sums = s if sums is None else sums + s
        sq = q if sq is None else sq + q
    if total == 0 or sums is None or sq is None:
        raise InputError("the training regions hold no valid pixel; check nodata and the holdout")
    mean = sums / total
    std = np.sqrt(np.maximum(sq / total - mean ** 2, 0.0))
    std[std == 0] = 1.0
    return mean, std, total


def class_frequencies(sources: list[Source], regions: list[Region], num_classes: int
                      ) -> np.ndarray:
    """Labelled pixels per class id over the training regions, read strip by strip."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for src, reg in zip(sources, regions, strict=True):
        for row in range(reg.row_off, reg.row_off + reg.height, _STRIP):
            h = min(_STRIP, reg.row_off + reg.height - row)
            _, _, labels = src.read(Window(reg.col_off, row, reg.width, h))
            ids = labels[labels < num_classes]
            counts += np.bincount(ids, minlength=num_classes)[:num_classes]
    return counts


def class_weights(counts: np.ndarray, power: float, cap: float = 10.0) -> np.ndarray:
    """Loss weight per class, ``(count / total) ** -power``, scaled so the labelled pixels'
    mean weight is 1 and capped at ``cap`` times the smallest weight (a class with a handful
    of pixels must not dominate); classes with no pixel get weight 0 (they never occur)."""
    freq = counts / max(int(counts.sum()), 1)
    weights = np.zeros(len(counts), dtype=np.float64)
    seen = counts > 0
    weights[seen] = freq[seen] ** -power
    if seen.any():
        weights[seen] = np.minimum(weights[seen], weights[seen].min() * cap)
        weights /= float((weights * freq).sum())
    return weights.astype(np.float32)


def iter_tiles(region: Region, size: int) -> Iterator[Region]:
    """Non-overlapping tiles of at most ``size`` covering a region."""
    for row in range(region.row_off, region.row_off + region.height, size):
        for col in range(region.col_off, region.col_off + region.width, size):
            yield Region(row, col, min(size, region.row_off + region.height - row),
                         min(size, region.col_off + region.width - col))
