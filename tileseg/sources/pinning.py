"""What a run reads is pinned: the source as the run found it, checked again after every chunk.

A raster replaced while a run reads it (an object overwritten on a store, a file rewritten in
place) would give a mask whose chunks come from two versions. The run records the version it
opened (:class:`SourceVersion`: a remote object's ETag, or Last-Modified, and size; a local
file's size and modification time, for every file GDAL reads for it, a VRT's sources and
sidecars included) and each chunk task compares the source with it once its reads are done
(:func:`check_unchanged`), so a chunk that may have read a changed source is never saved.
``--resume`` compares it too (:mod:`tileseg.pipeline`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from tileseg.errors import SourceChangedError, SourceUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileStamp:
    """One file or object as found: ``modified`` is ``mtime_ns`` for a file, the
    Last-Modified header for an object; ``etag`` only for objects that send one."""

    path: str
    size: int | None
    modified: int | str | None
    etag: str | None = None

    def change_from(self, before: FileStamp) -> str | None:
        """What changed from ``before`` to this, in words; None when nothing did."""
        name = os.path.basename(self.path.rstrip("/")) or self.path
        if before.etag != self.etag:  # an object's own word for its version comes first
            return f"{name}: ETag was {before.etag}, now {self.etag}"
        if before.size != self.size and before.size is not None and self.size is not None:
            return f"{name}: size was {before.size} bytes, now {self.size}"
        if self.etag is not None:
            return None  # the same content (an object uploaded again as it was) is no change
        if before.modified != self.modified:
            if isinstance(self.modified, int) and isinstance(before.modified, int):
                return (f"{name}: modified at {_ns(self.modified)}, was "
                        f"{_ns(before.modified)}")
            return f"{name}: Last-Modified was {before.modified}, now {self.modified}"
        return None


def _ns(mtime_ns: int) -> str:
    seconds, ns = divmod(mtime_ns, 10**9)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(seconds))}.{ns // 10**6:03d}"


@dataclass(frozen=True)
class SourceVersion:
    """Every file a raster is read from, as a run found it."""

    files: tuple[FileStamp, ...]

    def change_from(self, before: SourceVersion) -> str | None:
        """What changed since ``before`` (the first difference, in words), or None."""
        was = {f.path: f for f in before.files}
        for stamp in self.files:
            old = was.pop(stamp.path, None)
            if old is None:
                return f"{os.path.basename(stamp.path)}: now read, not before"
            change = stamp.change_from(old)
            if change:
                return change
        if was:
            return f"{os.path.basename(next(iter(was)))}: no longer there"
        return None

    def same_sizes(self, other: SourceVersion) -> bool:
        return ({f.path: f.size for f in self.files} == {f.path: f.size for f in other.files})

    def to_record(self) -> list[dict[str, Any]]:
        return [{"path": f.path, "size": f.size, "modified": f.modified, "etag": f.etag}
                for f in self.files]

    @classmethod
    def from_record(cls, record: Any) -> SourceVersion | None:
        """The version a run record holds; None for a record without one (older tileseg)."""
        if not isinstance(record, list):
            return None
        try:
            return cls(tuple(FileStamp(str(r["path"]), r.get("size"), r.get("modified"),
                                       r.get("etag")) for r in record))
        except (KeyError, TypeError):
            return None


def stamp_file(path: str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(path, st.st_size, st.st_mtime_ns)


def stamp_object(path: str) -> FileStamp | None:
    """The object's version from one fresh request; None when the store did not answer (or
    the GDAL library could not be reached)."""
    import rasterio

    from tileseg.sources.gdal_native import http_headers
    from tileseg.sources.remote import gdal_options, vsi_path

    with rasterio.Env(**gdal_options(path)):
        headers = http_headers(vsi_path(path))
    if not headers:
        return None
    size: int | None = None
    total = headers.get("content-range", "").rpartition("/")[2]
    length = headers.get("content-length", "")
    if total.isdigit():
        size = int(total)
    elif length.isdigit() and not headers.get("content-range"):
        size = int(length)
    etag = headers.get("etag") or None
    version = headers.get("x-amz-version-id") or headers.get("x-goog-generation")
    return FileStamp(path, size, headers.get("last-modified"), etag if not version
                     else f"{etag} (version {version})")


def current_version(path: str, files: tuple[str, ...] = ()) -> SourceVersion | None:
    """The version of raster ``path`` now: the object (one request) for a remote raster, the
    file and ``files`` (the others GDAL reads for it, or every band file of a stack, local or
    remote: a request each) for the rest. None when a store did not answer, or when there is
    nothing to stamp (an in-memory dataset)."""
    from tileseg.sources.remote import is_http

    stamps = []
    for name in dict.fromkeys((path, *files)):
        if is_http(name):
            stamp = stamp_object(name)
            if stamp is None:
                return None  # the store did not answer: no version rather than half a one
        else:
            stamp = stamp_file(name)  # None for a name that is no file (a stack's label)
        if stamp is not None:
            stamps.append(stamp)
    return SourceVersion(tuple(stamps)) if stamps else None


def check_unchanged(path: str, pinned: SourceVersion | None) -> None:
    """Raise :class:`SourceChangedError` (exit 2) when the source no longer is ``pinned``, and
    :class:`SourceUnavailableError` (exit 5) when its store does not answer the check."""
    if pinned is None:
        return
    from tileseg.sources.remote import RequestPolicy, is_http

    files = tuple(f.path for f in pinned.files)
    if not any(is_http(name) for name in (path, *files)):
        now = current_version(path, files)
    else:
        policy = RequestPolicy.from_environment()
        now, tries = None, 0
        for tries in policy.tries():  # noqa: B007 - the count is told after the loop
            now = current_version(path, files)
            if now is not None:
                break
        if now is None:
            from tileseg.sources.datasets import why_unreadable

            raise SourceUnavailableError(
                f"{path}: the store did not serve the source's version after {tries} tries "
                f"({why_unreadable(path)}); rerun with resume once it serves it again",
                params=("resume",))
    change = now.change_from(pinned) if now is not None else "it is gone"
    if change:
        raise SourceChangedError(
            f"{path}: changed while this run read it ({change}), so chunks could mix two "
            "versions; nothing was published: rerun with overwrite to start over on the "
            "current source", params=("overwrite",))
