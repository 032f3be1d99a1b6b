"""The ``tileseg`` command group."""

from __future__ import annotations

import importlib

import click

from tileseg import __version__

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
}


class _LazyGroup(click.Group):
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
