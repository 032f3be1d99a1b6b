"""tileseg.batch: manifests, idempotent batch runs, the summary and the CLI exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import interrupt_after, random_image

from tileseg.batch import (
    BatchConfig,
    default_summary_path,
    load_manifest,
    run_batch,
    run_manifest,
)
from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import InputError, InputNotFoundError
from tileseg.pipeline import predict

SMALL = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "96"]
SMALL_DEFAULTS = {"tile_size": 64, "overlap": 16, "chunk_size": 96}


@pytest.fixture
def scenes(make_raster, tmp_path) -> list[Path]:
    return [make_raster(random_image(3, 100 + 20 * i, 130, seed=i), name=f"s{i}.tif")
            for i in range(3)]


def _read(path: Path | str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _summary(path: Path) -> dict[str, dict[str, object]]:
    doc = json.loads(path.read_text())
    return {Path(str(row["src"])).name: row for row in doc["scenes"]}


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


def test_text_manifest_resolves_relative_paths_and_output_dir(tmp_path) -> None:
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "scenes.txt"
    manifest.write_text("# two scenes\na.tif\n\n/abs/b.tif  # trailing comment\n")
    scenes = load_manifest(manifest, output_dir=tmp_path / "out", suffix=".zarr")
    assert [s.src for s in scenes] == [str(tmp_path / "m" / "a.tif"), "/abs/b.tif"]
    assert [s.dst for s in scenes] == [str(tmp_path / "out" / "a.zarr"),
                                       str(tmp_path / "out" / "b.zarr")]


def test_csv_manifest_parses_option_columns(tmp_path) -> None:
    manifest = tmp_path / "scenes.csv"
    manifest.write_text("src,dst,bands,overlap,probabilities,model,allow_no_crs\n"
                        "a.tif,a.zarr,\"4,3,2\",32,uint8,models/x,yes\n"
                        "b.tif,b_mask.tif,,,,,\n")
    a, b = load_manifest(manifest)
    assert a.options == {"bands": (4, 3, 2), "overlap": 32, "probabilities": "uint8",
                         "model": str(tmp_path / "models" / "x"), "allow_no_crs": True}
    assert b.options == {} and b.dst == str(tmp_path / "b_mask.tif")


def test_yaml_manifest_with_defaults_and_per_scene_options(tmp_path) -> None:
    manifest = tmp_path / "scenes.yaml"
    manifest.write_text(
        "defaults: {model: /models/landcover, overlap: 48}\n"
        "scenes:\n"
        "  - {src: a.tif, dst: a.zarr, bands: [3, 2, 1], vectorize: true}\n"
        "  - {src: b.tif, dst: b_mask.tif, overlap: 96, output-stride: 8}\n"
    )
    a, b = load_manifest(manifest)
    assert a.options == {"model": "/models/landcover", "overlap": 48, "bands": (3, 2, 1),
                         "vectorize": str(tmp_path / "a.gpkg")}
    assert b.options["overlap"] == 96 and b.options["encoder_output_stride"] == 8
    assert isinstance(a.config({"tile_size": 256}), PredictConfig)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("m.txt", "# nothing\n", "lists no scenes"),
        ("m.txt", "a.tif\n", "has no dst"),
        ("m.csv", "path,out\na.tif,b.tif\n", "needs a header row with a src column"),
        ("m.csv", "src,dst,colour\na.tif,b.tif,red\n", "unknown option 'colour'"),
        ("m.csv", "src,dst,overlap\na.tif,b.tif,lots\n", "line 2: overlap must be an integer"),
        ("m.csv", "src,dst,overlap\na.tif,b.tif,900\n", "line 2: --overlap must be between"),
        ("m.csv", "src,dst\na.tif,out.tif\nb.tif,out.tif\n", "both write"),
        ("m.csv", "src,dst\na.tif,a.tif\n", "would overwrite its source"),
        ("m.yaml", "- src: a.tif\n  dst: [unclosed\n", "not valid YAML"),
        ("m.yaml", "src: a.tif\n", "a YAML manifest is a list of scenes"),
        ("m.yaml", "- {dst: b.tif}\n", "scene 1 has no src"),
        ("m.yaml", "- {src: a.tif, dst: b.tif, bands: [x]}\n", "bands must be a list"),
    ],
)
def test_bad_manifests_raise_one_line_errors(tmp_path, name, text, match) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        load_manifest(manifest)
    assert "\n" not in str(info.value)


def test_a_yaml_alias_bomb_in_a_value_is_one_short_line(tmp_path) -> None:
    # 9**7 values behind 300 bytes: before, the message printed every one of them (tens of MB;
    # two levels more took 45 s and 3.5 GB)
    levels = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 7)]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"- src: a.tif\n  dst: b.tif\n  bands: [{', '.join(levels)}]\n")
    with pytest.raises(InputError, match="alias bomb") as info:
        load_manifest(manifest)
    assert len(str(info.value)) < 300


def test_a_value_of_the_wrong_kind_is_shown_shortened(tmp_path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("- src: a.tif\n  dst: b.tif\n  bands: [" + ", ".join(["x"] * 2000)
                        + "]\n")
    with pytest.raises(InputError, match=r"bands must be a list of integers") as info:
        load_manifest(manifest)
    assert len(str(info.value)) < 300


def test_a_manifest_over_the_size_bound_is_refused_unread(tmp_path) -> None:
    from tileseg.batch import MAX_MANIFEST_BYTES

    manifest = tmp_path / "m.txt"
    with open(manifest, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(InputError, match="over 16 MiB; split it"):
        load_manifest(manifest, output_dir=tmp_path)


def test_a_summary_that_cannot_be_written_stops_the_batch_before_its_first_scene(
        scenes, tmp_path) -> None:
    from tileseg.errors import OutputError

    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{scenes[0]}\n")
    config = BatchConfig(output_dir=str(tmp_path / "out"), summary="/proc/sys/m.summary.json",
                         defaults=SMALL_DEFAULTS)
    with pytest.raises(OutputError, match="not writable"):
        run_manifest(manifest, config)
    assert not list((tmp_path / "out").glob("*.tif"))


def test_missing_manifest(tmp_path) -> None:
    with pytest.raises(InputNotFoundError, match="no such manifest"):
        load_manifest(tmp_path / "nope.csv")


def test_cli_bad_manifest_is_one_line_and_exit_2(tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\na.tif\n")
    result = CliRunner().invoke(cli, ["batch", str(manifest)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("Error: ") and "src column" in result.output


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def test_batch_with_a_bad_scene_runs_the_others_then_reruns_only_what_is_missing(
        scenes, tmp_path, deeplab_dir) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a raster at all")
    manifest = tmp_path / "scenes.csv"
    rows = [f"{s.name},out/{s.stem}.tif" for s in scenes[:2]]
    rows.insert(1, "bad.tif,out/bad.tif")
    rows.append(f"{scenes[2].name},out/{scenes[2].stem}.zarr,,uint8")
    manifest.write_text("src,dst,bands,probabilities\n" + "\n".join(rows) + "\n")
    args = ["batch", str(manifest), "--model", str(deeplab_dir), *SMALL]

    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 5, first.output
    assert "1 of 4 scenes failed (bad.tif)" in first.output
    summary = _summary(tmp_path / "scenes.csv.summary.json")
    assert summary["bad.tif"]["status"] == "failed"
    assert "not a raster GDAL can read" in str(summary["bad.tif"]["error"])
    for s in scenes:
        row = summary[s.name]
        assert row["status"] == "succeeded" and row["error"] == ""
        assert row["tiles_inferred"] == row["tiles_total"] > 0
    assert not (tmp_path / "out" / "bad.tif").exists()
    csv_text = (tmp_path / "scenes.csv.summary.csv").read_text().splitlines()
    assert csv_text[0].startswith("src,dst,status,tiles_total,tiles_inferred")
    assert len(csv_text) == 5
    masks = {s.name: (tmp_path / "out" / s.name).stat().st_mtime_ns for s in scenes[:2]}

    first_figures = {s.name: _figures(summary[s.name]) for s in scenes}

    # Rerun unchanged: completed scenes are skipped (not rewritten), the bad one fails again;
    # the summary keeps what the first run measured for the skipped ones.
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 5
    summary = _summary(tmp_path / "scenes.csv.summary.json")
    assert [summary[s.name]["status"] for s in scenes] == ["skipped"] * 3
    assert {s.name: _figures(summary[s.name]) for s in scenes} == first_figures
    assert f"done earlier: {first_figures[scenes[0].name][1]}/" in second.output
    assert {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in masks} == masks

    # Fix the bad scene: only it runs, and the batch succeeds.
    with rasterio.open(scenes[0]) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(data)
    third = CliRunner().invoke(cli, args)
    assert third.exit_code == 0, third.output
    summary = _summary(tmp_path / "scenes.csv.summary.json")
    assert summary["bad.tif"]["status"] == "succeeded"
    assert [summary[s.name]["status"] for s in scenes] == ["skipped"] * 3
    assert {s.name: _figures(summary[s.name]) for s in scenes} == first_figures
    np.testing.assert_array_equal(_read(tmp_path / "out" / "bad.tif"),
                                  _read(tmp_path / "out" / scenes[0].name))


def _figures(row: dict[str, object]) -> tuple[object, ...]:
    return tuple(row[k] for k in ("tiles_total", "tiles_inferred", "tiles_skipped_nodata",
                                  "chunks", "seconds"))


def test_manifests_of_one_stem_get_a_summary_each(tmp_path) -> None:
    names = {default_summary_path(tmp_path / f"scenes.{ext}") for ext in ("txt", "csv", "yaml")}
    assert len(names) == 3
    assert default_summary_path("jobs/scenes.csv") == "jobs/scenes.csv.summary.json"


def test_batch_resumes_an_interrupted_scene(scenes, tmp_path, deeplab_dir) -> None:
    out = tmp_path / "out"
    out.mkdir()
    src = scenes[1]
    config = PredictConfig(str(src), str(out / f"{src.stem}_mask.tif"), model=str(deeplab_dir),
                           workers=1, **SMALL_DEFAULTS)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        predict(config, progress=interrupt_after(2))
    assert (out / f"{src.stem}_mask.tif.partial").is_dir()

    manifest = tmp_path / "scenes.txt"
    manifest.write_text("\n".join(s.name for s in scenes) + "\n")
    batch = BatchConfig(output_dir=str(out), summary=str(tmp_path / "summary.json"),
                        defaults={"model": str(deeplab_dir), **SMALL_DEFAULTS})
    seen: list[str] = []
    result = run_manifest(manifest, batch, on_scene=lambda scene, r: seen.append(r.status))
    assert result.ok and seen == ["succeeded", "resumed", "succeeded"]
    resumed = result.scenes[1]
    assert resumed.tiles_inferred < resumed.tiles_total  # pieces saved before the stop are kept
    assert not (out / f"{src.stem}_mask.tif.partial").exists()
    clean = predict(PredictConfig(str(src), str(tmp_path / "clean.tif"), model=str(deeplab_dir),
                                  **SMALL_DEFAULTS))  # type: ignore[arg-type]
    np.testing.assert_array_equal(_read(resumed.dst), _read(clean.dst))

    again = run_batch(load_manifest(manifest, output_dir=out), batch)
    assert [r.status for r in again.scenes] == ["skipped"] * 3


def test_concurrent_scenes_give_the_same_outputs(scenes, tmp_path, deeplab_dir) -> None:
    manifest = tmp_path / "scenes.yaml"
    manifest.write_text("".join(f"- {{src: {s.name}, dst: c/{s.stem}.tif}}\n" for s in scenes))
    (tmp_path / "c").mkdir()
    defaults = {"model": str(deeplab_dir), **SMALL_DEFAULTS}
    result = run_manifest(manifest, BatchConfig(defaults=defaults, concurrent_scenes=3,
                                                summary=str(tmp_path / "sum.csv")))
    assert result.ok and result.counts()["succeeded"] == 3
    assert (tmp_path / "sum.json").is_file() and (tmp_path / "sum.csv").is_file()
    for s in scenes:
        alone = predict(PredictConfig(str(s), str(tmp_path / f"{s.stem}_alone.tif"),
                                      **defaults))  # type: ignore[arg-type]
        np.testing.assert_array_equal(_read(tmp_path / "c" / f"{s.stem}.tif"), _read(alone.dst))
