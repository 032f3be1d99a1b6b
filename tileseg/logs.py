"""Logging of the command-line entry point (``tileseg``; scheduled jobs run ``tileseg batch``).

Only entry points configure handlers; the library only logs. Two rules here: what libraries say
at INFO (dask's scheduler and nanny chatter, GDAL's notices), and Python warnings they raise
about things tileseg already checks, stay out of a terminal or a job's log unless asked for
(``-v``), while their warnings and errors do not; and a tileseg log line that names parameters
(``extra=log_params(...)``) shows the flags that set them, as error messages do.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from tileseg.errors import flagged

# Libraries that log about things tileseg already checks or that are not the user's business.
CHATTY = ("rasterio", "pyogrio", "fiona", "distributed", "fsspec", "urllib3", "numcodecs", "zarr")
# this module lies at the package's top: its folder is the package's
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class FlagFormatter(logging.Formatter):
    """Writes the parameters a record names (``tileseg_params``) as their flags, in this
    handler's copy of the record only (another handler, a library caller's, sees the names)."""

    def format(self, record: logging.LogRecord) -> str:
        params = getattr(record, "tileseg_params", None)
        if params and isinstance(record.msg, str):
            # the template, not the values filled into it (a file or class name stays)
            record = logging.makeLogRecord({**record.__dict__,
                                            "msg": flagged(record.msg, tuple(params))})
        return super().format(record)


class QuietLibraries(logging.Filter):
    """Drops the chatty libraries' records below a level, whatever level their loggers have:
    distributed sets its own (INFO) when it is imported, which happens after set-up."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name.split(".")[0] not in CHATTY


def quiet_libraries(level: int) -> None:
    """Show only ``level`` and above from the chatty libraries, on every root handler."""
    for name in CHATTY:
        logging.getLogger(name).setLevel(level)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, QuietLibraries)]:
            handler.removeFilter(old)
        handler.addFilter(QuietLibraries(level))


def flag_handlers() -> None:
    """Every handler of the root logger shows parameters as flags."""
    for handler in logging.getLogger().handlers:
        current = handler.formatter
        if not isinstance(current, FlagFormatter):
            handler.setFormatter(FlagFormatter(current._fmt if current else None,
                                               current.datefmt if current else None))


def route_warnings(logger: logging.Logger) -> None:
    """Python warnings as one log line each: tileseg's own at WARNING, a library's at INFO (it
    concerns something tileseg handles, or nothing the user can act on; shown with -v)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        own = os.path.abspath(filename).startswith(_PACKAGE_DIR)
        logger.log(logging.WARNING if own else logging.INFO, "%s: %s", category.__name__, text)

    warnings.showwarning = show
