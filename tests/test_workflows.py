"""``tileseg batch`` as the entry point of scheduled jobs: a cluster of local worker processes
it starts, the lock that keeps cron from starting a second run, and the dask-jobqueue Slurm path
against stand-in sbatch/scancel commands that run each job script on this machine (real worker
processes on loopback); and ``python -m tileseg.workflows``, the deprecated alias that forwards
to it."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import random_image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.pipeline import predict

pytestmark = pytest.mark.slow

FAKE_SLURM = Path(__file__).parent / "fake_slurm"
OPTIONS = ["--tile-size", "64", "--overlap", "16"]


@pytest.fixture
def manifest(make_raster, tmp_path: Path) -> Path:
    """Two good scenes and one file that is not a raster, as a text manifest."""
    for i in range(2):
        make_raster(random_image(3, 90 + 20 * i, 120, seed=i), name=f"s{i}.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a raster")
    path = tmp_path / "scenes.txt"
    path.write_text("s0.tif\nbad.tif\ns1.tif\n")
    return path


def _summary(manifest: Path) -> dict[str, str]:
    doc = json.loads(manifest.with_name(manifest.name + ".summary.json").read_text())
    return {Path(str(row["src"])).name: str(row["status"]) for row in doc["scenes"]}


def _expected(src: Path, model: Path, tmp_path: Path) -> np.ndarray:
    dst = tmp_path / "reference" / f"{src.stem}.tif"
    dst.parent.mkdir(exist_ok=True)
    predict(PredictConfig(str(src), str(dst), model=str(model), tile_size=64, overlap=16))
    with rasterio.open(dst) as out:
        return out.read(1)


def _mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_local_workers_run_the_manifest_and_the_lock_stops_a_second_run(
        manifest: Path, deeplab_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tileseg.workflows import main

    out, lock = tmp_path / "masks", tmp_path / "batch.lock"
    argv = [str(manifest), "-o", str(out), "--model", str(deeplab_dir), *OPTIONS,
            "--local-workers", "1", "--lock", str(lock), "-v"]
    result = CliRunner().invoke(cli, ["batch", *argv])
    assert result.exit_code == 5, result.output  # one scene failed; the others ran
    # a job's log (with -v): dask's own start and shutdown lines (some 30 at INFO) are not in it
    chatter = [line for line in result.stderr.splitlines()
               if line.startswith(("INFO distributed", "DEBUG distributed"))]
    assert not chatter, chatter[:3]
    assert "waiting for 1 worker(s)" in result.stderr  # a started cluster: its worker first
    assert "3 scenes: 2 succeeded, 1 failed" in result.stderr
    assert _summary(manifest) == {"s0.tif": "succeeded", "bad.tif": "failed",
                                  "s1.tif": "succeeded"}
    for name in ("s0", "s1"):
        np.testing.assert_array_equal(_mask(out / f"{name}_mask.tif"),
                                      _expected(tmp_path / f"{name}.tif", deeplab_dir, tmp_path))

    # cron fires while a run holds the lock: exit 75 at once, nothing touched (also through
    # the deprecated alias, which forwards to tileseg batch)
    before = manifest.with_name(manifest.name + ".summary.json").read_text()
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = CliRunner().invoke(cli, ["batch", *argv])
        assert locked.exit_code == 75
        assert locked.stderr.strip() == f"Error: another run holds {lock}; nothing to do"
        assert main(argv) == 75
        assert capsys.readouterr().err.strip().endswith(f"another run holds {lock}; nothing to do")
    assert manifest.with_name(manifest.name + ".summary.json").read_text() == before

    # the next scheduled run retries only the failed scene
    assert CliRunner().invoke(cli, ["batch", *argv]).exit_code == 5
    assert _summary(manifest) == {"s0.tif": "skipped", "bad.tif": "failed", "s1.tif": "skipped"}


def test_slurm_jobs_through_dask_jobqueue(manifest: Path, deeplab_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask_jobqueue")
    jobs = tmp_path / "slurm"
    jobs.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    manifest.write_text("s0.tif\ns1.tif\n")
    out = tmp_path / "masks"
    result = CliRunner().invoke(cli, [
        "batch", str(manifest), "-o", str(out), "--model", str(deeplab_dir), *OPTIONS,
        "--slurm-jobs", "1", "--slurm-gpu", "--slurm-cores", "2", "--slurm-memory", "4GB",
        "--wait-timeout", "120"])
    logs = "\n".join(p.read_text() for p in jobs.glob("job-*.log"))
    assert result.exit_code == 0, result.output + logs[-2000:]
    assert _summary(manifest) == {"s0.tif": "succeeded", "s1.tif": "succeeded"}
    for name in ("s0", "s1"):
        np.testing.assert_array_equal(_mask(out / f"{name}_mask.tif"),
                                      _expected(tmp_path / f"{name}.tif", deeplab_dir, tmp_path))
    script = (jobs / "job-0.sh").read_text()
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    assert "export TILESEG_SCHEDULER=" in script  # a worker never chains to another cluster
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=4G" in script


def test_a_started_cluster_and_an_address_conflict(manifest: Path) -> None:
    runner, out = CliRunner(), str(manifest.parent / "masks")
    both = runner.invoke(cli, ["batch", str(manifest), "-o", out, "--scheduler",
                               "tcp://127.0.0.1:1", "--local-workers", "1"])
    assert both.exit_code == 2
    assert both.stderr.strip() == ("Error: --scheduler and --local-workers both say where to "
                                   "run; give one")
    two = runner.invoke(cli, ["batch", str(manifest), "-o", out, "--local-workers", "1",
                              "--slurm-jobs", "1"])
    assert two.exit_code == 2 and "give one" in two.stderr
    assert not (manifest.parent / "masks").exists()  # refused before anything was created
