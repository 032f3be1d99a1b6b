"""``vectorize``: a class mask into exact, seamless polygons, chunk by chunk with Dask."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import shapely

from tileseg.choices import AreaUnit, Connectivity, check_choices
from tileseg.errors import ConfigError, InputError, log_params
from tileseg.execution import Scheduler
from tileseg.outputs.location import location
from tileseg.outputs.naming import check_not_source
from tileseg.outputs.styles import legend_for, mask_legend
from tileseg.progress import Progress, ProgressCallback
from tileseg.text import counted
from tileseg.vectorization.merge import Components, merge_pieces
from tileseg.vectorization.polygons import (
    ChunkPieces,
    ChunkWindow,
    ClassFilter,
    vectorize_chunk,
)
from tileseg.vectorization.source import MaskSource, open_mask
from tileseg.vectorization.writers import check_destination, remove_stale_partials, write_layer

logger = logging.getLogger(__name__)

# class names that mean "not a thing to map": their polygons are left out by default
BACKGROUND_NAMES = frozenset({"background", "unlabelled", "unlabeled", "void", "nodata",
                              "no data", "none"})

# RFC 7946: GeoJSON is WGS 84 longitude/latitude; other CRSs only by prior arrangement
GEOJSON_CRS = "OGC:CRS84"


@dataclass(frozen=True)
class VectorizeConfig:
    """How to turn a mask into polygons (see :func:`vectorize`).

    Examples
    --------
    >>> VectorizeConfig().dropped({})                       # plain integer mask: 0 is background
    (0,)
    >>> VectorizeConfig().dropped({0: "background", 1: "building"})
    (0,)
    >>> VectorizeConfig().dropped({0: "developed", 1: "forest"})  # land cover: keep every class
    ()
    >>> VectorizeConfig(classes=(0, 3)).dropped({})
    ()
    """

    classes: tuple[int, ...] | None = None  # class ids to keep; None: every class present
    drop_classes: tuple[int, ...] | None = None  # None: the background class(es), see dropped()
    min_area: float = 0.0  # drop components smaller than this (exact area, before simplifying)
    min_area_unit: AreaUnit = "pixels"  # "pixels" or "map" (squared CRS units, e.g. m²)
    connectivity: Connectivity = 4  # 4: pixels sharing a side; 8: also a corner
    simplify: float = 0.0  # coverage simplification tolerance in pixels; 0: exact pixel edges
    # reproject the polygons (EPSG code, WKT, PROJ string); None: the mask's CRS, except GeoJSON,
    # which is written in OGC:CRS84 (lon/lat) as RFC 7946 requires
    to_crs: str | None = None
    allow_no_crs: bool = False  # accept a mask without CRS; polygons then in transform units
    probabilities: bool = True  # add mean_probability when the Zarr mask stores probabilities
    chunk_size: int | None = None  # chunk side in pixels; None: the Zarr chunks / 2048 for GDAL
    overwrite: bool = False
    scheduler: str | None = None  # None: dask's default (threads); "sync", or a cluster address
    workers: int | None = None  # threads of the local scheduler

    def __post_init__(self) -> None:
        check_choices(self)  # min_area_unit, connectivity
        if not 0 <= self.min_area < math.inf:  # NaN fails too: it would drop every polygon
            raise ConfigError(f"min_area must be zero or positive, got {self.min_area}", params=("min_area",))
        if not 0 <= self.simplify < math.inf:
            raise ConfigError(f"simplify must be zero or positive, got {self.simplify}", params=("simplify",))
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be positive, got {self.chunk_size}", params=("chunk_size",))
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}", params=("workers",))
        if self.classes is not None and not self.classes:
            raise ConfigError("classes is empty; list class ids such as classes 1,2", params=("classes",))

    def dropped(self, class_names: Mapping[int, str]) -> tuple[int, ...]:
        """Class ids left out: ``drop_classes`` when given; none when ``classes`` says what to
        keep; else the background. A mask written by predict names its classes, so background is
        the class called background (or unlabelled, void, ...), and a land-cover mask without one
        keeps every class; a mask without real names (plain integers, or ``class_<id>``
        placeholders) drops 0."""
        if self.drop_classes is not None:
            return self.drop_classes
        if self.classes is not None:
            return ()
        if all(name == f"class_{cid}" for cid, name in class_names.items()):
            return (0,)  # no names, or only the placeholders of a model without metadata
        return tuple(sorted(cid for cid, name in class_names.items()
                            if name.strip().lower() in BACKGROUND_NAMES))


@dataclass(frozen=True)
class Polygons:
    """Vectorized components in map coordinates, one row per connected component."""

    geometry: np.ndarray  # shapely Polygons or MultiPolygons (8-connected contacts), valid
    fields: dict[str, np.ndarray]  # class_id, class_name, pixels, area[, mean_probability]
    crs_wkt: str | None
    chunks: int
    merged: int  # components joined across chunk borders

    def __len__(self) -> int:
        return len(self.geometry)


@dataclass(frozen=True)
class VectorizeResult:
    """What :func:`vectorize` wrote."""

    dst: str
    features: int
    counts: dict[int, int] = field(default_factory=dict)  # features per class id
    class_names: dict[int, str] = field(default_factory=dict)
    chunks: int = 0
    merged: int = 0  # components that crossed chunk borders
    seconds: float = 0.0


def vectorize(
    src: str | os.PathLike[str] | MaskSource,
    dst: str | os.PathLike[str],
    config: VectorizeConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    scheduler: Scheduler | None = None,
) -> VectorizeResult:
    """Vectorize the class mask ``src`` into the polygon layer ``dst`` (format from extension).

    Each connected component of a kept class becomes one feature with ``class_id``, ``class_name``,
    ``pixels``, ``area`` (in the mask CRS's squared units) and, for a Zarr mask with stored
    probabilities, ``mean_probability``. The result equals vectorizing the whole mask at once;
    only one chunk per worker is in memory, plus the polygons.

    Examples
    --------
    >>> vectorize("mask.tif", "buildings.gpkg",
    ...           VectorizeConfig(classes=(3,), min_area=20, connectivity=8))  # doctest: +SKIP
    VectorizeResult(dst='buildings.gpkg', features=1812, ...)

    ``scheduler``: the run's, resolved already (predict hands down its own, with its client);
    by default ``config.scheduler`` is resolved, once, before anything is written.
    """
    config = config or VectorizeConfig()
    started = time.perf_counter()
    scheduler = _scheduler(config, scheduler)
    if not isinstance(src, MaskSource):
        check_not_source(dst, os.fspath(src))
    fmt = check_destination(dst, config.overwrite)  # fail before the (long) work, not after
    source = src if isinstance(src, MaskSource) else open_mask(src)
    if fmt == "geojson" and source.crs_wkt:
        config = replace(config, to_crs=geojson_crs(config.to_crs, dst))
    # One run per destination: a second one stops (exit 75) instead of racing for the rename.
    with location(dst).lock(sweep=remove_stale_partials):
        polygons = polygonize(source, config, progress=progress, scheduler=scheduler)
        # QGIS colours a GeoPackage by class on opening: the mask's palette, defaults for the rest
        style = legend_for(mask_legend(source.path), polygons.fields["class_id"])
        write_layer(dst, polygons.geometry, polygons.fields, polygons.crs_wkt,
                    overwrite=config.overwrite, style=style, marker={"mask": source.path})
    ids, counts = np.unique(polygons.fields["class_id"], return_counts=True)
    names = dict(zip(polygons.fields["class_id"].tolist(), polygons.fields["class_name"].tolist(),
                     strict=True))
    result = VectorizeResult(
        dst=os.fspath(dst), features=len(polygons),
        counts={int(i): int(c) for i, c in zip(ids, counts, strict=True)},
        class_names={int(i): names[int(i)] for i in ids}, chunks=polygons.chunks,
        merged=polygons.merged, seconds=time.perf_counter() - started,
    )
    logger.info("%s: %s from %s in %.1f s", result.dst, counted(result.features, "polygon"),
                counted(result.chunks, "chunk"), result.seconds)
    return result


def geojson_crs(to_crs: str | None, dst: str | os.PathLike[str]) -> str:
    """The CRS a GeoJSON layer is written in: OGC:CRS84 by default (RFC 7946), else ``to_crs``
    when a reader can tell it: WGS 84 longitude/latitude, or a CRS that is exactly an EPSG
    code, which the legacy ``crs`` member names (as GDAL writes it; GDAL, QGIS and geopandas
    read it). Any other CRS (a PROJ string with no EPSG equivalent) cannot be recorded in
    GeoJSON, and a reader would take its metres for degrees: :class:`ConfigError`."""
    if to_crs is None:
        return GEOJSON_CRS
    from rasterio.crs import CRS

    from tileseg.vectorization.writers import is_wgs84_lonlat

    crs = _parse_crs(to_crs)
    if is_wgs84_lonlat(crs.to_wkt()):
        return to_crs
    code = crs.to_epsg()
    if code is not None and CRS.from_epsg(code) == crs:
        return f"EPSG:{code}"  # its WKT then carries the code, which GDAL writes as "crs"
    raise ConfigError(f"{os.fspath(dst)}: GeoJSON can record only WGS 84 or a CRS with an EPSG "
                      f"code, and to_crs {to_crs!r} has none; write .gpkg, .fgb or .parquet "
                      "(they store any CRS), or give an EPSG code", params=("to_crs",))


def polygonize(
    src: str | os.PathLike[str] | MaskSource,
    config: VectorizeConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    scheduler: Scheduler | None = None,
) -> Polygons:
    """The polygons :func:`vectorize` writes, in memory (for callers that post-process them);
    ``scheduler`` as for :func:`vectorize`.

    Examples
    --------
    >>> polys = polygonize("mask.zarr", VectorizeConfig(connectivity=8))  # doctest: +SKIP
    >>> polys.fields["area"].sum()  # doctest: +SKIP
    """
    config = config or VectorizeConfig()
    scheduler = _scheduler(config, scheduler)
    source = src if isinstance(src, MaskSource) else open_mask(src)
    _check_classes(source, config)
    crs_wkt = _check_crs(source, config)
    dst_crs = _parse_crs(config.to_crs) if config.to_crs else None  # fail before the work
    windows, grid_shape = chunk_windows(source, config.chunk_size)
    tasks = build_tasks(source, windows, config)
    results = compute_tasks(tasks, scheduler, config.workers, progress)
    grid = [results[r * grid_shape[1] : (r + 1) * grid_shape[1]] for r in range(grid_shape[0])]
    components = merge_pieces(grid, config.connectivity)
    del results, grid
    components = _filter_area(components, source, config)
    # Take the geometries over: from here on they are rewritten in place, never copied.
    geometry, components.geometry = components.geometry, np.empty(0, dtype=object)
    if config.simplify > 0 and len(geometry):
        # Every pixel corner becomes a vertex first, so neighbours share identical edges and
        # GEOS simplifies each shared edge once: borders stay shared, no gaps or overlaps.
        geometry = shapely.coverage_simplify(shapely.segmentize(geometry, 1.0), config.simplify)
    geometry = _apply_affine(geometry, source)
    if dst_crs is not None and crs_wkt is not None:
        geometry, crs_wkt = _reproject(geometry, crs_wkt, dst_crs)
    ids, inverse = np.unique(components.class_id, return_inverse=True)
    names = np.array([source.class_name(int(c)) for c in ids], dtype=object)
    fields: dict[str, np.ndarray] = {
        # int64: uint32/int64 masks hold ids beyond int32 (3e9 must not come back negative)
        "class_id": components.class_id.astype(np.int64),
        "class_name": names[inverse] if len(ids) else np.empty(0, dtype=object),
        "pixels": components.pixels,
        "area": components.pixels * _pixel_area(source),
    }
    if components.probability_sum is not None:
        fields["mean_probability"] = (components.probability_sum
                                      / np.maximum(components.pixels, 1)).astype(np.float32)
    return Polygons(geometry, fields, crs_wkt, len(windows), components.merged)


def chunk_windows(source: MaskSource,
                  chunk_size: int | None) -> tuple[list[ChunkWindow], tuple[int, int]]:
    """The chunk grid over ``source`` in row-major order, and its (rows, cols) shape."""
    if chunk_size is None:
        ch, cw = source.chunks
    else:
        # Round to whole storage chunks so no stored chunk is decoded by two tasks.
        sh, sw = source.chunks
        ch = max(1, round(chunk_size / sh)) * sh if chunk_size >= sh else chunk_size
        cw = max(1, round(chunk_size / sw)) * sw if chunk_size >= sw else chunk_size
    rows = list(range(0, source.height, ch))
    cols = list(range(0, source.width, cw))
    windows = [
        ChunkWindow(r, c, min(ch, source.height - r), min(cw, source.width - c),
                    index=i * len(cols) + j)
        for i, r in enumerate(rows) for j, c in enumerate(cols)
    ]
    return windows, (len(rows), len(cols))


def build_tasks(source: MaskSource, windows: Sequence[ChunkWindow],
                config: VectorizeConfig) -> list[Any]:
    """One dask task per chunk, deterministically named; nothing is computed here."""
    import dask
    from dask.base import tokenize

    dropped = config.dropped(source.class_names)
    if dropped:
        logger.info("leaving out %s %s (%s); drop_classes or classes choose otherwise",
                    "class" if len(dropped) == 1 else "classes",
                    ", ".join(map(str, dropped)),
                    ", ".join(source.class_name(c) for c in dropped),
                    extra=log_params("drop_classes", "classes"))
    classes = ClassFilter(config.classes, dropped, source.nodata)
    stride = max(w.height * w.width for w in windows) + 1  # more than any chunk's label count
    probabilities = config.probabilities and source.has_probabilities
    stamp = location(source.path).stamp()  # a rewritten mask must not reuse cached results
    token = tokenize(source, stamp, classes, config.connectivity, stride, probabilities)
    task = dask.delayed(vectorize_chunk, pure=True)
    return [
        task(source, w, classes, config.connectivity, stride, probabilities,
             dask_key_name=f"tileseg-vectorize-chunk-{token}-{w.index}")
        for w in windows
    ]


def _scheduler(config: VectorizeConfig, scheduler: Scheduler | None) -> Scheduler:
    """The run's scheduler: the one handed down, else ``config.scheduler`` resolved (None:
    ``$TILESEG_SCHEDULER``, dask's ``tileseg.scheduler``, else threads)."""
    from tileseg.execution import resolve_scheduler

    return scheduler if scheduler is not None else resolve_scheduler(config.scheduler)


def compute_tasks(tasks: list[Any], scheduler: Scheduler, workers: int | None,
                  progress: ProgressCallback | None) -> list[ChunkPieces]:
    """Run the chunk tasks on ``scheduler`` (resolved: :func:`tileseg.execution.resolve_scheduler`),
    reporting each finished one."""
    from tileseg.execution import run_graph

    resolved = scheduler
    total, started = len(tasks), time.perf_counter()
    index = {task.key: i for i, task in enumerate(tasks)}
    graph: dict[Any, Any] = {}
    for task in tasks:
        graph.update(task.__dask_graph__())
    results: list[Any] = [None] * total
    done = 0

    def finished(key: Any, value: Any) -> None:
        nonlocal done
        results[index[key]] = value
        done += 1
        if progress is not None:
            progress(Progress(done, total, time.perf_counter() - started, unit="chunks"))

    run_graph(graph, [(list(index), None)], resolved, on_result=finished, workers=workers)
    return results


def _check_classes(source: MaskSource, config: VectorizeConfig) -> None:
    """Classes asked for that a mask naming its classes does not have: an error, not an empty
    layer. (A plain integer mask names none: any id may be in it.)"""
    if config.classes is None or not source.class_names:
        return
    missing = [c for c in config.classes if c not in source.class_names]
    if missing:
        listed = ", ".join(f"{c} {name}" for c, name in sorted(source.class_names.items()))
        # "classes" once, as the parameter: the CLI shows it as the flag
        raise ConfigError(f"{source.path}: has no class {' or '.join(map(str, missing))} (it has "
                          f"{listed}); pass classes among those", params=("classes",))


def _check_crs(source: MaskSource, config: VectorizeConfig) -> str | None:
    if source.crs_wkt:
        return source.crs_wkt
    if not config.allow_no_crs:
        raise InputError(f"{source.path}: has no CRS; pass allow_no_crs to write polygons in "
                         "the mask's transform units anyway", params=("allow_no_crs",))
    if config.to_crs:
        raise ConfigError(f"{source.path}: has no CRS to reproject from; drop to_crs",
                          params=("to_crs",))
    logger.warning("%s: no CRS; polygons are in the mask's transform units with no CRS",
                   source.path)
    return None


def _pixel_area(source: MaskSource) -> float:
    t = source.transform
    return abs(t.a * t.e - t.b * t.d)


def _filter_area(components: Components, source: MaskSource,
                 config: VectorizeConfig) -> Components:
    if config.min_area <= 0:
        return components
    threshold = config.min_area
    if config.min_area_unit == "map":
        threshold /= _pixel_area(source)
    return components.select(components.pixels >= threshold)


def _apply_affine(geometry: np.ndarray, source: MaskSource) -> np.ndarray:
    t = source.transform

    def affine(xy: np.ndarray) -> np.ndarray:
        col, row = xy[:, 0], xy[:, 1]
        return np.column_stack([t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f])

    return _transform_in_place(geometry, affine)


def _transform_in_place(geometry: np.ndarray,
                        func: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    # set_coordinates rewrites the geometries we own instead of building a second copy of a
    # million polygons; batches keep the temporary coordinate array small.
    for start in range(0, len(geometry), 100_000):
        part = geometry[start : start + 100_000]
        shapely.set_coordinates(part, func(shapely.get_coordinates(part)))
    return geometry


def _parse_crs(text: str) -> Any:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # GDAL/PROJ errors go to logging here, not straight to stderr
            return CRS.from_user_input(text)
    except (CRSError, ValueError):
        raise ConfigError(f"to_crs {text!r}: not a CRS GDAL knows; use e.g. EPSG:4326",
                          params=("to_crs",)) from None


def _reproject(geometry: np.ndarray, crs_wkt: str, dst_crs: Any) -> tuple[np.ndarray, str]:
    from rasterio.crs import CRS
    from rasterio.warp import transform

    src_crs = CRS.from_wkt(crs_wkt)

    def project(xy: np.ndarray) -> np.ndarray:
        xs, ys = transform(src_crs, dst_crs, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    # Vertex by vertex: shared vertices stay shared, so the coverage stays seamless.
    return _transform_in_place(geometry, project), str(dst_crs.to_wkt())
