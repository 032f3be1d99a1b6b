"""Exception hierarchy.

Every error a user can cause derives from :class:`TilesegError` *and* from the builtin exception
that matches it, so library callers can catch either. Messages are one line and say what to do.
"""

from __future__ import annotations


class TilesegError(Exception):
    """Base class of every tileseg error; its message is shown to the user as it is."""

    exit_code: int = 1


class InputError(TilesegError, ValueError):
    """A raster, mask or label file that cannot be used as it is."""

    exit_code = 2


class InputNotFoundError(TilesegError, FileNotFoundError):
    """An input path that does not exist."""

    exit_code = 2


class ModelError(TilesegError, ValueError):
    """A model file or model directory that cannot be loaded, or does not fit the raster."""

    exit_code = 3


class OutputError(TilesegError, OSError):
    """A destination that cannot be written (exists, read-only, unknown format)."""

    exit_code = 4


class ConfigError(TilesegError, ValueError):
    """An option value that is out of range or inconsistent with another one."""

    exit_code = 2


class RunError(TilesegError, RuntimeError):
    """A run that failed part-way (a task, a worker, an unreadable block); it can be resumed."""

    exit_code = 5


class DamagedInputError(InputError, RunError):
    """An input that opened fine but fails to read part-way (truncated, corrupt block, a VRT
    source gone): a bad input (exit 2), not a failed run, though finished chunks stay resumable
    once the file is repaired."""

    exit_code = 2


class DestinationBusyError(TilesegError, RuntimeError):
    """Another run is writing the same destination now; try again once it has finished."""

    exit_code = 75  # EX_TEMPFAIL: schedulers read it as "retry later"


class DependencyError(TilesegError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""

    exit_code = 6
