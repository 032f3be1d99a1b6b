"""Rendering progress events on stderr: a bar with rate and ETA."""

from __future__ import annotations

import sys
import time

import click

from tileseg.progress import Progress


def clock(seconds: float | None) -> str:
    """Seconds as [h:]mm:ss, "--:--" when unknown."""
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """Callable progress sink; redraws at most a few times a second, on a terminal only."""

    def __init__(self, label: str, enabled: bool = True, width: int = 28) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.width = width
        self._last = 0.0
        self._shown = False

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and event.done < event.total):
            return
        self._last = now
        frac = event.done / event.total if event.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        if event.unit == "bytes":
            done, total, rate, unit = event.done / 1e6, event.total / 1e6, event.rate / 1e6, "MB"
            counts = f"{done:.1f}/{total:.1f} {unit}" if total else f"{done:.1f} {unit}"
        else:
            counts, rate, unit = f"{event.done}/{event.total} {event.unit}", event.rate, event.unit
        click.echo(
            f"\r{self.label} [{bar}] {counts} {rate:6.1f} {unit}/s ETA {clock(event.eta)}",
            err=True, nl=False,
        )
        self._shown = True

    def close(self) -> None:
        if self._shown:
            click.echo("", err=True)
