"""Progress events: the library reports, the CLI renders.

Besides the :class:`Progress` value, this module carries the tiles a predict run's chunk tasks
infer back to the run while a chunk is still in flight (a default 2048-px chunk holds 25 tiles,
minutes of work on a CPU): :func:`report_tiles` in the task, :func:`listen_tiles` around the run.
In-process tasks call the run's listener directly; tasks on a ``dask.distributed`` worker send
an event under :data:`TILES_TOPIC`, which the run's client receives.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A snapshot of a run: ``done`` of ``total`` units (tiles, chunks, polygons...)."""

    done: int
    total: int
    elapsed: float
    unit: str = "tiles"
    start: int = 0  # already done when the clock started (a resumed run): not in the rate

    @property
    def rate(self) -> float:
        return (self.done - self.start) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.done == 0 or self.rate == 0:
            return None
        return (self.total - self.done) / self.rate


ProgressCallback = Callable[[Progress], None]

TileListener = Callable[[tuple[int, int], int], None]
"""Called with a chunk ``(row, col)`` and the tiles inferred in it so far (a running count)."""

TILES_TOPIC = "tileseg-tiles"  # one topic for every run: the scheduler keeps a bounded log per topic

_LISTENERS: dict[str, TileListener] = {}
_LOCK = threading.Lock()


def report_tiles(run: str, chunk: tuple[int, int], tiles: int) -> None:
    """Tell run ``run`` that ``tiles`` tiles of ``chunk`` are inferred so far.

    Never raises: a progress report is not worth failing a chunk over.
    """
    if not run:
        return
    with _LOCK:
        listener = _LISTENERS.get(run)
    try:
        if listener is not None:
            listener(chunk, tiles)
            return
        worker = _dask_worker()
        if worker is not None:
            worker.log_event(TILES_TOPIC, {"run": run, "chunk": list(chunk), "tiles": tiles})
    except Exception:  # noqa: BLE001
        logger.debug("progress report of chunk %s failed", chunk, exc_info=True)


def _dask_worker() -> Any:
    """The ``distributed`` worker running this task, if any (without importing distributed)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_worker()
    except ValueError:
        return None


@contextlib.contextmanager
def listen_tiles(run: str, listener: TileListener, client: Any = None) -> Iterator[None]:
    """Call ``listener`` while run ``run``'s tasks report tiles: tasks in this process directly,
    tasks on the workers of ``client`` (a ``distributed.Client``) through its events."""
    with _LOCK:
        _LISTENERS[run] = listener
    if client is not None:
        client.subscribe_topic(TILES_TOPIC, _dispatch)
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.pop(run, None)
            last = not _LISTENERS
        if client is not None and last:
            with contextlib.suppress(Exception):  # a client already closed has nothing to stop
                client.unsubscribe_topic(TILES_TOPIC)


def _dispatch(event: tuple[float, Any]) -> None:
    """A cluster event: hand it to the listener of its run, if that run is still listening."""
    _, msg = event
    if not isinstance(msg, dict):
        return
    with _LOCK:
        listener = _LISTENERS.get(str(msg.get("run")))
    if listener is None:
        return
    try:
        row, col = msg["chunk"]
        listener((int(row), int(col)), int(msg["tiles"]))
    except Exception:  # noqa: BLE001  (the client's event loop must not see it)
        logger.debug("bad tile event %r", msg, exc_info=True)
