"""Batch runs: many scenes from one manifest, on one cluster, idempotently.

A *manifest* lists scenes, each a source raster, a destination and optional per-scene options
(any :class:`~tileseg.config.PredictConfig` option: ``model``, ``bands``, ``overlap``,
``probabilities``, ``vectorize``...). Three formats, chosen by extension:

``.txt`` (or any other)  one source path per line; ``#`` starts a comment; destinations are
                         ``OUTPUT_DIR/<stem><suffix>``.
``.csv``                 a header with ``src`` and optionally ``dst`` and option columns; an empty
                         cell means "the batch default".
``.yaml`` / ``.yml``     a list of mappings (``src``, ``dst``, options), or a mapping with
                         ``defaults:`` (options for every scene) and ``scenes:`` (that list).
``.json``                a STAC ItemCollection (a saved search): one scene an item, its
                         source ``collection.json#ITEM_ID``, its destination
                         ``OUTPUT_DIR/<item id><suffix>``.

A scene's source may be several files read as one raster (one file per band): a YAML list, or
one CSV cell with the files separated by ``;``. A STAC item (``.json`` path or URL) is a source
like a raster.

Relative paths in a manifest are relative to the manifest's folder (a relative ``dst`` to
``--output-dir`` when one is given), so a scheduled job finds the same files whatever its working
directory.

Object storage: sources, destinations, ``--output-dir``, the summary and the manifest itself may
be ``s3://`` (``gs://``, ``az://``) URLs. A manifest on a store is read in one GET and its
relative paths are keys under its own prefix; a scene on a store is complete when its object
(or Zarr prefix) exists with nothing under ``DST.partial/``; summaries on a store are replaced
only when an earlier batch wrote them (checked on downloaded copies) and each rewrite is one PUT.

Running is idempotent: a scene whose destination exists with no ``.partial`` staging folder beside
it is skipped, a scene with a staging folder is resumed, and a failing scene is recorded and does
not stop the others. A summary (JSON, plus a CSV beside it) says what happened to each scene, so
rerunning the same command processes exactly the failed or missing scenes; an HTML page beside
it shows each scene with its preview and class areas (:mod:`tileseg.batch_report`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import reprlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tileseg.batch_lock import batch_lock
from tileseg.batch_report import ScenePicture, render_html, scene_picture
from tileseg.config import PredictConfig
from tileseg.errors import (
    ConfigError,
    InputError,
    OutputError,
    RunError,
    TilesegError,
    flag_for,
    flagged_message,
)
from tileseg.execution import (
    DEFAULT_WAIT_TIMEOUT,
    LocalWorkers,
    Scheduler,
    SlurmJobs,
    open_client,
    resolve_mosaic_scheduler,
)
from tileseg.outputs.location import Location, is_store_url, location
from tileseg.outputs.naming import DEFAULT_SUFFIX, source_name
from tileseg.outputs.paths import check_distinct_paths
from tileseg.outputs.staging import STAGING_SUFFIX
from tileseg.sources.remote import is_remote
from tileseg.text import counted

logger = logging.getLogger(__name__)

SceneStatus = Literal["succeeded", "resumed", "skipped", "failed", "pending"]  # pending: not run yet
ManifestFormat = Literal["text", "csv", "yaml", "stac"]

# 16 MiB holds some 100,000 scenes; beyond, a manifest is more likely a wrong file (or a bomb)
MAX_MANIFEST_BYTES = 16 << 20

# Per-scene options a manifest may set: PredictConfig fields, minus what the batch itself owns.
_BATCH_OWNED = {"src", "dst", "resume", "overwrite", "scheduler", "report"}
SCENE_OPTIONS: tuple[str, ...] = tuple(
    f.name for f in fields(PredictConfig) if f.name not in _BATCH_OWNED
)
# The CLI's spellings (the flag table, tileseg.errors.flag_for) are column/key names too:
# output_stride, atrous_rates, zarr, compile, encoder. (Not a --no-X switch: no_stac_item would
# mean the opposite of stac_item.)
_ALIASES = {
    alias: name for name in SCENE_OPTIONS
    if not flag_for(name).startswith("--no-")
    and (alias := flag_for(name).removeprefix("--").replace("-", "_")) != name
}
_PATH_OPTIONS = ("model", "zarr_path", "vectorize", "preview")
_INT_OPTIONS = ("tile_size", "overlap", "chunk_size", "batch_size", "workers",
                "encoder_output_stride")
_BOOL_OPTIONS = ("allow_no_crs", "compile_model", "stac_item")
_INT_TUPLE_OPTIONS = ("decoder_atrous_rates",)


@dataclass(frozen=True)
class Scene:
    """One line of a manifest: a source, a destination and its own options."""

    src: str | tuple[str, ...]  # a raster or STAC item; several files read as one
    dst: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the summary names the source."""
        from tileseg.scenes import source_label

        return source_label(self.src)

    @property
    def staging(self) -> Location:
        return location(self.dst).sibling(STAGING_SUFFIX)

    def config(self, defaults: dict[str, Any], **extra: Any) -> PredictConfig:
        """The scene's PredictConfig: batch defaults, overridden by the scene's own options."""
        return PredictConfig(src=self.src, dst=self.dst, **{**defaults, **self.options, **extra})


@dataclass(frozen=True)
class SceneResult:
    """What happened to one scene; a row of the summary."""

    src: str
    dst: str
    status: SceneStatus
    tiles_total: int = 0
    tiles_inferred: int = 0
    tiles_skipped_nodata: int = 0
    chunks: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "resumed", "skipped")


@dataclass(frozen=True)
class BatchResult:
    """Every scene's result, in manifest order, and where the summary was written."""

    scenes: tuple[SceneResult, ...]
    seconds: float
    summary: str | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.scenes)

    @property
    def failed(self) -> tuple[SceneResult, ...]:
        return tuple(s for s in self.scenes if not s.ok)

    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "resumed": 0, "skipped": 0, "failed": 0, "pending": 0}
        for s in self.scenes:
            out[s.status] += 1
        return out

    def raise_for_failures(self) -> None:
        """Raise :class:`~tileseg.errors.RunError` (exit code 5) naming the failed scenes."""
        failed = self.failed
        if failed:
            names = ", ".join(Path(s.src).name for s in failed[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            where = f"; see {self.summary}" if self.summary else ""
            raise RunError(f"{len(failed)} of {counted(len(self.scenes), 'scene')} failed "
                           f"({names}{more})"
                           f"{where}; fix them and run the same command again to retry only "
                           "those")


@dataclass(frozen=True)
class BatchConfig:
    """How to run a manifest (see :func:`run_batch`).

    Where: ``scheduler`` (a name or a cluster address; None: ``$TILESEG_SCHEDULER``, dask's
    ``tileseg.scheduler``, else threads) or ``cluster``, one started for the batch (worker
    processes here, or Slurm jobs); on a cluster, ``wait_workers`` workers are waited for
    (``wait_timeout`` seconds at most) before the first scene. ``lock``: a lock file, for a
    scheduled job: a batch that finds another holding it stops at once (exit 75).
    """

    output_dir: str | None = None  # where text manifests (and CSV rows without dst) write
    suffix: str = DEFAULT_SUFFIX  # destination name: <src stem><suffix>
    defaults: dict[str, Any] = field(default_factory=dict)  # PredictConfig options for all scenes
    scheduler: str | None = None  # None/"threads"/"sync" or a dask.distributed address
    summary: str | None = None  # summary path: JSON (.json) and CSV (.csv) side by side
    concurrent_scenes: int = 1  # scenes in flight at once (useful on a big cluster)
    previews: bool = True  # thumbnails + class areas in the summary's HTML page
    cluster: LocalWorkers | SlurmJobs | None = None  # started for the batch, closed after it
    wait_workers: int | None = None  # None: one on a cluster started here, else none
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    lock: str | None = None  # an flock held for the whole batch (tileseg.batch_lock)

    def __post_init__(self) -> None:
        if self.concurrent_scenes < 1:
            raise ConfigError(
                f"concurrent_scenes must be at least 1, got {self.concurrent_scenes}",
                params=("concurrent_scenes",))
        if not self.suffix or "/" in self.suffix:
            raise ConfigError(f"suffix {self.suffix!r}: give a file name ending, e.g. _mask.tif",
                              params=("suffix",))
        unknown = sorted(set(self.defaults) - set(SCENE_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown batch default option(s) {', '.join(unknown)}")

    def resolved_scheduler(self, client: Any = None) -> Scheduler:
        """Where the batch runs, resolved (once a batch: scenes are handed the result)."""
        return resolve_mosaic_scheduler(client if client is not None else self.scheduler,
                                        start=self.cluster, wait_workers=self.wait_workers,
                                        wait_timeout=self.wait_timeout)


# --------------------------------------------------------------------------------------------
# Manifest parsing
# --------------------------------------------------------------------------------------------


def manifest_format(path: str | os.PathLike[str]) -> ManifestFormat:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix in (".json", ".geojson"):
        return "stac"
    return "text"


def load_manifest(
    path: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    suffix: str = DEFAULT_SUFFIX,
) -> list[Scene]:
    """Read a manifest into scenes; every problem is one :class:`InputError` line.

    Examples
    --------
    >>> scenes = load_manifest("scenes.yaml")  # doctest: +SKIP
    >>> scenes[0].options  # doctest: +SKIP
    {'model': '/data/models/buildings', 'bands': (4, 3, 2)}
    """
    source = location(path)
    text = source.read_document(MAX_MANIFEST_BYTES, "manifest")
    manifest, base = source.text, source.parent
    out_dir = location(output_dir) if output_dir is not None else None
    fmt = manifest_format(manifest)
    if fmt == "csv":
        rows = _csv_rows(manifest, text)
    elif fmt == "yaml":
        rows = _yaml_rows(manifest, text)
    elif fmt == "stac":
        rows = _stac_rows(manifest, text)
    else:
        rows = _text_rows(text)
    if not rows:
        raise InputError(f"{manifest}: lists no scenes; add one source path per line")
    scenes = [_scene(manifest, where, row, base, out_dir, suffix) for where, row in rows]
    seen: dict[str, str] = {}
    for scene in scenes:
        key = os.path.normpath(scene.dst)
        if key in seen:
            raise InputError(f"{manifest}: {seen[key]} and {scene.label} both write {scene.dst}; "
                             "give each scene its own dst")
        seen[key] = scene.label
    _check_scene_paths(manifest, scenes)
    return scenes


def _join(base: Location, name: str) -> str:
    """``name`` under ``base``: a folder, or a prefix URL on a store (``..`` resolved)."""
    return base.child(name).text


def _with_suffix(path: str, suffix: str) -> str:
    """``path`` with its extension replaced, for a file path or an object URL alike."""
    return location(path).with_suffix(suffix).text


def _check_scene_paths(manifest: Path | str, scenes: list[Scene]) -> None:
    """No scene writes onto, or into, any scene's source or another scene's outputs."""
    named: dict[str, str | tuple[str, ...] | None] = {}
    sources = []
    for n, scene in enumerate(scenes, 1):
        named[f"scene {n} src"] = scene.src
        sources.append(f"scene {n} src")
        named[f"scene {n} dst"] = scene.dst
        named[f"scene {n} zarr"] = scene.options.get("zarr_path")
        named[f"scene {n} vectorize"] = scene.options.get("vectorize")
        named[f"scene {n} preview"] = scene.options.get("preview")
    try:
        check_distinct_paths(named, read_only=sources)
    except ConfigError as exc:
        raise InputError(f"{manifest}: {exc}") from None


Row = tuple[str, dict[str, Any]]  # (where in the manifest, raw fields)


def _stac_rows(manifest: Path | str, text: str) -> list[Row]:
    """A STAC ItemCollection (or one item): one scene an item, ``manifest#ITEM_ID``."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{manifest}: not valid JSON ({exc}); a JSON manifest is a STAC "
                         "ItemCollection") from None
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [("item", {"src": str(manifest.absolute()) if isinstance(manifest, Path)
                          else manifest})]
    if not (isinstance(doc, dict) and doc.get("type") == "FeatureCollection"):
        raise InputError(f"{manifest}: a JSON manifest is a STAC ItemCollection (\"type\": "
                         "\"FeatureCollection\") or one item")
    rows: list[Row] = []
    seen: set[str] = set()
    for n, feature in enumerate(doc.get("features") or [], 1):
        item_id = feature.get("id") if isinstance(feature, dict) else None
        if not isinstance(item_id, str) or not item_id or "#" in item_id:
            raise InputError(f"{manifest}: item {n} has no usable id")
        if item_id in seen:
            raise InputError(f"{manifest}: item id {item_id} is listed twice; each scene needs "
                             "its own id")
        seen.add(item_id)
        where = str(manifest.absolute()) if isinstance(manifest, Path) else manifest
        rows.append((f"item {item_id}", {"src": f"{where}#{item_id}"}))
    return rows


def _text_rows(text: str) -> list[Row]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            rows.append((f"line {n}", {"src": line}))
    return rows


def _csv_rows(manifest: Path | str, text: str) -> list[Row]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if "src" not in header:
        raise InputError(f"{manifest}: a CSV manifest needs a header row with a src column "
                         "(src,dst[,options...]); found {}".format(",".join(header) or "nothing"))
    rows = []
    for n, raw in enumerate(reader, 2):
        if None in raw:
            raise InputError(f"{manifest}: line {n} has more cells than the header")
        row = {k.strip(): v.strip() for k, v in raw.items() if v is not None and v.strip() != ""}
        if row:
            rows.append((f"line {n}", row))
    return rows


def _yaml_rows(manifest: Path | str, text: str) -> list[Row]:
    import yaml

    from tileseg.yaml_bounds import YAMLBoundError, load_bounded

    try:
        doc = load_bounded(text)
    except YAMLBoundError as exc:
        raise InputError(f"{manifest}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{manifest}: not valid YAML ({first})") from exc
    defaults: dict[str, Any] = {}
    if isinstance(doc, dict) and "scenes" in doc:
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise InputError(f"{manifest}: defaults must be a mapping of options")
        extra = sorted(set(doc) - {"scenes", "defaults"})
        if extra:
            raise InputError(f"{manifest}: unknown top-level key(s) {', '.join(extra)}; use "
                             "defaults: and scenes:")
        doc = doc["scenes"]
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise InputError(f"{manifest}: a YAML manifest is a list of scenes (- src: a.tif), or "
                         "a mapping with scenes:")
    rows = []
    for n, item in enumerate(doc, 1):
        if isinstance(item, str):
            item = {"src": item}
        if not isinstance(item, dict):
            raise InputError(f"{manifest}: scene {n} is not a mapping with src (and dst, options)")
        rows.append((f"scene {n}", {**defaults, **item}))
    return rows


def _resolve(value: str, base: Location) -> str:
    value = os.path.expanduser(str(value))
    if is_remote(value) or os.path.isabs(value):
        return value
    return _join(base, value)


def _scene(manifest: str, where: str, row: dict[str, Any], base: Location,
           out_dir: Location | None, suffix: str) -> Scene:
    row = {_ALIASES.get(str(k).replace("-", "_"), str(k).replace("-", "_")): v
           for k, v in row.items()}
    raw = row.pop("src", None)
    if isinstance(raw, str) and ";" in raw:  # a CSV cell naming several files
        raw = [part.strip() for part in raw.split(";")]
    src: str | tuple[str, ...]
    if isinstance(raw, list) and raw and all(isinstance(p, str) and p for p in raw):
        files = tuple(_resolve(p, base) for p in raw)
        src = files[0] if len(files) == 1 else files
    elif raw and isinstance(raw, str):
        src = _resolve(raw, base)
    else:
        raise InputError(f"{manifest}: {where} has no src")
    dst = row.pop("dst", None)
    if dst is None:
        if out_dir is None:
            raise InputError(f"{manifest}: {where} has no dst; give one, or pass output_dir "
                             "to write <stem>{suffix} there".replace("{suffix}", suffix),
                             params=("output_dir",))
        first = src if isinstance(src, str) else src[0]
        dst = _join(out_dir, PurePosixPath(source_name(first)).stem + suffix)
    else:
        where_to = location(out_dir.address) if out_dir is not None else base
        dst = _resolve(str(dst), where_to)
    if any(os.path.normpath(dst) == os.path.normpath(f)
           for f in ((src,) if isinstance(src, str) else src)):
        raise InputError(f"{manifest}: {where} would overwrite its source {dst}; change dst or "
                         "suffix", params=("suffix",))
    options: dict[str, Any] = {}
    for key, value in row.items():
        if key not in SCENE_OPTIONS:
            raise InputError(f"{manifest}: {where} has unknown option {key!r}; choose from "
                             f"{', '.join(SCENE_OPTIONS)}")
        options[key] = _option(manifest, where, key, value, base, dst, src)
    scene = Scene(src, dst, options)
    try:
        scene.config({})
    except TilesegError as exc:  # option values out of range: say where, as manifest options
        raise InputError(f"{manifest}: {where}: {flagged_message(exc)}") from exc
    return scene


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict = 2, 6, 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60


def _option(manifest: str, where: str, key: str, value: Any, base: Location,
            dst: str, src: str | tuple[str, ...] = "") -> Any:
    def bad(expected: str) -> InputError:
        shown = _SHORT_REPR.repr(value)  # a value may be huge: the message stays one short line
        return InputError(f"{manifest}: {where}: {key} must be {expected}, got {shown}")

    if key in _BOOL_OPTIONS:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise bad("true or false")
    if key in _INT_OPTIONS:
        try:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if key in _INT_TUPLE_OPTIONS:
        items = value if isinstance(value, list | tuple) else str(value).replace(" ", "").split(",")
        try:
            return tuple(int(v) for v in items)
        except (TypeError, ValueError):
            raise bad("a list of integers such as 4,3,2") from None
    if key == "bands":  # numbers, or a STAC item's asset keys / common names
        items = value if isinstance(value, list | tuple) else str(value).replace(" ", "").split(",")
        if not items or any(isinstance(v, bool) or not str(v).strip() for v in items):
            raise bad("a list such as 4,3,2 or red,green,blue")
        if all(isinstance(v, int) or str(v).lstrip("-").isdigit() for v in items):
            return tuple(int(v) for v in items)
        from tileseg.scenes import is_item_source

        if any(isinstance(v, int | float) for v in items) or not is_item_source(src):
            raise bad("a list of integers such as 4,3,2 (band names are for STAC items)")
        return tuple(str(v) for v in items)
    if key == "resolution":
        if isinstance(value, str) and value.strip().lower() == "model":
            return "model"
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise bad("a pixel size such as 10, or model") from None
    if key == "resampling":
        items = value if isinstance(value, list | tuple) else str(value).replace(" ", "").split(",")
        return tuple(str(v) for v in items if str(v))
    if key == "aoi":
        from tileseg.scenes.aoi import parse_bbox

        if isinstance(value, list | tuple) and len(value) == 4:
            value = ",".join(str(v) for v in value)  # a bbox as a YAML list
        if not isinstance(value, str):
            raise bad("a vector file or a bbox west,south,east,north")
        return value if parse_bbox(value) else _resolve(value, base)
    if key == "nodata":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if key == "vectorize":
        if value is True or str(value).lower() == "true":
            # vectorize: true -> polygons beside the mask
            return _with_suffix(dst, ".gpkg")
        if value is False or str(value).lower() == "false":
            return None
    if key == "preview" and (value is True or str(value).lower() == "true"):
        return _with_suffix(dst, ".png")  # preview: true -> beside the mask
    if key in _PATH_OPTIONS:
        return _resolve(str(value), base)
    if not isinstance(value, str):
        raise bad("a string")
    return value


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def check_named_bands(scenes: list[Scene], defaults: dict[str, Any]) -> None:
    """Before any scene runs: bands given by name (asset keys, common names) suit STAC items
    only; a raster scene given names is refused (exit 2), not failed one by one."""
    from tileseg.scenes import check_named_bands_fit

    for scene in scenes:
        try:
            check_named_bands_fit(scene.config(defaults))
        except TilesegError as exc:
            raise InputError(flagged_message(exc), params=exc.params) from None


def scene_state(scene: Scene) -> Literal["complete", "partial", "missing"]:
    """Whether a scene's output is complete (exists, nothing staged), staged, or absent."""
    if _output_exists(scene.staging):
        return "partial"
    if _output_exists(scene.dst):
        vector = scene.options.get("vectorize")
        if vector and not _output_exists(vector):
            return "partial"
        return "complete"
    return "missing"


def _output_exists(path: str | os.PathLike[str] | Location) -> bool:
    """A file or folder, or on a store an object or a prefix with objects under it."""
    return location(path).exists()


SceneCallback = Callable[[Scene, SceneResult], None]


def run_batch(
    scenes: list[Scene],
    config: BatchConfig | None = None,
    *,
    client: Any = None,
    on_scene: SceneCallback | None = None,
) -> BatchResult:
    """Run every scene that is not complete yet, on one cluster; never stops at a failure.

    Parameters
    ----------
    scenes
        From :func:`load_manifest`.
    config
        Batch defaults, scheduler and summary path.
    client
        A ``dask.distributed.Client`` to share across scenes, or a resolved
        :class:`~tileseg.execution.Scheduler`; by default ``config.scheduler`` (or
        ``config.cluster``) is resolved, and a client opened when that is a cluster.
    on_scene
        Called as each scene ends (also for skipped scenes), e.g. to print a line.

    Examples
    --------
    >>> scenes = load_manifest("scenes.csv")  # doctest: +SKIP
    >>> result = run_batch(scenes, BatchConfig(scheduler="tcp://head:8786",
    ...                                        summary="summary.json"))  # doctest: +SKIP
    >>> result.ok, result.counts()  # doctest: +SKIP
    (True, {'succeeded': 3, 'resumed': 1, 'skipped': 12, 'failed': 0})
    """
    config = config or BatchConfig()
    # resolved once, before any scene or summary: a scheduler a mosaic cannot run on is refused
    # now (exit 2), not scene by scene
    scheduler = config.resolved_scheduler(client)
    earlier: dict[tuple[str, str], SceneResult] = {}
    if config.summary:
        check_summary_targets(config.summary)
        earlier = _earlier_results(config.summary)
    started = time.perf_counter()
    results: dict[int, SceneResult] = {}
    pictures: dict[int, ScenePicture | None] = {}
    lock = threading.Lock()

    def run_one(index: int, scene: Scene, run: Scheduler) -> None:
        outcome = _run_scene(scene, config, run)
        if outcome.status == "skipped" and (scene.label, scene.dst) in earlier:
            # done by an earlier batch: its figures stay in the summary (which names the
            # source by its label: a stack of files, too)
            outcome = replace(earlier[(scene.label, scene.dst)], status="skipped", error="")
        if (config.summary and config.previews and not is_store_url(config.summary)
                and outcome.ok and _output_exists(scene.dst)):
            pictures[index] = scene_picture(scene.dst, index, config.summary)
        with lock:
            results[index] = outcome
            if config.summary:  # rewrite as we go: a killed batch still leaves a summary
                _write_summary(config.summary, scenes, results, time.perf_counter() - started,
                               pictures)
        if on_scene is not None:
            on_scene(scene, outcome)

    # one client for the whole batch: workers keep their models loaded between scenes
    with open_client(scheduler) as shared:
        run = scheduler if shared is None else replace(scheduler, client=shared, wait_workers=0)
        if config.concurrent_scenes == 1:
            for i, scene in enumerate(scenes):
                run_one(i, scene, run)
        else:
            with ThreadPoolExecutor(config.concurrent_scenes, "tileseg-scene") as pool:
                for future in [pool.submit(run_one, i, s, run) for i, s in enumerate(scenes)]:
                    future.result()
    seconds = time.perf_counter() - started
    if config.summary:
        _write_summary(config.summary, scenes, results, seconds, pictures)
    ordered = tuple(results[i] for i in range(len(scenes)))
    return BatchResult(ordered, seconds, config.summary)


def _run_scene(scene: Scene, config: BatchConfig, run: Scheduler) -> SceneResult:
    from tileseg.pipeline import predict

    try:
        state = scene_state(scene)
    except TilesegError as exc:  # a store that does not answer: this scene fails, not the batch
        return SceneResult(scene.label, scene.dst, "failed", error=flagged_message(exc))
    if state == "complete":
        logger.info("%s: complete, skipped", scene.dst)
        return SceneResult(scene.label, scene.dst, "skipped")
    try:
        _create_dst_folder(scene)
    except OutputError as exc:
        return SceneResult(scene.label, scene.dst, "failed", error=flagged_message(exc))
    # The batch's scheduler, never resolved again: on a cluster its client is handed over
    # (predict then reports the cluster and leaves device checks to the workers).
    client = run.client
    scheduler = (str(client.scheduler.address) if client is not None
                 else None if run.kind == "callable" else run.kind)
    started = time.perf_counter()
    try:
        predict_config = scene.config(config.defaults, resume=state == "partial",
                                      scheduler=scheduler)
        if (state == "partial" and _output_exists(scene.dst)
                and not _output_exists(scene.staging)):
            # The mask is published but its polygons are missing: only vectorize again.
            _vectorize_only(predict_config, run)
            return SceneResult(scene.label, scene.dst, "resumed",
                               seconds=time.perf_counter() - started)
        logger.info("%s -> %s (%s)", scene.label, scene.dst,
                    "resuming" if state == "partial" else "starting")
        result = predict(predict_config, client=run)
    except TilesegError as exc:
        logger.info("scene failed: %s", exc)  # the result (and summary) carry the message
        return SceneResult(scene.label, scene.dst, "failed",
                           seconds=time.perf_counter() - started, error=flagged_message(exc))
    except Exception as exc:  # a bug or an unexpected library error: record it, go on
        logger.exception("%s: unexpected error", scene.label)
        return SceneResult(scene.label, scene.dst, "failed",
                           seconds=time.perf_counter() - started,
                           error=f"{type(exc).__name__}: {exc}")
    return SceneResult(
        scene.label, scene.dst, "resumed" if state == "partial" else "succeeded",
        tiles_total=result.tiles_total, tiles_inferred=result.tiles_inferred,
        tiles_skipped_nodata=result.tiles_skipped_nodata, chunks=result.chunks,
        seconds=time.perf_counter() - started,
    )


def _create_dst_folder(scene: Scene) -> None:
    """The folder of a scene's local ``dst``, created as ``output_dir`` is (``mkdir -p``): a
    CSV or YAML manifest names its own destinations, and they get the same treatment."""
    try:
        location(scene.dst).make_parent()  # on a store a prefix needs no making
    except OSError as exc:
        raise OutputError(f"{Path(scene.dst).parent}: cannot create the folder of {scene.dst} "
                          f"({exc.strerror}); create it or change the scene's dst") from exc


def _vectorize_only(config: PredictConfig, run: Scheduler) -> None:
    from tileseg.vectorization import VectorizeConfig, vectorize

    assert config.vectorize is not None  # only called when scene_state saw a vectorize option
    vectorize(config.dst, config.vectorize, VectorizeConfig(overwrite=True), scheduler=run)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = tuple(f.name for f in fields(SceneResult))


def check_summary_targets(summary: str | os.PathLike[str]) -> None:
    """Before any scene runs: the summary's JSON, CSV and HTML page replace only files an
    earlier batch wrote (recognised by their content); anything else stays (exit 4)."""
    from tileseg.batch_report import HTML_MARKER

    header = ",".join(SUMMARY_COLUMNS)
    targets = _summary_targets(summary)
    targets[0].check_answers()  # on a store: the bucket answers (exit 2), before any scene
    for target, ours in zip(targets, (_is_summary_json,
                                      lambda text: text.splitlines()[:1] == [header],
                                      lambda text: HTML_MARKER in text), strict=True):
        def owned(local: Path, ours: Callable[[str], bool] = ours) -> bool:
            try:
                return ours(local.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                return False

        # written after each scene: a folder that cannot take it is found now, not later
        target.check_replaceable(
            overwrite=True, owned=owned, what="summary path", params=("summary",),
            foreign_params=(),
            foreign=(f"{target}: exists and is not a tileseg batch summary, so it is left as "
                     "it is; choose another summary path or remove it"))


def _summary_targets(summary: str | os.PathLike[str]) -> tuple[Location, Location, Location]:
    """The summary's JSON, CSV and HTML."""
    target = location(summary)
    json_path = target.with_suffix(".json") if target.name.lower().endswith(".csv") else target
    return json_path, target.with_suffix(".csv"), json_path.with_suffix(".html")


def _earlier_results(summary: str | os.PathLike[str]) -> dict[tuple[Any, str], SceneResult]:
    """The scenes an earlier batch finished, as its summary recorded them, by (src, dst): a
    scene that is complete now is skipped, and keeps those figures (tiles, chunks, seconds)."""
    json_path = _summary_targets(summary)[0]
    try:
        text = json_path.read_text(limit=64 << 20)
        doc = json.loads(text) if text else {}
    except (OSError, UnicodeDecodeError, ValueError, TilesegError):
        return {}
    earlier: dict[tuple[Any, str], SceneResult] = {}
    for row in doc.get("scenes", []) if isinstance(doc, dict) else []:
        try:
            result = SceneResult(**{k: row[k] for k in SUMMARY_COLUMNS})
        except (KeyError, TypeError):
            continue
        if result.ok and result.tiles_total:
            earlier[(result.src, result.dst)] = result
    return earlier


def _is_summary_json(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"scenes", "counts", "scenes_total"} <= set(doc)


def summary_csv_path(summary: str | os.PathLike[str]) -> Path:
    return Path(summary).with_suffix(".csv")


def _write_summary(path: str, scenes: list[Scene], results: dict[int, SceneResult],
                   seconds: float, pictures: dict[int, ScenePicture | None] | None = None) -> None:
    rows = []
    for i, scene in enumerate(scenes):
        rows.append(asdict(results[i]) if i in results else
                    asdict(SceneResult(scene.label, scene.dst, "pending")))
    counts: dict[str, int] = {"succeeded": 0, "resumed": 0, "skipped": 0, "failed": 0,
                              "pending": 0}
    for row in rows:
        counts[row["status"]] += 1
    doc = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "scenes_total": len(scenes),
        "counts": counts,
        "ok": counts["failed"] == 0 and counts["pending"] == 0,
        "scenes": rows,
    }
    json_path, csv_path, page_path = _summary_targets(path)
    lines: list[str] = []
    writer = csv.DictWriter(_ListWriter(lines), fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "seconds": f"{row['seconds']:.3f}"})
    title = f"tileseg batch: {PurePosixPath(json_path.text).stem}"
    for target, text in ((json_path, json.dumps(doc, indent=2) + "\n"), (csv_path, "".join(lines)),
                         (page_path, render_html(title, doc, pictures or {}))):
        target.write_text(text)  # whole or not at all: a rename, one PUT


class _ListWriter:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)


def default_summary_path(manifest: str | os.PathLike[str],
                         output_dir: str | os.PathLike[str] | None = None) -> str:
    """``scenes.csv`` -> ``scenes.csv.summary.json`` beside it (also on a store), or under
    ``output_dir`` when that is on a store: the batch's results and its summary stay together.
    The whole file name, extension included, so ``scenes.txt`` and ``scenes.yaml`` in one
    folder keep a summary each.

    Examples
    --------
    >>> default_summary_path("jobs/scenes.csv")
    'jobs/scenes.csv.summary.json'
    >>> default_summary_path("scenes.txt", "s3://results/run1/")
    's3://results/run1/scenes.txt.summary.json'
    """
    name = source_name(os.fspath(manifest)) + ".summary.json"
    if output_dir is not None and is_store_url(os.fspath(output_dir)):
        return _join(location(output_dir), name)
    return location(manifest).with_name(name).text


def run_manifest(
    manifest: str | os.PathLike[str],
    config: BatchConfig | None = None,
    *,
    client: Any = None,
    on_scene: SceneCallback | None = None,
) -> BatchResult:
    """:func:`load_manifest` then :func:`run_batch`; what ``tileseg batch`` calls.

    Examples
    --------
    >>> result = run_manifest("scenes.yaml", BatchConfig(scheduler="tcp://head:8786"))  # doctest: +SKIP
    >>> result.raise_for_failures()  # doctest: +SKIP
    """
    config = config or BatchConfig(summary=default_summary_path(manifest))
    with batch_lock(config.lock):
        # resolved once, before anything is read or created; every scene runs on it
        scheduler = config.resolved_scheduler(client)
        return _run_manifest(manifest, config, scheduler, on_scene)


def _run_manifest(manifest: str | os.PathLike[str], config: BatchConfig, scheduler: Scheduler,
                  on_scene: SceneCallback | None) -> BatchResult:
    scenes = load_manifest(manifest, output_dir=config.output_dir, suffix=config.suffix)
    check_named_bands(scenes, config.defaults)
    if config.output_dir is not None:  # named for this batch: made as mkdir -p would
        # (on a store: the bucket answers, exit 2 before any scene)
        location(config.output_dir).make_folder("output_dir", params=("output_dir",))
    return run_batch(scenes, config, client=scheduler, on_scene=on_scene)
