"""Library errors name parameters; the CLI and batch manifests show them as flags."""

from __future__ import annotations

import pickle

import pytest
from click.testing import CliRunner

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, flag_for, flagged_message


def test_library_message_names_the_parameter() -> None:
    with pytest.raises(ConfigError) as info:
        PredictConfig("a.tif", "b.tif", tile_size=8)
    assert str(info.value).startswith("tile_size must be at least 16")
    assert "--" not in str(info.value) and info.value.params == ("tile_size",)
    assert flagged_message(info.value).startswith("--tile-size must be at least 16")


def test_params_survive_pickling_across_workers() -> None:
    exc = pickle.loads(pickle.dumps(ConfigError("encoder_output_stride must be 8 or 16",
                                                params=("encoder_output_stride",))))
    assert flagged_message(exc) == "--output-stride must be 8 or 16"


def test_only_whole_parameter_names_become_flags() -> None:
    exc = ConfigError("size 9: give a picture side from 64; sizes and tile_size stay", params=("size",))
    assert flagged_message(exc) == "--size 9: give a picture side from 64; sizes and tile_size stay"
    assert flag_for("zarr_path") == "--zarr" and flag_for("chunk_size") == "--chunk-size"


def test_cli_shows_the_flag(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                                      "--tile-size", "8"])
    assert result.exit_code == 2
    assert "Error: --tile-size must be at least 16, got 8" in result.output
