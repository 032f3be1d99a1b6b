"""Staging of a run whose destination is on an object store (``s3://``, ``gs://``, ``az://``).

A store has no rename, so completion is marked instead of moved into place:

- the run record (``run.json`` with the fingerprint) and the per-chunk work objects (spills and
  done markers, :class:`tileseg.outputs.workdir.StoreWorkDir`) live under the staging prefix
  ``DST.partial/``, which every worker reaches: workers share no disk;
- a Zarr destination is written directly at ``DST``. Its root attributes say
  ``tileseg.complete: false`` from the first chunk on and are flipped to ``true`` (with the
  fingerprint, then consolidated metadata) only after the last chunk is written. A reader that
  opens it before sees ``complete: false`` and chunks that are still the fill value (nodata);
- a GeoTIFF/COG destination is built from the finished Zarr mosaic (staged at
  ``DST.partial/mosaic.zarr``) into a local temporary file on the driver and uploaded once, so
  the object appears whole or not at all;
- one run per destination: a :class:`tileseg.outputs.store.StoreLock` object at ``DST.lock``.

What already exists at ``DST`` is replaced only with ``--overwrite`` and only when it carries
tileseg's mark (Zarr root attribute ``tileseg``, GeoTIFF tag ``TILESEG_CLASSES``), read through
the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tileseg.errors import ConfigError, OutputError, RunError
from tileseg.outputs.diskspace import full_disk_as_error, temporary_folder
from tileseg.outputs.ownership import (
    FINGERPRINT_TAG,
    TIFF_TAG,
    ZARR_ATTRIBUTE,
)
from tileseg.outputs.staging import STAGING_SUFFIX, resume_recorded
from tileseg.outputs.store import (
    StoreLock,
    StoreURL,
    any_under,
    check_writable,
    delete_prefix,
    exists,
    put_bytes,
    read_bytes,
    upload_file,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreStaging:
    """Staging of one run on an object store (see the module docstring).

    Parameters
    ----------
    dst
        The destination URL (a ``.zarr`` prefix or a GeoTIFF/COG object).
    zarr_path
        A store URL where the Zarr mosaic is also kept, for a GeoTIFF destination; it is
        written there directly, like a Zarr destination.
    zarr_dst
        True when ``dst`` itself is the Zarr store.
    """

    dst: str
    zarr_path: str | None = None
    zarr_dst: bool = False
    _scratch: list[Path] = field(default_factory=list, compare=False, repr=False)
    _locks: list[StoreLock] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        StoreURL.parse(self.dst).require_key()
        if self.zarr_path:
            StoreURL.parse(self.zarr_path).require_key("zarr_path", params=("zarr_path",))
        if self.zarr_dst and self.zarr_path:
            raise ConfigError("zarr_path is for GeoTIFF destinations; the destination is already "
                              "Zarr", params=("zarr_path",))

    @property
    def path(self) -> StoreURL:
        return StoreURL.parse(self.dst.rstrip("/") + STAGING_SUFFIX)

    @property
    def zarr_store(self) -> str:
        if self.zarr_dst:
            return self.dst.rstrip("/")
        if self.zarr_path:
            return self.zarr_path.rstrip("/")
        return self.path.child("mosaic.zarr").url

    @property
    def work_path(self) -> str:
        return self.path.child("work").url

    @property
    def run_file(self) -> StoreURL:
        return self.path.child("run.json")

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.dst,) if self.zarr_path is None else (self.dst, self.zarr_path)

    def _is_zarr(self, out: str) -> bool:
        return (out == self.dst and self.zarr_dst) or out == self.zarr_path

    def in_progress(self) -> bool:
        """True when an interrupted run left objects under the staging prefix."""
        return any_under(self.path)

    def scratch(self) -> Path:
        """A local folder on the driver for the GeoTIFF/COG before its upload."""
        if not self._scratch:
            self._scratch.append(Path(tempfile.mkdtemp(prefix="tileseg-upload-")))
        return self._scratch[0]

    @contextlib.contextmanager
    def building(self) -> Iterator[Path]:
        """:meth:`scratch`, for the outputs built from the finished mosaic before their upload:
        a full ``TMPDIR`` meanwhile keeps every chunk for ``resume``."""
        with full_disk_as_error(temporary_folder(), resumable=True, gdal=True, temporary=True):
            yield self.scratch()

    # -- check -------------------------------------------------------------------------------
    def check(self, *, overwrite: bool, resume: bool) -> None:
        """The store answers and what exists at the destinations may be replaced."""
        for out in self.outputs:
            where = StoreURL.parse(out)
            try:
                check_writable(where)
            except OutputError as exc:  # missing bucket, credentials, endpoint: the user's setup
                raise ConfigError(str(exc), params=exc.params) from None
            if not self._exists(out):
                continue
            if not (overwrite or resume):
                raise OutputError(f"{out}: already exists; pass overwrite to replace it",
                                  params=("overwrite",))
            self._check_replaceable(out)
        if self.in_progress() and self._record() is None:
            raise self._foreign_staging()

    def _foreign_staging(self) -> OutputError:
        # every run writes its record first and deletes it last: these are someone else's
        return OutputError(
            f"{self.path.url}: objects under this run's staging prefix were not written by "
            "tileseg (no run record, run.json), so neither resume nor overwrite touches them; "
            "move them away or choose another destination")

    def _exists(self, out: str) -> bool:
        where = StoreURL.parse(out.rstrip("/"))
        if self._is_zarr(out):
            return any_under(where)
        return exists(where) or any_under(where)

    def _check_replaceable(self, out: str) -> None:
        if not self._owned(out):
            raise OutputError(
                f"{out}: exists and was not written by tileseg (no tileseg "
                f"{'Zarr attributes' if self._is_zarr(out) else 'tag'}), so overwrite does not "
                "replace it; move it away or choose another destination", params=("overwrite",))

    def _owned(self, out: str) -> bool:
        if self._is_zarr(out):
            return self._zarr_attrs(out) is not None
        return TIFF_TAG in self._tiff_tags(out)

    @staticmethod
    def _zarr_attrs(out: str) -> dict[str, Any] | None:
        try:
            meta = json.loads(read_bytes(StoreURL.parse(out.rstrip("/")).child("zarr.json")))
            attrs = meta["attributes"][ZARR_ATTRIBUTE]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return attrs if isinstance(attrs, dict) else None

    @staticmethod
    def _tiff_tags(out: str) -> dict[str, str]:
        import rasterio

        from tileseg.sources.datasets import open_dataset

        scheme, _, rest = out.partition("://")
        vsi = {"s3": "/vsis3/", "gs": "/vsigs/"}.get(scheme, "/vsiaz/") + rest
        try:
            # not from GDAL's cache: the object may have been replaced since it was last read
            with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=vsi), open_dataset(out) as src:
                return dict(src.tags())
        except Exception:  # not readable as a raster: not ours either
            logger.debug("cannot read tags of %s", out, exc_info=True)
            return {}

    # -- lock --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold a lease lock object beside every destination (exit 75 while another run does)."""
        with contextlib.ExitStack() as stack:
            for out in self.outputs:
                held = StoreLock(StoreURL.parse(out.rstrip("/") + ".lock"))
                stack.enter_context(held)
                self._locks.append(held)
            try:
                yield
            finally:
                self._locks.clear()
                self._remove_scratch()  # the local GeoTIFF of a run that failed (a full disk)

    # -- resume ------------------------------------------------------------------------------
    def finished(self, fingerprint: str) -> bool:
        """For ``--resume``: True when the destination is already published by this same job."""
        if self.in_progress() or not self._exists(self.dst):
            return False
        if self.zarr_dst:
            attrs = self._zarr_attrs(self.dst) or {}
            recorded = attrs.get("fingerprint") if attrs.get("complete") else None
        else:
            recorded = self._tiff_tags(self.dst).get(FINGERPRINT_TAG)
        if recorded != fingerprint:
            raise OutputError(
                f"{self.dst}: already holds a finished mask made from other inputs or options "
                "(or an unfinished one without its staging prefix), so resume cannot continue "
                "it; pass overwrite to replace it, or choose another destination",
                params=("resume", "overwrite"))
        return True

    def prepare(self, fingerprint: str, *, resume: bool, overwrite: bool,
                facts: dict[str, Any], create: Callable[[Any], None],
                on_resume: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Make the staging prefix ready; True when an interrupted run is continued.

        As on a disk, ``run.json`` is the first object written (``"ready": false``) and the
        last one deleted, so whatever a killed run leaves under the prefix is provably
        tileseg's; a record that is not ready means nothing was computed: started over.
        """
        if self.in_progress():
            recorded = self._record()
            if recorded is None:  # put there since check(), which refuses them
                raise self._foreign_staging()
            if recorded.get("ready", True):
                if resume_recorded(self.path.url, recorded, fingerprint, resume=resume,
                                   overwrite=overwrite, on_resume=on_resume):
                    return True
                self.check(overwrite=True, resume=False)  # again, under the lock
            else:
                logger.info("%s: left by a run that stopped before any work; starting over",
                            self.path.url)
            self._remove_prefix()
        record = {"fingerprint": fingerprint, **facts}
        put_bytes(self.run_file, json.dumps({**record, "ready": False}).encode())
        # A Zarr written in place replaces the old output now, not at the end: checked above
        # (tileseg's own, --overwrite given), and marked incomplete from its first object on.
        for out in self.outputs:
            if self._is_zarr(out) and self._exists(out):
                self._check_replaceable(out)
                delete_prefix(StoreURL.parse(out.rstrip("/")))
        create(self)
        put_bytes(self.run_file, json.dumps({**record, "ready": True}).encode())
        return False

    def _record(self) -> dict[str, Any] | None:
        try:
            recorded = json.loads(read_bytes(self.run_file))
        except (FileNotFoundError, ValueError):
            return None
        return recorded if isinstance(recorded, dict) and "fingerprint" in recorded else None

    def _remove_prefix(self) -> None:
        """Delete the staging prefix, the run record last (see :meth:`prepare`)."""
        delete_prefix(self.path, last=self.run_file)

    def note(self, facts: dict[str, Any]) -> None:
        """Add ``facts`` to the run record (what a later ``--resume`` is handed)."""
        try:
            recorded = json.loads(read_bytes(self.run_file))
        except (FileNotFoundError, ValueError):
            return  # no record: nothing a resume could continue
        put_bytes(self.run_file, json.dumps({**recorded, **facts}).encode())

    # -- publish -----------------------------------------------------------------------------
    def ensure_lock_held(self) -> None:
        """Before anything is published beside ``dst`` (style sidecars): this run still holds
        its lock, else :class:`RunError` (exit 5) and nothing is uploaded."""
        lost = [held.location.url for held in self._locks if held.lost]
        if lost:  # another run may have taken over: publishing now could mix two runs
            raise RunError(f"{lost[0]}: this run lost its lock (the lease could not be renewed); "
                           "rerun with resume once the store answers again",
                           params=("resume",))

    def publish(self, built: Path | str, zarr_too: bool) -> None:
        """Upload a built GeoTIFF/COG (one PUT or one multipart upload that completes last) to
        ``dst``; a Zarr is already in place. Then delete the staging prefix."""
        lost = [held.location.url for held in self._locks if held.lost]
        if lost:  # another run may have taken over: publishing now could mix two runs
            raise RunError(f"{lost[0]}: this run lost its lock (the lease could not be renewed); "
                           "rerun with resume once the store answers again", params=("resume",))
        if isinstance(built, Path):
            if self._exists(self.dst):
                self._check_replaceable(self.dst)  # a user may have put something there meanwhile
            upload_file(built, StoreURL.parse(self.dst))
        self._remove_prefix()
        self._remove_scratch()

    def discard(self) -> None:
        self._remove_prefix()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        while self._scratch:
            shutil.rmtree(self._scratch.pop(), ignore_errors=True)
