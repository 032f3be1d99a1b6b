"""``tileseg train IMAGE LABELS --out DIR --classes a,b,...``."""

from __future__ import annotations

import sys
from typing import Any

import click

from tileseg.choices import (
    CLASS_WEIGHTINGS,
    FLIPS,
    HOLDOUT_SIDES,
    OUTPUT_STRIDES,
    SAVE_DTYPES,
    ClassWeighting,
    Flips,
    HoldoutSide,
    OutputStride,
    SaveDtype,
)
from tileseg.cli.common import configure_logging, handle_errors, verbosity_options
from tileseg.cli.options import choice_option, int_list, overwrite_option
from tileseg.cli.render import clock

EPILOG = """\b
Examples:
  tileseg train landsat.tif strata.tif --out models/lc --classes developed,agriculture,\\
herbaceous,shrubland,forest,water,sediment --class-values 1,2,3,4,5,6,7 --crop-size 256 \\
--encoder-weights imagenet
  tileseg train image.tif buildings.geojson --class-attribute class --background-class 0 \\
--classes background,building --out models/buildings
  tileseg train a.tif a_labels.tif --extra b.tif b_labels.tif --val c.tif c_labels.tif \\
--classes bg,water --out models/water --architecture pspnet --encoder resnet34
"""


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",")) if value else None


def _colors(ctx: click.Context, param: click.Parameter,
            value: str | None) -> tuple[tuple[int, int, int], ...] | None:
    if not value:
        return None
    from tileseg.models.metadata import parse_color

    try:
        return tuple(parse_color(v.strip(), i) for i, v in enumerate(value.split(",")))
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; give #rrggbb colours separated by commas") from None


def _float_pair(ctx: click.Context, param: click.Parameter,
                value: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give two numbers, e.g. 0.5,2.0") from None
    return low, high


class _Renderer:
    """One line per epoch with loss and holdout metrics, and within an epoch the steps with an
    estimate of the time left: a live line on a terminal, else a line at the first step and
    at each tenth of the epoch (an epoch of a CPU run takes minutes)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        left = f", about {clock(event.eta)} left" if event.eta is not None else ""
        if event.kind == "step":
            line = (f"epoch {event.epoch}/{event.epochs} step {event.step}/{event.steps} loss "
                    f"{event.loss:.4f} [{event.seconds:.0f} s{left}]")
            if self.tty:
                click.echo(f"\r{line}", nl=False, err=True)
            elif _tenth(event.step, event.steps):
                click.echo(line, err=True)
            return
        m = event.metrics
        prefix = "\r" if self.tty else ""
        left = left if event.epoch < event.epochs else ""
        click.echo(f"{prefix}epoch {event.epoch}/{event.epochs} loss {event.loss:.4f} holdout "
                   f"mIoU {m.mean_iou:.4f} pixel acc {m.pixel_accuracy:.4f} "
                   f"[{event.seconds:.0f} s{left}]{' best, saved' if event.best else ''}",
                   err=True)


def _tenth(step: int, steps: int) -> bool:
    """The first step of an epoch, and each step that completes another tenth of it (not the
    last: the epoch's own line follows)."""
    return step < steps and (step == 1 or step * 10 // steps != (step - 1) * 10 // steps)


@click.command(epilog=EPILOG)
@click.argument("image")
@click.argument("labels")
@click.option("--out", "-o", "out_dir", required=True, help="Model directory to write.")
@click.option("--classes", required=True, callback=_names, help="Class names in id order.")
@click.option("--class-values", callback=int_list,
              help="Label value of each class (default 0,1,2,...).")
@click.option("--colors", callback=_colors, help="#rrggbb colour of each class.")
@click.option("--class-attribute", help="Vector labels: field holding the class value or name.")
@click.option("--background-class", type=int,
              help="Vector labels: class id where no polygon is (default: ignored).")
@click.option("--extra", nargs=2, multiple=True, metavar="IMAGE LABELS",
              help="Another training image with its labels (repeatable).")
@click.option("--val", nargs=2, multiple=True, metavar="IMAGE LABELS",
              help="Validation image with labels (repeatable); default: a holdout strip.")
@choice_option("holdout.side", HOLDOUT_SIDES, name="holdout_side", default="left",
               show_default=True, help="Side of each image held out.")
@click.option("--holdout-fraction", type=float, default=0.25, show_default=True,
              help="Fraction of each image held out for validation.")
@click.option("--bands", callback=int_list, help="1-based image bands, e.g. 1,2,3.")
@click.option("--band-names", callback=_names, help="Names of the bands, stored in metadata.")
@click.option("--architecture", default="DeepLabV3Plus", show_default=True,
              help="DeepLabV3Plus, DeepLabV3 or PSPNet.")
@click.option("--encoder", "encoder_name", default="tu-efficientnet_lite0", show_default=True,
              help="smp encoder name.")
@click.option("--encoder-weights", default="none", show_default=True,
              help="none (random), imagenet (EfficientNet-Lite0; fetch it once first with "
              "`tileseg sample efficientnet-lite0`), or a state-dict file.")
@choice_option("encoder_output_stride", OUTPUT_STRIDES, help="DeepLab output stride.")
@click.option("--crop-size", type=int, default=513, show_default=True,
              help="Training crop side in pixels.")
@click.option("--scale-range", callback=_float_pair, default="0.5,2.0", show_default=True,
              help="Random scale range.")
@choice_option("flips", FLIPS, default="dihedral", show_default=True,
               help="Augmentation: left-right flips, or all flips/90° turns.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--steps-per-epoch", type=int, default=50, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--aux-weight", type=float, default=0.4, show_default=True,
              help="PSPNet auxiliary loss weight.")
@choice_option("class_weighting", CLASS_WEIGHTINGS, default="none", show_default=True,
              help="Loss weight per class from its training-pixel frequency (rare classes count "
              "more; capped at 10x).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--no-amp", is_flag=True, help="No mixed precision on GPU.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--deterministic", is_flag=True, help="Deterministic torch algorithms.")
@choice_option("save_dtype", SAVE_DTYPES, default="float32", show_default=True,
               help="Dtype of the stored weights.")
@click.option("--description", default="", help="Model description stored in metadata.")
@overwrite_option("Replace an existing model directory.")
@verbosity_options
@handle_errors(stopped="train has no --resume: --out keeps the best epoch saved so far, if one "
               "finished (predict can use it); run the command again with --overwrite to "
               "start over")
def command(image: str, labels: str, out_dir: str, classes: tuple[str, ...],
            class_values: tuple[int, ...] | None, colors: tuple[tuple[int, int, int], ...] | None,
            class_attribute: str | None, background_class: int | None,
            extra: tuple[tuple[str, str], ...], val: tuple[tuple[str, str], ...],
            holdout_side: HoldoutSide, holdout_fraction: float, bands: tuple[int, ...] | None,
            band_names: tuple[str, ...] | None, architecture: str, encoder_name: str,
            encoder_weights: str, encoder_output_stride: OutputStride | None, crop_size: int,
            scale_range: tuple[float, float], flips: Flips, batch_size: int, epochs: int,
            steps_per_epoch: int, learning_rate: float, weight_decay: float, aux_weight: float,
            class_weighting: ClassWeighting, device: str, no_amp: bool, seed: int,
            deterministic: bool, save_dtype: SaveDtype,
            description: str, overwrite: bool, verbose: int, quiet: bool) -> None:
    """Train a segmentation model on IMAGE with LABELS (a label raster on the same grid, or a
    vector file with --class-attribute) and write a model directory that predict loads."""
    from tileseg.training import Holdout, TrainConfig, TrainSource, train

    configure_logging(verbose, quiet)

    def source(img: str, lab: str) -> TrainSource:
        return TrainSource(img, lab, class_attribute=class_attribute, indexes=bands)

    config = TrainConfig(
        sources=(source(image, labels), *(source(i, lab) for i, lab in extra)),
        out_dir=out_dir, class_names=classes, class_colors=colors or (),
        class_values=class_values, background_class=background_class,
        val_sources=tuple(source(i, lab) for i, lab in val),
        holdout=Holdout(holdout_side, holdout_fraction),
        band_names=band_names or (), architecture=architecture, encoder_name=encoder_name,
        encoder_weights=None if encoder_weights == "none" else encoder_weights,
        encoder_output_stride=encoder_output_stride,
        crop_size=crop_size, scale_range=scale_range,
        flips=flips,
        batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
        learning_rate=learning_rate, weight_decay=weight_decay, aux_weight=aux_weight,
        class_weighting=class_weighting,
        device=device, amp=not no_amp, seed=seed, deterministic=deterministic,
        save_dtype=save_dtype,
        description=description, overwrite=overwrite,
    )
    result = train(config, progress=_Renderer(quiet))
    if not quiet:
        click.echo(f"{result.out_dir}: best epoch {result.best_epoch}, holdout mIoU "
                   f"{result.metrics.mean_iou:.4f}, {result.seconds / 60:.1f} min", err=True)
