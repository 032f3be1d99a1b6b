"""Opening a raster with GDAL the way tileseg always does: GDAL's options for remote rasters
(:mod:`tileseg.sources.remote`), its error lines sent to logging, rasterio's warning about a
missing CRS left to tileseg, and GDAL's own words when an open or read fails.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from tileseg.sources.gdal_native import forget_cached, install_error_handler
from tileseg.sources.remote import gdal_options, readable_failure, vsi_path

_WARNINGS_LOCK = threading.Lock()


def decode_threads() -> str:
    """GDAL decoding threads per read: ``$GDAL_NUM_THREADS`` when set, else all cores."""
    return os.environ.get("GDAL_NUM_THREADS", "ALL_CPUS")


def open_dataset(path: str | os.PathLike[str], mode: str = "r", *, quiet: bool = True,
                 **profile: Any) -> Any:
    """``rasterio.open`` without rasterio's NotGeoreferencedWarning (tileseg reports a missing CRS
    itself, once). ``warnings.catch_warnings`` swaps process-wide state, so concurrent reader
    threads take turns, or one thread's exit could restore filters under another; ``quiet=False``
    (a raster known to be georeferenced, which cannot warn) skips that lock. Remote rasters
    get the GDAL options of :func:`tileseg.sources.remote.gdal_options` (the S3 endpoint override,
    timeouts). GDAL's own error lines go to logging from here on, never to stderr."""
    install_error_handler()
    with rasterio.Env(**gdal_options(str(path))):
        if not quiet:
            return rasterio.open(path, mode, **profile)
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, mode, **profile)


def forget_cached_file(path: str) -> None:
    """Drop what GDAL cached of the remote file ``path`` (see :func:`forget_cached`)."""
    with rasterio.Env(**gdal_options(path)):  # the cache is keyed by the URL these make
        forget_cached(vsi_path(path))


def gdal_message(exc: BaseException) -> str:
    """GDAL's own words for a rasterio error, on one line.

    rasterio raises "Read failed. See previous exception for details." with the GDAL errors
    chained behind it; the user needs those (which block, which codec), outermost and root cause.
    """
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and "see previous exception" not in text.lower() and text not in messages:
            messages.append(text)
        current = current.__cause__ or current.__context__
    if not messages:
        return " ".join(str(exc).split()) or type(exc).__name__
    if len(messages) == 1:
        return messages[0]
    return f"{messages[0]}; {messages[-1]}"


def why_unreadable(path: str) -> str:
    """Why the store does not serve remote raster ``path`` now, in GDAL's words from a fresh
    open (GDAL's requests for object versions and byte ranges do not say)."""
    forget_cached_file(path)
    try:
        with open_dataset(path):
            return "it answers again now"
    except RasterioIOError as exc:
        return readable_failure(gdal_message(exc))
