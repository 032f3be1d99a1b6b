"""Which files tileseg wrote: the only ones it may replace or delete.

tileseg marks everything it writes: a GeoTIFF carries the ``TILESEG_CLASSES`` tag, a Zarr store
the ``tileseg`` attributes on its root group, a run report the ``"tileseg_report"`` field, a
staging folder its ``run.json``. ``--overwrite`` replaces a destination only when it carries such
a mark; anything else (a user's raster, a folder of documents that happens to be called
``mask.tif``) stays where it is and the run stops with :class:`~tileseg.errors.OutputError`.

Other writers (vector outputs) add their own check with :func:`register_output_check`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tileseg.errors import OutputError
from tileseg.outputs.mask import CLASSES_TAG, FINGERPRINT_TAG, ZARR_ATTRIBUTE

logger = logging.getLogger(__name__)

REPORT_MARKER = "tileseg_report"  # a report's own mark: {"tileseg_report": 1, ...}
REPORT_VERSION = 1
# an output's STAC item (tileseg.outputs.stac_item) carries {"properties": {ITEM_MARK: ...}}
ITEM_MARK = "tileseg:output"
ITEM_MARK_VALUE = "stac-item/1"
TIFF_TAG = CLASSES_TAG  # written on every GeoTIFF/COG mask

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_MAX_REPORT_BYTES = 1 << 20  # a run report is a few kB; a bigger JSON file is someone else's

OutputCheck = Callable[[Path], bool]
_EXTRA_CHECKS: list[OutputCheck] = []


def register_output_check(check: OutputCheck) -> None:
    """Let another writer (e.g. vectorize) teach :func:`is_tileseg_output` its own mark."""
    if check not in _EXTRA_CHECKS:
        _EXTRA_CHECKS.append(check)


def is_tileseg_output(path: str | os.PathLike[str]) -> bool:
    """True only if ``path`` exists and carries tileseg's mark (see the module docstring).

    Decided from the content, never from the name: a folder called ``mask.zarr`` without the
    ``tileseg`` attributes, or a GeoTIFF without the tag, is not tileseg's.

    Examples
    --------
    >>> is_tileseg_output("landcover.tif")  # doctest: +SKIP
    True
    """
    p = Path(path)
    try:
        if p.is_symlink():  # replacing a link's target was never asked for
            return False
        if p.is_dir():
            return is_tileseg_zarr(p) or is_tileseg_staging(p)
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if head in _TIFF_MAGIC:
        return TIFF_TAG in _tiff_tags(p)
    if head[:1] in (b"{", b" ", b"\n"):
        return is_report(p) or is_output_item(p)
    return any(check(p) for check in _EXTRA_CHECKS)


def is_tileseg_zarr(path: Path) -> bool:
    """A Zarr v3 store whose root group carries tileseg's attributes."""
    meta = _read_json(path / "zarr.json")
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and isinstance(attrs.get(ZARR_ATTRIBUTE), dict)


def is_tileseg_staging(path: Path) -> bool:
    """A ``DST.partial`` folder of an interrupted run: it holds the run's ``run.json``."""
    run = _read_json(path / "run.json")
    return isinstance(run, dict) and "fingerprint" in run


def recorded_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The run fingerprint a finished mask records (GeoTIFF tag or Zarr attribute), else None."""
    p = Path(path)
    if p.is_dir():
        meta: Any = _read_json(p / "zarr.json")
        try:
            value = meta["attributes"][ZARR_ATTRIBUTE].get("fingerprint")
        except (KeyError, TypeError, AttributeError):
            return None
        return str(value) if value else None
    return _tiff_tags(p).get(FINGERPRINT_TAG) or None


def remove_owned(path: str | os.PathLike[str], what: str = "output") -> None:
    """Delete ``path`` if tileseg wrote it; :class:`OutputError` (and nothing deleted) if not."""
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return
    check_replaceable(p, what)
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()


def check_replaceable(path: Path, what: str = "output", *, params: tuple[str, ...] = ()) -> None:
    """Refuse (exit 4) to replace an existing ``path`` that tileseg did not write.

    ``what`` names the path in the message (``"destination"``, ``"report path"``); ``params``
    are the parameters it names (``("report",)``), shown as flags by the CLI.
    """
    if path.is_symlink():
        raise OutputError(f"{path}: is a symbolic link; tileseg does not replace links or what "
                          f"they point to; remove it or choose another {what}", params=params)
    if path.exists() and not is_tileseg_output(path):
        raise OutputError(
            f"{path}: exists and was not written by tileseg (no tileseg {_mark(path)}), so "
            f"overwrite does not replace it; move it away or choose another {what}",
            params=("overwrite", *params),
        )


def _mark(path: Path) -> str:
    if path.is_dir():
        return "Zarr attributes"
    if path.suffix.lower() == ".json":
        return "marker key"  # not "report marker": "report" would read as the parameter
    return "tag"


def _read_json(path: Path) -> object:
    try:
        if path.stat().st_size > _MAX_REPORT_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_output_item(path: Path) -> bool:
    """An output's STAC item: a GeoJSON Feature whose properties carry tileseg's mark."""
    data = _read_json(path)
    return (isinstance(data, dict) and data.get("type") == "Feature"
            and isinstance(data.get("properties"), dict)
            and data["properties"].get(ITEM_MARK) == ITEM_MARK_VALUE)


def is_report(path: Path) -> bool:
    """A run report tileseg wrote (its ``tileseg_report`` field)."""
    data = _read_json(path)
    return isinstance(data, dict) and data.get(REPORT_MARKER) == REPORT_VERSION


def _tiff_tags(path: Path) -> dict[str, str]:
    from tileseg.sources.datasets import open_dataset

    try:
        with open_dataset(path) as src:
            return dict(src.tags())
    except Exception:  # not readable as a raster: not ours either
        logger.debug("cannot read tags of %s", path, exc_info=True)
        return {}
