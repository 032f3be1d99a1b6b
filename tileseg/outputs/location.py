"""Where tileseg writes: one :class:`Location` type, a path on a disk or an object on a store.

:func:`location` parses what the user wrote (``out/mask.tif``, ``s3://bucket/run/mask.zarr``)
once; everything else calls the location's methods and never asks which kind it is:

=====================  =======================================  ========================================
method                 on a disk (:class:`LocalLocation`)       on a store (:class:`StoreLocation`)
=====================  =======================================  ========================================
``exists``             a file or folder                         an object, or objects under the prefix
``read_text``          the file, bounded                        the object, bounded
``writing``            a temporary name beside it, a rename     a local temporary file, one upload
``replacing``          ``writing``, over tileseg's file only    one upload conditional on the checked one
``check_replaceable``  absent, or overwrite and tileseg's mark  the same, read from a downloaded copy
``lock``               ``flock`` on ``DST.lock``                a lease lock object ``DST.lock``
``zarr_store``         the path                                 zarr's obstore-backed store
=====================  =======================================  ========================================

A run's staging (:meth:`Location.staging`) and the per-chunk work directory
(:func:`tileseg.outputs.workdir.open_work_dir`) are chosen the same way, inside this package.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tileseg.errors import (
    ConfigError,
    DiskFullError,
    InputError,
    InputNotFoundError,
    OutputError,
    TilesegError,
)
from tileseg.outputs.diskspace import (
    atomic_file,
    disk_full_error,
    full_disk_as_error,
    temporary_folder,
)
from tileseg.outputs.paths import check_output_folder, writable_folder
from tileseg.outputs.runlock import check_lock_name, exclusive_run
from tileseg.outputs.staging import LocalStaging, Staging
from tileseg.outputs.store import (
    StoreLock,
    StoreURL,
    check_lock_object,
    is_store_url,
    put_bytes,
    upload_file,
    zarr_store,
)
from tileseg.outputs.store_objects import (
    OwnedCheck,
    check_object_destination,
    check_store_answers,
    is_store_zarr,
    output_exists,
    read_text_object,
    upload_checked,
    version_stamp,
)
from tileseg.outputs.store_staging import StoreStaging
from tileseg.sources.remote import is_remote


class Location(ABC):
    """A place tileseg reads back or writes: see the module docstring.

    ``text`` is the place as the user wrote it; messages name it so.
    """

    text: str

    def __str__(self) -> str:
        return self.text

    # -- names -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        """The last part of the path or key (``mask.tif``)."""

    @abstractmethod
    def sibling(self, suffix: str) -> Location:
        """This place with ``suffix`` appended: ``DST.lock``, ``DST.partial``."""

    @abstractmethod
    def with_name(self, name: str) -> Location:
        """The place called ``name`` beside this one."""

    @abstractmethod
    def with_suffix(self, suffix: str) -> Location:
        """This place with its extension replaced (``mask.tif`` -> ``mask.qml``)."""

    @abstractmethod
    def child(self, name: str) -> Location:
        """``name`` (a relative path; ``..`` resolved on a store) under this folder or prefix."""

    @property
    @abstractmethod
    def parent(self) -> Location:
        """The folder or prefix holding this place."""

    @property
    @abstractmethod
    def address(self) -> str:
        """This place as every process finds it: an absolute path, or the URL."""

    def local_file(self) -> Path | None:
        """The file at this place when it is one on this machine's disk (to measure, hash or
        read with a library that takes paths), else None."""
        return None

    # -- before any work ---------------------------------------------------------------------
    def require_name(self, what: str = "destination", *,
                     params: tuple[str, ...] = ()) -> Location:
        """``self``; on a store, :class:`OutputError` (exit 4) for a bucket root, which has no
        key to write beside (``KEY.lock``, ``KEY.partial/``)."""
        return self

    def check_folder(self, what: str = "output", *, params: tuple[str, ...] = ()) -> None:
        """The folder that will hold this place exists and is writable (on a store, the bucket
        is probed when the output is checked)."""
        return None

    def check_answers(self) -> None:
        """On a store: the bucket answers and takes writes, else :class:`ConfigError` (exit 2,
        the user's setup). Nothing to do on a disk."""
        return None

    def make_parent(self) -> None:
        """The folder this place goes into, made with its parents on a disk (``mkdir -p``;
        ``OSError`` when it cannot be); a prefix on a store needs no making."""
        return None

    @abstractmethod
    def make_folder(self, what: str, *, params: tuple[str, ...] = ()) -> None:
        """This place as a folder that outputs go into: made with its parents on a disk
        (``mkdir -p``); on a store a prefix needs no making, so the bucket is probed."""

    @abstractmethod
    def check_replaceable(self, *, overwrite: bool, owned: OwnedCheck, foreign: str,
                          what: str = "destination", params: tuple[str, ...] = (),
                          foreign_params: tuple[str, ...] | None = None) -> None:
        """Before any work, for a single-file output: what is there may be replaced, that is,
        nothing is, or ``overwrite`` is given and ``owned`` proves tileseg wrote it (else
        :class:`OutputError`, exit 4, with the ``foreign`` message, naming ``foreign_params``:
        by default ``overwrite`` and ``params``). ``what`` and ``params`` name the place in the
        other messages (``"report path"``, ``("report",)``)."""

    @abstractmethod
    def check_lock_name(self) -> None:
        """Before any work: nothing but a tileseg lock sits at ``DST.lock`` (exit 4)."""

    # -- reading -----------------------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool:
        """A file or folder; an object, or objects under the prefix."""

    @abstractmethod
    def read_text(self, limit: int = 1 << 20) -> str | None:
        """The text (UTF-8) when it exists and is at most ``limit`` bytes, else None."""

    @abstractmethod
    def read_document(self, limit: int, what: str) -> str:
        """The text of a small document a user handed over (a manifest, a STAC item), at most
        ``limit`` bytes: :class:`InputNotFoundError` when it is not there, :class:`InputError`
        when it cannot be read or is larger, each one line naming it as ``what``."""

    @abstractmethod
    def stamp(self) -> Any:
        """A token that changes when the output is rewritten (a file's mtime, an ETag)."""

    @abstractmethod
    def is_zarr(self) -> bool:
        """Whether this is a Zarr group (a folder; a prefix with a root ``zarr.json``)."""

    @abstractmethod
    def zarr_store(self, *, read_only: bool = False) -> Any:
        """What ``zarr.open_group`` takes for this place."""

    # -- writing -----------------------------------------------------------------------------
    @abstractmethod
    def writing(self, *, resumable: bool = False, gdal: bool = False,
                temporary: Path | None = None) -> contextlib.AbstractContextManager[Path]:
        """A local file to write; when the ``with`` body ends without an error it becomes this
        place whole, in one step (a rename, one upload), else it is removed and nothing
        changes. A full disk is one line naming the folder (``resumable``: the run keeps its
        work; ``gdal``: GDAL writes it, see :mod:`tileseg.outputs.diskspace`). ``temporary``
        names the local file on a disk (a sweepable name); a store always uses ``TMPDIR``."""

    def write_text(self, text: str, *, resumable: bool = False) -> None:
        """Write ``text`` (UTF-8) whole or not at all, over whatever is there (records and
        files tileseg already proved its own)."""
        with self.writing(resumable=resumable) as local:
            local.write_text(text, encoding="utf-8")

    def write_bytes(self, data: bytes, *, resumable: bool = False) -> None:
        """:meth:`write_text` for bytes."""
        with self.writing(resumable=resumable) as local:
            local.write_bytes(data)

    @abstractmethod
    def replacing(self, *, owned: OwnedCheck, foreign: str, overwrite: bool = True,
                  resumable: bool = False, gdal: bool = False, what: str = "destination",
                  params: tuple[str, ...] = (), foreign_params: tuple[str, ...] | None = None,
                  temporary: Path | None = None,
                  ) -> contextlib.AbstractContextManager[Path]:
        """:meth:`writing` for an output that may replace a file: what is there is checked
        again (:meth:`check_replaceable`) right before it is replaced; on a store the upload
        is conditional on the checked version, so nothing put there meanwhile is lost."""

    @abstractmethod
    def lock(self, *, sweep: Callable[[Path], object] | None = None,
             ) -> contextlib.AbstractContextManager[None]:
        """One writer at a time (exit 75 while another holds it). ``sweep``: on a disk, called
        with the path once the lock is held, to remove what writers that died left beside it
        (an upload to a store appears whole or not at all: it leaves nothing to sweep)."""

    # -- a run's staging ---------------------------------------------------------------------
    @abstractmethod
    def staging(self, zarr_path: str | None = None, *, zarr_dst: bool = False) -> Staging:
        """Where a predict run writing this destination stages its work and how it publishes
        (:mod:`tileseg.outputs.staging`); ``zarr_path``, where the Zarr mosaic is also kept, is
        on the same kind of place (else :class:`ConfigError`, exit 2)."""


def location(place: str | os.PathLike[str] | Location) -> Location:
    """The :class:`Location` of ``place``: an object on a store for ``s3://``, ``gs://`` and
    ``az://`` URLs, else a path on a disk.

    Examples
    --------
    >>> type(location("out/mask.tif")).__name__, type(location("s3://b/mask.tif")).__name__
    ('LocalLocation', 'StoreLocation')
    """
    if isinstance(place, Location):
        return place
    text = os.fspath(place)
    return StoreLocation(text) if is_store_url(text) else LocalLocation(text)


# ------------------------------------------------------------------------------------------
# On a disk
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LocalLocation(Location):
    """A path on a local or shared disk (see :class:`Location`)."""

    text: str

    @property
    def path(self) -> Path:
        return Path(self.text)

    @property
    def name(self) -> str:
        return self.path.name

    def sibling(self, suffix: str) -> LocalLocation:
        return LocalLocation(str(self.path.with_name(self.path.name + suffix)))

    def with_name(self, name: str) -> LocalLocation:
        return LocalLocation(str(self.path.with_name(name)))

    def with_suffix(self, suffix: str) -> LocalLocation:
        return LocalLocation(str(self.path.with_suffix(suffix)))

    def child(self, name: str) -> LocalLocation:
        return LocalLocation(str(self.path / name))

    @property
    def parent(self) -> LocalLocation:
        return LocalLocation(str(self.path.absolute().parent))

    @property
    def address(self) -> str:
        return str(self.path.absolute())

    def local_file(self) -> Path | None:
        return self.path if self.path.is_file() else None

    def check_folder(self, what: str = "output", *, params: tuple[str, ...] = ()) -> None:
        check_output_folder(self.text, what, params=params)

    def make_folder(self, what: str, *, params: tuple[str, ...] = ()) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.text}: cannot create the output folder ({exc.strerror}); "
                              f"choose a writable {what}", params=params) from exc
        if not writable_folder(self.path):  # else every output in it would fail alike
            raise OutputError(f"{self.text}: the output folder is not writable; choose a "
                              f"writable {what}", params=params)

    def check_replaceable(self, *, overwrite: bool, owned: OwnedCheck, foreign: str,
                          what: str = "destination", params: tuple[str, ...] = (),
                          foreign_params: tuple[str, ...] | None = None) -> None:
        self.check_folder(what, params=params)
        path = self.path
        if not (path.exists() or path.is_symlink()):
            return
        if path.is_dir() and not path.is_symlink():
            raise OutputError(f"{path}: is a directory; choose a file name as the {what}",
                              params=params)
        if not overwrite:
            raise OutputError(f"{path}: already exists; pass overwrite to replace it",
                              params=("overwrite",))
        if path.is_symlink():
            raise OutputError(f"{path}: is a symbolic link; tileseg does not replace links or "
                              f"what they point to; remove it or choose another {what}",
                              params=params)
        if not owned(path):
            raise OutputError(foreign, params=_foreign_params(params, foreign_params))

    def check_lock_name(self) -> None:
        check_lock_name(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def read_text(self, limit: int = 1 << 20) -> str | None:
        try:
            if not self.path.is_file() or self.path.stat().st_size > limit:
                return None
            return self.path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return None

    def read_document(self, limit: int, what: str) -> str:
        if not self.path.is_file():
            raise InputNotFoundError(f"{self.text}: no such {what} file; check the path")
        try:
            data = _read_at_most(self.path, limit + 1)
            if len(data) > limit:
                raise InputError(f"{self.text}: the {what} is over {limit >> 20} MiB; split it")
            return data.decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.text}: cannot read the {what} ({exc})") from exc

    def stamp(self) -> Any:
        """The modification time and size (of a Zarr's root ``zarr.json``, which every write
        of the group rewrites); None for a URL GDAL reads."""
        if is_remote(self.text):
            return None
        root = self.path / "zarr.json"
        st = os.stat(root if self.path.is_dir() and root.exists() else self.path)
        return [st.st_mtime_ns, st.st_size]

    def make_parent(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def is_zarr(self) -> bool:
        return self.path.is_dir()

    def zarr_store(self, *, read_only: bool = False) -> Any:
        return self.text

    def writing(self, *, resumable: bool = False, gdal: bool = False,
                temporary: Path | None = None) -> contextlib.AbstractContextManager[Path]:
        return atomic_file(self.path, resumable=resumable, gdal=gdal, temporary=temporary)

    @contextlib.contextmanager
    def replacing(self, *, owned: OwnedCheck, foreign: str, overwrite: bool = True,
                  resumable: bool = False, gdal: bool = False, what: str = "destination",
                  params: tuple[str, ...] = (), foreign_params: tuple[str, ...] | None = None,
                  temporary: Path | None = None) -> Iterator[Path]:
        with self.writing(resumable=resumable, gdal=gdal, temporary=temporary) as tmp:
            yield tmp
            # again: the work took a while, and someone may have put a file there meanwhile
            self.check_replaceable(overwrite=overwrite, owned=owned, foreign=foreign,
                                   what=what, params=params, foreign_params=foreign_params)

    @contextlib.contextmanager
    def lock(self, *, sweep: Callable[[Path], object] | None = None) -> Iterator[None]:
        with exclusive_run(self.path):
            if sweep is not None:
                sweep(self.path)
            yield

    def staging(self, zarr_path: str | None = None, *, zarr_dst: bool = False) -> Staging:
        if zarr_path and is_store_url(zarr_path):
            raise ConfigError(f"zarr_path {zarr_path}: on a store while DST is local; write both "
                              "to the store or both locally", params=("zarr_path",))
        return LocalStaging(self.path, Path(zarr_path) if zarr_path else None)


# ------------------------------------------------------------------------------------------
# On an object store
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StoreLocation(Location):
    """An object (or a prefix: a Zarr group, a folder of outputs) on a store (see
    :class:`Location` and :mod:`tileseg.outputs.store_objects`)."""

    text: str

    @property
    def url(self) -> StoreURL:
        return StoreURL.parse(self.text.rstrip("/"))

    @property
    def name(self) -> str:
        return PurePosixPath(self.url.key).name

    def sibling(self, suffix: str) -> StoreLocation:
        return StoreLocation(self.text.rstrip("/") + suffix)

    def with_name(self, name: str) -> StoreLocation:
        return StoreLocation(f"{self.text.rstrip('/').rsplit('/', 1)[0]}/{name}")

    def with_suffix(self, suffix: str) -> StoreLocation:
        head, _, name = self.text.rstrip("/").rpartition("/")
        return StoreLocation(f"{head}/{PurePosixPath(name).with_suffix(suffix)}")

    def child(self, name: str) -> StoreLocation:
        scheme, _, rest = self.text.rstrip("/").partition("://")
        return StoreLocation(f"{scheme}://{posixpath.normpath(posixpath.join(rest, name))}")

    @property
    def parent(self) -> StoreLocation:
        return StoreLocation(self.text.rstrip("/").rsplit("/", 1)[0])

    @property
    def address(self) -> str:
        return self.text

    def require_name(self, what: str = "destination", *,
                     params: tuple[str, ...] = ()) -> StoreLocation:
        StoreURL.parse(self.text).require_key(what, params=params)
        return self

    def check_answers(self) -> None:
        check_store_answers(self.text.rstrip("/"))

    def make_folder(self, what: str, *, params: tuple[str, ...] = ()) -> None:
        self.check_answers()  # a missing bucket: exit 2, before any output is attempted

    def check_replaceable(self, *, overwrite: bool, owned: OwnedCheck, foreign: str,
                          what: str = "destination", params: tuple[str, ...] = (),
                          foreign_params: tuple[str, ...] | None = None) -> None:
        self.require_name(what, params=params)
        check_object_destination(self.text, overwrite=overwrite, owned=owned, foreign=foreign,
                                 params=_foreign_params(params, foreign_params))

    def check_lock_name(self) -> None:
        check_lock_object(self.sibling(".lock").url)

    def exists(self) -> bool:
        return output_exists(self.text)

    def read_text(self, limit: int = 1 << 20) -> str | None:
        return read_text_object(self.text, limit=limit)

    def read_document(self, limit: int, what: str) -> str:
        try:
            text = read_text_object(self.text, limit=limit)
        except TilesegError:
            raise
        except Exception as exc:  # the store's own error: one line naming the document
            raise InputError(f"{self.text}: cannot read the {what} ("
                             f"{' '.join(str(exc).split())[:200]}); check the URL, the "
                             "credentials and AWS_ENDPOINT_URL") from None
        if text is None:
            raise InputNotFoundError(f"{self.text}: no such {what} object (or over "
                                     f"{limit >> 20} MiB); check the URL")
        return text.removeprefix("\ufeff")

    def stamp(self) -> Any:
        return version_stamp(self.text)

    def is_zarr(self) -> bool:
        return is_store_zarr(self.text)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        return zarr_store(self.text, read_only=read_only)

    @contextlib.contextmanager
    def writing(self, *, resumable: bool = False, gdal: bool = False,
                temporary: Path | None = None) -> Iterator[Path]:
        with _scratch_file(self.name, resumable=resumable, gdal=gdal) as local:
            yield local
            upload_file(local, self.url)  # the object appears whole (multipart completes last)

    @contextlib.contextmanager
    def replacing(self, *, owned: OwnedCheck, foreign: str, overwrite: bool = True,
                  resumable: bool = False, gdal: bool = False, what: str = "destination",
                  params: tuple[str, ...] = (), foreign_params: tuple[str, ...] | None = None,
                  temporary: Path | None = None) -> Iterator[Path]:
        with _scratch_file(self.name, resumable=resumable, gdal=gdal) as local:
            yield local
            state = check_object_destination(self.text, overwrite=overwrite, owned=owned,
                                             foreign=foreign, probe=False,
                                             params=_foreign_params(params, foreign_params))
            upload_checked(local, state, owned=owned, foreign=foreign)

    def write_bytes(self, data: bytes, *, resumable: bool = False) -> None:
        put_bytes(self.url, data)  # one PUT: the object appears whole or not at all

    def write_text(self, text: str, *, resumable: bool = False) -> None:
        self.write_bytes(text.encode("utf-8"), resumable=resumable)

    @contextlib.contextmanager
    def lock(self, *, sweep: Callable[[Path], object] | None = None) -> Iterator[None]:
        with StoreLock(self.sibling(".lock").url):
            yield

    def staging(self, zarr_path: str | None = None, *, zarr_dst: bool = False) -> Staging:
        if zarr_path and not is_store_url(zarr_path):
            raise ConfigError(f"zarr_path {zarr_path}: local while DST is on a store; give a "
                              "store URL for zarr_path too", params=("zarr_path",))
        return StoreStaging(self.text, zarr_path, zarr_dst=zarr_dst)


def _foreign_params(params: tuple[str, ...],
                    foreign_params: tuple[str, ...] | None) -> tuple[str, ...]:
    return ("overwrite", *params) if foreign_params is None else foreign_params


def _read_at_most(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``path``, read in pieces (one large read of a pseudo-file, as
    under /proc, can fail for its size alone)."""
    parts: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
        while size < limit and (part := f.read(min(1 << 20, limit - size))):
            parts.append(part)
            size += len(part)
    return b"".join(parts)


@contextlib.contextmanager
def _scratch_file(name: str, *, resumable: bool, gdal: bool) -> Iterator[Path]:
    """A local file named ``name`` in a temporary folder of ``TMPDIR``, removed afterwards; a
    full ``TMPDIR`` is one line naming it (whatever folder the writer's error named)."""
    scratch = temporary_folder()
    try:
        with full_disk_as_error(scratch, resumable=resumable, gdal=gdal, temporary=True), \
                tempfile.TemporaryDirectory(prefix="tileseg-upload-") as folder:
            yield Path(folder) / (name or "object")
    except DiskFullError as exc:  # the writer named its temporary file's folder: say TMPDIR
        if exc.folder == scratch:
            raise
        raise disk_full_error(scratch, resumable=resumable, temporary=True) from None

