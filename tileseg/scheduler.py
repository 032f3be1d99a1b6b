"""Running a mosaic graph: in-process threads by default, or a dask.distributed cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from tileseg.errors import ConfigError, RunError, TilesegError
from tileseg.mosaic import MosaicGraph

logger = logging.getLogger(__name__)

ResultCallback = Callable[[dict[str, Any], str], None]
SCHEDULER_ENV = "TILESEG_SCHEDULER"


def scheduler_address(scheduler: str | None) -> str | None:
    """A distributed scheduler address from the option or ``$TILESEG_SCHEDULER``, else None."""
    value = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if value in (None, "threads", "sync"):
        return None
    return value


def run_graph(
    mosaic: MosaicGraph,
    scheduler: str | None,
    workers: int | None,
    on_result: ResultCallback,
    *,
    client: Any = None,
) -> None:
    """Compute every infer and finalize task, calling ``on_result`` as each one finishes."""
    address = scheduler_address(scheduler)
    if client is not None or address is not None:
        _run_distributed(mosaic, address, on_result, client)
    else:
        _run_local(mosaic, scheduler or os.environ.get(SCHEDULER_ENV) or "threads", workers,
                   on_result)


def _kind(key: Any, mosaic: MosaicGraph) -> str | None:
    if isinstance(key, tuple) and isinstance(key[0], str):
        if key[0].startswith("tileseg-infer-"):
            return "infer"
        if key[0].startswith("tileseg-finalize-"):
            return "finalize"
    return None


def _run_local(mosaic: MosaicGraph, scheduler: str, workers: int | None,
               on_result: ResultCallback) -> None:
    import dask
    from dask.callbacks import Callback

    class _Results(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            kind = _kind(key, mosaic)
            if kind is not None:
                on_result(result, kind)

    keys = mosaic.infer_keys + mosaic.finalize_keys
    with _Results():
        if scheduler == "sync":
            dask.get(mosaic.graph, keys)
        elif scheduler == "threads":
            from dask.threaded import get

            get(mosaic.graph, keys, num_workers=workers or 2)
        else:
            raise ConfigError(f"--scheduler {scheduler!r}: use threads, sync or a cluster address")


def _run_distributed(mosaic: MosaicGraph, address: str | None, on_result: ResultCallback,
                     client: Any) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is a required dependency
        raise ConfigError("dask.distributed is not installed; pip install distributed") from exc
    own_client = client is None
    if own_client:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the dask scheduler at {address} ({exc}); start it or fix --scheduler"
            ) from exc
    try:
        keys = mosaic.infer_keys + mosaic.finalize_keys
        futures = client.get(mosaic.graph, keys, sync=False)
        kinds = {f.key: _kind(f.key, mosaic) for f in futures}
        for future in as_completed(futures):
            try:
                result = future.result()
            except TilesegError:
                raise
            except Exception as exc:
                raise RunError(f"task {future.key} failed on the cluster: {exc}; rerun with "
                               "--resume once fixed") from exc
            on_result(result, kinds[future.key] or "")
    finally:
        if own_client:
            client.close()
