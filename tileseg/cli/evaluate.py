"""``tileseg evaluate PRED LABELS``."""

from __future__ import annotations

import json

import click

from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import int_list

EPILOG = """\b
Examples:
  tileseg evaluate landcover.tif strata.tif    # label values from the model's training
  tileseg evaluate mask.tif labels.tif --label-values 1,2,3,4,5,6,7
  tileseg evaluate mask.tif labels.tif --json > metrics.json
  tileseg evaluate mask.tif labels.tif --window 0,0,443,122
"""


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",")) if value else None


@click.command(epilog=EPILOG)
@click.argument("pred")
@click.argument("labels")
@click.option("--classes", callback=_names,
              help="Class names in id order (default: the names predict wrote into PRED).")
@click.option("--num-classes", type=int, help="Number of classes when PRED has no class list.")
@click.option("--label-values", callback=int_list,
              help="Label raster value of each class id, e.g. 1,2,3 (default: the values PRED's "
              "classes recorded from training, else the ids).")
@click.option("--window", callback=int_list,
              help="Score only row_off,col_off,height,width (e.g. a holdout strip).")
@click.option("--block-size", type=int, default=1024, show_default=True,
              help="Pixels per side of each streamed window.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbosity_options
@handle_errors
def command(pred: str, labels: str, classes: tuple[str, ...] | None, num_classes: int | None,
            label_values: tuple[int, ...] | None, window: tuple[int, ...] | None,
            block_size: int, as_json: bool, verbose: int, quiet: bool) -> None:
    """Score the predicted mask PRED against the label raster LABELS (same grid): pixel
    accuracy, mean class accuracy, mean IoU, frequency-weighted IoU, per-class IoU and the
    confusion matrix. Nodata pixels of either raster are left out."""
    from tileseg.errors import ConfigError
    from tileseg.evaluation import EvaluateConfig, evaluate

    configure_logging(verbose, quiet)
    if window is not None and len(window) != 4:
        raise ConfigError("--window takes four numbers: row_off,col_off,height,width")
    config = EvaluateConfig(
        predicted=pred, labels=labels, class_names=classes, num_classes=num_classes,
        label_values=label_values,
        window=None if window is None else (window[0], window[1], window[2], window[3]),
        block_size=block_size,
    )
    report = evaluate(config)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.table())
