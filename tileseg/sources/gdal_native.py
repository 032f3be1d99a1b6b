"""The few GDAL C functions rasterio does not wrap, called on the GDAL library rasterio loaded.

Three needs of reading rasters safely have no rasterio API:

* GDAL reports some failures from threads of its own (the ranges a read fetches ahead of
  time, a ``/vsicurl/`` download): no rasterio error handler is in place there, so GDAL's
  default one prints ``ERROR 1: ...`` on the process's stderr and the read that needed the
  data returns zeros without raising. A process-wide handler (:func:`install_error_handler`)
  sends those to logging instead and counts them (:func:`failure_count`), so a read during
  which one occurred can be treated as failed.
* The ETag and size of a remote object, for pinning what a run reads (:func:`http_headers`).
* Dropping what GDAL cached of one remote file (:func:`forget_cached`), so a retry or a later
  run asks the store again instead of reusing a failed or replaced object's bytes.

Each degrades to doing nothing (and says so in the log) where the library cannot be found.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import glob
import logging
import os
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

_CE_FAILURE = 3
_LOCK = threading.Lock()
class _Failures:
    count = 0
    last = ""


_FAILURES = _Failures()
_HANDLER: Any = None  # the ctypes callback, kept alive for as long as GDAL may call it


@functools.cache
def library() -> Any:
    """The GDAL shared library rasterio uses, or None when it cannot be found.

    Not just any ``libgdal`` in the process: pyogrio or fiona wheels bring copies of their own,
    whose configuration (endpoint, credentials) and error handlers are not rasterio's. A symbol
    looked up through rasterio's own extension module resolves in the libraries it was linked
    with (Linux, macOS); elsewhere, the copy in rasterio's wheel.
    """
    import rasterio
    import rasterio._base

    candidates = [rasterio._base.__file__]
    root = os.path.dirname(os.path.dirname(rasterio.__file__))
    for pattern in ("rasterio.libs/gdal*.dll", "rasterio.libs/libgdal*"):
        candidates += sorted(glob.glob(os.path.join(root, pattern)))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError):
            continue
        return lib
    logger.info("the GDAL library rasterio loaded was not found; GDAL's own error lines are not "
                "captured and remote sources are not pinned")
    return None


def _declare(lib: Any) -> None:
    lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.CSLDestroy.restype = None
    lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
    lib.VSICurlPartialClearCache.restype = None
    lib.CPLSetErrorHandlerEx.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.CPLSetErrorHandlerEx.restype = ctypes.c_void_p


_PROTOTYPE = (ctypes.WINFUNCTYPE if sys.platform == "win32"  # type: ignore[attr-defined]
              else ctypes.CFUNCTYPE)(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)


def _on_error(err_class: int, err_no: int, message: bytes | None) -> None:
    # Called by GDAL, from any thread, for errors no rasterio handler takes: must never raise.
    try:
        text = (message or b"").decode("utf-8", "replace")
        if err_class >= _CE_FAILURE:
            with _LOCK:
                _FAILURES.count += 1
                _FAILURES.last = text
        logger.debug("GDAL (class %d, error %d): %s", err_class, err_no, text)
    except Exception:  # noqa: BLE001, S110 - nothing may escape into GDAL
        pass


def install_error_handler() -> bool:
    """Route the errors GDAL reports outside rasterio's handlers to logging (never stderr) and
    count the failures among them; once per process. False when the library was not found."""
    global _HANDLER
    with _LOCK:
        if _HANDLER is not None:
            return True
    lib = library()
    if lib is None:
        return False
    with _LOCK:
        if _HANDLER is None:
            _HANDLER = _PROTOTYPE(_on_error)
            lib.CPLSetErrorHandlerEx(ctypes.cast(_HANDLER, ctypes.c_void_p), None)
            atexit.register(_quiet_at_exit, lib)
    return True


def _quiet_at_exit(lib: Any) -> None:
    # GDAL threads may still report while the interpreter shuts down: no Python callback then
    lib.CPLSetErrorHandlerEx(ctypes.cast(lib.CPLQuietErrorHandler, ctypes.c_void_p), None)


def failure_count() -> int:
    """How many failures GDAL has reported outside rasterio's handlers in this process."""
    with _LOCK:
        return _FAILURES.count


def last_failure() -> str:
    with _LOCK:
        return _FAILURES.last


def http_headers(vsi_path: str) -> dict[str, str] | None:
    """The HTTP headers a fresh request for ``vsi_path`` (``/vsis3/...``, ``/vsicurl/...``)
    answers with; None when the store did not answer or the library was not found. Call it
    inside ``rasterio.Env`` with the path's options (endpoint, credentials, timeouts)."""
    lib = library()
    if lib is None:
        return None
    result = lib.VSIGetFileMetadata(vsi_path.encode(), b"HEADERS", None)
    if not result:
        return None
    headers: dict[str, str] = {}
    try:
        i = 0
        while result[i]:
            key, _, value = result[i].decode("utf-8", "replace").partition("=")
            headers[key.lower()] = value
            i += 1
    finally:
        lib.CSLDestroy(result)
    return headers or None


def forget_cached(vsi_path: str) -> None:
    """Drop what GDAL cached of ``vsi_path`` (its size, existence, downloaded ranges). Call it
    inside ``rasterio.Env`` with the path's options: the cache is keyed by the URL they make."""
    lib = library()
    if lib is not None:
        lib.VSICurlPartialClearCache(vsi_path.encode())
