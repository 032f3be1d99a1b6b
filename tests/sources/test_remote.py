"""Rasters read from object storage: a real S3 API server (moto) on loopback, real GDAL /vsis3/.

The server is started and stopped by this module; AWS_ENDPOINT_URL points GDAL at it the way
it points the AWS SDKs (tileseg translates it into GDAL's options).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from conftest import per_pixel_model, random_image
from s3_server import S3Server, checking_credentials, running_s3, s3_environment

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import InputError
from tileseg.pipeline import predict
from tileseg.sources.raster import open_raster

BUCKET = "tileseg-scenes"
SHAPE = (3, 700, 600)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, Path]]:
    """The server with one COG uploaded; yields it and the same COG as a local file."""
    local = tmp_path_factory.mktemp("cog") / "scene.tif"
    with rasterio.open(local, "w", driver="COG", height=SHAPE[1], width=SHAPE[2],
                       count=SHAPE[0], dtype="uint8", crs="EPSG:32631", blocksize=256,
                       transform=Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
        dst.write(random_image(*SHAPE, dtype="uint8", seed=3))
    with running_s3() as server, s3_environment(server):
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(local), BUCKET, "scenes/scene.tif")
        # an anonymous web read, as of a COG published over https
        client.upload_file(str(local), BUCKET, "public/scene.tif",
                           ExtraArgs={"ACL": "public-read"})
        yield server, local


def _config(src: str, dst: Path, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=256, precision="fp32")
    base.update(kw)
    return PredictConfig(src=src, dst=str(dst), **base)  # type: ignore[arg-type]


def _mask(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize("form", ["s3", "vsis3", "http"])
def test_remote_cog_gives_the_local_mask_bitwise(s3: tuple[S3Server, Path], tmp_path: Path,
                                                 form: str) -> None:
    server, local = s3
    src = {"s3": f"s3://{BUCKET}/scenes/scene.tif",
           "vsis3": f"/vsis3/{BUCKET}/scenes/scene.tif",
           "http": f"{server.endpoint}/{BUCKET}/public/scene.tif"}[form]
    model = per_pixel_model(3, 5, scale=1 / 255, seed=2)
    expected = _mask(predict(_config(str(local), tmp_path / "local.tif"), model=model).dst)
    assert len(np.unique(expected)) >= 3  # a mask worth comparing
    server.traffic.reset()
    remote = predict(_config(src, tmp_path / "remote.tif"), model=model)
    np.testing.assert_array_equal(_mask(remote.dst), expected)
    assert server.traffic.gets > 0  # it really went over HTTP


def test_a_chunk_fetches_each_block_once(s3: tuple[S3Server, Path], tmp_path: Path) -> None:
    server, local = s3
    server.traffic.reset()
    # One chunk holds the whole raster: every block it needs is fetched once, so the bytes
    # fetched are the file's (plus header re-reads), not a multiple. Several chunks: below.
    predict(_config(f"s3://{BUCKET}/scenes/scene.tif", tmp_path / "m.tif", chunk_size=1024),
            model=per_pixel_model(3, 5, scale=1 / 255))
    ratio = server.traffic.bytes_out / local.stat().st_size
    assert 0.5 <= ratio <= 1.3, ratio  # below 1: the COG's overviews are never read


def test_info_reads_a_remote_raster(s3: tuple[S3Server, Path]) -> None:
    info = open_raster(f"s3://{BUCKET}/scenes/scene.tif")
    assert (info.height, info.width, info.count) == SHAPE[1:] + SHAPE[:1]


@pytest.mark.parametrize(("src", "words"), [
    ("s3://no-such-bucket-here/scene.tif", "no-such-bucket-here"),
    (f"s3://{BUCKET}/scenes/missing.tif", "missing.tif"),
])
def test_missing_remote_objects_are_one_line_and_leave_nothing(
        s3: tuple[S3Server, Path], tmp_path: Path, src: str, words: str) -> None:
    dst = tmp_path / "out.tif"
    result = CliRunner().invoke(cli, ["predict", src, str(dst)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []



def test_wrong_credentials_for_a_remote_raster_are_one_line_exit_2(
        s3: tuple[S3Server, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, local = s3
    # an object no earlier test read: nothing of it in GDAL's cache
    server.client().upload_file(str(local), BUCKET, "scenes/guarded.tif")
    src = f"s3://{BUCKET}/scenes/guarded.tif"
    dst = tmp_path / "out.tif"
    with checking_credentials() as good:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        result = CliRunner().invoke(cli, ["predict", src, str(dst)])
        # the server serves it to the good key: the key was what failed
        import boto3

        reader = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id=good["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=good["AWS_SECRET_ACCESS_KEY"])
        assert reader.head_object(Bucket=BUCKET, Key="scenes/guarded.tif")["ContentLength"] > 0
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "guarded.tif" in lines[0] and "credentials" in lines[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []

def test_an_unreachable_endpoint_is_one_clear_error(s3: tuple[S3Server, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing there
    with pytest.raises(InputError, match="scene.tif: cannot be read .*Could not connect.*AWS_ENDPOINT_URL"):
        open_raster(f"s3://{BUCKET}/scenes/scene.tif")


def test_chunks_of_one_run_fetch_the_blocks_they_share_once(
        s3: tuple[S3Server, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tileseg.sources.raster

    server, local = s3
    src = f"s3://{BUCKET}/scenes/scene.tif"
    model = per_pixel_model(3, 5, scale=1 / 255)
    # 3 x 3 chunks of 256 px over 256-px blocks: each halo reaches into its neighbours' blocks
    server.traffic.reset()
    predict(_config(src, tmp_path / "shared.tif"), model=model)
    shared = server.traffic.bytes_out / local.stat().st_size
    # the same run with every chunk opening the raster afresh, as before datasets were handed on
    monkeypatch.setattr(tileseg.sources.raster._DATASETS, "MAX_IDLE", 0)
    server.traffic.reset()
    predict(_config(src, tmp_path / "fresh.tif"), model=model)
    fresh = server.traffic.bytes_out / local.stat().st_size
    assert shared <= 1.05, (shared, fresh)
    assert fresh > 1.3 * shared, (shared, fresh)  # the comparison measures something
    assert tileseg.sources.raster._DATASETS._idle == []  # the run closed what it kept
