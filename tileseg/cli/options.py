"""Option parsers shared by commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tileseg.errors import TilesegError, flag_for, flagged_message  # noqa: F401

F = TypeVar("F", bound=Callable[..., Any])

def cli_message(exc: TilesegError) -> str:
    """``exc``'s message as the CLI shows it: parameters written as their flags."""
    return flagged_message(exc)


def scheduler_option(help: str | None = None) -> Callable[[F], F]:
    """``--scheduler``, read from ``$TILESEG_SCHEDULER`` when not given."""
    return click.option(
        "--scheduler", envvar="TILESEG_SCHEDULER",
        help=help or ("threads, sync, or a dask.distributed address (tcp://host:8786). Default: "
                      "$TILESEG_SCHEDULER, else tileseg.scheduler in dask's config, else threads."))


def overwrite_option(help: str = "Replace an existing output.") -> Callable[[F], F]:
    return click.option("--overwrite", is_flag=True, help=help)


def verbosity_options(func: F) -> F:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return func


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Parse ``"3,2,1"`` into ``(3, 2, 1)``."""
    if value is None or value == "":
        return None
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
