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
    resolve_scheduler,
    run_graph,
    scheduler_address,
)
from tileseg.scheduler import resolve_mosaic_scheduler


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
    assert scheduler_address(None) == "tcp://h:1"
    assert scheduler_address("sync") is None  # the value given wins over the environment


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
