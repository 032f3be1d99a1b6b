"""Helpers shared by the CLI commands: logging set-up and error mapping."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
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


def handle_errors(func: F) -> F:
    """Turn a TilesegError into ``Error: message`` on stderr and its exit code; no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TilesegError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; the output was not completed (use --resume to continue).",
                       err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def verbosity_options(func: F) -> F:
    func = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return func
