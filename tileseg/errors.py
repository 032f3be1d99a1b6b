"""Exception hierarchy.

Every error a user can cause derives from :class:`TilesegError` *and* from the builtin exception
that matches it, so library callers can catch either. Messages are one line and say what to do.
"""

from __future__ import annotations

import re


class TilesegError(Exception):
    """Base class of every tileseg error; its message is shown to the user as it is.

    ``params`` lists the parameters (Python names, e.g. ``tile_size``) the message names; the
    CLI shows each as its command-line flag (``--tile-size``), a library caller as it is.
    """

    exit_code: int = 1
    params: tuple[str, ...] = ()

    def __init__(self, message: str = "", *, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


# The one parameter -> flag table: parameters whose command-line flag is not ``--`` plus the name
# with dashes. The CLI declares its options from it (tileseg.cli.options.option), messages and
# log lines show it (flagged_message), and batch manifests take its spellings as aliases. A
# ``--no-X`` entry is a switch that is on by default: the CLI declares ``--X/--no-X``.
_FLAG_NAMES = {
    "zarr_path": "--zarr",
    "encoder_output_stride": "--output-stride",
    "decoder_atrous_rates": "--atrous-rates",
    "learning_rate": "--lr",
    "compile_model": "--compile",
    "drop_classes": "--drop",
    # train and evaluate
    "class_names": "--classes",
    "class_colors": "--colors",
    "out_dir": "--out",
    "encoder_name": "--encoder",
    "indexes": "--bands",
    "val_sources": "--val",
    "holdout.fraction": "--holdout-fraction",
    "holdout.side": "--holdout-side",
    "stac_item": "--no-stac-item",
}


def flag_for(param: str) -> str:
    """The command-line flag of a library parameter (a batch manifest takes its spelling too):
    ``tile_size`` -> ``--tile-size``, ``encoder_output_stride`` -> ``--output-stride``."""
    return _FLAG_NAMES.get(param, "--" + param.replace("_", "-"))


def flagged_message(exc: TilesegError) -> str:
    """``exc``'s message with the parameters it names written as the flags that set them, for
    the CLI and for batch manifests, whose options are the flags.

    Only a whole word is a parameter: ``tile_size`` but not ``tile_sizes``, nor a part of a path
    such as ``out/model/x.tif`` or ``model.tif`` (a file name in a message stays as it is), nor a
    word counted by the number before it (``has 7 bands`` stays; ``with bands 1,2`` is a flag).
    """
    return flagged(str(exc), exc.params)


def flagged(message: str, params: tuple[str, ...]) -> str:
    """``message`` with ``params`` written as their flags (see :func:`flagged_message`)."""
    for param in params:
        message = re.sub(rf"(?<![\w\-./\\])(?<!\d ){re.escape(param)}(?![\w\-/\\]|\.\w)",
                         flag_for(param), message)
    return message


def log_params(*params: str) -> dict[str, object]:
    """``extra=`` for a library log line that names parameters: the CLI shows them as flags,
    as it does for an error's ``params`` (``logger.warning(..., extra=log_params("model"))``)."""
    return {"tileseg_params": params}


class InputError(TilesegError, ValueError):
    """A raster, mask or label file that cannot be used as it is."""

    exit_code = 2


class InputNotFoundError(TilesegError, FileNotFoundError):
    """An input path that does not exist."""

    exit_code = 2


class ModelError(TilesegError, ValueError):
    """A model file or model directory that cannot be loaded, or does not fit the raster."""

    exit_code = 3


class OutputError(TilesegError, OSError):
    """A destination that cannot be written (exists, read-only, unknown format)."""

    exit_code = 4


class ConfigError(TilesegError, ValueError):
    """An option value that is out of range or inconsistent with another one."""

    exit_code = 2


class RunError(TilesegError, RuntimeError):
    """A run that failed part-way (a task, a worker, an unreadable block); it can be resumed."""

    exit_code = 5


class DamagedInputError(InputError, RunError):
    """An input that opened fine but fails to read part-way (truncated, corrupt block, a VRT
    source gone): a bad input (exit 2), not a failed run, though finished chunks stay resumable
    once the file is repaired."""

    exit_code = 2


class DiskFullError(TilesegError, OSError):
    """No space left in a folder tileseg writes (a full disk, or the user's quota: ENOSPC,
    EDQUOT). ``folder`` is where the write failed. When ``resumable``, the run kept what it
    finished and continues with ``resume`` once space is freed (exit 5, as a failed run);
    otherwise nothing was written there (exit 4, as a destination that cannot be written)."""

    def __init__(self, message: str = "", *, params: tuple[str, ...] = (), folder: str = "",
                 resumable: bool = False) -> None:
        super().__init__(message, params=params)
        self.folder = folder
        self.resumable = resumable
        self.exit_code = RunError.exit_code if resumable else OutputError.exit_code

    def __reduce__(self) -> tuple[object, ...]:
        # keyword arguments survive pickling (a worker process hands the error to the client)
        return (_rebuild_disk_full, (str(self), self.params, self.folder, self.resumable))


def _rebuild_disk_full(message: str, params: tuple[str, ...], folder: str,
                       resumable: bool) -> DiskFullError:
    return DiskFullError(message, params=params, folder=folder, resumable=resumable)


class SourceChangedError(InputError):
    """The raster changed while a run read it, or since the run that ``resume`` would continue
    (another object version, size or modification time): its chunks would mix two versions."""

    exit_code = 2


class SourceUnavailableError(RunError):
    """A request for the raster kept failing (HTTP 5xx, a timeout, the object gone) after its
    retries: the store's fault, not the file's; ``resume`` continues once it answers again."""

    exit_code = 5


class DestinationBusyError(TilesegError, RuntimeError):
    """Another run is writing the same destination now; try again once it has finished."""

    exit_code = 75  # EX_TEMPFAIL: schedulers read it as "retry later"


class DependencyError(TilesegError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""

    exit_code = 6
