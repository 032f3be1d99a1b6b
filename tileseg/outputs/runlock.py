"""One run per destination: an advisory lock file beside the output while a run writes it.

Two runs writing the same destination (a cron job that fires while the previous one still
runs, two people with ``--overwrite``) would delete or overwrite each other's staging. The lock
is an ``flock`` on ``DST.lock``: the kernel releases it when the holding process ends, however it
ends, so a crashed run never leaves a stale lock behind. The file is removed on release; a
process that locked a file which was removed meanwhile retries on the new one. A file by that
name that tileseg did not write (anything but a lock record, or empty: a run killed between
creating and writing it) is left alone and the run refused: its owner decides.

``flock`` is per host on most network filesystems: runs from different machines writing the same
destination are not excluded (schedule such jobs so they cannot overlap).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tileseg.errors import DestinationBusyError, OutputError, RunError
from tileseg.outputs.diskspace import disk_full_error, is_disk_full

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not excluded there
    fcntl = None  # type: ignore[assignment]


def lock_path_for(dst: Path) -> Path:
    return dst.with_name(dst.name + LOCK_SUFFIX)


@contextlib.contextmanager
def exclusive_run(dst: Path) -> Iterator[None]:
    """Hold the lock of ``dst`` for the ``with`` body; :class:`DestinationBusyError` (exit 75) if
    another run holds it."""
    if fcntl is None:
        logger.debug("no fcntl on this platform: %s is not locked", dst)
        yield
        return
    path = lock_path_for(dst)
    fd = _acquire(path, dst)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, dst: Path) -> int:
    for _ in range(10):
        if path.is_symlink():  # a lock is never a link: writing through one changes its target
            raise OutputError(_foreign(path, dst))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(path.absolute().parent, resumable=False) from None
            raise OutputError(f"{path}: cannot create the run lock ({exc.strerror}); check that "
                              "the destination folder is writable") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise DestinationBusyError(
                f"{dst}: another tileseg run ({holder}) is writing it; wait for that run to "
                "finish or stop it, then run again"
            ) from None
        # the previous holder may have removed the file between our open and our flock
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                _refuse_unless_ours(path, dst, os.pread(fd, 4096, 0), os.fstat(fd).st_nlink)
            except OutputError:
                os.close(fd)
                raise
            try:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"tileseg_lock": 1, "pid": os.getpid(),
                                         "host": socket.gethostname(),
                                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
            except OSError as exc:  # a full disk: no lock, and no lock file left behind
                with contextlib.suppress(OSError):
                    path.unlink()
                os.close(fd)
                if is_disk_full(exc):
                    raise disk_full_error(path.absolute().parent, resumable=False) from None
                raise
            return fd
        os.close(fd)
    raise RunError(f"{path}: could not take the run lock; another run keeps replacing it")


def check_lock_name(dst: Path) -> None:
    """Before any work: :class:`OutputError` (exit 4) when ``DST.lock`` exists and is not a
    tileseg lock, which the run would otherwise meet only when it takes the lock."""
    path = lock_path_for(dst)
    if path.is_symlink():
        raise OutputError(_foreign(path, dst))
    try:
        with open(path, "rb") as handle:
            content = handle.read(4096)
            links = os.fstat(handle.fileno()).st_nlink
    except OSError:  # absent; or a folder, unreadable: taking the lock says what is wrong
        return
    _refuse_unless_ours(path, dst, content, links)


def _refuse_unless_ours(path: Path, dst: Path, content: bytes, links: int) -> None:
    """:class:`OutputError` unless the lock file holds a lock record and has no other name
    (a second hard link is somebody's file under another name too)."""
    if links > 1 or not is_lock_record(content):
        raise OutputError(_foreign(path, dst))


def _foreign(path: Path, dst: Path) -> str:
    return (f"{path}: this file is not a tileseg run lock, and a run writing {dst.name} needs "
            "that name; move the file away or choose another destination")


def is_lock_record(content: bytes) -> bool:
    """True for what a run lock holds: nothing yet (just created), or tileseg's JSON record
    (now marked; earlier versions wrote pid, host and since alone)."""
    if not content:
        return True
    try:
        record = json.loads(content)
    except ValueError:
        return False
    return isinstance(record, dict) and (
        record.get("tileseg_lock") == 1 or set(record) == {"pid", "host", "since"})


def _read(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "unknown process"
