"""Option parsers shared by commands."""

from __future__ import annotations

import click


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Parse ``"3,2,1"`` into ``(3, 2, 1)``."""
    if value is None or value == "":
        return None
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
