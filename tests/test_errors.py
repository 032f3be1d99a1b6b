"""Library errors name parameters; the CLI and batch manifests show them as flags."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import random_image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, ModelError, OutputError, flag_for, flagged_message


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


def test_flags_leave_file_names_and_counts_alone() -> None:
    exc = ModelError("out/bands/x.tif: has 7 bands but the model takes 3; choose 3 of its 7 bands "
                     "with bands (e.g. bands 1,2,3); see bands.json", params=("bands",))
    assert flagged_message(exc) == ("out/bands/x.tif: has 7 bands but the model takes 3; choose 3 "
                                    "of its 7 bands with --bands (e.g. --bands 1,2,3); see "
                                    "bands.json")


# -- no library message spells a flag --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent / "tileseg"
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
# a command line to run (a tileseg command, pip) may carry its own options, up to the clause's end
COMMAND_LINE = re.compile(r"(?:\btileseg (?:predict|vectorize|evaluate|train|batch|info|preview|"
                          r"sample)\b|\bpip install\b|\bpython -m\b)[^;]*$")
# Log lines a user reads (warnings, and with -v info) name parameters too, with
# ``extra=log_params(...)`` (``warn_once(..., params=...)``), which the CLI shows as flags; a
# debug line is for developers.
LOGGING = {"debug"}


def cli_flags() -> set[str]:
    """Every ``--flag`` of every tileseg command."""
    ctx = click.Context(cli)
    flags: set[str] = set()
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if isinstance(param, click.Option):
                flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return flags


def library_modules() -> list[Path]:
    """Library modules: not the CLI, nor ``tileseg.workflows`` (a command line with its own
    argparse flags), nor errors.py (which maps parameters to flags)."""
    return [p for p in sorted(ROOT.rglob("*.py"))
            if "cli" not in p.relative_to(ROOT).parts and p.name not in ("workflows.py", "errors.py")]


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_library_messages_name_parameters_not_flags() -> None:
    """Every string a library module builds (error messages, the hints helpers pass into them,
    log lines but debug ones) names parameters; docstrings aside, none spells a tileseg flag."""
    flags = cli_flags()
    assert {"--overwrite", "--resume", "--zarr", "--bands", "--engine"} <= flags
    found = []
    for path in library_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                    and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)):
                skip.add(id(body[0].value))  # a docstring speaks to both audiences
            if isinstance(node, ast.Call) and _call_name(node) in LOGGING:
                skip.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
                continue
            for match in FLAG.finditer(node.value):
                if match.group() in flags and not COMMAND_LINE.search(node.value[:match.start()]):
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "library strings with CLI flags (name the parameter, pass params=):\n" + \
        "\n".join(found)


def test_the_scan_sees_a_flag_in_an_error() -> None:
    source = 'raise OutputError(f"{dst}: already exists; pass --overwrite to replace it")'
    constants = [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)]
    assert any(m.group() == "--overwrite" for c in constants for m in FLAG.finditer(c))
    assert COMMAND_LINE.search("reinstall it: python -m pip install ")  # then --force-reinstall
    assert not COMMAND_LINE.search("run tileseg predict; pass ")  # a command ends at the clause
    assert not COMMAND_LINE.search("not written by tileseg (no tileseg tag), so ")


def test_every_parameter_an_error_names_is_a_flag() -> None:
    """``params=("name", ...)`` in library code: each name maps to a flag some command has, so
    a misspelt parameter (or one the CLI spells differently, unmapped) fails here."""
    flags = cli_flags()
    wrong = []
    for path in [*library_modules(), ROOT / "workflows.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = (node.value if isinstance(node, ast.keyword) and node.arg == "params" else
                     ast.Tuple(node.args) if isinstance(node, ast.Call)  # type: ignore[call-arg]
                     and _call_name(node) == "log_params" else None)
            if named is not None:
                for const in ast.walk(named):
                    if (isinstance(const, ast.Constant) and isinstance(const.value, str)
                            and flag_for(const.value) not in flags):
                        wrong.append(f"{path.name}:{const.lineno}: {const.value} -> "
                                     f"{flag_for(const.value)}")
    assert not wrong, wrong


# -- one message, two audiences ----------------------------------------------------------------

def test_predict_over_a_foreign_file_names_overwrite_and_the_cli_its_flag(make_raster,
                                                                         tmp_path) -> None:
    import tileseg

    src = make_raster(random_image(3, 40, 50))
    dst = tmp_path / "mine.tif"
    dst.write_bytes(b"my own file")
    with pytest.raises(OutputError) as info:
        tileseg.predict(tileseg.PredictConfig(str(src), str(dst), tile_size=64, overlap=16))
    message = str(info.value)
    assert message == f"{dst}: already exists; pass overwrite to replace it"
    assert "--" not in message and info.value.params == ("overwrite",)
    result = CliRunner().invoke(cli, ["predict", str(src), str(dst), "--tile-size", "64",
                                      "--overlap", "16"])
    assert result.exit_code == 4
    assert result.output.strip() == f"Error: {dst}: already exists; pass --overwrite to replace it"
    assert dst.read_bytes() == b"my own file"


def test_info_speaks_python_and_the_cli_flags(make_raster, deeplab_dir) -> None:
    from tileseg.info import describe

    src = make_raster(random_image(4, 60, 70))  # the model takes 3 bands
    config = PredictConfig(str(src), "-.tif", model=str(deeplab_dir), nodata=0)
    facts = describe(config)
    assert facts["raster"]["valid_pixels"] == "nodata 0"
    assert "with bands (e.g. bands 1,2,3)" in facts["warnings"][0]
    assert "--" not in facts["warnings"][0]
    flagged = describe(config, flags=True)
    assert flagged["raster"]["valid_pixels"] == "--nodata 0"
    assert "with --bands (e.g. --bands 1,2,3)" in flagged["warnings"][0]
    assert "has 4 bands" in flagged["warnings"][0]  # a count stays a word


def test_a_log_line_names_the_parameter_and_the_cli_its_flag(make_raster, tmp_path,
                                                             caplog) -> None:
    """The library logs ``tile_size 600 is larger than the raster``; ``-v`` on the command line
    shows ``--tile-size 600``."""
    from tileseg.plan import clamped_tile_size
    from tileseg.sources.raster import open_raster

    src = make_raster(random_image(3, 40, 50))
    with caplog.at_level("INFO", logger="tileseg.plan"):
        clamped_tile_size(PredictConfig(str(src), "o.tif", tile_size=600), open_raster(str(src)))
    assert any(r.getMessage().startswith("tile_size 600 is larger than the raster")
               for r in caplog.records)
    result = CliRunner().invoke(cli, ["info", str(src), "--tile-size", "600", "-v"])
    assert result.exit_code == 0, result.output
    assert "--tile-size 600 is larger than the raster" in result.stderr


def test_a_parameter_spelt_otherwise_on_the_command_line() -> None:
    import torch

    from tileseg.inference.engine import resolve_engine

    with pytest.raises(ConfigError) as info:
        resolve_engine("onnxruntime", torch.device("cpu"), compile_model=True)
    assert str(info.value) == "compile_model is for engine torch only; drop it or use engine torch"
    assert flagged_message(info.value) == ("--compile is for --engine torch only; drop it or use "
                                           "--engine torch")


def test_the_scheduled_batch_entry_point_prints_its_flags(tmp_path, monkeypatch, capsys) -> None:
    from tileseg import workflows

    monkeypatch.delenv("TILESEG_SCHEDULER", raising=False)
    manifest = tmp_path / "scenes.txt"
    manifest.write_text("a.tif\n")
    code = workflows.main([str(manifest), "--concurrent-scenes", "0"])
    assert code == 2
    # the deprecated alias says what it runs, then the error is tileseg batch's own line
    notice, error = capsys.readouterr().err.strip().splitlines()
    assert "deprecated" in notice and "tileseg batch" in notice
    assert error == "Error: --concurrent-scenes must be at least 1, got 0"


def test_overlapping_paths_name_the_parameter(tmp_path) -> None:
    from tileseg.outputs.paths import check_distinct_paths

    src = tmp_path / "scene.tif"
    with pytest.raises(ConfigError) as info:
        check_distinct_paths({"SRC": src, "zarr_path": src}, read_only=("SRC",))
    assert str(info.value) == (f"SRC {src} and zarr_path {src} are the same file; choose another "
                               "zarr_path")
    assert flagged_message(info.value) == (f"SRC {src} and --zarr {src} are the same file; "
                                           "choose another --zarr")
