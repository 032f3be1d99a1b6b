"""The same job on in-process threads and on real dask.distributed worker processes (loopback).

Everything here runs real processes: a ``LocalCluster(processes=True)``, killed workers, and a
``tileseg predict`` subprocess killed with SIGKILL. Models travel as a directory (workers load it
themselves); tiles are small (64 px, overlap 16, chunks of 96 px) so a run takes seconds on CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner
from conftest import random_image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.pipeline import PredictResult, predict

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow

SMALL = {"tile_size": 64, "overlap": 16, "chunk_size": 96}
SMALL_ARGS = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "96"]


def _write(path: Path, data: np.ndarray, *, nodata: float | None = None, block: int = 64,
           **extra: object) -> Path:
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype.name, crs="EPSG:32631",
                       transform=Affine(10, 0, 500000, 0, -10, 6000000), nodata=nodata,
                       tiled=True, blockxsize=block, blockysize=block, **extra) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 x 400 (81 tiles, 25 chunks); its top 70 rows are nodata, so the first tile row (rows
    0-63: on the model's 16-px grid the 64-px tiles have their 16-px halo after the core) is
    skipped."""
    data = random_image(3, 400, 400, seed=3)
    data[:, :70] = 0
    return _write(tmp_path_factory.mktemp("scene") / "scene.tif", data, nodata=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.Client]:
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        yield client


def _config(src: Path, dst: Path, model: Path, **kw: object) -> PredictConfig:
    return PredictConfig(str(src), str(dst), model=str(model), **{**SMALL, **kw})  # type: ignore[arg-type]


def _outputs(tif: str | Path, zarr_path: str | Path | None = None) -> dict[str, np.ndarray]:
    with rasterio.open(tif) as src:
        out = {"tif_mask": src.read(1)}
    if zarr_path is not None:
        group = zarr.open_group(str(zarr_path), mode="r")
        out["zarr_mask"] = group["mask"][:]
        out["zarr_probabilities"] = group["probabilities"][:]
    return out


def _assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def clean(scene: Path, deeplab_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[PredictResult, dict[str, np.ndarray]]:
    """The reference: in-process threads, GeoTIFF + Zarr with uint8 probabilities."""
    out = tmp_path_factory.mktemp("clean")
    result = predict(_config(scene, out / "mask.tif", deeplab_dir, probabilities="uint8",
                             zarr_path=str(out / "mask.zarr")))
    return result, _outputs(out / "mask.tif", out / "mask.zarr")


def test_threads_and_worker_processes_give_bitwise_identical_outputs(
        scene, deeplab_dir, cluster, clean, tmp_path) -> None:
    reference, expected = clean
    result = predict(_config(scene, tmp_path / "mask.tif", deeplab_dir, probabilities="uint8",
                             zarr_path=str(tmp_path / "mask.zarr")), client=cluster)
    _assert_identical(_outputs(tmp_path / "mask.tif", tmp_path / "mask.zarr"), expected)
    with open(tmp_path / "mask.tif", "rb") as a, open(reference.dst, "rb") as b:
        assert a.read() == b.read()  # the GeoTIFF files themselves, byte for byte
    # Exactly once on the cluster too: every tile with a valid pixel inferred, none twice.
    assert result.tiles_skipped_nodata > 0
    assert result.tiles_inferred + result.tiles_skipped_nodata == result.tiles_total == 81
    assert (result.tiles_inferred, result.tiles_skipped_nodata) == (
        reference.tiles_inferred, reference.tiles_skipped_nodata)
    assert result.report["tasks"] == 2 * 25 + 1
    # Workers ran with their own torch thread count; outputs are identical regardless.
    assert set(cluster.run(lambda: __import__("torch").get_num_threads()).values()) == {1}


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_worker_processes_with_other_chunks_and_batches_give_the_same_mask(
        scene, several_class_deeplab, cluster, tmp_path, engine) -> None:
    """One-thread worker processes, 2-tile chunks and batches of 3 against this process's
    threads (two cores a forward pass), one chunk and batches of 8: the same mask, bitwise."""
    masks = []
    for name, client, chunk_size, batch_size in (("here", None, 4096, 8),
                                                 ("cluster", cluster, 96, 3)):
        predict(_config(scene, tmp_path / f"{name}.tif", several_class_deeplab, engine=engine,
                        chunk_size=chunk_size, batch_size=batch_size, device="cpu"),
                client=client)
        masks.append(_outputs(tmp_path / f"{name}.tif")["tif_mask"])
    assert int((masks[0] != masks[1]).sum()) == 0
    valid = masks[0][masks[0] != 255]
    assert (np.bincount(valid, minlength=3) / valid.size >= 0.05).sum() >= 2  # several classes


def test_scheduler_address_from_the_cli_and_environment(scene, deeplab_dir, cluster, clean,
                                                        tmp_path, monkeypatch) -> None:
    address = cluster.scheduler.address
    monkeypatch.setenv("TILESEG_SCHEDULER", address)
    report = tmp_path / "run.json"
    result = CliRunner().invoke(cli, ["predict", str(scene), str(tmp_path / "m.tif"), "-m",
                                      str(deeplab_dir), *SMALL_ARGS, "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["scheduler"] == address
    np.testing.assert_array_equal(_outputs(tmp_path / "m.tif")["tif_mask"],
                                  clean[1]["tif_mask"])


def test_scheduler_address_from_a_dask_config_file(scene, deeplab_dir, cluster, clean,
                                                   tmp_path, monkeypatch) -> None:
    """A platform sets ``tileseg: {scheduler: ...}`` once in a dask YAML file; jobs find it."""
    import dask

    address = cluster.scheduler.address
    config_dir = tmp_path / "dask"
    config_dir.mkdir()
    (config_dir / "tileseg.yaml").write_text(f"tileseg:\n  scheduler: {address}\n")
    monkeypatch.delenv("TILESEG_SCHEDULER", raising=False)
    with dask.config.set(dask.config.collect(paths=[str(config_dir)], env={})):
        result = predict(_config(scene, tmp_path / "m.tif", deeplab_dir))
        assert result.report["scheduler"] == address
        # what the workers resolved --device/--precision auto to, not "auto"
        assert (result.report["device"], result.report["precision"]) == ("cpu", "fp32")
        assert result.report["batch_size"] == 4
    np.testing.assert_array_equal(_outputs(tmp_path / "m.tif")["tif_mask"],
                                  clean[1]["tif_mask"])
    # without the file: in-process again
    local = predict(_config(scene, tmp_path / "l.tif", deeplab_dir))
    assert local.report["scheduler"] == "threads"


def test_killed_worker_process_the_job_finishes_identically(scene, deeplab_dir, clean,
                                                            tmp_path) -> None:
    killed: dict[str, object] = {}
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2

        def kill_one_worker(progress: object) -> None:
            if not killed:  # after the first chunk is written: the run is in full swing
                address, pid = sorted(pids.items())[0]
                os.kill(pid, signal.SIGKILL)
                killed.update(address=address, pid=pid, done=progress.done)  # type: ignore[attr-defined]

        result = predict(_config(scene, tmp_path / "mask.tif", deeplab_dir, probabilities="uint8",
                                 zarr_path=str(tmp_path / "mask.zarr")),
                         client=client, progress=kill_one_worker)
        assert killed and int(killed["done"]) < result.tiles_total  # type: ignore[call-overload]
        # The dead process is gone (its nanny may have started a fresh one).
        with pytest.raises(ProcessLookupError):
            os.kill(int(killed["pid"]), 0)  # type: ignore[call-overload]
    _assert_identical(_outputs(tmp_path / "mask.tif", tmp_path / "mask.zarr"), clean[1])
    # A task lost with the worker is computed again, but a chunk whose logits were already saved
    # is reused (counted 0), never inferred twice: the count can only fall short of the total.
    assert result.tiles_inferred + result.tiles_skipped_nodata <= result.tiles_total


def test_resume_after_the_client_process_is_killed(deeplab_dir, tmp_path) -> None:
    # Big enough (169 tiles, 49 chunks) that the kill lands mid-run.
    src = _write(tmp_path / "big.tif", random_image(3, 600, 600, seed=5))
    clean = predict(_config(src, tmp_path / "clean.tif", deeplab_dir))
    dst = tmp_path / "mask.tif"
    args = [sys.executable, "-m", "tileseg", "predict", str(src), str(dst), "-m",
            str(deeplab_dir), *SMALL_ARGS, "--workers", "1", "--quiet"]
    done = Path(f"{dst}.partial") / "work" / "done"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if done.is_dir() and len(os.listdir(done)) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    finished_before = len(os.listdir(done))
    assert 3 <= finished_before < clean.chunks
    assert not dst.exists()  # nothing that looks complete

    report = tmp_path / "resume.json"
    resumed = subprocess.run([*args, "--resume", "--report", str(report)], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    info = json.loads(report.read_text())
    assert info["chunks_resumed"] >= finished_before
    assert 0 < info["tiles_inferred"] < info["tiles_total"] == clean.tiles_total
    assert not Path(f"{dst}.partial").exists()
    np.testing.assert_array_equal(_outputs(dst)["tif_mask"], _outputs(clean.dst)["tif_mask"])


def _block_span(path: Path, row: int, col: int) -> tuple[int, int]:
    with rasterio.open(path) as src:
        offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
        size = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
    return int(offset), int(size)


def test_unreadable_block_names_chunk_and_source_then_resume_redoes_the_rest(
        deeplab_dir, cluster, tmp_path) -> None:
    data = random_image(3, 400, 400, seed=7)
    src = _write(tmp_path / "scene.tif", data, compress="deflate")
    clean = predict(_config(src, tmp_path / "clean.tif", deeplab_dir))
    original = src.read_bytes()
    # Garble one compressed block near the bottom right: decoding it fails.
    offset, size = _block_span(src, 5, 5)
    corrupt = bytearray(original)
    corrupt[offset : offset + size] = b"\xff" * size
    src.write_bytes(bytes(corrupt))

    dst = tmp_path / "mask.tif"
    args = ["predict", str(src), str(dst), "-m", str(deeplab_dir), *SMALL_ARGS,
            "--scheduler", cluster.scheduler.address]
    failed = CliRunner().invoke(cli, args)
    assert failed.exit_code == 2  # a damaged input is a bad input, not a failed run (issue 10)
    message = failed.output.strip().splitlines()[-1]
    assert message.startswith(f"Error: {src}: chunk (")
    assert "cannot read rows" in message and "damaged" in message and "--resume" in message
    assert "Decoding error" in message  # GDAL's own reason, not "See previous exception"
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()

    # The file is repaired in place (new mtime); resume still continues the same job.
    src.write_bytes(original)
    # the chunks whose tiles the failed run saved (how many depends on when the damaged chunk
    # ran: on a loaded machine it can be among the first; a task in flight may still save)
    saved = len(list(Path(f"{dst}.partial").rglob("pieces/r*_c*.npz")))
    report = tmp_path / "resume.json"
    resumed = CliRunner().invoke(cli, [*args, "--resume", "--report", str(report)])
    assert resumed.exit_code == 0, resumed.output
    info = json.loads(report.read_text())
    # every saved chunk is reused, and only the rest is inferred again
    assert info["chunks_resumed"] >= saved
    assert info["tiles_inferred"] + info["tiles_reused"] == info["tiles_total"]
    np.testing.assert_array_equal(_outputs(dst)["tif_mask"], _outputs(clean.dst)["tif_mask"])


def test_batch_on_the_cluster_with_one_bad_scene(scene, deeplab_dir, cluster, clean,
                                                 tmp_path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(scene.read_bytes()[:4000])  # truncated: the header survives, pixels do not
    manifest = tmp_path / "scenes.yaml"
    manifest.write_text(
        f"- {{src: {scene}, dst: out/a.tif}}\n"
        f"- {{src: bad.tif, dst: out/bad.tif}}\n"
        f"- {{src: {scene}, dst: out/b.zarr, probabilities: uint8}}\n"
    )
    (tmp_path / "out").mkdir()
    args = ["batch", str(manifest), "-m", str(deeplab_dir), *SMALL_ARGS,
            "--scheduler", cluster.scheduler.address, "--summary", str(tmp_path / "sum.json")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 5, first.output
    rows = json.loads((tmp_path / "sum.json").read_text())["scenes"]
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert rows[1]["error"] and "bad.tif" in rows[1]["error"]
    assert rows[0]["tiles_inferred"] == clean[0].tiles_inferred
    np.testing.assert_array_equal(_outputs(tmp_path / "out" / "a.tif")["tif_mask"],
                                  clean[1]["tif_mask"])
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "out" / "b.zarr"), mode="r")["probabilities"][:],
        clean[1]["zarr_probabilities"])

    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 5
    rows = json.loads((tmp_path / "sum.json").read_text())["scenes"]
    assert [r["status"] for r in rows] == ["skipped", "failed", "skipped"]


def test_workers_with_a_gpu_resource_run_one_infer_task_at_a_time(
        scene, deeplab_dir, clean, tmp_path) -> None:
    """``dask worker --resources GPU=1``: infer tasks request the GPU, so a worker with two
    threads never runs two of them at once; finalize tasks need none. Outputs are unchanged."""
    from tileseg.execution import gpu_workers

    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=2,
                                  resources={"GPU": 1}, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        assert gpu_workers(client) == 2
        with distributed.get_task_stream(client) as stream:
            result = predict(_config(scene, tmp_path / "mask.tif", deeplab_dir,
                                     probabilities="uint8", zarr_path=str(tmp_path / "mask.zarr")),
                             client=client)
        tasks = stream.data
    _assert_identical(_outputs(tmp_path / "mask.tif", tmp_path / "mask.zarr"), clean[1])
    assert result.tiles_inferred == clean[0].tiles_inferred  # still exactly once

    def spans(prefix: str) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for t in tasks:
            if str(t["key"]).startswith(f"('{prefix}"):
                compute = next(s for s in t["startstops"] if s["action"] == "compute")
                out.setdefault(t["worker"], []).append((compute["start"], compute["stop"]))
        return out

    infer = spans("tileseg-infer-")
    assert sum(len(v) for v in infer.values()) == 25
    for worker, intervals in infer.items():
        intervals.sort()
        busy = sum(stop - start for start, stop in intervals)
        overlap = sum(max(0.0, stop - start) for (_, stop), (start, _) in
                      zip(intervals, intervals[1:], strict=False))
        # a worker timestamps a task's stop just after it frees the GPU, so back-to-back tasks
        # may "overlap" by that bookkeeping gap; two tasks really at once overlap by most of
        # their duration
        assert overlap < 0.05 * busy, f"infer tasks ran concurrently on {worker}"
    assert sum(len(v) for v in spans("tileseg-finalize-").values()) == 25


def test_the_only_worker_dying_without_a_nanny_is_exit_5_after_a_bounded_wait(
        scene, deeplab_dir, tmp_path) -> None:
    """``dask worker --no-nanny``, the cluster's only worker, killed mid-run: nobody starts
    another, so the run says so once ``tileseg.no-worker-timeout`` has passed (exit 5) instead
    of waiting for ever; the finished chunks stay for --resume."""
    import threading

    import dask

    from tileseg.errors import RunError

    dst = tmp_path / "mask.tif"
    outcome: dict[str, object] = {}
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", lc.scheduler_address,
             "--no-nanny", "--nthreads", "1", "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)

            done = Path(f"{dst}.partial") / "work" / "done"

            def kill_the_worker_once_a_chunk_is_done() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if done.is_dir() and os.listdir(done):  # the run is under way
                        os.kill(worker.pid, signal.SIGKILL)
                        outcome["killed"] = True
                        return
                    time.sleep(0.02)

            def run() -> None:
                try:
                    with dask.config.set({"tileseg.no-worker-timeout": "2s"}):
                        predict(_config(scene, dst, deeplab_dir), client=client)
                except Exception as exc:  # noqa: BLE001 - checked below
                    outcome["error"] = exc

            killer = threading.Thread(target=kill_the_worker_once_a_chunk_is_done, daemon=True)
            killer.start()
            driver = threading.Thread(target=run, daemon=True)
            driver.start()
            driver.join(timeout=120)  # the old code waited here for ever
            assert not driver.is_alive(), "predict still waits on a cluster without workers"
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, RunError) and error.exit_code == 5, repr(error)
    assert "has had no worker for 2 s" in str(error) and "resume" in str(error)
    assert not dst.exists()
    assert outcome.get("killed") and len(os.listdir(done)) >= 1  # what was finished is kept for --resume


def test_progress_on_a_cluster_counts_tiles_within_a_chunk(deeplab_dir, cluster, tmp_path) -> None:
    """Workers report each batch's tiles through the client's events, before their chunk's
    result: one chunk of 16 tiles in batches of 4 shows 4, 8, 12, then 16."""
    src = _write(tmp_path / "small.tif", random_image(3, 150, 150, seed=4))
    events: list[object] = []
    result = predict(_config(src, tmp_path / "m.tif", deeplab_dir, chunk_size=2048,
                             batch_size=4), client=cluster, progress=events.append)
    assert result.chunks == 1 and result.tiles_total == 16
    assert [e.done for e in events] == [4, 8, 12, 16]  # type: ignore[attr-defined]


def test_a_stac_item_on_the_store_on_workers_that_share_no_disk(cluster, tmp_path) -> None:
    """Issue 20: a mixed-resolution, two-CRS item on the store, run by worker processes that
    get the item's bands and write the mask only through the store: the mask of the same item
    read locally in-process, and its STAC item beside it on the store."""
    import dataclasses

    from conftest import metadata
    from s3_server import running_s3, s3_environment
    from stac_scenes import write_item, write_scene

    from tileseg.models.loaded import ModelSpec, build_model, save_model

    files = write_scene(tmp_path / "scene")
    item = write_item(tmp_path / "scene", files)
    model = tmp_path / "model"
    bands = ("blue", "green", "nir08", "swir16")
    save_model(build_model(ModelSpec(encoder_name="resnet18", in_channels=4, classes=3)), model,
               dataclasses.replace(metadata(3, 4, scale=1e-4, dtype="uint16"), bands=bands))
    settings = dict(model=str(model), **SMALL)
    local = predict(PredictConfig(str(item), str(tmp_path / "local.tif"), **settings))  # type: ignore[arg-type]
    with running_s3() as server, s3_environment(server):
        client = server.client()
        client.create_bucket(Bucket="scenes")
        for path in item.parent.iterdir():
            client.upload_file(str(path), "scenes", f"s2/{path.name}")
        env = dict(server.env)  # the workers reach the store as this process does
        cluster.run(lambda: os.environ.update(env))
        try:
            result = predict(PredictConfig("s3://scenes/s2/item.json", "s3://scenes/out/m.tif",
                                           **settings), client=cluster)  # type: ignore[arg-type]
        finally:
            cluster.run(lambda: [os.environ.pop(k, None) for k in env])
        fetched = tmp_path / "fetched.tif"
        fetched.write_bytes(client.get_object(Bucket="scenes", Key="out/m.tif")["Body"].read())
        written = json.loads(client.get_object(Bucket="scenes", Key="out/m.stac.json")["Body"]
                             .read())
    assert result.chunks > 1 and result.tiles_inferred == local.tiles_inferred
    with rasterio.open(fetched) as out, rasterio.open(local.dst) as ref:
        np.testing.assert_array_equal(out.read(1), ref.read(1))
    assert written["links"][0]["href"] == "s3://scenes/s2/item.json"
