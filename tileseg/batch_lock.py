"""The lock of a scheduled batch: cron or a timer firing while the previous run of the same job
is still going makes the new run stop at once (exit 75, "try again later") instead of running
the same scenes twice.

The lock is an ``flock`` on a file the job names (``lock`` of
:class:`~tileseg.batch.BatchConfig`): the kernel releases it when the holder exits, however it
ends, so a killed run never leaves a stale lock behind. The file holds the holder's process id,
for a person looking.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from tileseg.errors import DestinationBusyError, OutputError


@contextmanager
def batch_lock(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` body (None: no lock).

    Raises
    ------
    DestinationBusyError
        Another process holds it (exit 75: schedulers read it as "retry later").
    OutputError
        The lock file cannot be opened (its folder is missing or not writable).
    """
    if path is None:
        yield
        return
    try:
        handle = open(path, "a+")  # noqa: SIM115 - closed below, after the body
    except OSError as exc:
        raise OutputError(f"{os.fspath(path)}: cannot open the lock file ({exc.strerror}); "
                          "choose a lock path in a writable folder", params=("lock",)) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DestinationBusyError(f"another run holds {os.fspath(path)}; nothing to do"
                                       ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
