"""Optional and required third-party packages: a missing one is a :class:`DependencyError` (exit 6)
that names the package and the command that installs it, not an ``ImportError`` traceback; a
configuration file a package reads as it imports (dask's) that is broken is a
:class:`ConfigError` (exit 2) naming the file."""

from __future__ import annotations

import importlib
import os
import re
from types import ModuleType

from tileseg.errors import ConfigError, DependencyError

# import name -> what pip installs it from
PIP_NAMES = {
    "yaml": "pyyaml",
    "dask_jobqueue": "dask-jobqueue",
    "sklearn": "scikit-learn",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "timm": "timm",
    "PIL": "pillow",
}


def pip_name(module: str) -> str:
    """The package pip installs for the import name ``module`` (``"yaml"`` -> ``"pyyaml"``)."""
    top = module.split(".")[0]
    return PIP_NAMES.get(top, top.replace("_", "-"))


def missing_dependency(exc: ImportError, feature: str = "", *,
                       params: tuple[str, ...] = ()) -> DependencyError:
    """The :class:`DependencyError` for a failed import, naming the package and how to install it.

    ``feature`` says what needs the package (``"GeoParquet"``, or a parameter such as
    ``"vectorize"``, listed in ``params`` so that the CLI shows it as its flag).

    Examples
    --------
    >>> error = missing_dependency(ModuleNotFoundError("x", name="pyarrow.parquet"), "GeoParquet")
    >>> error.exit_code, str(error).split("; ")[1]
    (6, 'install it with: python -m pip install pyarrow')
    """
    if not exc.name:
        return DependencyError(f"a dependency does not import ({exc}); reinstall tileseg with "
                               "its dependencies: python -m pip install --force-reinstall tileseg")
    package = pip_name(exc.name)
    needs = f"{feature} needs" if feature else "this command needs"
    error = DependencyError(f"{needs} the Python package {package!r}, which is not installed or "
                            f"does not import; install it with: python -m pip install {package}",
                            params=params)
    error.name = exc.name
    return error


def require(module: str, feature: str = "") -> ModuleType:
    """Import ``module``; :class:`DependencyError` (exit 6) naming the package when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if not exc.name:
            exc.name = module
        raise missing_dependency(exc, feature) from exc


def dask_config_error(exc: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` for dask refusing one of its configuration files (dask reads
    ``$DASK_CONFIG``, ``~/.config/dask`` and ``/etc/dask`` when it is first imported, and raises a
    ValueError for a file that is not a YAML mapping); None for any other exception."""
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code, tb.tb_next
    if (last is None or last.co_name != "_load_config_file"
            or not last.co_filename.replace("\\", "/").endswith("dask/config.py")):
        return None
    text = str(exc)
    named = re.search(r"at '(.+?)' is malformed", text)
    path = named.group(1) if named else os.environ.get("DASK_CONFIG", "a dask configuration file")
    detail = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    if detail.strip():
        where = re.findall(r"line (\d+), column \d+", detail)
        reason = detail.strip().splitlines()[0] + (f" at line {where[-1]}" if where else "")
    else:
        reason = "its top level is not a mapping" if "top level" in text else "malformed"
    return ConfigError(f"{path}: dask cannot read this configuration file ({reason}); fix "
                       "or remove it (dask reads every .yaml in DASK_CONFIG and ~/.config/dask)")
