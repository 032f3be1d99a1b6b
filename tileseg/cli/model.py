"""``tileseg model info|export-stac MODEL``: what tileseg reads of a model, and an MLM item."""

from __future__ import annotations

import json

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import overwrite_option, plain_weights_options

EPILOG = """\b
MODEL is any model predict takes: an smp folder, a TorchGeo .ckpt, a .pt/.pth/.safetensors
state dict (with its network in a tileseg.json beside it, or --architecture/--encoder), an
.onnx file (with a tileseg.json or MLM item beside it), or a STAC MLM item.
"""


@click.group(epilog=EPILOG)
def command() -> None:
    """Inspect a model, or describe it as a STAC Machine Learning Model item."""


@command.command(epilog=EPILOG)
@click.argument("model")
@plain_weights_options()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (snake_case keys).")
@verbosity_options
@handle_errors
def info(model: str, architecture: str | None, encoder_name: str | None, as_json: bool,
         verbose: int, quiet: bool) -> None:
    """What tileseg read of MODEL and from where: format, network, bands, normalization,
    classes, input size and multiple, and the engines it runs on.

    \b
    Example:
      tileseg model info epoch=9.ckpt
    """
    from tileseg.inference.describe import describe_model
    from tileseg.models.formats import load_model

    configure_logging(verbose, quiet)
    facts = describe_model(load_model(model, architecture=architecture,
                                      encoder_name=encoder_name))
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    norm = facts["normalization"]
    guessed = "none given: scaled by the raster's dtype (uint8 /255, 16/32-bit /10000)"
    rows = [
        ("source", facts["source"]),
        ("format", facts["format_name"]),
        ("files", ", ".join(facts["files"])),
        ("architecture", facts["architecture"]
         + (f" (encoder {facts['encoder_name']})" if facts["encoder_name"] else "")),
        ("bands", f"{facts['in_channels']}" + (f": {', '.join(facts['bands'])}"
                                                if facts["bands"] else "")),
        ("dtype", facts["dtype"] or "any"),
        ("normalization", guessed if norm["guessed"] else
         ", ".join(f"{k} {'/'.join(f'{v:g}' for v in norm[k])}"
                   for k in ("scale", "offset", "mean", "std"))),
        ("classes", f"{len(facts['classes'])}: {', '.join(facts['classes'])}"
         + (" (binary: sigmoid > 0.5)" if facts["binary"] else "")),
        ("input", facts["input"]),
        ("engines", ", ".join(facts["engines"])),
    ]
    click.echo("model:")
    for key, value in rows:
        click.echo(f"  {key:<16} {value}")
    click.echo("read from:")
    for key, value in facts["read_from"].items():
        click.echo(f"  {key:<16} {value}")


@command.command("export-stac", epilog=EPILOG)
@click.argument("model")
@click.argument("item", type=click.Path(dir_okay=False))
@plain_weights_options()
@overwrite_option(help="Replace an item tileseg wrote before.")
@verbosity_options
@handle_errors
def export_stac(model: str, item: str, architecture: str | None, encoder_name: str | None,
                overwrite: bool, verbose: int, quiet: bool) -> None:
    """Write a STAC item (Machine Learning Model extension v1.5.2) describing MODEL to ITEM;
    predict then takes ITEM as its model.

    \b
    Example:
      tileseg model export-stac epoch=9.ckpt model.json
      tileseg predict scene.tif mask.tif -m model.json
    """
    from tileseg.models.formats import load_model
    from tileseg.outputs.stac_item import export_stac as export

    configure_logging(verbose, quiet)
    loaded = load_model(model, architecture=architecture, encoder_name=encoder_name)
    path = export(loaded, item, overwrite=overwrite)
    if not quiet:
        click.echo(f"{path}: MLM item of {loaded.source}", err=True)
