"""A store that misbehaves while a run reads from it or writes to it: a real S3 API server (moto)
on loopback behind the fault-injecting proxy of ``s3_server`` (503 after n requests, n times
then recovering, requests that are never answered, an object deleted or replaced mid-run).

A failed read is never data: transient failures are retried and give the clean run's mask;
lasting ones stop the run with one line (exit 5, resumable; a replaced object exit 2), publish
nothing, and GDAL's own ``ERROR 1:`` lines never reach stderr. Timeouts are short here
(``TILESEG_HTTP_TIMEOUT=1``), so a store that never answers fails in seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from conftest import per_pixel_model, random_image
from s3_server import S3Server, s3_with_buckets

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, SourceUnavailableError
from tileseg.pipeline import predict
from tileseg.sources.raster import WindowReader, open_raster
from tileseg.tiling.grid import Rect

BUCKET = "tileseg-faults"
OUT_BUCKET = "tileseg-faults-out"
SHAPE = (3, 192, 192)
ARGS = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "64", "--workers", "1"]


def _cog(path: Path, seed: int) -> Path:
    with rasterio.open(path, "w", driver="COG", height=SHAPE[1], width=SHAPE[2], count=SHAPE[0],
                       dtype="uint8", crs="EPSG:32631", blocksize=64,
                       transform=Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
        dst.write(random_image(*SHAPE, dtype="uint8", seed=seed))
    return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, Path, Path]]:
    """The server with two buckets; yields it, a COG and another COG of the same shape."""
    folder = tmp_path_factory.mktemp("faults")
    scene, other = _cog(folder / "scene.tif", 3), _cog(folder / "other.tif", 9)
    with s3_with_buckets(BUCKET, OUT_BUCKET) as server:
        yield server, scene, other


@pytest.fixture(autouse=True)
def short_requests(s3: tuple[S3Server, Path, Path],
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TILESEG_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("TILESEG_HTTP_RETRIES", "1")
    yield
    s3[0].faults.clear()


@pytest.fixture(scope="module")
def clean(s3: tuple[S3Server, Path, Path], deeplab_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The CLI's mask of the local scene: what every run from the store must give."""
    dst = tmp_path_factory.mktemp("clean") / "clean.tif"
    result = CliRunner().invoke(cli, ["predict", str(s3[1]), str(dst), "-m", str(deeplab_dir),
                                      *ARGS])
    assert result.exit_code == 0, result.output
    return _mask(dst)


def _mask(path: Path | str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _upload(server: S3Server, local: Path, key: str) -> str:
    server.client().upload_file(str(local), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def _run(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """The CLI in-process, with what C libraries wrote straight to file descriptor 2; in a
    thread with a generous guard, so a run that hangs (as it did) fails instead."""
    capfd.readouterr()
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=CliRunner().invoke(cli, ["predict", *args])), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the run hung"
    result = outcome["result"]
    stderr = result.stderr + capfd.readouterr().err  # type: ignore[attr-defined]
    assert "ERROR 1" not in stderr and "Traceback" not in stderr, stderr
    return result.exit_code, [line for line in stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("after", "status"), [(0, 503), (0, 500), (4, 503)],
                         ids=["slow-down-at-open", "internal-error-at-open", "slow-down-mid-run"])
def test_a_store_busy_for_a_while_is_retried_and_gives_the_clean_mask(
        s3: tuple[S3Server, Path, Path], tmp_path: Path, monkeypatch, after: int,
        status: int) -> None:
    server, scene, _ = s3
    monkeypatch.setenv("TILESEG_HTTP_RETRIES", "2")
    key = f"busy-{after}-{status}.tif"
    src = _upload(server, scene, key)
    model = per_pixel_model(3, 5, scale=1 / 255, seed=2)
    config = dict(tile_size=64, overlap=16, chunk_size=96, workers=1)
    expected = _mask(predict(PredictConfig(str(scene), str(tmp_path / "local.tif"), **config),
                             model=model).dst)
    server.faults.fail(status, path=key, after=after, times=2)
    remote = predict(PredictConfig(src, str(tmp_path / "remote.tif"), **config), model=model)
    assert server.faults.hits == 2  # refused twice: the run went through both
    np.testing.assert_array_equal(_mask(remote.dst), expected)


def test_failures_gdal_reports_from_its_own_threads_are_retried_not_read_as_zeros(
        s3: tuple[S3Server, Path, Path], tmp_path: Path, capfd, monkeypatch) -> None:
    """With GDAL's read-ahead of ranges back on (a user's own setting wins), a failed request
    is reported only from GDAL's thread and the read returns zeros: tileseg notices it, so
    the retry gives the clean mask, and the ``ERROR 1:`` line stays off stderr."""
    server, scene, _ = s3
    monkeypatch.setenv("CPL_VSIL_CURL_ADVISE_READ_TOTAL_BYTES_LIMIT", "104857600")
    src = _upload(server, scene, "ahead.tif")
    model = per_pixel_model(3, 5, scale=1 / 255, seed=2)
    config = dict(tile_size=64, overlap=16, chunk_size=192, workers=1)
    expected = _mask(predict(PredictConfig(str(scene), str(tmp_path / "local.tif"), **config),
                             model=model).dst)
    capfd.readouterr()
    server.faults.fail(503, path="ahead.tif", after=3, times=1)
    remote = predict(PredictConfig(src, str(tmp_path / "remote.tif"), **config), model=model)
    assert server.faults.hits == 1
    assert "ERROR" not in capfd.readouterr().err
    np.testing.assert_array_equal(_mask(remote.dst), expected)


def test_a_store_that_keeps_failing_stops_with_one_line_then_resume_finishes(
        s3: tuple[S3Server, Path, Path], deeplab_dir: Path, clean: np.ndarray, tmp_path: Path,
        capfd) -> None:
    server, scene, _ = s3
    src = _upload(server, scene, "failing.tif")
    dst = tmp_path / "mask.tif"
    args = [src, str(dst), "-m", str(deeplab_dir), *ARGS]
    server.faults.fail(503, path="failing.tif", after=4)  # every request from the 5th on
    code, lines = _run(args, capfd)
    assert code == 5 and len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {src}: chunk (") and "rerun with --resume" in lines[0]
    assert "damaged" not in lines[0]  # a failed request is not a damaged file
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()
    server.faults.clear()  # the store answers again
    code, lines = _run([*args, "--resume"], capfd)
    assert code == 0, lines
    np.testing.assert_array_equal(_mask(dst), clean)


def test_an_object_deleted_mid_run_stops_it_and_resume_continues_once_it_is_back(
        s3: tuple[S3Server, Path, Path], deeplab_dir: Path, clean: np.ndarray, tmp_path: Path,
        capfd) -> None:
    server, scene, _ = s3
    src = _upload(server, scene, "emptied.tif")
    dst = tmp_path / "mask.tif"
    args = [src, str(dst), "-m", str(deeplab_dir), *ARGS]
    server.faults.before(lambda: server.client().delete_object(Bucket=BUCKET, Key="emptied.tif"),
                         path="emptied.tif", after=4)
    code, lines = _run(args, capfd)
    assert code == 5 and len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {src}: chunk (") and "--resume" in lines[0]
    assert "damaged" not in lines[0]
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()
    _upload(server, scene, "emptied.tif")  # restored as it was: the same ETag
    code, lines = _run([*args, "--resume"], capfd)
    assert code == 0, lines
    np.testing.assert_array_equal(_mask(dst), clean)


def test_an_object_replaced_mid_run_is_refused_and_so_is_its_resume(
        s3: tuple[S3Server, Path, Path], deeplab_dir: Path, tmp_path: Path, capfd) -> None:
    server, scene, other = s3
    src = _upload(server, scene, "replaced.tif")
    dst = tmp_path / "mask.tif"
    args = [src, str(dst), "-m", str(deeplab_dir), *ARGS]
    server.faults.before(lambda: _upload(server, other, "replaced.tif"),
                         path="replaced.tif", after=4)
    code, lines = _run(args, capfd)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {src}: chunk (") and "changed while this run read it " \
        "(replaced.tif: ETag was" in lines[0] and "--overwrite" in lines[0]
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()
    code, lines = _run([*args, "--resume"], capfd)
    assert code == 2 and len(lines) == 1, lines
    assert "changed since the interrupted run (replaced.tif: ETag was" in lines[0]
    assert not dst.exists()


@pytest.mark.parametrize(("after", "code"), [(0, 2), (4, 5)], ids=["at-open", "mid-run"])
def test_a_source_store_that_never_answers_fails_in_seconds_with_one_line(
        s3: tuple[S3Server, Path, Path], deeplab_dir: Path, tmp_path: Path, capfd, monkeypatch,
        after: int, code: int) -> None:
    """It used to wait forever: GDAL's requests had no timeout."""
    monkeypatch.setenv("TILESEG_HTTP_RETRIES", "0")  # each wait costs a second here
    server, scene, _ = s3
    src = _upload(server, scene, f"silent-{after}.tif")
    dst = tmp_path / "mask.tif"
    server.faults.hang(path=f"silent-{after}.tif", after=after)
    got, lines = _run([src, str(dst), "-m", str(deeplab_dir), *ARGS], capfd)
    assert got == code and len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {src}: ") and "TILESEG_HTTP_TIMEOUT" in lines[0]
    assert not dst.exists()


def test_a_destination_store_that_never_answers_fails_in_seconds_with_one_line(
        s3: tuple[S3Server, Path, Path], deeplab_dir: Path, capfd) -> None:
    """obstore gave up only after three minutes of retries (184 s) against a silent store."""
    server, scene, _ = s3
    url = f"s3://{OUT_BUCKET}/silent/mask.tif"
    server.faults.hang(path=f"/{OUT_BUCKET}")
    code, lines = _run([str(scene), url, "-m", str(deeplab_dir), *ARGS], capfd)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {url}: the store did not answer within 1 s "
                               "(TILESEG_HTTP_TIMEOUT)")
    server.faults.clear()
    listing = server.client().list_objects_v2(Bucket=OUT_BUCKET, Prefix="silent/")
    assert listing.get("KeyCount", 0) == 0


@pytest.mark.parametrize(("name", "value"), [("TILESEG_HTTP_TIMEOUT", "soon"),
                                             ("TILESEG_HTTP_TIMEOUT", "0"),
                                             ("TILESEG_HTTP_RETRIES", "-1")])
def test_request_settings_are_checked(monkeypatch, name: str, value: str) -> None:
    from tileseg.sources.remote import RequestPolicy

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        RequestPolicy.from_environment()


def test_a_read_the_store_keeps_failing_names_its_rows_and_is_no_damaged_file(
        s3: tuple[S3Server, Path, Path]) -> None:
    """It used to read zeros (GDAL's read-ahead) or call the file damaged (exit 2)."""
    server, scene, _ = s3
    info = open_raster(_upload(server, scene, "reader.tif"))
    with WindowReader(info) as reader:
        server.faults.fail(503, path="reader.tif")
        with pytest.raises(SourceUnavailableError, match=r"reader.tif: cannot read rows 0-64, "
                           r"cols 0-192 after 2 tries \(Please reduce your request rate.\): "
                           r"the store did not serve it; rerun with resume") as failed:
            reader.read(Rect(0, 0, 64, 192))
    assert failed.value.exit_code == 5 and server.faults.hits >= 2


def test_vectorizing_a_mask_the_store_stops_serving_writes_no_polygons(
        s3: tuple[S3Server, Path, Path], tmp_path: Path, capfd) -> None:
    """A failed read of a remote mask is one line, not a traceback (or, with GDAL's read-ahead,
    a mask of the zeros it handed back without raising)."""
    server, _, _ = s3
    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", driver="COG", height=512, width=512, count=1, dtype="uint8",
                       crs="EPSG:32631", blocksize=128,  # larger than GDAL's first request
                       transform=Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
        dst.write((random_image(1, 512, 512, seed=5) // 64).astype("uint8"))
    src = _upload(server, mask, "mask.tif")
    out = tmp_path / "polygons.gpkg"
    server.faults.fail(503, path="mask.tif", methods=("GET",), after=1)  # the header: served
    capfd.readouterr()
    result = CliRunner().invoke(cli, ["vectorize", src, str(out)])
    stderr = result.stderr + capfd.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"Error: {src}: a read failed") and "ERROR 1" not in stderr
    assert not out.exists()
