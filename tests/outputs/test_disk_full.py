"""A full disk or quota is one line naming the folder (exit 5 when --resume continues the run,
4 when nothing is left to resume), the half-written files are removed, and --resume after
freeing space finishes the mask bitwise.

Two kinds of tests: on a real 2 MiB tmpfs (mounted here; skipped with the reason where this
process may not mount), and with the write itself made to fail with ENOSPC (everywhere, CI
included), one per place tileseg writes.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import per_pixel_model, random_image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import DiskFullError
from tileseg.pipeline import predict

SMALL = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "96"]


def _config(src: Path, dst: Path, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=96, workers=1)
    base.update(kw)
    return PredictConfig(src=str(src), dst=str(dst), **base)  # type: ignore[arg-type]


def _mask(path: Path | str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def scene(make_raster) -> Path:
    return make_raster(random_image(3, 150, 230))


@pytest.fixture
def expected(scene: Path, tmp_path: Path) -> np.ndarray:
    result = predict(_config(scene, tmp_path / "reference.tif"), model=per_pixel_model(3, 4))
    mask = _mask(result.dst)
    assert len(np.unique(mask)) >= 3  # several classes: a comparison that can fail
    return mask


# -- a real full file system -----------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, or a skip saying why there is none."""
    where = tmp_path / "small-disk"
    where.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount to make a small file system: {exc}")
    if mounted.returncode != 0:
        pytest.skip("mounting a 2 MiB tmpfs is not permitted here (needs root or "
                    f"CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _fill(folder: Path, leave: int) -> Path:
    """Fill ``folder``'s file system up to ``leave`` free bytes; the filler file to free."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(shutil.disk_usage(folder).free - leave, 0))
    return filler


def test_a_full_disk_is_one_line_exit_5_and_resume_after_freeing_space_finishes(
        small_disk: Path, make_raster, deeplab_dir: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    src = make_raster(random_image(3, 150, 230))
    args = [str(src), "-m", str(deeplab_dir), *SMALL, "--workers", "1"]
    reference = CliRunner().invoke(cli, ["predict", *args[:1], str(tmp_path / "ref.tif"),
                                         *args[1:]])
    assert reference.exit_code == 0, reference.output
    dst = small_disk / "mask.tif"
    filler = _fill(small_disk, 160 << 10)  # the staging starts, the chunks cannot all fit
    capfd.readouterr()
    full = CliRunner().invoke(cli, ["predict", *args[:1], str(dst), *args[1:]])
    native = capfd.readouterr().err  # what GDAL/libtiff printed straight to descriptor 2
    lines = _lines(full.stderr + native)
    assert full.exit_code == 5 and len(lines) == 1, full.output + native
    assert lines[0].startswith(f"Error: {small_disk}") and "no space left" in lines[0]
    assert "--resume" in lines[0] and "Traceback" not in full.output + native
    assert not dst.exists()
    # nothing half-written: no temporary file or partial GeoTIFF, only what resume continues
    assert not [f for f in _files(small_disk) if ".tmp" in f or f.endswith((".tif", ".npz.tmp"))]

    filler.unlink()
    resumed = CliRunner().invoke(cli, ["predict", *args[:1], str(dst), *args[1:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    np.testing.assert_array_equal(_mask(dst), _mask(tmp_path / "ref.tif"))
    assert _files(small_disk) == ["mask.qml", "mask.stac.json", "mask.tif", "mask.tif.aux.xml"]


def test_the_cog_pass_on_a_full_disk_removes_its_files_and_resume_redoes_only_it(
        small_disk: Path, scene: Path, expected: np.ndarray, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    import tileseg.pipeline

    real = tileseg.pipeline.zarr_to_geotiff

    def fill_then_convert(*args: object, **kwargs: object) -> None:  # every chunk is done now
        _fill(small_disk, 4 << 10)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tileseg.pipeline, "zarr_to_geotiff", fill_then_convert)
    # no help from the free-space check: the reason must come from what libtiff said
    monkeypatch.setattr("tileseg.outputs.diskspace.LOW_SPACE_BYTES", 0)
    dst = small_disk / "mask.tif"
    capfd.readouterr()
    with pytest.raises(DiskFullError) as caught:
        predict(_config(scene, dst), model=per_pixel_model(3, 4))
    assert caught.value.exit_code == 5 and caught.value.folder == str(small_disk)
    assert "_tiff" not in capfd.readouterr().err  # libtiff's own lines kept off the terminal
    staged = _files(small_disk)
    assert not [f for f in staged if f.endswith(".tif")], staged  # plain pass and COG removed
    assert any("work/done/" in f for f in staged)  # every chunk kept for --resume

    monkeypatch.undo()
    (small_disk / "filler").unlink()
    model = per_pixel_model(3, 4)
    result = predict(_config(scene, dst, resume=True), model=model)
    assert model.module.tiles_seen == 0 and result.tiles_inferred == 0  # nothing inferred again
    np.testing.assert_array_equal(_mask(dst), expected)


# -- every place tileseg writes, made to fail with ENOSPC --------------------------------------

def _fail_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    import tileseg.outputs.workdir

    def savez(path: object, **arrays: object) -> None:
        Path(str(path)).write_bytes(b"half a piece")  # what a write cut short leaves
        raise _full()

    monkeypatch.setattr(tileseg.outputs.workdir.np, "savez", savez)


def _fail_text_writes(monkeypatch: pytest.MonkeyPatch, chosen: Callable[[Path], bool]) -> None:
    """``Path.write_text`` of the chosen files writes a little, then finds the disk full."""
    real = Path.write_text

    def write_text(self: Path, *args: object, **kwargs: object) -> int:
        if chosen(self):
            real(self, "{")  # what a write cut short leaves
            raise _full()
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", write_text)


def _fail_done_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_text_writes(monkeypatch, lambda p: p.parent.name == "done" and p.suffix == ".tmp")


def _fail_zarr_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    real = zarr.open_array

    class Full:
        def __setitem__(self, key: object, value: object) -> None:
            raise _full()

    def open_array(*args: object, **kwargs: object) -> object:
        if kwargs.get("mode") == "r+":  # a finished chunk written into the staged mosaic
            return Full()
        return real(*args, **kwargs)

    monkeypatch.setattr(zarr, "open_array", open_array)


def _fail_run_record(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_text_writes(monkeypatch, lambda p: p.name.startswith(".run.json."))


def _fail_cog_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio.errors

    import tileseg.outputs.mask_files

    def copy(src: str, dst: str, **options: object) -> None:
        # what GDAL does on a full disk: libtiff prints the reason on descriptor 2, GDAL
        # raises without an errno, and the plain pass's file is still there
        Path(dst).write_bytes(b"II*\0 half a COG")
        os.write(2, b"_tiffWriteProc: No space left on device.\n")
        raise rasterio.errors.RasterioIOError("TIFFAppendToStrip:Write error at scanline 0")

    monkeypatch.setattr(tileseg.outputs.mask_files.rasterio.shutil, "copy", copy)


SITES = {  # where, how it fails, and the folder the error names (in the destination's folder)
    "spill": (_fail_spill, "mask.tif.partial/work"),
    "done-marker": (_fail_done_marker, "mask.tif.partial/work"),
    "zarr-chunk": (_fail_zarr_chunk, "mask.tif.partial/mosaic.zarr"),
    "run-record": (_fail_run_record, "."),
    "cog-pass": (_fail_cog_pass, "."),
}


@pytest.mark.parametrize("site", SITES)
def test_each_run_write_on_a_full_disk_is_one_error_naming_its_folder_then_resumes(
        site: str, scene: Path, expected: np.ndarray, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    patch, folder = SITES[site]
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "mask.tif"
    patch(monkeypatch)
    capfd.readouterr()
    with pytest.raises(DiskFullError) as caught:
        predict(_config(scene, dst), model=per_pixel_model(3, 4))
    assert "_tiff" not in capfd.readouterr().err
    error = caught.value
    assert error.exit_code == 5 and error.folder == str(out / folder)
    assert str(error).startswith(f"{error.folder}: no space left") and "resume" in str(error)
    left = _files(out)
    assert not dst.exists() and not [f for f in left if ".tmp" in f or f.endswith(".tif")], left

    monkeypatch.undo()
    result = predict(_config(scene, dst, resume=True), model=per_pixel_model(3, 4))
    np.testing.assert_array_equal(_mask(result.dst), expected)
    assert _files(out) == ["mask.qml", "mask.stac.json", "mask.tif", "mask.tif.aux.xml"]


def test_a_full_disk_in_the_spill_via_the_cli_is_one_line_exit_5(
        scene: Path, deeplab_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_spill(monkeypatch)
    dst = tmp_path / "mask.tif"
    result = CliRunner().invoke(cli, ["predict", str(scene), str(dst), "-m", str(deeplab_dir),
                                      *SMALL])
    lines = _lines(result.stderr)
    assert result.exit_code == 5 and len(lines) == 1, result.output
    assert lines[0] == (f"Error: {dst}.partial/work: no space left on the device (the disk or "
                        "your quota is full); free space there, then rerun with --resume to "
                        "continue where the run stopped")


def _fail_png(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    def save(self: object, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG half")
        raise _full()

    monkeypatch.setattr(Image.Image, "save", save)


def _fail_report(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_text_writes(monkeypatch, lambda p: p.name.startswith(".report.json."))


def _fail_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyogrio.errors
    import pyogrio.raw

    def write(path: str, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a layer")
        # OGR gives no errno: only the space left in the folder tells a full disk
        raise pyogrio.errors.DataSourceError("Could not add feature to layer: Cannot write "
                                             "feature")

    monkeypatch.setattr(pyogrio.raw, "write", write)
    monkeypatch.setattr("tileseg.outputs.diskspace.free_bytes", lambda folder: 4096)


FOLLOW_UPS = {  # written after the mask is published: nothing to resume (exit 4)
    "preview": (_fail_png, {"preview": "preview.png"}),
    "report": (_fail_report, {"report": "report.json"}),
    "vectorize": (_fail_layer, {"vectorize": "polygons.gpkg"}),
}


@pytest.mark.parametrize("follow_up", FOLLOW_UPS)
def test_a_full_disk_after_the_mask_is_published_is_exit_4_and_leaves_no_partial_file(
        follow_up: str, scene: Path, expected: np.ndarray, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    patch, option = FOLLOW_UPS[follow_up]
    out = tmp_path / "out"
    out.mkdir()
    (name, file), = option.items()
    patch(monkeypatch)
    with pytest.raises(DiskFullError) as caught:
        predict(_config(scene, out / "mask.tif", **{name: str(out / file)}),
                model=per_pixel_model(3, 4))
    assert caught.value.exit_code == 4 and caught.value.folder == str(out)
    assert str(caught.value).endswith("free space there, then run again")
    np.testing.assert_array_equal(_mask(out / "mask.tif"), expected)  # the mask is complete
    assert _files(out) == ["mask.qml", "mask.stac.json", "mask.tif", "mask.tif.aux.xml"]  # no partial file


def test_a_full_disk_anywhere_else_is_one_line_not_a_traceback() -> None:
    import click

    from tileseg.cli.common import handle_errors

    @click.command()
    @handle_errors
    def write_checkpoint() -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/data/run/model.safetensors")

    result = CliRunner().invoke(write_checkpoint, [])
    assert result.exit_code == 4 and _lines(result.stderr) == [
        "Error: /data/run: no space left on the device (the disk or your quota is full); free "
        "space there, then run again"]


def test_a_full_disk_error_crosses_to_the_client_process_whole() -> None:
    import pickle

    from tileseg.outputs.diskspace import disk_full_error

    error = pickle.loads(pickle.dumps(disk_full_error("/scratch/x.partial/work",
                                                      resumable=True)))
    assert isinstance(error, DiskFullError) and isinstance(error, OSError)
    assert (error.exit_code, error.params, error.folder) == (5, ("resume",),
                                                             "/scratch/x.partial/work")


def test_only_libtiffs_lines_are_kept_off_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    from tileseg.outputs.diskspace import gdal_stderr

    captured: list[str] = []
    capfd.readouterr()
    with gdal_stderr(captured):
        os.write(2, b"_tiffWriteProc: No space left on device.\nWarning 1: a GDAL notice\n")
    assert captured == ["_tiffWriteProc: No space left on device.\n"]
    assert capfd.readouterr().err == "Warning 1: a GDAL notice\n"  # passed on, not lost
