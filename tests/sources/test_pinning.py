"""pinning: a local raster that changes under a run, or between a run and its --resume, is
refused in one line naming what changed; a file repaired after a damaged block still resumes.
(Remote objects: tests/sources/test_remote_faults.py.)"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import interrupt_after, per_pixel_model, random_image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import DamagedInputError, SourceChangedError
from tileseg.pipeline import predict


def _config(src: Path, dst: Path, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=64, workers=1)
    base.update(kw)
    return PredictConfig(src=str(src), dst=str(dst), **base)  # type: ignore[arg-type]


def _touch_after(n: int, path: Path) -> Callable[[object], None]:
    """A progress callback that rewrites ``path`` in place (new mtime, same bytes) at its
    ``n``-th call, as a tool writing a new version over the old one would."""
    calls = {"n": 0}

    def touch(event: object) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    return touch


def test_a_source_rewritten_mid_run_stops_it_and_publishes_nothing(make_raster,
                                                                  tmp_path) -> None:
    src = make_raster(random_image(3, 256, 256))
    dst = tmp_path / "out.tif"
    with pytest.raises(SourceChangedError, match=r"scene.tif: chunk \(\d+, \d+\) \(rows \d+-\d+, "
                       r"cols \d+-\d+\): changed while "
                       r"this run read it \(scene.tif: modified at .*overwrite") as info:
        predict(_config(src, dst), model=per_pixel_model(3, 4), progress=_touch_after(1, src))
    assert info.value.exit_code == 2
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()
    # --resume would mix the versions too: refused, naming the file
    with pytest.raises(SourceChangedError, match="changed since the interrupted run"):
        predict(_config(src, dst, resume=True), model=per_pixel_model(3, 4))
    predict(_config(src, dst, overwrite=True), model=per_pixel_model(3, 4))  # starts over
    assert dst.exists()


def test_resume_after_the_source_grew_names_the_change(make_raster, deeplab_dir,
                                                       tmp_path) -> None:
    """A file still being appended to when the run began, completed since: the refusal says the
    source changed and how (it used to say "other inputs or options", exit 5)."""
    src = make_raster(random_image(3, 200, 256), name="growing.tif")
    dst = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, dst), model=per_pixel_model(3, 3), progress=interrupt_after(2))
    before = src.stat().st_size
    make_raster(random_image(3, 256, 256), name="growing.tif")  # the rest of the rows arrived
    result = CliRunner().invoke(cli, ["predict", str(src), str(dst), "-m", str(deeplab_dir),
                                      "--tile-size", "64", "--overlap", "16", "--resume"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {src}: changed since the interrupted run (growing.tif: "
                               f"size was {before} bytes, now {src.stat().st_size})")
    assert "--overwrite" in lines[0] and "other inputs" not in lines[0]
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()


def test_a_file_repaired_after_a_damaged_block_still_resumes(make_raster, tmp_path,
                                                             caplog) -> None:
    """Resume refuses a changed source, except the repair its own error asked for: the run
    that stopped on a damaged block recorded so, and the file came back with the same size."""
    src = make_raster(random_image(3, 256, 256, seed=4), block=64, compress="deflate")
    clean = predict(_config(src, tmp_path / "clean.tif"), model=per_pixel_model(3, 4))
    original = src.read_bytes()
    with rasterio.open(src) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_3_3", "TIFF", bidx=1))
    broken = bytearray(original)
    broken[offset : offset + size] = b"\xff" * size
    src.write_bytes(bytes(broken))
    dst = tmp_path / "out.tif"
    with pytest.raises(DamagedInputError):
        predict(_config(src, dst), model=per_pixel_model(3, 4))
    src.write_bytes(original)  # repaired in place: a new mtime
    with caplog.at_level(logging.WARNING, logger="tileseg.pipeline"):
        predict(_config(src, dst, resume=True), model=per_pixel_model(3, 4))
    assert any("taken as repaired" in r.getMessage() for r in caplog.records)
    with rasterio.open(dst) as out, rasterio.open(clean.dst) as ref:
        np.testing.assert_array_equal(out.read(1), ref.read(1))


def test_gdal_errors_outside_rasterio_go_to_the_log_not_stderr(capfd, caplog) -> None:
    """What GDAL reports from threads of its own reaches no rasterio handler: it used to print
    ``ERROR 1: ...`` on file descriptor 2; now it is logged and counted as a failure."""
    from tileseg.sources.gdal_native import failure_count, install_error_handler, last_failure, library

    assert install_error_handler()
    lib = library()
    before = failure_count()
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="tileseg.sources.gdal_native"):
        # a fresh thread has no rasterio handler pushed, as a GDAL worker thread
        thread = threading.Thread(target=lib.CPLError, args=(
            ctypes.c_int(3), ctypes.c_int(1), b"%s", b"Request for 0-9 failed"))
        thread.start()
        thread.join()
    assert capfd.readouterr().err == ""
    assert failure_count() == before + 1 and last_failure() == "Request for 0-9 failed"
    assert any("Request for 0-9 failed" in r.getMessage() for r in caplog.records)


def test_the_gdal_called_is_rasterios_not_another_wheels_copy() -> None:
    """pyogrio's wheel brings a libgdal of its own (another version, its own configuration):
    the error handler, object versions and cache clearing must reach rasterio's."""
    import pyogrio

    from tileseg.sources.gdal_native import library

    if pyogrio.__gdal_version_string__ == rasterio.__gdal_version__:
        pytest.skip("pyogrio's GDAL is rasterio's version: the two cannot be told apart")
    lib = library()
    lib.GDALVersionInfo.restype = ctypes.c_char_p
    assert lib.GDALVersionInfo(b"RELEASE_NAME").decode() == rasterio.__gdal_version__


def test_a_band_file_of_a_stack_rewritten_mid_run_stops_it(make_raster, tmp_path) -> None:
    """Several files read as one raster are pinned file by file: one band rewritten while the
    run reads it stops the run before a chunk that may mix versions is saved, and --resume
    refuses it too, naming that file."""
    bands = [make_raster(random_image(1, 256, 256, seed=s), name=f"b{s}.tif") for s in range(3)]
    dst = tmp_path / "out.tif"
    sources = tuple(str(b) for b in bands)
    config = PredictConfig(sources, str(dst), tile_size=64, overlap=16, chunk_size=96)  # type: ignore[arg-type]
    with pytest.raises(SourceChangedError, match=r"changed while this run read it \(b1.tif: "
                                                 r"modified at "):
        predict(config, model=per_pixel_model(3, 4), progress=_touch_after(1, bands[1]))
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()
    with pytest.raises(SourceChangedError, match=r"changed since the interrupted run \(b1.tif"):
        predict(dataclasses.replace(config, resume=True), model=per_pixel_model(3, 4))
