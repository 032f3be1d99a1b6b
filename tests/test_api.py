"""The public Python API: light to import, the functions by their names, the docs' example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

import tileseg

API_PAGE = Path(__file__).parent.parent / "docs" / "reference" / "api.md"


def test_import_tileseg_loads_neither_torch_nor_rasterio() -> None:
    code = "import sys, tileseg; print(sorted(m for m in ('torch', 'rasterio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_every_public_name_resolves_and_the_functions_are_functions() -> None:
    for name in tileseg.__all__:
        assert getattr(tileseg, name) is not None, name
    for name in ("predict", "vectorize", "evaluate", "train", "run_batch", "load_model"):
        assert callable(getattr(tileseg, name)) and not isinstance(getattr(tileseg, name), type)
        assert getattr(tileseg, name).__doc__, f"{name} has no docstring"
    assert issubclass(tileseg.InputError, tileseg.TilesegError)
    assert issubclass(tileseg.InputError, ValueError)
    with pytest.raises(AttributeError):
        tileseg.no_such_name  # noqa: B018


def test_python_api_page_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    example = re.search(r"```python\n(.*?)```", API_PAGE.read_text(), flags=re.S)
    assert example is not None, "docs/reference/api.md has no example"
    monkeypatch.chdir(tmp_path)
    exec(compile(example.group(1), str(API_PAGE), "exec"), {})  # noqa: S102 - our own docs
    printed = capsys.readouterr().out.splitlines()
    assert "tiles -> landcover.tif" in printed[0] and "polygons" in printed[1]
    with rasterio.open(tmp_path / "landcover.tif") as mask:
        assert len(set(mask.read(1).ravel().tolist()) - {mask.nodata}) >= 4  # a real land-cover map
    assert (tmp_path / "landcover.gpkg").is_file()
