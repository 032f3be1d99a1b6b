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
from s3_server import S3Server, checking_credentials, s3_with_buckets

from tileseg.config import PredictConfig
from tileseg.errors import DestinationBusyError
from tileseg.outputs.store import StoreLock, StoreURL, check_writable, put_bytes, zarr_store
from tileseg.pipeline import predict

BUCKET = "tileseg-cloud-out"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_with_buckets(BUCKET) as server:
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
    # no staging, lock or probe left; the style sidecars beside it
    assert _keys(s3, "cog/") == ["cog/out.qml", "cog/out.stac.json", "cog/out.tif",
                                 "cog/out.tif.aux.xml"]


def test_interrupted_run_resumes_from_the_store(s3: S3Server, scene) -> None:
    src, expected = scene
    url = f"s3://{BUCKET}/resume/out.zarr"
    first = per_pixel_model(3, 4)
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, url), model=first, progress=interrupt_after(2))
    mask, attrs = _store_mask(url)
    assert attrs["complete"] is False  # what a reader sees before the end
    # progress counts tiles as they are inferred: two chunks' work is saved (spill pieces; a
    # chunk is written once its neighbours are inferred too)
    assert any(k.startswith("resume/out.zarr.partial/work/") for k in _keys(s3, "resume/"))
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
    with StoreLock(StoreURL.parse(url + ".lock")):
        with pytest.raises(DestinationBusyError) as caught:
            predict(_config(src, url), model=per_pixel_model(3, 4))
    assert caught.value.exit_code == 75
    assert _keys(s3, "busy/") == []  # the lock is released, nothing else written



HOLDER = """
import sys, time
from tileseg.outputs.store import StoreURL, StoreLock
with StoreLock(StoreURL.parse(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_driver_exits_75_while_the_first_lives_then_goes_ahead(
        s3: S3Server, scene, deeplab_dir: Path) -> None:
    import signal
    import subprocess
    import sys

    src, expected = scene
    url = f"s3://{BUCKET}/two-drivers/out.zarr"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, url + ".lock"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "locked"
        code, output = _cli(["predict", str(src), url, "--model", str(deeplab_dir)])
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 75 and len(lines) == 1, output
        assert f"(pid {first.pid} on " in lines[0] and "holds the lock" in lines[0]
        assert _keys(s3, "two-drivers/") == ["two-drivers/out.zarr.lock"]  # only its lock
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed: this machine proves it gone, so the next run goes ahead without its lease
    predict(_config(src, url), model=per_pixel_model(3, 4))
    np.testing.assert_array_equal(_store_mask(url)[0], expected)
    assert not [k for k in _keys(s3, "two-drivers/") if ".lock" in k or ".partial/" in k]

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
    put_bytes(StoreURL.parse(url), b"someone's data")
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



@pytest.mark.parametrize("wrong", [
    {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000", "AWS_SECRET_ACCESS_KEY": "whatever"},
    {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},  # a known key, a bad signature
], ids=["unknown-key", "wrong-secret"])
def test_wrong_credentials_are_one_line_exit_2_and_leave_nothing(
        s3: S3Server, scene, deeplab_dir: Path, monkeypatch: pytest.MonkeyPatch,
        wrong: dict[str, str]) -> None:
    src, _ = scene
    url = f"s3://{BUCKET}/creds/out.tif"
    with checking_credentials() as good:
        for name, value in {**good, **wrong}.items():
            monkeypatch.setenv(name, value)
        code, output = _cli(["predict", str(src), url, "--model", str(deeplab_dir)])
        for name, value in good.items():
            monkeypatch.setenv(name, value)
        check_writable(StoreURL.parse(url))  # the good key passes: the refusal was the key's
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert f"{url}: " in lines[0] and "credentials" in lines[0]  # where, and what to check
    assert "Traceback" not in output
    assert _keys(s3, "creds/") == []  # no probe, lock or staging object


def test_the_driver_counts_finished_chunks_with_one_listing(s3: S3Server) -> None:
    from types import SimpleNamespace

    from tileseg.outputs.workdir import open_work_dir
    from tileseg.run_report import Tally
    from tileseg.tiling.grid import TileGrid

    grid = TileGrid.for_raster(300, 300, 64, 16, 96)
    work = open_work_dir(f"s3://{BUCKET}/tally/out.zarr.partial/work")
    for row, col in ((0, 0), (1, 2)):
        work.mark_done(row, col, {"tiles": 1, "skipped": 0})
    s3.traffic.reset()
    tally = Tally.for_run(SimpleNamespace(grid=grid), work, None, 0.0)  # type: ignore[arg-type]
    assert tally.chunks_done_before == 2 and grid.num_chunks > 10
    assert s3.traffic.requests == {"GET": 1}  # a listing, not a HEAD per chunk

# -- a cluster whose workers share no disk ---------------------------------------------------

def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_cluster_workers_share_only_the_store(s3: S3Server, make_raster, several_class_deeplab,
                                              tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from distributed import Nanny, Scheduler, SpecCluster

    src = make_raster(random_image(3, 260, 300, seed=5), block=64)
    model = str(several_class_deeplab)
    local = predict(PredictConfig(str(src), str(tmp_path / "local.tif"), model=model,
                                  tile_size=96, overlap=16, chunk_size=128))
    with rasterio.open(local.dst) as out:
        expected = out.read(1)
    assert len(np.unique(expected)) >= 2
    folders = [tmp_path / f"worker{i}" for i in range(2)]
    for folder in folders:
        (folder / "tmp").mkdir(parents=True)
    workers = {i: {"cls": Nanny, "options": {"nthreads": 1, "local_directory": str(folder),
                                             "env": {"TMPDIR": str(folder / "tmp")}}}
               for i, folder in enumerate(folders)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    before = _files(tmp_path)
    url = f"s3://{BUCKET}/cluster/out.zarr"
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, \
            distributed.Client(cluster) as client:
        def own_folder() -> str:  # each worker works in a folder of its own: cwd and temp files
            import os
            import tempfile

            os.chdir(Path(os.environ["TMPDIR"]).parent)
            tempfile.tempdir = None  # read TMPDIR again
            return os.getcwd()

        cwds = client.run(own_folder)
        assert sorted(cwds.values()) == sorted(str(f) for f in folders)
        result = predict(PredictConfig(str(src), url, model=model, tile_size=96, overlap=16,
                                       chunk_size=128), client=client)
    mask, attrs = _store_mask(url)
    np.testing.assert_array_equal(mask, expected)
    assert attrs["complete"] is True
    assert result.tiles_inferred == local.tiles_inferred == result.tiles_total  # each once
    # nothing of the run on any local disk: no spill, marker, Zarr chunk or staging folder
    written = _files(tmp_path) - before
    assert not [f for f in written if f.endswith((".npz", ".json")) or ".zarr" in f
                or ".partial" in f], written
    assert [k for k in _keys(s3, "cluster/") if not k.startswith("cluster/out.zarr/")] == [
        "cluster/out.stac.json"]  # the output's STAC item, beside it


def test_report_on_s3_is_written_once_and_a_foreign_one_kept(s3: S3Server, scene) -> None:
    src, _ = scene
    url = f"s3://{BUCKET}/report/out.zarr"
    report = f"s3://{BUCKET}/report/run.json"
    predict(_config(src, url, report=report), model=per_pixel_model(3, 4))
    body = json.loads(s3.client().get_object(Bucket=BUCKET, Key="report/run.json")["Body"].read())
    assert body["tileseg_report"] == 1 and body["dst"] == url and body["tiles_total"] > 0
    foreign = f"s3://{BUCKET}/report/notes.json"
    put_bytes(StoreURL.parse(foreign), b'{"mine": true}')
    with pytest.raises(Exception, match="not written by tileseg") as caught:
        predict(_config(src, url, report=foreign, overwrite=True), model=per_pixel_model(3, 4))
    assert getattr(caught.value, "exit_code", None) == 4
    notes = s3.client().get_object(Bucket=BUCKET, Key="report/notes.json")["Body"].read()
    assert notes == b'{"mine": true}'
    assert _store_mask(url)[1]["complete"] is True  # refused before anything was replaced


def test_cog_on_s3_resume_when_finished_and_overwrite_read_its_tag(s3: S3Server, scene) -> None:
    src, _ = scene
    url = f"s3://{BUCKET}/cog-again/out.tif"
    predict(_config(src, url), model=per_pixel_model(3, 4))
    again = predict(_config(src, url, resume=True), model=per_pixel_model(3, 4))
    assert again.report == {"status": "already complete"}  # its fingerprint tag, read via GDAL
    other = predict(_config(src, url, overwrite=True, overlap=8), model=per_pixel_model(3, 4))
    assert other.tiles_inferred > 0  # tileseg's own COG replaced (its TILESEG_CLASSES tag)
    with pytest.raises(Exception, match="other inputs or options"):
        predict(_config(src, url, resume=True), model=per_pixel_model(3, 4))


def test_kubernetes_s3_job_shares_no_volume_and_its_arguments_parse(monkeypatch) -> None:
    import yaml

    path = Path(__file__).parents[2] / "workflows" / "kubernetes" / "predict-s3-job.yaml"
    (job,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "volumes" not in spec and "volumeMounts" not in container
    assert container["command"] == ["tileseg", "predict"]
    seen: dict[str, PredictConfig] = {}
    monkeypatch.setattr("tileseg.pipeline.predict",
                        lambda config, **kw: seen.setdefault("config", config))
    code, output = _cli(["predict", *container["args"]])
    config = seen["config"]
    assert config.src.startswith("s3://") and config.dst.startswith("s3://"), output
    assert config.report.startswith("s3://") and config.resume


def test_a_run_that_lost_its_lock_does_not_publish(s3: S3Server, scene, monkeypatch) -> None:
    src, _ = scene
    url = f"s3://{BUCKET}/lost/out.tif"
    acquire = StoreLock.acquire

    def acquire_then_lose(self: StoreLock) -> None:  # as if a renewal had failed
        acquire(self)
        self.lost = True

    monkeypatch.setattr(StoreLock, "acquire", acquire_then_lose)
    with pytest.raises(Exception, match="lost its lock") as caught:
        predict(_config(src, url), model=per_pixel_model(3, 4))
    assert getattr(caught.value, "exit_code", None) == 5
    keys = _keys(s3, "lost/")
    assert "lost/out.tif" not in keys and any(".partial/" in k for k in keys)  # resumable
    assert not [k for k in keys if k.endswith((".qml", ".aux.xml"))]  # no sidecar either


@pytest.mark.slow
def test_killed_worker_the_s3_run_finishes_identically(s3: S3Server, make_raster,
                                                       several_class_deeplab,
                                                       tmp_path: Path) -> None:
    import os
    import signal

    distributed = pytest.importorskip("distributed")
    src = make_raster(random_image(3, 260, 300, seed=5), block=64)
    model = str(several_class_deeplab)
    settings = dict(model=model, tile_size=96, overlap=16, chunk_size=128)
    local = predict(PredictConfig(str(src), str(tmp_path / "local.tif"), **settings))  # type: ignore[arg-type]
    url = f"s3://{BUCKET}/killed/out.tif"
    killed: dict[str, int] = {}
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        pids = client.run(os.getpid)

        def kill_one_worker(progress: object) -> None:
            if not killed:  # after the first chunk is written: the run is in full swing
                pid = sorted(pids.values())[0]
                os.kill(pid, signal.SIGKILL)
                killed["done"] = progress.done  # type: ignore[attr-defined]

        result = predict(PredictConfig(str(src), url, **settings), client=client,  # type: ignore[arg-type]
                         progress=kill_one_worker)
    assert killed and killed["done"] < result.tiles_total
    fetched = tmp_path / "fetched.tif"
    fetched.write_bytes(s3.client().get_object(Bucket=BUCKET, Key="killed/out.tif")["Body"].read())
    with rasterio.open(fetched) as out, rasterio.open(local.dst) as ref:
        np.testing.assert_array_equal(out.read(1), ref.read(1))
    # saved spills are reused, never inferred twice: the count can only fall short
    assert result.tiles_inferred <= result.tiles_total
    assert _keys(s3, "killed/") == ["killed/out.qml", "killed/out.stac.json", "killed/out.tif",
                                    "killed/out.tif.aux.xml"]


def test_cog_with_zarr_on_s3_keeps_both(s3: S3Server, scene) -> None:
    src, expected = scene
    url, zarr_url = f"s3://{BUCKET}/both/out.tif", f"s3://{BUCKET}/both/out.zarr"
    result = predict(_config(src, url, zarr_path=zarr_url, probabilities="uint8"),
                     model=per_pixel_model(3, 4))
    assert result.zarr_path == zarr_url
    mask, attrs = _store_mask(zarr_url)
    np.testing.assert_array_equal(mask, expected)
    assert attrs["complete"] is True
    root = zarr.open_group(zarr_store(zarr_url, read_only=True), mode="r")
    assert root["probabilities"].shape == (4, *expected.shape)
    keys = _keys(s3, "both/")
    assert "both/out.tif" in keys and not [k for k in keys if ".partial/" in k or ".lock" in k]
    with pytest.raises(Exception, match="both to the store or both locally"):
        predict(_config(src, "local.tif", zarr_path=zarr_url), model=per_pixel_model(3, 4))


@pytest.mark.slow
def test_killed_driver_resumes_from_the_store_at_once(s3: S3Server, make_raster,
                                                      several_class_deeplab,
                                                      tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    src = make_raster(random_image(3, 400, 400, seed=5), block=64)  # 81 tiles, 25 chunks
    model = str(several_class_deeplab)
    small = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "96", "--workers", "1"]
    local = predict(PredictConfig(str(src), str(tmp_path / "local.tif"), model=model,
                                  tile_size=64, overlap=16, chunk_size=96, workers=1))
    with rasterio.open(local.dst) as out:
        expected = out.read(1)
    assert len(np.unique(expected)) >= 2  # several classes: a comparison that can fail
    url = f"s3://{BUCKET}/killed-driver/out.tif"
    done = "killed-driver/out.tif.partial/work/done/"
    driver = subprocess.Popen([sys.executable, "-m", "tileseg", "predict", str(src), url, "-m",
                               model, *small, "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if len(_keys(s3, done)) >= 3:
                break
            time.sleep(0.02)
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        driver.send_signal(signal.SIGKILL)  # no handler runs: the lock object stays
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == -signal.SIGKILL
    finished_before = len(_keys(s3, done))
    assert 3 <= finished_before < local.chunks
    lock = json.loads(s3.client().get_object(Bucket=BUCKET,
                                             Key="killed-driver/out.tif.lock")["Body"].read())
    assert lock["pid"] == driver.pid and lock["lease_expires"] > time.time() + 30  # still live
    assert "killed-driver/out.tif" not in _keys(s3, "killed-driver/")  # nothing looks complete

    report = tmp_path / "resume.json"
    code, output = _cli(["predict", str(src), url, "-m", model, *small, "--resume",
                         "--report", str(report)])
    assert code == 0, output
    # the dead holder's lock was taken over at once, not after its 60 s lease (exit 75 before),
    # and the log says so
    assert f"(pid {driver.pid} on " in output and "no longer runs; taking the lock" in output
    info = json.loads(report.read_text())
    assert info["chunks_resumed"] >= finished_before  # finished chunks were not inferred again
    assert 0 < info["tiles_inferred"] < info["tiles_total"] == local.tiles_total
    fetched = tmp_path / "fetched.tif"
    fetched.write_bytes(s3.client().get_object(Bucket=BUCKET,
                                               Key="killed-driver/out.tif")["Body"].read())
    with rasterio.open(fetched) as out:
        np.testing.assert_array_equal(out.read(1), expected)
    assert _keys(s3, "killed-driver/") == [
        "killed-driver/out.qml", "killed-driver/out.stac.json", "killed-driver/out.tif",
        "killed-driver/out.tif.aux.xml"]  # no lock, no staging


# -- staging that resume or overwrite can always clear; what is not tileseg's stays (issue 18) --

@pytest.fixture
def one_chunk(make_raster, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A scene of one chunk (fewer requests) and its mask from a local run."""
    src = make_raster(random_image(3, 90, 90, seed=2), name="one-chunk.tif")
    local = predict(_config(src, tmp_path / "one-chunk.mask.tif"), model=per_pixel_model(3, 4))
    with rasterio.open(local.dst) as out:
        mask = out.read(1)
    assert len(np.unique(mask)) >= 3
    return src, mask


@pytest.mark.parametrize(("name", "recover"), [("out.tif", "overwrite"), ("out.zarr", "resume")])
def test_a_run_killed_before_its_run_record_is_recovered_by_resume_and_by_overwrite(
        s3: S3Server, one_chunk, monkeypatch: pytest.MonkeyPatch, name: str,
        recover: str) -> None:
    import tileseg.pipeline

    src, expected = one_chunk
    real = tileseg.pipeline.create_zarr

    def create_then_die(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # killed once the Zarr objects are up, before any chunk

    prefix = f"killed-early-{recover}"
    url = f"s3://{BUCKET}/{prefix}/{name}"
    monkeypatch.setattr(tileseg.pipeline, "create_zarr", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, url), model=per_pixel_model(3, 4))
    monkeypatch.undo()
    assert f"{prefix}/{name}.partial/run.json" in _keys(s3, f"{prefix}/")  # the first object
    result = predict(_config(src, url, **{recover: True}), model=per_pixel_model(3, 4))
    assert result.tiles_inferred == result.tiles_total
    if name.endswith(".zarr"):
        mask, attrs = _store_mask(url)
        assert attrs["complete"] is True
    else:
        local = Path(src).with_name("fetched.tif")
        local.write_bytes(s3.client().get_object(Bucket=BUCKET,
                                                 Key=f"{prefix}/{name}")["Body"].read())
        with rasterio.open(local) as out:
            mask = out.read(1)
    np.testing.assert_array_equal(mask, expected)
    assert not [k for k in _keys(s3, f"{prefix}/") if ".partial/" in k]


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]],
                         ids=["plain", "resume", "overwrite"])
def test_a_users_objects_under_the_staging_prefix_are_not_tileseg_s_and_stay(
        s3: S3Server, scene, deeplab_dir: Path, flags: list[str]) -> None:
    src, _ = scene
    prefix = f"users-partial-{len(flags) and flags[0].strip('-')}"
    url = f"s3://{BUCKET}/{prefix}/out.tif"
    put_bytes(StoreURL.parse(f"{url}.partial/notes.txt"), b"mine")
    code, output = _cli(["predict", str(src), url, "--model", str(deeplab_dir), *flags])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 4 and len(lines) == 1, output
    assert f"{url}.partial: objects under this run's staging prefix were not written by " \
           "tileseg" in lines[0] and "interrupted run" not in lines[0]
    assert _keys(s3, f"{prefix}/") == [f"{prefix}/out.tif.partial/notes.txt"]


@pytest.mark.parametrize("argv", [
    ["s3://{bucket}"], ["s3://{bucket}/"], ["s3://{bucket}/", "--format", "zarr"],
    ["s3://{bucket}/m.tif", "--zarr", "s3://zarr-{bucket}"],
    ["s3://{bucket}/m.tif", "--report", "s3://report-{bucket}/"],
], ids=["root", "root-slash", "root-zarr", "zarr-root", "report-root"])
def test_a_bucket_root_as_destination_is_refused_before_any_request(
        s3: S3Server, scene, deeplab_dir: Path, argv: list[str]) -> None:
    src, _ = scene
    args = [a.format(bucket=BUCKET) for a in argv]
    s3.traffic.reset()
    code, output = _cli(["predict", str(src), *args, "--model", str(deeplab_dir)])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 4 and len(lines) == 1, output
    assert "is a bucket root, not an object; name a key inside the bucket" in lines[0]
    assert s3.traffic.requests == {}  # no lock, probe or staging object: not even a listing


def test_a_full_tmpdir_for_a_store_output_is_exit_5_naming_it_and_leaves_no_scratch(
        s3: S3Server, one_chunk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os
    import tempfile

    import tileseg.pipeline
    from tileseg.errors import DiskFullError

    src, expected = one_chunk
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    real = tileseg.pipeline.zarr_to_geotiff

    def convert_until_full(zarr_path: str, dst: Path, **kwargs: object) -> None:
        real(zarr_path, dst, **kwargs)  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # e.g. writing the overviews

    monkeypatch.setattr(tileseg.pipeline, "zarr_to_geotiff", convert_until_full)
    url = f"s3://{BUCKET}/tmpdir-full/out.tif"
    with pytest.raises(DiskFullError) as caught:
        predict(_config(src, url), model=per_pixel_model(3, 4))
    assert caught.value.exit_code == 5 and caught.value.folder == str(scratch)
    assert "(the temporary folder, TMPDIR)" in str(caught.value)
    assert list(scratch.iterdir()) == []  # the local GeoTIFF and its folder are gone
    assert "tmpdir-full/out.tif" not in _keys(s3, "tmpdir-full/")

    monkeypatch.setattr(tileseg.pipeline, "zarr_to_geotiff", real)
    model = per_pixel_model(3, 4)
    predict(_config(src, url, resume=True), model=model)
    assert model.module.tiles_seen == 0  # every chunk was kept on the store
    fetched = tmp_path / "fetched.tif"
    fetched.write_bytes(s3.client().get_object(Bucket=BUCKET,
                                               Key="tmpdir-full/out.tif")["Body"].read())
    with rasterio.open(fetched) as out:
        np.testing.assert_array_equal(out.read(1), expected)
    assert list(scratch.iterdir()) == []
