"""Where a run writes before its output is complete, and how the output is put in place.

A run stages everything in ``DST.partial`` beside the destination (the Zarr mosaic, per-chunk
work files, ``run.json`` with the run fingerprint) and publishes only when every chunk is done,
by rename, so nothing at ``DST`` ever looks complete before it is. :class:`LocalStaging` is the
local-disk implementation of the four steps every run goes through:

``check``    before any work: the destinations may be written (existing ones only with
             ``--overwrite``/``--resume``, and only when tileseg wrote them).
``lock``     one run per destination (:mod:`tileseg.outputs.runlock`).
``prepare``  start a fresh staging folder, or continue one with ``--resume`` (same fingerprint).
``publish``  move the finished outputs into place, replacing only tileseg's own files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tileseg.errors import OutputError, RunError
from tileseg.outputs.diskspace import atomic_file, full_disk_as_error
from tileseg.outputs.ownership import check_replaceable, is_tileseg_staging, recorded_fingerprint
from tileseg.outputs.runlock import check_lock_name, exclusive_run

logger = logging.getLogger(__name__)

STAGING_SUFFIX = ".partial"


def staging_path_for(dst: str | os.PathLike[str]) -> Path:
    dst = Path(dst)
    return dst.with_name(dst.name + STAGING_SUFFIX)


class Staging(Protocol):
    """The steps of a run's output life cycle; :class:`LocalStaging` writes to local disk,
    :class:`tileseg.outputs.store_staging.StoreStaging` stages under a prefix on an object store."""

    @property
    def dst(self) -> Any: ...

    @property
    def zarr_store(self) -> Any: ...

    @property
    def work_path(self) -> Any: ...

    def in_progress(self) -> bool: ...

    def scratch(self) -> Path: ...

    def building(self) -> contextlib.AbstractContextManager[Path]: ...

    def ensure_lock_held(self) -> None: ...

    def check(self, *, overwrite: bool, resume: bool) -> None: ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def finished(self, fingerprint: str) -> bool: ...

    def prepare(self, fingerprint: str, *, resume: bool, overwrite: bool,
                facts: dict[str, Any], create: Callable[[Any], None],
                on_resume: Callable[[dict[str, Any]], None] | None = None) -> bool: ...

    def note(self, facts: dict[str, Any]) -> None: ...

    def publish(self, built: Path, zarr_too: bool) -> None: ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class LocalStaging:
    """Staging of one run on the local filesystem (see the module docstring).

    Parameters
    ----------
    dst
        The destination (GeoTIFF/COG file or Zarr store).
    zarr_path
        Where the Zarr mosaic is also kept, for a GeoTIFF destination.
    """

    dst: Path
    zarr_path: Path | None = None

    @property
    def path(self) -> Path:
        return staging_path_for(self.dst)

    @property
    def zarr_store(self) -> Path:
        return self.path / "mosaic.zarr"

    @property
    def work_path(self) -> Path:
        return self.path / "work"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.dst,) if self.zarr_path is None else (self.dst, self.zarr_path)

    def in_progress(self) -> bool:
        """True when an interrupted run left its staging folder."""
        return self.path.exists()

    def scratch(self) -> Path:
        """Where a GeoTIFF is built before its rename (same filesystem as ``dst``)."""
        return self.path

    @contextlib.contextmanager
    def building(self) -> Iterator[Path]:
        """:meth:`scratch`, for the outputs built from the finished mosaic (the GeoTIFF/COG,
        its sidecars and item): a full disk meanwhile keeps every chunk for ``resume``."""
        with full_disk_as_error(self.dst.absolute().parent, resumable=True, gdal=True):
            yield self.scratch()

    def ensure_lock_held(self) -> None:
        """A lock on a disk is held until the process ends: nothing can take it over."""

    # -- check -------------------------------------------------------------------------------
    def check(self, *, overwrite: bool, resume: bool) -> None:
        """What already exists at the destinations may be replaced; :class:`OutputError` if not."""
        for out in self.outputs:
            check_lock_name(out)
            if not (out.exists() or out.is_symlink()):
                continue
            if not (overwrite or resume):
                raise OutputError(f"{out}: already exists; pass overwrite to replace it",
                                  params=("overwrite",))
            check_replaceable(out, "destination")
        if self.path.exists() and not is_tileseg_staging(self.path):
            empty = self.path.is_dir() and not any(self.path.iterdir())
            if not empty:
                raise OutputError(
                    f"{self.path}: is in the way of this run's staging folder and was not written "
                    "by tileseg (no run.json); move it away or choose another destination")

    # -- lock --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold every destination's run lock (exit 75 while another run writes one)."""
        with contextlib.ExitStack() as stack:
            for out in self.outputs:
                stack.enter_context(exclusive_run(out))
            yield

    # -- resume ------------------------------------------------------------------------------
    def finished(self, fingerprint: str) -> bool:
        """For ``--resume``: True when the destination is already published by this same job;
        :class:`OutputError` when it holds another job's output (or one that recorded none)."""
        if self.path.exists() or not self.dst.exists():
            return False
        if recorded_fingerprint(self.dst) != fingerprint:
            raise OutputError(
                f"{self.dst}: already holds a finished mask made from other inputs or options "
                "(or by a tileseg too old to record them), so resume cannot continue it; pass "
                "overwrite to replace it, or choose another destination",
                params=("resume", "overwrite"))
        return True

    def prepare(self, fingerprint: str, *, resume: bool, overwrite: bool,
                facts: dict[str, Any], create: Callable[[LocalStaging], None],
                on_resume: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Make the staging folder ready; True when an interrupted run is continued.

        ``create`` fills a fresh folder (the Zarr store, the work folders); ``facts`` are stored
        with the fingerprint in ``run.json`` and handed back to ``on_resume`` on a resume, before
        the fingerprints are compared (so it can refuse a changed source in its own words).

        ``run.json`` is written first (``"ready": false``) and marked ready once ``create`` is
        done, so whatever a run killed at any moment leaves is provably tileseg's: a folder
        whose record is not ready holds nothing computed yet and is started over.
        """
        if self.path.exists():
            recorded = read_run_record(self.run_file)
            if recorded is not None and recorded.get("ready", True):
                if resume_recorded(str(self.path), recorded, fingerprint, resume=resume,
                                   overwrite=overwrite, on_resume=on_resume):
                    return True
                self.check(overwrite=True, resume=False)  # again, under the lock
            else:  # killed (or out of space) before its first chunk: nothing to keep
                self.check(overwrite=True, resume=False)  # ours (its record) or empty
                logger.info("%s: left by a run that stopped before any work; starting over",
                            self.path)
            self._remove()
        record = {"fingerprint": fingerprint, **facts}
        # nothing computed yet: a full disk here leaves no staging folder, and a rerun (with
        # or without resume) starts afresh once there is room
        with full_disk_as_error(self.dst.absolute().parent, resumable=True,
                                cleanup=[self.path]):
            self.path.mkdir()
            self._write_json(self.run_file, {**record, "ready": False})
            create(self)
            self._write_json(self.run_file, {**record, "ready": True})
        return False

    def _remove(self) -> None:
        """Delete the staging folder, its run record last: a removal cut short still leaves
        a folder that is provably tileseg's."""
        if self.path.is_dir() and not self.path.is_symlink():
            for child in self.path.iterdir():
                if child != self.run_file:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            self.run_file.unlink(missing_ok=True)
            self.path.rmdir()
        elif self.path.exists() or self.path.is_symlink():
            self.path.unlink()

    def note(self, facts: dict[str, Any]) -> None:
        """Add ``facts`` to the run record (what a later ``--resume`` is handed)."""
        try:
            recorded = json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError):
            return  # no record: nothing a resume could continue
        self._write_json(self.run_file, {**recorded, **facts})

    # -- publish -----------------------------------------------------------------------------
    def publish(self, built: Path, zarr_too: bool) -> None:
        """Move ``built`` (a file or store inside the staging folder) to ``dst`` and, when
        ``zarr_too``, the staged Zarr mosaic to ``zarr_path``; then remove the staging folder.

        An existing destination is checked again (a run that finished meanwhile, a user who put
        something there) and replaced only if tileseg wrote it.
        """
        self._replace(built, self.dst)
        if zarr_too and self.zarr_path is not None:
            self._replace(self.zarr_store, self.zarr_path)
        self.discard()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._remove()

    def _replace(self, tmp: Path, dst: Path) -> None:
        if not (dst.exists() or dst.is_symlink()):
            os.replace(tmp, dst)
            return
        check_replaceable(dst, "destination")
        if not dst.is_dir() and not tmp.is_dir():
            os.replace(tmp, dst)  # one atomic step: readers see the old file or the new one
            return
        # A directory cannot be swapped in one step: park the old output inside the staging
        # folder (same filesystem), so an interruption between the two renames leaves it with
        # the staging folder, never deleted before the new one is in place.
        parked = self.path / f"replaced-{dst.name}"
        os.replace(dst, parked)
        os.replace(tmp, dst)
        if parked.is_dir():
            shutil.rmtree(parked)
        else:
            parked.unlink()

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        # a full disk names the destination's folder, as the rest of the staging's writes do
        with atomic_file(path, folder=self.dst.absolute().parent, resumable=True) as tmp:
            tmp.write_text(json.dumps(data))


def resume_recorded(where: str, recorded: dict[str, Any], fingerprint: str, *, resume: bool,
                    overwrite: bool,
                    on_resume: Callable[[dict[str, Any]], None] | None) -> bool:
    """What to do with the staging of an interrupted run whose ``recorded`` run record is ready,
    on a disk or a store alike: True to continue it (``resume``, the same fingerprint), False to
    start over (``overwrite``); a one-line error otherwise."""
    if resume:
        if on_resume is not None:  # first: a changed source is named as such
            on_resume(recorded)
        if recorded.get("fingerprint") != fingerprint:
            raise RunError(f"{where}: left by a run with other inputs or options; rerun with the "
                           "same ones, or pass overwrite to start over", params=("overwrite",))
        return True
    if not overwrite:
        raise OutputError(f"{where}: an interrupted run is in the way; pass resume to continue "
                          "it or overwrite to start over", params=("resume", "overwrite"))
    return False


def read_run_record(path: Path) -> dict[str, Any] | None:
    """The run record (``run.json``) of a staging folder, None when absent or not one."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and "fingerprint" in recorded else None
