"""predict with DST on object storage, against a real S3 API server (moto) on loopback: Zarr and
COG outputs equal the local run bitwise, resume from the store, one run per DST, clean refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner
from conftest import interrupt_after, per_pixel_model, random_image
from s3_server import S3Server, running_s3, s3_environment

from tileseg.config import PredictConfig
from tileseg.errors import DestinationBusyError
from tileseg.predict import predict
from tileseg.store import StoreLocation, StoreLock, put_bytes, zarr_store

BUCKET = "tileseg-cloud-out"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server, s3_environment(server):
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def _config(src: Path | str, dst: Path | str, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=96, workers=1)
    base.update(kw)
    return PredictConfig(src=str(src), dst=str(dst), **base)  # type: ignore[arg-type]


def _keys(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _store_mask(url: str) -> tuple[np.ndarray, dict[str, object]]:
    root = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    return np.asarray(root["mask"][:]), dict(root.attrs["tileseg"])


@pytest.fixture
def scene(make_raster, tmp_path: Path) -> tuple[Path, np.ndarray]:
    src = make_raster(random_image(3, 150, 230))
    model = per_pixel_model(3, 4)
    local = predict(_config(src, tmp_path / "local.tif"), model=model)
    with rasterio.open(local.dst) as out:
        mask = out.read(1)
    assert len(np.unique(mask)) >= 3  # several classes: a comparison that can fail
    return src, mask


def test_zarr_on_s3_equals_the_local_run(s3: S3Server, scene) -> None:
    src, expected = scene
    url = f"s3://{BUCKET}/zarr/out.zarr"
    result = predict(_config(src, url), model=per_pixel_model(3, 4))
    assert result.dst == url
    mask, attrs = _store_mask(url)
    np.testing.assert_array_equal(mask, expected)
    assert attrs["complete"] is True and attrs["fingerprint"]
    keys = _keys(s3, "zarr/")
    assert not [k for k in keys if ".partial/" in k or k.endswith(".lock")]  # staging gone


def test_cog_on_s3_equals_the_local_run(s3: S3Server, scene, tmp_path: Path) -> None:
    src, expected = scene
    url = f"s3://{BUCKET}/cog/out.tif"
    predict(_config(src, url), model=per_pixel_model(3, 4))
    local = tmp_path / "fetched.tif"
    local.write_bytes(s3.client().get_object(Bucket=BUCKET, Key="cog/out.tif")["Body"].read())
    with rasterio.open(local) as out:
        np.testing.assert_array_equal(out.read(1), expected)
        assert "TILESEG_CLASSES" in out.tags()
    assert _keys(s3, "cog/") == ["cog/out.tif"]  # no staging, lock or probe left


def test_interrupted_run_resumes_from_the_store(s3: S3Server, scene) -> None:
    src, expected = scene
    url = f"s3://{BUCKET}/resume/out.zarr"
    first = per_pixel_model(3, 4)
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, url), model=first, progress=interrupt_after(2))
    mask, attrs = _store_mask(url)
    assert attrs["complete"] is False  # what a reader sees before the end
    assert any(k.startswith("resume/out.zarr.partial/work/done/") for k in _keys(s3, "resume/"))
    second = per_pixel_model(3, 4)
    result = predict(_config(src, url, resume=True), model=second)
    mask, attrs = _store_mask(url)
    np.testing.assert_array_equal(mask, expected)
    assert attrs["complete"] is True
    assert result.report["chunks_resumed"] >= 2  # the finished chunks were not inferred again
    assert 0 < second.module.tiles_seen < result.tiles_total  # the rest was reused
    assert not [k for k in _keys(s3, "resume/") if ".partial/" in k]


def test_second_run_on_one_destination_exits_75(s3: S3Server, scene) -> None:
    src, _ = scene
    url = f"s3://{BUCKET}/busy/out.tif"
    with StoreLock(StoreLocation.parse(url + ".lock")):
        with pytest.raises(DestinationBusyError) as caught:
            predict(_config(src, url), model=per_pixel_model(3, 4))
    assert caught.value.exit_code == 75
    assert _keys(s3, "busy/") == []  # the lock is released, nothing else written


def _cli(args: list[str]) -> tuple[int, str]:
    from tileseg.cli.main import cli

    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_missing_bucket_is_one_line_exit_2(s3: S3Server, scene, deeplab_dir: Path) -> None:
    src, _ = scene
    code, output = _cli(["predict", str(src), "s3://no-such-bucket-7/out.tif",
                         "--model", str(deeplab_dir)])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "bucket does not exist" in lines[0], output
    assert "Traceback" not in output
    buckets = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-7" not in buckets


def test_overwrite_refuses_a_foreign_object(s3: S3Server, scene) -> None:
    src, _ = scene
    url = f"s3://{BUCKET}/foreign/out.tif"
    put_bytes(StoreLocation.parse(url), b"someone's data")
    with pytest.raises(Exception) as caught:
        predict(_config(src, url, overwrite=True), model=per_pixel_model(3, 4))
    assert getattr(caught.value, "exit_code", None) == 4 and "not written by tileseg" in str(
        caught.value)
    body = s3.client().get_object(Bucket=BUCKET, Key="foreign/out.tif")["Body"].read()
    assert body == b"someone's data"
    assert _keys(s3, "foreign/") == ["foreign/out.tif"]


def test_overwrite_replaces_tileseg_own_zarr_on_s3(s3: S3Server, scene) -> None:
    src, expected = scene
    url = f"s3://{BUCKET}/again/out.zarr"
    predict(_config(src, url), model=per_pixel_model(3, 4))
    with pytest.raises(Exception, match="already exists"):
        predict(_config(src, url), model=per_pixel_model(3, 4))
    predict(_config(src, url, overwrite=True), model=per_pixel_model(3, 4))
    mask, attrs = _store_mask(url)
    np.testing.assert_array_equal(mask, expected)
    assert attrs["complete"] is True
    json.dumps(attrs)  # plain JSON, as the local store


def test_unreachable_endpoint_is_one_line_exit_2(s3: S3Server, scene, deeplab_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = scene
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    code, output = _cli(["predict", str(src), "s3://unreachable-bucket/out.zarr",
                         "--model", str(deeplab_dir)])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert "s3://unreachable-bucket/out.zarr: the store refused or did not answer" in lines[0]
