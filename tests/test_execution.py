"""tileseg.execution: scheduler resolution, the per-task callback, and no torch on the way."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from operator import add
from pathlib import Path

import pytest

from tileseg.errors import ConfigError
from tileseg.execution import (
    SCHEDULER_ENV,
    resolve_mosaic_scheduler,
    resolve_scheduler,
    run_graph,
)


@pytest.mark.parametrize(("value", "kind", "address"), [
    ("threads", "threads", None),
    ("sync", "sync", None),
    ("synchronous", "sync", None),
    ("processes", "processes", None),
    ("tcp://10.1.2.3:8786", "distributed", "tcp://10.1.2.3:8786"),
    ("head-node:8786", "distributed", "head-node:8786"),
    ("tls://head:8786", "distributed", "tls://head:8786"),
])
def test_names_and_addresses_resolve(value: str, kind: str, address: str | None) -> None:
    resolved = resolve_scheduler(value)
    assert (resolved.kind, resolved.address) == (kind, address)


@pytest.mark.parametrize("value", ["bogus", "tcp://", "host:port", "://8786"])
def test_unparsable_scheduler_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="not a scheduler"):
        resolve_scheduler(value)


def test_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    assert resolve_scheduler(None).kind == "threads"
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://h:1")
    assert resolve_scheduler(None).address == "tcp://h:1"
    assert resolve_scheduler("sync").kind == "sync"  # the value given wins over the environment


def test_callables_and_clients_are_taken_as_dask_does() -> None:
    def my_get(graph: dict, keys: list) -> list:  # noqa: ARG001
        return []

    assert resolve_scheduler(my_get).kind == "callable"

    class FakeClient:  # the two attributes dask looks at to recognise a Client
        scheduler = object()

        def get(self) -> None: ...

    assert resolve_scheduler(FakeClient()).kind == "distributed"


def test_mosaics_refuse_worker_processes() -> None:
    with pytest.raises(ConfigError, match="not usable here"):
        resolve_mosaic_scheduler("processes")


@pytest.mark.parametrize("name", ["sync", "threads"])
def test_run_graph_calls_back_once_per_requested_key(name: str) -> None:
    graph = {"a": 1, "b": (add, "a", 1), "c": (add, "b", 10), "hidden": (add, "a", 100)}
    seen: dict[str, int] = {}
    run_graph(graph, [(["b"], None), (["c"], {"GPU": 1})], resolve_scheduler(name),
              on_result=lambda key, value: seen.__setitem__(key, value))
    assert seen == {"b": 2, "c": 12}


def test_polygonizing_a_mask_never_imports_torch(tmp_path: Path) -> None:
    # A fresh interpreter: this test process has torch loaded already.
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, rasterio
        from affine import Affine
        import tileseg.vectorization
        assert "torch" not in sys.modules, "import tileseg.vectorization loaded torch"
        mask = np.zeros((64, 64), "uint8"); mask[8:30, 8:30] = 1; mask[40:, 40:] = 2
        with rasterio.open({str(tmp_path / 'm.tif')!r}, "w", driver="GTiff", height=64, width=64,
                           count=1, dtype="uint8", crs="EPSG:32631",
                           transform=Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
            dst.write(mask, 1)
        result = tileseg.vectorization.vectorize({str(tmp_path / 'm.tif')!r},
                                             {str(tmp_path / 'm.gpkg')!r})
        assert result.features == 2, result.features
        assert "torch" not in sys.modules, "vectorize() loaded torch"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ---------------------------------------------------------------- one scheduling module


def test_only_the_scheduling_module_opens_a_dask_client() -> None:
    package = Path(__file__).parent.parent / "tileseg"
    opening = ("Client(", "LocalCluster(", "SLURMCluster(")
    found = {str(path.relative_to(package)) for path in package.rglob("*.py")
             if any(word in path.read_text() for word in opening)}
    assert found == {"execution.py"}


def test_a_cluster_started_here_conflicts_with_an_address_and_waits_for_its_workers() -> None:
    from tileseg.execution import LocalWorkers

    with pytest.raises(ConfigError, match="scheduler and local_workers both") as info:
        resolve_scheduler("tcp://h:1", start=LocalWorkers(2))
    assert info.value.params == ("scheduler", "local_workers")
    started = resolve_scheduler(None, start=LocalWorkers(2))
    assert (started.kind, started.wait_workers) == ("distributed", 1)
    assert resolve_scheduler(None, start=LocalWorkers(2), wait_workers=5).wait_workers == 2
    assert resolve_scheduler("tcp://h:1").wait_workers == 0  # an address: no wait unless asked
    assert resolve_scheduler("tcp://h:1", wait_workers=3).wait_workers == 3
    assert resolve_scheduler("threads", wait_workers=3).wait_workers == 0
    assert resolve_scheduler(started) is started  # resolved already: handed down as it is


def _count_resolutions(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Every reading of the scheduler setting (the value, $TILESEG_SCHEDULER, dask's config)."""
    import tileseg.execution as execution

    calls: list[str | None] = []
    real = execution.configured_scheduler

    def counted(scheduler: str | None) -> str | None:
        calls.append(scheduler)
        return real(scheduler)

    monkeypatch.setattr(execution, "configured_scheduler", counted)
    return calls


def test_predict_resolves_its_scheduler_once_and_hands_it_to_vectorize(
        make_raster, deeplab_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import random_image

    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    monkeypatch.setenv(SCHEDULER_ENV, "sync")
    src = make_raster(random_image(3, 80, 90, seed=3))
    calls = _count_resolutions(monkeypatch)
    result = predict(PredictConfig(str(src), str(tmp_path / "m.tif"), model=str(deeplab_dir),
                                   tile_size=64, overlap=16,
                                   vectorize=str(tmp_path / "m.gpkg")))
    assert calls == [None]  # one reading, in predict; vectorize got the run's scheduler
    assert result.report["scheduler"] == "sync" and result.report["workers"] == 1


def test_a_batch_resolves_its_scheduler_once_for_all_scenes(
        make_raster, deeplab_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import random_image

    from tileseg.batch import BatchConfig, run_manifest

    for i in range(2):
        make_raster(random_image(3, 70, 80, seed=i), name=f"s{i}.tif")
    manifest = tmp_path / "scenes.txt"
    manifest.write_text("s0.tif\ns1.tif\n")
    calls = _count_resolutions(monkeypatch)
    result = run_manifest(manifest, BatchConfig(
        output_dir=str(tmp_path / "out"), summary=str(tmp_path / "summary.json"),
        defaults={"model": str(deeplab_dir), "tile_size": 64, "overlap": 16}))
    assert result.ok and len(result.scenes) == 2
    assert calls == [None]


def test_a_scheduler_a_mosaic_cannot_use_is_refused_before_anything_is_staged(
        make_raster, deeplab_dir: Path, tmp_path: Path) -> None:
    from conftest import random_image

    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    src = make_raster(random_image(3, 64, 64, seed=4))
    with pytest.raises(ConfigError, match="'processes': not usable here"):
        predict(PredictConfig(str(src), str(tmp_path / "m.tif"), model=str(deeplab_dir),
                              tile_size=64, overlap=16, scheduler="processes"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
