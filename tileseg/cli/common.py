"""Helpers shared by the CLI commands: logging set-up and error mapping."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from tileseg.cli.options import cli_message, verbosity_options  # noqa: F401 (re-exported)
from tileseg.errors import InputError, TilesegError
from tileseg.logs import flag_handlers, quiet_libraries, route_warnings

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("tileseg.cli")


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    # libraries' logging (GDAL's notices, pyogrio's driver remarks, dask's shutdown chatter):
    # shown with -v, never on their own
    quiet_libraries(logging.WARNING if verbose else logging.CRITICAL)
    flag_handlers()  # "tile_size 600 is larger than the raster" says --tile-size here
    # A Python warning prints two lines (where it was raised, and the source line); as a log
    # record it is one, and one from a library shows only with -v.
    route_warnings(logger)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so a stop takes the same clean path: the chunks in
    flight finish (or their temporary files are dropped), staging stays resumable."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # Kubernetes and Slurm stop a job with SIGTERM (then SIGKILL after a grace period); Python's
    # default would end the process at once, mid-write. Signal handlers live in the main thread.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def printable(text: str) -> str:
    """``text`` with file names that are not valid UTF-8 shown as ``\\xff`` escapes, so a message
    naming such a file prints instead of raising UnicodeEncodeError."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# What a stopped command left, and what continues it: only predict has --resume.
STOPPED_HINT = "the output was not completed; run the command again"
RESUME_HINT = "the output was not completed (use --resume to continue)"


def handle_errors(func: F | None = None, *, stopped: str = STOPPED_HINT) -> Any:
    """Turn a TilesegError into ``Error: message`` on stderr and its exit code; no traceback.

    A missing dependency becomes a DependencyError (exit 6) naming the package, and a file name
    GDAL cannot take (not valid UTF-8) an input error, whichever library call found it.
    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal), each with one line that says what
    continues the command (``stopped``; use as ``@handle_errors(stopped=...)``).
    """
    if func is None:
        return functools.partial(handle_errors, stopped=stopped)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_interrupt():
                return func(*args, **kwargs)
        except TilesegError as exc:
            _fail(exc)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] == "tileseg":
                raise  # a broken install of tileseg itself: the traceback is the report
            from tileseg.deps import missing_dependency

            _fail(missing_dependency(exc))
        except UnicodeEncodeError as exc:
            if "surrogates" not in str(exc):
                raise
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
            _fail(InputError(f"a file name is not valid UTF-8 (it contains {printable(bad)}); "
                             "GDAL needs UTF-8 file names: rename the file"))
        except ValueError as exc:  # dask refusing its configuration file as it imports
            from tileseg.deps import dask_config_error

            error = dask_config_error(exc)
            if error is None:
                raise
            _fail(error)
        except Exception as exc:
            from tileseg.outputs.diskspace import disk_full_error, is_disk_full

            if not is_disk_full(exc):
                raise  # a bug: the traceback is the report
            # a write no library call turned into its own message (they name their folder)
            filename = getattr(exc, "filename", None)
            folder = (os.path.dirname(os.path.abspath(os.fsdecode(filename))) if filename
                      else "a folder this command writes")
            _fail(disk_full_error(folder, resumable=False))
        except KeyboardInterrupt as exc:
            how = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
            click.echo(f"{how}; {stopped}.", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)

    return wrapper  # type: ignore[return-value]


def _fail(exc: TilesegError) -> None:
    click.echo(f"Error: {printable(cli_message(exc))}", err=True)
    sys.exit(exc.exit_code)


