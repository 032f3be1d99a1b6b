"""Local writes: whole or not at all (:func:`atomic_file`), and a full disk or quota as one line
naming the folder, never a traceback.

Every local write of a run goes through :func:`full_disk_as_error`: the staging folder (spills,
done markers, Zarr chunks, ``run.json``), the GeoTIFF/COG pass, the style sidecars, polygon
layers, previews, reports and batch summaries, and the temporary files that are uploaded to a
store (in ``TMPDIR``). "No space left on device" (ENOSPC) or "disk quota exceeded" (EDQUOT)
becomes :class:`~tileseg.errors.DiskFullError` naming the folder and what to do, after what
the write left half done is removed.

Python, numpy and zarr writes raise ``OSError`` with the errno. GDAL's do not: libtiff prints
the reason (``_tiffWriteProc: No space left on device.``) straight to file descriptor 2 and
GDAL raises "Write error at scanline ..."; OGR's writers say "Cannot write feature" or worse.
So a GDAL write runs under :func:`gdal_stderr`, which keeps libtiff's lines off the terminal
(the one-line rule) and hands them to the check, and a GDAL failure also counts as a full
disk when its folder has almost no space left at that moment (``gdal=True``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from tileseg.errors import DiskFullError, TilesegError

logger = logging.getLogger(__name__)

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# what the libraries say when they dropped the errno on the way (GDAL, SQLite under OGR)
FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "database or disk is full")
# below this much free space, a GDAL write that failed is taken for one that found the disk full
LOW_SPACE_BYTES = 1 << 20
# libtiff's own error lines (module "_tiffWriteProc", "_tiffSeekProc", ...): GDAL's message and
# ours say it in one line
_LIBTIFF_PREFIX = "_tiff"


def is_disk_full(exc: BaseException, folder: str | os.PathLike[str] | None = None, *,
                 gdal: bool = False, native: str = "") -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota.

    ``native``: what GDAL printed to file descriptor 2 meanwhile (:func:`gdal_stderr`). With
    ``gdal``, a failure while ``folder`` has less than :data:`LOW_SPACE_BYTES` free counts too
    (GDAL's errors carry no errno).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return True
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        if any(text in str(current) for text in FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    if any(text in native for text in FULL_TEXTS):
        return True
    return gdal and folder is not None and free_bytes(folder) < LOW_SPACE_BYTES


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use in ``folder``'s file system (a large number
    when that cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return sys.maxsize


def disk_full_error(folder: str | os.PathLike[str], *, resumable: bool,
                    temporary: bool = False) -> DiskFullError:
    """The one-line error of a full ``folder``: what is full and what to do.

    ``resumable``: the run kept its finished work and continues with ``resume`` (exit 5);
    otherwise nothing was written (exit 4). ``temporary``: ``folder`` is the temporary folder
    (``TMPDIR``) that files for a store pass through.
    """
    where = os.fspath(folder)
    what = f"{where} (the temporary folder, TMPDIR)" if temporary else where
    free = "free space there" + (" or point TMPDIR to a folder with room" if temporary else "")
    then = ("then rerun with resume to continue where the run stopped" if resumable
            else "then run again")
    return DiskFullError(f"{what}: no space left on the device (the disk or your quota is "
                         f"full); {free}, {then}", params=("resume",) if resumable else (),
                         folder=where, resumable=resumable)


def _remove(paths: Iterable[str | os.PathLike[str]]) -> None:
    for path in paths:
        target = Path(path)
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        except OSError:  # what cannot be removed now is removed by the next run's cleanup
            logger.debug("could not remove %s", target, exc_info=True)


@contextlib.contextmanager
def full_disk_as_error(folder: str | os.PathLike[str], *, resumable: bool,
                       cleanup: Iterable[str | os.PathLike[str]] = (), gdal: bool = False,
                       temporary: bool = False) -> Iterator[None]:
    """Run a write into ``folder``; a full disk or quota becomes :func:`disk_full_error`
    (``cleanup`` removed first: files or folders the write may have left half done).

    Other errors pass through unchanged, as does a :class:`DiskFullError` already raised
    deeper (it names the folder that was written). ``gdal``: the write goes through GDAL
    (see :func:`is_disk_full`); GDAL's stderr is then captured here as :func:`gdal_stderr`
    does.
    """
    native: list[str] = []
    try:
        with gdal_stderr(native) if gdal else contextlib.nullcontext():
            yield
    except DiskFullError:
        _remove(cleanup)
        raise
    except TilesegError:
        raise
    except Exception as exc:
        if not is_disk_full(exc, folder, gdal=gdal, native="".join(native)):
            raise
        logger.debug("no space left in %s", folder, exc_info=True)
        _remove(cleanup)
        # no cause attached: the error crosses process boundaries and is the whole story
        raise disk_full_error(folder, resumable=resumable, temporary=temporary) from None


@contextlib.contextmanager
def atomic_file(final: Path, *, resumable: bool = False, gdal: bool = False,
                temporary: Path | None = None,
                folder: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """How tileseg writes every local file: into a temporary name beside ``final`` (one file
    system, so the rename is atomic), renamed over ``final`` when the ``with`` body ends
    without an error; otherwise removed, and ``final`` is as it was. A reader sees the old
    file or the new one, never half of one.

    A full disk or quota is one line (:func:`~tileseg.outputs.diskspace.full_disk_as_error`)
    naming ``folder`` (default: ``final``'s). ``temporary`` names the temporary file (default:
    hidden, per process and thread: ``.NAME.PID.THREAD.tmp.SUFFIX``, the suffix kept for
    writers that go by it).
    """
    tmp = temporary or final.with_name(
        f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp{final.suffix}")
    try:
        with full_disk_as_error(folder if folder is not None else final.absolute().parent,
                                resumable=resumable, gdal=gdal, cleanup=[tmp]):
            yield tmp
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_folder() -> str:
    """The folder Python's ``tempfile`` writes to (``TMPDIR``, else the system's)."""
    return tempfile.gettempdir()


@contextlib.contextmanager
def gdal_stderr(captured: list[str]) -> Iterator[None]:
    """Keep libtiff's error lines (which it prints to file descriptor 2 itself, not through
    GDAL's error handler) in ``captured`` instead of on the terminal; anything else written
    to the descriptor meanwhile is passed on when the block ends.

    Only the main thread redirects (the descriptor belongs to the whole process); elsewhere
    this does nothing. Nothing is written to disk on the way: a pipe drained by a thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (a GUI, a closed stream)
        yield
        return
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while data := os.read(read_end, 65536):
            chunks.append(data)

    reader = threading.Thread(target=drain, name="tileseg-gdal-stderr", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer is gone: the reader sees its end
        os.close(saved)
        # unless a process started meanwhile inherited the pipe: then go on with what came
        reader.join(timeout=5)
        if not reader.is_alive():
            os.close(read_end)
        text = b"".join(chunks).decode("utf-8", "replace")
        passed: list[str] = []
        for line in text.splitlines(keepends=True):
            (captured if line.startswith(_LIBTIFF_PREFIX) else passed).append(line)
        if passed:
            with contextlib.suppress(OSError):
                os.write(2, "".join(passed).encode("utf-8", "replace"))
