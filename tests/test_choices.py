"""tileseg.choices: each fixed choice set is declared once, and the CLI, the configs, the
dispatch tables and batch manifests all read that declaration."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import click
import pytest

from tileseg import choices
from tileseg.choices import (
    BLEND_WINDOWS,
    OUTPUT_FORMATS,
    PRECISIONS,
    RESAMPLING_METHODS,
    TTA_MODES,
    VECTOR_FORMATS,
    check_choices,
)
from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, InputError, flagged_message

# every choice set: its name in tileseg.choices -> its values
SETS = {name: values for name, values in vars(choices).items()
        if name.isupper() and isinstance(values, tuple)}


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}  # type: ignore[misc]


def _subcommands(command: click.Command) -> list[click.Command]:
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        return [c for name in command.list_commands(ctx)
                if (c := command.get_command(ctx, name)) is not None]
    return [command]


def test_every_set_is_a_literal_alias_and_its_tuple() -> None:
    for name, values in SETS.items():
        aliases = [v for v in vars(choices).values()
                   if typing.get_origin(v) is typing.Literal and typing.get_args(v) == values]
        assert aliases, f"{name} is not read from a Literal alias"


def test_every_click_choice_is_a_declared_set() -> None:
    declared = {tuple(str(v) for v in values) for values in SETS.values()}
    seen = 0
    for command in _commands().values():
        for sub in _subcommands(command):
            for param in sub.params:
                if isinstance(param.type, click.Choice):
                    seen += 1
                    assert tuple(param.type.choices) in declared, (sub.name, param.name)
    assert seen >= 15  # predict, batch, vectorize, preview and train all have some


def test_predict_and_batch_take_the_declared_values() -> None:
    ctx = click.Context(cli)
    for name in ("predict", "batch"):
        command = cli.get_command(ctx, name)
        assert command is not None
        options = {p.name: p for p in command.params}
        for param, values in (("engine", choices.ENGINES), ("precision", PRECISIONS),
                              ("tta", TTA_MODES), ("blend", BLEND_WINDOWS),
                              ("format", OUTPUT_FORMATS),
                              ("probabilities", choices.PROBABILITY_MODES),
                              ("encoder_output_stride", choices.OUTPUT_STRIDES)):
            assert tuple(options[param].type.choices) == tuple(str(v) for v in values), param


def test_dispatch_tables_hold_exactly_the_declared_values() -> None:
    import rasterio.enums

    from tileseg.inference import device, tta
    from tileseg.outputs.mask_files import _EXTENSIONS as RASTER_EXTENSIONS
    from tileseg.tiling import blend
    from tileseg.vectorization.writers import _EXTENSIONS as VECTOR_EXTENSIONS

    assert tuple(blend.WINDOWS) == BLEND_WINDOWS
    assert tuple(tta._TRANSFORMS) == TTA_MODES
    assert tuple(device._AUTOCAST) == PRECISIONS
    assert set(VECTOR_EXTENSIONS.values()) == set(VECTOR_FORMATS)
    assert set(RASTER_EXTENSIONS.values()) <= set(OUTPUT_FORMATS)
    assert set(RESAMPLING_METHODS) <= set(rasterio.enums.Resampling.__members__)


def test_predict_config_checks_every_choice_field_against_its_set() -> None:
    checked = {name for name, _ in choices._choice_fields(PredictConfig)}
    assert {"format", "blend", "precision", "encoder_output_stride", "probabilities", "engine",
            "tta"} == checked
    for name, values in choices._choice_fields(PredictConfig):
        for value in values:
            PredictConfig("a.tif", "b.tif", **{name: value})  # every declared value is taken
        with pytest.raises(ConfigError) as info:
            PredictConfig("a.tif", "b.tif", **{name: "bogus"})
        words = choices.choice_words([v for v in values if v is not None])
        assert str(info.value) == f"{name} 'bogus': choose {words}"
        assert info.value.params == (name,)


def test_a_format_outside_the_set_is_refused_by_the_config() -> None:
    # before, only writing the output found it (exit 4), after the model and raster were read
    with pytest.raises(ConfigError, match=r"format 'png': choose gtiff, cog or zarr"):
        PredictConfig("a.tif", "b.tif", format="png")  # type: ignore[arg-type]


def test_every_config_checks_its_choice_fields() -> None:
    from tileseg.preview import PreviewConfig
    from tileseg.training.config import Holdout
    from tileseg.vectorization import VectorizeConfig

    for make, field in ((lambda v: VectorizeConfig(min_area_unit=v), "min_area_unit"),
                        (lambda v: VectorizeConfig(connectivity=v), "connectivity"),
                        (lambda v: PreviewConfig(areas=v), "areas"),
                        (lambda v: Holdout(side=v), "holdout.side")):
        with pytest.raises(ConfigError, match=rf"^{field} 'bogus': choose ") as info:
            make("bogus")
        assert info.value.params == (field,)
        assert flagged_message(info.value).startswith("--")  # each has its command-line flag


def test_check_choices_takes_none_only_where_the_field_does() -> None:
    @dataclasses.dataclass(frozen=True)
    class Settings:
        required: choices.Precision = "auto"
        optional: choices.Precision | None = None

    check_choices(Settings())
    with pytest.raises(ConfigError, match="required None: choose auto"):
        check_choices(Settings(required=None))  # type: ignore[arg-type]


def test_a_manifest_option_outside_its_set_names_the_manifest_and_the_choices(
        tmp_path: Path) -> None:
    from tileseg.batch import load_manifest

    manifest = tmp_path / "m.yaml"
    manifest.write_text("- {src: a.tif, dst: b.tif, tta: rot45}\n"
                        "- {src: c.tif, dst: d.tif, format: png}\n")
    with pytest.raises(InputError, match=r"scene 1: --tta 'rot45': choose none, flips or d4"):
        load_manifest(manifest)
    manifest.write_text("- {src: c.tif, dst: d.tif, format: png}\n")
    with pytest.raises(InputError, match=r"scene 1: --format 'png': choose gtiff, cog or zarr"):
        load_manifest(manifest)
