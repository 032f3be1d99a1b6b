"""The ``tileseg`` command group."""

from __future__ import annotations

import importlib
from typing import Any

import click

from tileseg._version import __version__

# Each module defines a click command named ``command``; listed here so `tileseg --help` is fast
# to build and a missing optional feature fails only when used.
_COMMANDS = {
    "predict": "tileseg.cli.predict",
    "info": "tileseg.cli.info",
    "vectorize": "tileseg.cli.vectorize",
    "preview": "tileseg.cli.preview",
    "batch": "tileseg.cli.batch",
    "train": "tileseg.cli.train",
    "evaluate": "tileseg.cli.evaluate",
    "sample": "tileseg.cli.sample",
    "model": "tileseg.cli.model",
}


class _UsageError(click.UsageError):
    """A usage error shown as two lines: the error and where help is, not the usage block."""

    def show(self, file: Any = None) -> None:
        hint = ""
        if self.ctx is not None and self.ctx.help_option_names:
            names = self.ctx.help_option_names
            option = "--help" if "--help" in names else names[0]
            hint = f"Try '{self.ctx.command_path} {option}' for help."
        click.echo(f"Error: {self.format_message()}", err=True, file=file)
        if hint:
            click.echo(hint, err=True, file=file)


def _compact(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _UsageError | click.exceptions.NoArgsIsHelpError):
        return exc  # already compact, or help asked for by giving no arguments
    return _UsageError(exc.format_message(), exc.ctx)


class _LazyGroup(click.Group):
    # Click shows a usage error as the usage line, a hint, a blank line and the error; a user
    # needs the error and the hint only (and scripts parsing stderr one line).
    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _compact(exc) from None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                # GDAL takes UTF-8 names only: refuse here, not as a traceback deep in rasterio
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                raise _UsageError(f"{shown} is not valid UTF-8; GDAL needs UTF-8 file names: "
                                  "rename the file", ctx) from None
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _compact(exc) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = _COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command: click.Command = module.command
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tileseg")
def cli() -> None:
    """Seam-free tiled semantic segmentation of huge geospatial rasters."""


if __name__ == "__main__":
    cli()
