"""One run per destination: a second run is refused while the first holds the lock, and a killed
holder never leaves a stale lock."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rasterio
from conftest import per_pixel_model, random_image

from tileseg.config import PredictConfig
from tileseg.errors import DestinationBusyError, OutputError, RunError
from tileseg.outputs.runlock import exclusive_run, lock_path_for
from tileseg.pipeline import predict

HOLDER = """
import sys, time
from pathlib import Path
from tileseg.outputs.runlock import exclusive_run
with exclusive_run(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(dst: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(dst)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _config(src: Path, dst: Path, **kw: object) -> PredictConfig:
    return PredictConfig(src=str(src), dst=str(dst), tile_size=64, overlap=16, chunk_size=96,
                         **kw)  # type: ignore[arg-type]


def _predict_cli(*args: str) -> Any:
    """``tileseg predict ARGS`` in process (the bundled model: a 5-band raster)."""
    from click.testing import CliRunner

    from tileseg.cli.main import cli

    return CliRunner().invoke(cli, ["predict", *args])


def test_second_run_on_a_locked_destination_is_refused(make_raster, tmp_path: Path) -> None:
    src = make_raster(random_image(3, 100, 120))
    dst = tmp_path / "out.tif"
    staging = tmp_path / "out.tif.partial"
    staging.mkdir()
    (staging / "run.json").write_text('{"fingerprint": "the other run"}')
    holder = _hold(dst)
    try:
        with pytest.raises(DestinationBusyError,
                           match=r"another tileseg run \(pid \d+ on .+\) is writing") as busy:
            predict(_config(src, dst, overwrite=True), model=per_pixel_model(3, 4))
        assert busy.value.exit_code == 75
        # the holder's staging was not touched, and nothing was published
        assert (staging / "run.json").read_text() == '{"fingerprint": "the other run"}'
        assert not dst.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the killed holder's lock: the next run goes ahead
    result = predict(_config(src, dst, overwrite=True), model=per_pixel_model(3, 4))
    with rasterio.open(result.dst) as out:
        assert out.read(1).shape == (100, 120)
    assert not lock_path_for(dst).exists()  # released and removed after the run


def test_lock_is_released_when_the_run_fails(make_raster, tmp_path: Path) -> None:
    src = make_raster(random_image(3, 60, 60))
    dst = tmp_path / "out.tif"
    with pytest.raises(RunError, match="other inputs"):
        staging = tmp_path / "out.tif.partial"
        staging.mkdir()
        (staging / "run.json").write_text('{"fingerprint": "other"}')
        predict(_config(src, dst, resume=True), model=per_pixel_model(3, 4))
    assert not lock_path_for(dst).exists()
    with exclusive_run(dst):  # free again
        assert lock_path_for(dst).exists()


def test_destination_published_while_waiting_is_not_clobbered(make_raster, tmp_path: Path,
                                                               monkeypatch) -> None:
    """A run that passed the first existence check re-checks it once it holds the lock."""
    import contextlib

    import tileseg.outputs.staging as staging_module
    from tileseg.errors import OutputError

    src = make_raster(random_image(3, 60, 60))
    dst = tmp_path / "out.tif"

    @contextlib.contextmanager
    def other_run_finishes_first(path: Path):  # type: ignore[no-untyped-def]
        path.write_bytes(b"the other run's output")
        with exclusive_run(path):
            yield

    monkeypatch.setattr(staging_module, "exclusive_run", other_run_finishes_first)
    with pytest.raises(OutputError, match="pass overwrite"):
        predict(_config(src, dst), model=per_pixel_model(3, 4))
    assert dst.read_bytes() == b"the other run's output"
    assert not (tmp_path / "out.tif.partial").exists()


def test_cli_exit_75_with_one_line_while_another_run_writes(make_raster, deeplab_dir,
                                                            tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tileseg.cli.main import cli

    src = make_raster(random_image(3, 60, 60))
    dst = tmp_path / "out.tif"
    holder = _hold(dst)
    try:
        res = CliRunner().invoke(cli, ["predict", str(src), str(dst), "-m", str(deeplab_dir),
                                       "--tile-size", "64", "--overlap", "16"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert res.exit_code == 75
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "another tileseg run" in lines[0] and str(dst) in lines[0]
    assert "Traceback" not in res.output and not dst.exists()


def test_the_extra_zarr_output_is_locked_too(make_raster, tmp_path: Path) -> None:
    src = make_raster(random_image(3, 60, 60))
    store = tmp_path / "shared.zarr"
    holder = _hold(store)  # another run writes its --zarr output here
    try:
        with pytest.raises(DestinationBusyError, match="shared.zarr"):
            predict(_config(src, tmp_path / "mine.tif", zarr_path=str(store)),
                    model=per_pixel_model(3, 4))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not (tmp_path / "mine.tif").exists() and not lock_path_for(tmp_path / "mine.tif").exists()


@pytest.mark.parametrize("content", [b"my notes\n", b'{"pid": 1}', b"\x00\x01binary"])
def test_a_users_file_by_the_lock_name_is_left_alone(make_raster, tmp_path: Path,
                                                     content: bytes) -> None:
    src = make_raster(random_image(5, 100, 120))  # the bundled model's five bands
    dst = tmp_path / "out.tif"
    lock_path_for(dst).write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _predict_cli(str(src), str(dst))
    assert result.exit_code == 4, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "out.tif.lock" in errors[0], result.output
    assert "not a tileseg run lock" in errors[0] and "Traceback" not in result.output
    assert lock_path_for(dst).read_bytes() == content  # neither truncated nor deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # and nothing staged


def test_a_lock_left_by_a_killed_run_is_taken(make_raster, tmp_path: Path) -> None:
    src = make_raster(random_image(3, 100, 120))
    dst = tmp_path / "out.tif"
    holder = _hold(dst)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path_for(dst).read_bytes()  # its record stayed behind: tileseg's own
    predict(_config(src, dst), model=per_pixel_model(3, 4))
    assert dst.exists() and not lock_path_for(dst).exists()


def test_a_users_lock_named_file_beside_the_polygons_stops_the_run_before_it_starts(
        make_raster, tmp_path: Path) -> None:
    src = make_raster(random_image(5, 100, 120))
    (tmp_path / "parcels.gpkg.lock").write_text("my notes")
    result = _predict_cli(str(src), str(tmp_path / "out.tif"),
                          "--vectorize", str(tmp_path / "parcels.gpkg"))
    assert result.exit_code == 4 and "parcels.gpkg.lock" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parcels.gpkg.lock", "scene.tif"]
    assert (tmp_path / "parcels.gpkg.lock").read_text() == "my notes"


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_users_folder_by_the_staging_name_is_named_as_such(make_raster, tmp_path: Path,
                                                             flag: str) -> None:
    src = make_raster(random_image(5, 100, 120))
    folder = tmp_path / "out.tif.partial"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = _predict_cli(str(src), str(tmp_path / "out.tif"), flag)
    assert result.exit_code == 4, result.output
    assert "was not written by tileseg" in result.output  # not "an interrupted run"
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_lock_name_that_links_to_a_users_empty_file_is_refused(make_raster, tmp_path: Path,
                                                                 link: str) -> None:
    src = make_raster(random_image(3, 100, 120))
    dst = tmp_path / "out.tif"
    users = tmp_path / "keep-empty.txt"
    users.write_bytes(b"")  # empty: the one content a lock file may have before its record
    (lock_path_for(dst).symlink_to if link == "symlink" else lock_path_for(dst).hardlink_to)(users)
    with pytest.raises(OutputError, match="not a tileseg run lock"):
        predict(_config(src, dst), model=per_pixel_model(3, 4))
    assert users.read_bytes() == b"" and lock_path_for(dst).exists() and not dst.exists()
