"""predict never loses a user's data: it replaces only what it provably wrote, refuses paths that
overlap, checks every option before staging anything, and stops cleanly on SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import per_pixel_model, random_image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, InputError, OutputError
from tileseg.outputs.ownership import is_tileseg_output
from tileseg.outputs.paths import check_distinct_paths
from tileseg.pipeline import predict

SMALL = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "96"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links as their target) and its SHA-256."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[str(path.relative_to(folder)) + "/"] = "dir"
    return out


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code: int, output: str, expected: int, *needles: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == expected, output
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in output, output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def scene(make_raster) -> Path:
    return make_raster(random_image(3, 140, 150))


def predict_args(src: Path, dst: Path, model: Path, *extra: str) -> list[str]:
    return ["predict", str(src), str(dst), "-m", str(model), *SMALL, "-q", *extra]


# -- paths that overlap ----------------------------------------------------------------------

def test_check_distinct_paths_finds_same_files_links_and_nesting(tmp_path) -> None:
    a = tmp_path / "a.tif"
    a.write_bytes(b"a")
    (tmp_path / "hard.tif").hardlink_to(a)
    (tmp_path / "soft.tif").symlink_to(a)
    check_distinct_paths({"SRC": a, "DST": tmp_path / "b.tif", "--report": tmp_path / "r.json"})
    for other in ("a.tif", "hard.tif", "soft.tif", "./sub/../a.tif"):
        with pytest.raises(ConfigError, match="same file"):
            check_distinct_paths({"SRC": a, "DST": tmp_path / other})
    with pytest.raises(ConfigError, match="inside"):
        check_distinct_paths({"SRC": tmp_path / "p.zarr" / "x.tif", "DST": tmp_path / "p.zarr"})
    with pytest.raises(ConfigError, match="inside"):
        check_distinct_paths({"DST": tmp_path / "d" / "m.tif", "--zarr": tmp_path / "d"})
    # two things that are only read may share a file: nothing is written there
    check_distinct_paths({"SRC": a, "model": tmp_path}, read_only=("SRC", "model"))


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink"])
def test_overwrite_with_dst_equal_to_src_is_refused(scene, deeplab_dir, tmp_path, how) -> None:
    dst = scene
    if how == "hardlink":
        dst = tmp_path / "link.tif"
        dst.hardlink_to(scene)
    elif how == "symlink":
        dst = tmp_path / "link.tif"
        dst.symlink_to(scene)
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, dst, deeplab_dir, "--overwrite"))
    one_line_error(code, out, 2, "same file")
    assert snapshot(tmp_path) == before


def test_zarr_equal_to_src_or_dst_is_refused(scene, deeplab_dir, tmp_path) -> None:
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--zarr", str(scene),
                                  "--overwrite"))
    one_line_error(code, out, 2, "same file")
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--zarr",
                                  str(tmp_path / "m.tif")))
    one_line_error(code, out, 2, "same file")  # was exit 75, "another run" with its own pid
    assert snapshot(tmp_path) == before


def test_src_inside_dst_is_refused(make_raster, deeplab_dir, tmp_path) -> None:
    store = tmp_path / "p.zarr"
    code, out = run(*predict_args(make_raster(random_image(3, 140, 150)), store, deeplab_dir))
    assert code == 0, out
    src = store / "small.tif"
    shutil.copy(tmp_path / "scene.tif", src)
    before = snapshot(tmp_path)
    code, out = run(*predict_args(src, store, deeplab_dir, "--format", "zarr", "--overwrite"))
    one_line_error(code, out, 2, "inside")
    assert snapshot(tmp_path) == before


def test_report_on_src_or_dst_is_refused(scene, deeplab_dir, tmp_path) -> None:
    before = snapshot(tmp_path)
    for report in (scene, tmp_path / "m.tif"):
        code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--report",
                                      str(report), "--overwrite"))
        one_line_error(code, out, 2, "same file")
    assert snapshot(tmp_path) == before


# -- what --overwrite may replace ------------------------------------------------------------

def test_is_tileseg_output_recognises_only_tileseg_files(scene, deeplab_dir, tmp_path) -> None:
    tif, store, report = tmp_path / "m.tif", tmp_path / "m.zarr", tmp_path / "r.json"
    code, out = run(*predict_args(scene, tif, deeplab_dir, "--zarr", str(store),
                                  "--report", str(report)))
    assert code == 0, out
    assert is_tileseg_output(tif) and is_tileseg_output(store) and is_tileseg_output(report)
    assert json.loads(report.read_text())["tileseg_report"] == 1
    (tmp_path / "notes.json").write_text('{"src": "x"}')
    (tmp_path / "docs").mkdir()
    (tmp_path / "empty.zarr").mkdir()
    for foreign in (scene, tmp_path / "notes.json", tmp_path / "docs", tmp_path / "empty.zarr",
                    tmp_path / "missing.tif"):
        assert not is_tileseg_output(foreign), foreign


@pytest.mark.parametrize("kind", ["geotiff", "folder", "documents.zarr", "text"])
def test_overwrite_keeps_what_tileseg_did_not_write(scene, deeplab_dir, tmp_path, make_raster,
                                                    kind) -> None:
    if kind == "geotiff":
        dst = make_raster(random_image(1, 20, 20), name="mask.tif")  # a user's own raster
    elif kind == "folder":
        dst = tmp_path / "mask.tif"
        dst.mkdir()
        (dst / "thesis.docx").write_bytes(b"years of work")
    elif kind == "documents.zarr":
        dst = tmp_path / "mask.zarr"
        dst.mkdir()
        (dst / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
        (dst / "notes.txt").write_text("mine")
    else:
        dst = tmp_path / "mask.tif"
        dst.write_text("not a raster")
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, dst, deeplab_dir, "--overwrite"))
    one_line_error(code, out, 4, str(dst), "not written by tileseg")
    assert snapshot(tmp_path) == before
    assert not Path(f"{dst}.partial").exists()


def test_overwrite_keeps_a_symbolic_link_and_its_target(scene, deeplab_dir, tmp_path) -> None:
    (tmp_path / "archive").mkdir()
    target = tmp_path / "archive" / "mask.tif"
    assert run(*predict_args(scene, target, deeplab_dir))[0] == 0  # tileseg's, behind a link
    link = tmp_path / "latest.tif"
    link.symlink_to(target)
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, link, deeplab_dir, "--overwrite"))
    one_line_error(code, out, 4, str(link), "symbolic link")
    assert snapshot(tmp_path) == before and link.is_symlink()


def test_overwrite_replaces_tileseg_outputs(scene, deeplab_dir, tmp_path) -> None:
    tif, store, report = tmp_path / "m.tif", tmp_path / "m.zarr", tmp_path / "r.json"
    args = predict_args(scene, tif, deeplab_dir, "--zarr", str(store), "--report", str(report))
    assert run(*args)[0] == 0
    first = json.loads(report.read_text())["seconds"]["total"]
    code, out = run(*args, "--overwrite")
    assert code == 0, out
    assert json.loads(report.read_text())["seconds"]["total"] != first
    assert is_tileseg_output(tif) and is_tileseg_output(store)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*"))


def test_overwrite_keeps_a_foreign_folder_where_staging_would_go(scene, deeplab_dir,
                                                                 tmp_path) -> None:
    folder = tmp_path / "m.tif.partial"  # not left by tileseg: no run.json
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--overwrite"))
    one_line_error(code, out, 4, str(folder), "not written by tileseg")
    assert snapshot(tmp_path) == before and not is_tileseg_output(folder)


def test_overwrite_restarts_an_interrupted_run(scene, deeplab_dir, tmp_path) -> None:
    from conftest import interrupt_after

    dst = tmp_path / "m.tif"
    with pytest.raises(KeyboardInterrupt):
        predict(PredictConfig(str(scene), str(dst), tile_size=64, overlap=16, chunk_size=48,
                              workers=1), model=per_pixel_model(3, 4), progress=interrupt_after(2))
    assert is_tileseg_output(Path(f"{dst}.partial"))  # its own staging: --overwrite may delete it
    code, out = run(*predict_args(scene, dst, deeplab_dir, "--overwrite"))
    assert code == 0, out
    assert not Path(f"{dst}.partial").exists() and is_tileseg_output(dst)


def test_overwrite_keeps_a_foreign_zarr_destination(scene, deeplab_dir, tmp_path) -> None:
    store = tmp_path / "keep.zarr"
    store.mkdir()
    (store / "data.bin").write_bytes(b"\x00" * 10)
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--zarr", str(store),
                                  "--overwrite"))
    one_line_error(code, out, 4, str(store), "not written by tileseg")
    assert snapshot(tmp_path) == before


# -- --report --------------------------------------------------------------------------------

def test_report_never_replaces_a_file_silently(scene, deeplab_dir, tmp_path) -> None:
    report = tmp_path / "run.json"
    report.write_text("my notes")
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--report", str(report)))
    one_line_error(code, out, 4, str(report), "--overwrite")
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--report", str(report),
                                  "--overwrite"))
    one_line_error(code, out, 4, str(report), "not written by tileseg")
    assert snapshot(tmp_path) == before  # refused before the run: no mask either


def test_report_folder_is_checked_before_the_run(scene, deeplab_dir, tmp_path) -> None:
    before = snapshot(tmp_path)
    code, out = run(*predict_args(scene, tmp_path / "m.tif", deeplab_dir, "--report",
                                  str(tmp_path / "no" / "run.json")))
    one_line_error(code, out, 4, "does not exist")
    assert snapshot(tmp_path) == before


# -- --resume on a finished destination ------------------------------------------------------

def test_resume_on_a_finished_output_of_another_job_is_refused(make_raster, deeplab_dir,
                                                               tmp_path) -> None:
    a = make_raster(random_image(3, 140, 150, seed=1), name="a.tif")
    b = make_raster(random_image(3, 140, 150, seed=2), name="b.tif")
    for dst in (tmp_path / "m.tif", tmp_path / "m.zarr"):
        assert run(*predict_args(a, dst, deeplab_dir))[0] == 0
        before = snapshot(tmp_path)
        code, out = run(*predict_args(b, dst, deeplab_dir, "--resume"))
        one_line_error(code, out, 4, str(dst), "other inputs or options", "--overwrite")
        code, out = run(*predict_args(a, dst, deeplab_dir, "--resume", "--overlap", "8"))
        one_line_error(code, out, 4, "other inputs or options")
        assert snapshot(tmp_path) == before
        code, out = run(*predict_args(a, dst, deeplab_dir, "--resume"))
        assert code == 0, out  # the same job: already complete
        assert snapshot(tmp_path) == before


# -- checked before any work -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [(["--atrous-rates", "0,-1,2"], 2, "--atrous-rates"),
     (["--tile-size", "100000000"], 2, "--tile-size"),
     (["--scheduler", "bogus"], 2, "scheduler 'bogus': not a scheduler"),
     (["--scheduler", "tcp://127.0.0.1:9"], 2, "cannot reach"),
     (["--vectorize", "NOFOLDER/poly.gpkg"], 4, "does not exist"),
     (["--zarr", "m.tif"], 2, "same file"),
     (["--probabilities", "uint8"], 2, "--zarr")],
)
def test_options_that_cannot_work_fail_before_staging(scene, deeplab_dir, tmp_path, monkeypatch,
                                                      extra, code, needle) -> None:
    import dask

    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with dask.config.set({"tileseg.connect-timeout": "2s"}):  # an unreachable one: fail fast
        status, out = run(*predict_args(scene, Path("m.tif"), deeplab_dir, *extra))
    one_line_error(status, out, code, needle)
    assert snapshot(tmp_path) == before  # no m.tif.partial, no lock, nothing changed


def test_a_run_that_cannot_fit_in_memory_is_refused_before_staging(deeplab_dir,
                                                                   tmp_path) -> None:
    src = tmp_path / "huge.tif"  # 100000 x 100000 px, sparse: no block is stored
    with rasterio.open(src, "w", driver="GTiff", height=100_000, width=100_000, count=3,
                       dtype="uint8", crs="EPSG:32631", transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
                       tiled=True, blockxsize=512, blockysize=512, SPARSE_OK=True):
        pass
    before = snapshot(tmp_path)
    code, out = run("predict", str(src), str(tmp_path / "m.tif"), "-m", str(deeplab_dir),
                    "--tile-size", "16384", "--chunk-size", "200000", "--batch-size", "64")
    one_line_error(code, out, 2, "GiB", "--batch-size", "--tile-size")
    assert snapshot(tmp_path) == before


def test_tile_larger_than_the_raster_is_clamped(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 50, 70))
    started = time.perf_counter()
    result = predict(PredictConfig(str(src), str(tmp_path / "m.tif"), tile_size=4096),
                     model=per_pixel_model(3, 4))
    assert time.perf_counter() - started < 30  # was 107 s and 9.3 GB with 4096 px tiles
    assert result.tiles_total == 1
    assert result.report["tiling"]["tile_size"] <= 70 + 64
    with rasterio.open(result.dst) as out:
        assert len(np.unique(out.read(1))) > 1


# -- damaged inputs --------------------------------------------------------------------------

def test_truncated_input_found_mid_run_is_a_damaged_input(make_raster, deeplab_dir,
                                                          tmp_path) -> None:
    src = make_raster(random_image(3, 300, 300), block=64, compress="deflate")
    data = src.read_bytes()
    with rasterio.open(src) as ds:  # cut the file inside the last block
        offset = int(ds.get_tag_item("BLOCK_OFFSET_4_4", "TIFF", bidx=1))
    src.write_bytes(data[: offset + 10])
    code, out = run(*predict_args(src, tmp_path / "m.tif", deeplab_dir))
    line = one_line_error(code, out, 2, str(src), "damaged", "chunk (", "rows")
    assert "--resume" in line  # after repairing the file, the finished chunks are kept


def _vrt_over(source: Path, like: Path, vrt: Path) -> Path:
    """A VRT of ``like``'s size and georeferencing whose three bands read ``source``."""
    with rasterio.open(like) as ds:
        crs, gt = ds.crs.to_wkt(), ", ".join(str(v) for v in ds.transform.to_gdal())
        h, w = ds.height, ds.width
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand><SrcRect xOff='0' yOff='0' xSize='{w}' ySize='{h}'/>"
        f"<DstRect xOff='0' yOff='0' xSize='{w}' ySize='{h}'/></SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3))
    vrt.write_text(f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{crs}</SRS>'
                   f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>")
    return vrt


def test_vrt_with_a_missing_source_is_a_damaged_input(make_raster, deeplab_dir,
                                                      tmp_path) -> None:
    like = make_raster(random_image(3, 140, 150), name="left.tif")
    vrt = _vrt_over(tmp_path / "gone.tif", like, tmp_path / "scene.vrt")
    code, out = run(*predict_args(vrt, tmp_path / "m.tif", deeplab_dir))
    one_line_error(code, out, 2, str(vrt), "damaged")
    assert not (tmp_path / "m.tif").exists()


def test_dst_on_a_file_the_vrt_reads_is_refused(make_raster, deeplab_dir, tmp_path) -> None:
    source = make_raster(random_image(3, 140, 150), name="tile.tif")
    vrt = _vrt_over(source, source, tmp_path / "scene.vrt")
    before = snapshot(tmp_path)
    code, out = run(*predict_args(vrt, source, deeplab_dir, "--overwrite"))
    one_line_error(code, out, 2, "same file", "tile.tif")
    assert snapshot(tmp_path) == before


# -- SIGTERM ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_is_bitwise_identical(make_raster, several_class_deeplab,
                                                               tmp_path) -> None:
    deeplab_dir = several_class_deeplab
    src = make_raster(random_image(3, 400, 400, seed=5), block=64)  # 25 chunks
    clean = tmp_path / "clean.tif"
    assert run(*predict_args(src, clean, deeplab_dir))[0] == 0
    dst = tmp_path / "mask.tif"
    args = [sys.executable, "-m", "tileseg", *predict_args(src, dst, deeplab_dir),
            "--workers", "1"]
    done = Path(f"{dst}.partial") / "work" / "done"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if done.is_dir() and len(os.listdir(done)) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=60)
        print(f"clean stop after SIGTERM: {time.monotonic() - signalled:.2f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in err, err
    assert not dst.exists() and done.is_dir()
    finished = len(os.listdir(done))
    assert finished >= 3
    assert not [p for p in done.parent.rglob("*") if ".tmp" in p.name]  # no torn chunk files

    report = tmp_path / "resume.json"
    resumed = subprocess.run([*args, "--resume", "--report", str(report)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(report.read_text())["chunks_resumed"] >= finished
    with rasterio.open(clean) as a, rasterio.open(dst) as b:
        expected = a.read(1)
        assert len(np.unique(expected)) > 1
        np.testing.assert_array_equal(b.read(1), expected)


def test_library_errors_keep_their_builtin_bases() -> None:
    from tileseg.errors import DamagedInputError, RunError

    assert issubclass(DamagedInputError, InputError) and issubclass(DamagedInputError, RunError)
    assert DamagedInputError("x").exit_code == 2
    assert issubclass(OutputError, OSError)


def test_batch_manifest_outputs_may_not_overlap_sources_or_each_other(tmp_path) -> None:
    from tileseg.batch import load_manifest

    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"scene")
    manifest = tmp_path / "scenes.yaml"
    manifest.write_text("- {src: a.tif, dst: out/a_mask.tif}\n- {src: b.tif, dst: a.tif}\n")
    with pytest.raises(InputError, match=r"scene 1 src .*a.tif and scene 2 dst .*same file"):
        load_manifest(manifest)
    manifest.write_text("- {src: a.tif, dst: out.zarr}\n- {src: b.tif, dst: b_mask.tif, "
                        "zarr: out.zarr/b.zarr}\n")
    with pytest.raises(InputError, match="inside"):
        load_manifest(manifest)
    manifest.write_text("- {src: a.tif, dst: a_mask.tif}\n- {src: a.tif, dst: a_mask2.tif}\n")
    assert len(load_manifest(manifest)) == 2  # one source read twice is fine


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    from tileseg.outputs.location import location

    report = tmp_path / "run.json"
    location(report).write_text('{"tileseg_report": 1}\n')
    with pytest.raises(UnicodeEncodeError), location(report).writing() as tmp:
        tmp.write_text("half ", encoding="utf-8")
        tmp.write_text("half \udc80 written", encoding="utf-8")  # fails part-way through
    assert report.read_text() == '{"tileseg_report": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left behind


def test_vectorize_over_a_foreign_file_is_refused_before_the_run(scene, deeplab_dir,
                                                                 tmp_path) -> None:
    foreign = tmp_path / "mine.gpkg"
    foreign.write_bytes(b"not a tileseg layer")
    code, out = run(*predict_args(scene, tmp_path / "out.tif", deeplab_dir, "--vectorize",
                                  str(foreign), "--overwrite"))
    assert code == 4 and "tileseg marker" in out, out
    assert foreign.read_bytes() == b"not a tileseg layer"
    assert not list(tmp_path.glob("out.tif*"))  # refused before any work: no mask, no staging


# -- files beside the mask and the batch: replaced only when tileseg wrote them ----------------

def test_a_preview_replaces_only_a_preview_tileseg_drew(scene, deeplab_dir, tmp_path) -> None:
    from PIL import Image

    mask = tmp_path / "m.tif"
    code, out = run(*predict_args(scene, mask, deeplab_dir, "--tile-size", "64", "--overlap", "16"))
    assert code == 0, out
    photo = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(photo)
    before = photo.read_bytes()
    code, out = run("preview", str(mask), "-o", str(photo))
    one_line_error(code, out, 4, "not a preview tileseg drew")
    assert photo.read_bytes() == before
    ours = tmp_path / "ours.png"
    assert run("preview", str(mask), "-o", str(ours))[0] == 0
    code, out = run("preview", str(mask), "-o", str(ours))  # its own: drawn again
    assert code == 0, out


def test_a_foreign_aux_xml_beside_a_new_mask_is_kept(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 90, 80))
    user_aux = tmp_path / "new.tif.aux.xml"
    user_aux.write_text("<PAMDataset><Metadata>my notes</Metadata></PAMDataset>\n")
    predict(PredictConfig(str(src), str(tmp_path / "new.tif"), tile_size=64, overlap=16),
            model=per_pixel_model(3, 4))
    assert "my notes" in user_aux.read_text()
    # beside a mask tileseg replaces, the sidecar goes with it: it describes the old mask
    predict(PredictConfig(str(src), str(tmp_path / "new.tif"), tile_size=64, overlap=16,
                          overwrite=True), model=per_pixel_model(3, 4))
    assert "CategoryNames" in user_aux.read_text()


@pytest.mark.parametrize("name", ["scenes.summary.json", "scenes.summary.csv",
                                  "scenes.summary.html"])
def test_batch_leaves_summary_files_it_did_not_write(make_raster, tmp_path, name) -> None:
    from tileseg.batch import BatchConfig, load_manifest, run_batch

    src = make_raster(random_image(3, 60, 70))
    manifest = tmp_path / "scenes.txt"
    manifest.write_text(f"{src}\n")
    foreign = tmp_path / name
    foreign.write_text("my own file\n")
    config = BatchConfig(summary=str(tmp_path / "scenes.summary.json"))
    with pytest.raises(OutputError, match="not a tileseg batch summary"):
        run_batch(load_manifest(manifest, output_dir=tmp_path / "out"), config)
    assert foreign.read_text() == "my own file\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- every output's folder is checked before any work (issue 18); /proc/sys is a real folder
# nobody can write in, root included

def _preview(path: str) -> None:
    from tileseg.preview import check_preview_destination

    check_preview_destination(path, overwrite=False)


def _polygons(path: str) -> None:
    from tileseg.vectorization import check_destination

    check_destination(path, overwrite=False)


def _summary(path: str) -> None:
    from tileseg.batch import check_summary_targets

    check_summary_targets(path)


def _model_folder(path: str) -> None:
    from tileseg.training.loop import check_out_dir

    check_out_dir(Path(path), overwrite=False)


@pytest.mark.parametrize("check", [_preview, _polygons, _summary, _model_folder],
                         ids=["preview", "vectorize", "batch-summary", "train-out"])
@pytest.mark.parametrize("target", ["/proc/sys/out.{ext}", "/proc/sys/new/deeper/out.{ext}"])
def test_an_output_in_a_folder_nobody_can_write_is_refused_up_front(check, target) -> None:
    ext = {"_preview": "png", "_polygons": "gpkg", "_summary": "json"}.get(check.__name__, "m")
    path = target.format(ext=ext)
    with pytest.raises(OutputError, match="not writable|does not exist") as info:
        check(path)
    assert "\n" not in str(info.value) and info.value.exit_code == 4


def test_a_model_folder_is_made_with_its_parents_where_that_is_possible(tmp_path) -> None:
    from tileseg.outputs.paths import check_folder_creatable

    check_folder_creatable(tmp_path / "new" / "deeper", "out_dir")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="which is not a folder"):
        check_folder_creatable(tmp_path / "notes.txt" / "model", "out_dir")
