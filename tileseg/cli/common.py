"""Helpers shared by the CLI commands: logging set-up and error mapping."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from tileseg.errors import TilesegError

F = TypeVar("F", bound=Callable[..., Any])


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
    # GDAL/rasterio chatter is not the user's business unless asked for.
    logging.getLogger("rasterio").setLevel(max(level, logging.WARNING))


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


def handle_errors(func: F) -> F:
    """Turn a TilesegError into ``Error: message`` on stderr and its exit code; no traceback.

    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal), each with one line.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_interrupt():
                return func(*args, **kwargs)
        except TilesegError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            stopped = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
            click.echo(f"{stopped}; the output was not completed (use --resume to continue).",
                       err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)

    return wrapper  # type: ignore[return-value]


def verbosity_options(func: F) -> F:
    func = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return func
