"""One chunk of a mask into labelled connected components and their polygons, in pixel coordinates.

Polygons are built in integer pixel coordinates of the whole raster (the chunk offset is a whole
number of pixels), so pieces of one component on both sides of a chunk border share exactly the
same vertex coordinates and can be unioned without tolerance. The affine comes last.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage

from tileseg.choices import Connectivity
from tileseg.tiling.grid import Rect
from tileseg.vectorization.source import MaskSource


@dataclass(frozen=True, order=True)
class ChunkWindow(Rect):
    """Where a chunk lies in the mask (a :class:`~tileseg.tiling.grid.Rect`), plus its linear index in
    the chunk grid, which numbers the chunk's polygon ids (``gid``)."""

    index: int = 0


@dataclass(frozen=True)
class ClassFilter:
    """Which class ids become polygons: ``keep`` (None: all) minus ``drop``, never nodata."""

    keep: tuple[int, ...] | None
    drop: tuple[int, ...]
    nodata: int | None

    def kept(self, values: np.ndarray) -> np.ndarray:
        ok = np.ones(values.shape, dtype=bool)
        if self.keep is not None:
            ok &= np.isin(values, self.keep)
        if self.drop:
            ok &= ~np.isin(values, self.drop)
        if self.nodata is not None:
            ok &= values != self.nodata
        return ok


@dataclass
class ChunkPieces:
    """The connected components of one chunk, clipped to it (a *piece* of a component).

    ``gid`` is unique over the raster (``window.index * stride + local label``); edges hold the gid
    (0: none) and class id (-1: none) of the first/last row and column, for merging across borders.
    """

    window: ChunkWindow
    gid: np.ndarray  # int64 (n,)
    class_id: np.ndarray  # int64 (n,)
    pixels: np.ndarray  # int64 (n,)
    probability_sum: np.ndarray | None  # float64 (n,): sum over pixels of p(own class)
    geometry: np.ndarray  # object (n,): shapely polygons in raster pixel coordinates
    edge_gid: dict[str, np.ndarray]  # "top", "bottom", "left", "right"
    edge_class: dict[str, np.ndarray]


def label_components(mask: np.ndarray, classes: ClassFilter,
                     connectivity: Connectivity) -> tuple[np.ndarray, np.ndarray]:
    """Label the kept classes' connected components; returns (labels int32, class of label).

    ``class_of[label]`` is the class id of ``label`` (``class_of[0] = -1``). Each class is labelled
    only inside its bounding box, so many classes cost about one pass, not one pass each.
    """
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(mask.shape, dtype=np.int32)
    class_of = [-1]
    if mask.size == 0:
        return labels, np.asarray(class_of, dtype=np.int64)
    lo, hi = int(mask.min()), int(mask.max())
    whole = (slice(0, mask.shape[0]), slice(0, mask.shape[1]))
    if hi - lo < 1 << 16:
        # find_objects wants labels >= 1; shift ids so the smallest becomes 1.
        found = ndimage.find_objects(mask.astype(np.int64) - (lo - 1))
        boxes = {i + lo: box for i, box in enumerate(found) if box is not None}
    else:  # sparse huge ids (int32/uint32 masks): one full-chunk pass per class
        boxes = {int(v): whole for v in np.unique(mask)}
    values = np.fromiter(boxes, dtype=np.int64, count=len(boxes))
    for value in values[classes.kept(values)]:
        box = boxes[int(value)]
        sub, n = ndimage.label(mask[box] == value, structure=structure)
        if n == 0:
            continue
        inside = sub > 0
        labels[box][inside] = sub[inside] + (len(class_of) - 1)
        class_of.extend([int(value)] * n)
    return labels, np.asarray(class_of, dtype=np.int64)


def polygonize_labels(labels: np.ndarray, count: int, connectivity: Connectivity,
                      row_off: int = 0, col_off: int = 0) -> np.ndarray:
    """One valid polygon (or multipolygon, for 8-connected diagonal contacts) per label 1..count.

    GDAL's 8-connected polygonize can return a ring that touches itself at a pixel corner, which
    shapely rightly calls invalid; ``make_valid(method="structure")`` splits it at that corner
    without changing the covered area.
    """
    transform = Affine.translation(col_off, row_off)
    polygons, values = shapes_to_polygons(rasterio.features.shapes(
        labels, mask=labels > 0, connectivity=connectivity, transform=transform))
    out = np.empty(count, dtype=object)
    index = values.astype(np.int64) - 1
    out[index] = polygons
    if len(np.unique(index)) != len(index):  # never seen from GDAL, but cheap to honour
        for label in np.unique(index):
            out[label] = shapely.union_all(polygons[index == label])
    if count:
        bad = ~shapely.is_valid(out)
        if bad.any():
            out[bad] = shapely.make_valid(out[bad], method="structure")
    return out


def shapes_to_polygons(
    shapes: Iterable[tuple[dict[str, Any], float]],
) -> tuple[np.ndarray, np.ndarray]:
    """Shapely polygons and values from ``rasterio.features.shapes`` output, built in one go.

    Building each ``shapely.Polygon`` from nested lists costs more than GDAL's polygonize itself;
    gathering all rings into one coordinate array and one ``from_ragged_array`` call does not.
    """
    coords: list[tuple[float, float]] = []
    ring_ends: list[int] = [0]
    polygon_ends: list[int] = [0]
    values: list[float] = []
    for geojson, value in shapes:
        for ring in geojson["coordinates"]:
            coords.extend(ring)
            ring_ends.append(len(coords))
        polygon_ends.append(len(ring_ends) - 1)
        values.append(value)
    if not values:
        return np.empty(0, dtype=object), np.empty(0)
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.asarray(coords, dtype=np.float64),
        (np.asarray(ring_ends, dtype=np.int64), np.asarray(polygon_ends, dtype=np.int64)),
    )
    return polygons, np.asarray(values)


def vectorize_chunk(source: MaskSource, window: ChunkWindow, classes: ClassFilter,
                    connectivity: Connectivity, stride: int, probabilities: bool) -> ChunkPieces:
    """Read one chunk of ``source`` and return its components as pieces (a dask task)."""
    mask = source.read(window.row_off, window.col_off, window.height, window.width)
    labels, class_of = label_components(mask, classes, connectivity)
    count = len(class_of) - 1
    geometry = polygonize_labels(labels, count, connectivity, window.row_off, window.col_off)
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=count + 1)[1:].astype(np.int64)
    probability_sum = None
    if probabilities:
        probs = source.read_probabilities(window.row_off, window.col_off, window.height,
                                          window.width)
        index = np.clip(mask.astype(np.intp), 0, probs.shape[0] - 1)[None]
        own = np.take_along_axis(probs, index, axis=0)[0].astype(np.float64)
        own *= source.probability_scale
        probability_sum = np.bincount(flat, weights=own.ravel(), minlength=count + 1)[1:]
    base = np.int64(window.index) * stride
    edges = {"top": labels[0, :], "bottom": labels[-1, :], "left": labels[:, 0],
             "right": labels[:, -1]}
    edge_gid = {k: np.where(v > 0, v.astype(np.int64) + base, 0) for k, v in edges.items()}
    edge_class = {k: class_of[v] for k, v in edges.items()}
    return ChunkPieces(
        window=window, gid=base + np.arange(1, count + 1, dtype=np.int64),
        class_id=class_of[1:], pixels=pixels, probability_sum=probability_sum,
        geometry=geometry, edge_gid=edge_gid, edge_class=edge_class,
    )
