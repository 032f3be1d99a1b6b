"""Progress events: the library reports, the CLI renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
