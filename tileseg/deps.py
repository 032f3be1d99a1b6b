"""Optional and required third-party packages: a missing one is a :class:`DependencyError` (exit 6)
that names the package and the command that installs it, not an ``ImportError`` traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from tileseg.errors import DependencyError

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
