"""Polygon layers, previews and style sidecars on object storage, against a real S3 API server
(moto) on loopback: each written locally and uploaded once, read back with independent readers
after a plain boto3 download; a user's object at the destination stays byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import NORTH_UP, UTM, per_pixel_model, random_image
from s3_server import S3Server, s3_with_buckets
from test_styles import gdal_categories_and_rat

from tileseg.config import PredictConfig
from tileseg.errors import OutputError
from tileseg.outputs.store import StoreURL, put_bytes
from tileseg.outputs.store_objects import ObjectState, upload_checked
from tileseg.pipeline import predict

BUCKET = "tileseg-objects"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_with_buckets(BUCKET) as server:
        yield server


def _config(src: Path | str, dst: str, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=96, workers=1)
    base.update(kw)
    return PredictConfig(src=str(src), dst=dst, **base)  # type: ignore[arg-type]


def _keys(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _fetch(s3: S3Server, key: str, to: Path) -> Path:
    to.write_bytes(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return to


def _cli(args: list[str]) -> tuple[int, str]:
    from tileseg.cli.main import cli

    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A source raster and its local mask (several classes, so the polygons can differ); shared
    by the module's tests, which only read them."""
    folder = tmp_path_factory.mktemp("scene")
    src = folder / "scene.tif"
    with rasterio.open(src, "w", driver="GTiff", height=150, width=230, count=3, dtype="uint8",
                       crs=UTM, transform=NORTH_UP) as out:
        out.write(random_image(3, 150, 230))
    local = predict(_config(src, str(folder / "local.tif")), model=per_pixel_model(3, 4))
    with rasterio.open(local.dst) as out:
        assert len(np.unique(out.read(1))) >= 3
    return src, Path(local.dst)


@pytest.fixture(scope="module")
def zarr_mask(s3: S3Server, scene) -> str:
    """The scene's mask as a Zarr on the store (read only by the tests)."""
    url = f"s3://{BUCKET}/shared/mask.zarr"
    predict(_config(scene[0], url), model=per_pixel_model(3, 4))
    return url


def _per_class(path: Path) -> dict[int, tuple[int, int]]:
    """Features and pixels per class, read with pyogrio (GDAL) or pyarrow (GeoParquet)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        ids, pixels = table["class_id"], table["pixels"]
    else:
        import pyogrio

        frame = pyogrio.read_dataframe(path, layer=0)  # a GeoPackage also has layer_styles
        ids, pixels = frame["class_id"].tolist(), frame["pixels"].tolist()
    out: dict[int, tuple[int, int]] = {}
    for cid, count in zip(ids, pixels, strict=True):
        n, total = out.get(int(cid), (0, 0))
        out[int(cid)] = (n + 1, total + int(count))
    return out


def _local_polygons(mask: Path, tmp_path: Path) -> dict[int, tuple[int, int]]:
    from tileseg.vectorization import vectorize

    out = tmp_path / "local-polygons.gpkg"
    vectorize(mask, out)
    return _per_class(out)


# -- predict --vectorize / --preview to the store ---------------------------------------------

def test_predict_writes_polygons_and_preview_to_s3(s3: S3Server, scene, tmp_path: Path) -> None:
    from PIL import Image

    src, mask = scene
    dst, layer, png = (f"s3://{BUCKET}/run/out.tif", f"s3://{BUCKET}/run/out.gpkg",
                       f"s3://{BUCKET}/run/out.png")
    result = predict(_config(src, dst, vectorize=layer, preview=png), model=per_pixel_model(3, 4))
    assert result.report["vectorize"]["dst"] == layer and result.report["preview"]["path"] == png
    fetched = _per_class(_fetch(s3, "run/out.gpkg", tmp_path / "fetched.gpkg"))
    expected = _local_polygons(mask, tmp_path)
    assert len(expected) >= 3 and fetched == expected
    with Image.open(_fetch(s3, "run/out.png", tmp_path / "fetched.png")) as picture:
        assert picture.text["Software"].startswith("tileseg")
    keys = _keys(s3, "run/")
    assert keys == ["run/out.gpkg", "run/out.png", "run/out.qml", "run/out.stac.json",
                    "run/out.tif", "run/out.tif.aux.xml"], keys  # no lock, staging, probe left
    qml = s3.client().get_object(Bucket=BUCKET, Key="run/out.qml")["Body"].read().decode()
    assert "paletted" in qml and "class 3" in qml  # tileseg's QGIS style beside the COG


@pytest.mark.parametrize("suffix", [".parquet", ".geojson", ".fgb"])
def test_vectorize_a_zarr_mask_on_s3_to_each_format(s3: S3Server, scene, zarr_mask: str,
                                                    tmp_path: Path, suffix: str) -> None:
    from tileseg.vectorization.writers import read_marker

    _, mask = scene
    zarr_url = zarr_mask
    layer = f"s3://{BUCKET}/fmt{suffix[1:]}/polygons{suffix}"
    code, output = _cli(["vectorize", zarr_url, layer, "-q"])
    assert code == 0, output
    fetched = _fetch(s3, f"fmt{suffix[1:]}/polygons{suffix}", tmp_path / f"fetched{suffix}")
    assert read_marker(fetched) is not None  # tileseg's marker travelled inside the object
    if suffix == ".geojson":  # in lon/lat (RFC 7946): compare features, not areas in metres
        counts = {c: n for c, (n, _) in _per_class(fetched).items()}
        assert counts == {c: n for c, (n, _) in _local_polygons(mask, tmp_path).items()}
    else:
        assert _per_class(fetched) == _local_polygons(mask, tmp_path)
    assert not [k for k in _keys(s3, f"fmt{suffix[1:]}/") if ".lock" in k or "probe" in k]


def test_vectorize_a_cog_on_s3_and_overwrite_its_own_layer(s3: S3Server, scene,
                                                           tmp_path: Path) -> None:
    _, mask = scene
    with rasterio.open(mask) as src:
        kept = int(np.unique(src.read(1))[1])
    s3.client().put_object(Bucket=BUCKET, Key="cog/mask.tif", Body=mask.read_bytes())
    layer = f"s3://{BUCKET}/cog/mask.gpkg"
    assert _cli(["vectorize", f"s3://{BUCKET}/cog/mask.tif", layer, "-q"])[0] == 0
    code, output = _cli(["vectorize", f"s3://{BUCKET}/cog/mask.tif", layer, "-q"])
    assert code == 4 and "already exists" in output
    code, output = _cli(["vectorize", f"s3://{BUCKET}/cog/mask.tif", layer, "--overwrite",
                         "--classes", str(kept), "-q"])
    assert code == 0, output  # tileseg's own layer (its marker, read from a download) replaced
    fetched = _per_class(_fetch(s3, "cog/mask.gpkg", tmp_path / "again.gpkg"))
    assert list(fetched) == [kept]


# -- a user's object stays --------------------------------------------------------------------

@pytest.mark.parametrize(("name", "args"), [
    ("layer.gpkg", ["vectorize", "MASK", "URL", "--overwrite"]),
    ("picture.png", ["preview", "MASK", "-o", "URL"]),
])
def test_a_foreign_object_is_left_byte_identical(s3: S3Server, scene, name: str,
                                                 args: list[str]) -> None:
    _, mask = scene
    key = f"foreign-{name}/{name}"
    body = b"\x89PNG\r\n\x1a\n not tileseg's" if name.endswith(".png") else b"SQLite format 3\x00x"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=body)
    argv = [str(mask) if a == "MASK" else f"s3://{BUCKET}/{key}" if a == "URL" else a
            for a in args]
    code, output = _cli(argv)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 4 and len(lines) == 1 and "tileseg" in lines[0], output
    assert s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert _keys(s3, f"foreign-{name}/") == [key]  # no lock, probe or temporary object left


@pytest.mark.parametrize(("option", "name", "overwrite", "match"), [
    ("vectorize", "out.gpkg", True, "not a polygon layer tileseg wrote"),
    ("vectorize", "out.gpkg", False, "already exists"),
    ("preview", "out.png", True, "not a preview tileseg drew"),
    ("preview", "out.png", False, "already exists"),
])
def test_predict_refuses_an_object_in_the_way_before_the_run(s3: S3Server, scene, option: str,
                                                             name: str, overwrite: bool,
                                                             match: str) -> None:
    src, _ = scene
    prefix = f"early-{option}-{overwrite}"
    put_bytes(StoreURL.parse(f"s3://{BUCKET}/{prefix}/{name}"), b"a user's file")
    with pytest.raises(OutputError, match=match):
        predict(_config(src, f"s3://{BUCKET}/{prefix}/out.tif", overwrite=overwrite,
                        **{option: f"s3://{BUCKET}/{prefix}/{name}"}), model=per_pixel_model(3, 4))
    assert _keys(s3, f"{prefix}/") == [f"{prefix}/{name}"]  # no mask written, nothing staged
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{name}")["Body"].read()
    assert body == b"a user's file"


def test_a_failed_write_leaves_no_object(s3: S3Server, scene, monkeypatch,
                                         tmp_path: Path) -> None:
    from tileseg.vectorization import vectorize

    _, mask = scene
    # the writer module the command will call (another test may have re-imported the package)
    writers = vectorize.__globals__["write_layer"].__globals__
    real = writers["_write_ogr"]

    def half_then_fail(tmp: Path, *args: object, **kw: object) -> None:
        real(tmp, *args, **kw)  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(writers, "_write_ogr", half_then_fail)
    scratch = _own_tmpdir(monkeypatch, tmp_path)
    code, output = _cli(["vectorize", str(mask), f"s3://{BUCKET}/failed/out.gpkg"])
    assert code == 4 and output.startswith(f"Error: {scratch} (the temporary folder, TMPDIR): "
                                           "no space left"), output  # the folder that is full
    assert _keys(s3, "failed/") == []
    assert list(scratch.iterdir()) == []  # nor a local copy


def _own_tmpdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import tempfile

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    return scratch


def test_a_failed_preview_leaves_no_object(s3: S3Server, scene, monkeypatch,
                                           tmp_path: Path) -> None:
    from PIL import Image

    _, mask = scene
    real = Image.Image.save

    def half_then_fail(self: Image.Image, fp: object, *args: object, **kw: object) -> None:
        real(self, fp, *args, **kw)  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    scratch = _own_tmpdir(monkeypatch, tmp_path)
    code, output = _cli(["preview", str(mask), "-o", f"s3://{BUCKET}/failed-png/out.png"])
    assert code == 4 and output.startswith(f"Error: {scratch} (the temporary folder, TMPDIR): "
                                           "no space left"), output
    assert _keys(s3, "failed-png/") == []
    assert list(scratch.iterdir()) == []


def test_an_object_put_after_the_check_is_not_replaced(s3: S3Server, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/race/out.gpkg"
    checked = ObjectState(url)  # absent when checked; then a user puts a file there
    put_bytes(StoreURL.parse(url), b"arrived meanwhile")
    local = tmp_path / "out.gpkg"
    local.write_bytes(b"tileseg's layer")
    with pytest.raises(OutputError, match="changed on the store"):
        upload_checked(local, checked, owned=lambda p: True, foreign="not ours")
    assert s3.client().get_object(Bucket=BUCKET, Key="race/out.gpkg")["Body"].read() == (
        b"arrived meanwhile")


@pytest.mark.parametrize(("dst", "vector"), [
    ("s3://B/same/out.tif", "s3://B/same/out.tif"),
    ("s3://B/inside/out.zarr", "s3://B/inside/out.zarr/polygons.gpkg"),
    ("/vsis3/B/vsi/out.tif", "s3://B/vsi/./out.tif"),
])
def test_one_object_for_two_outputs_is_refused(s3: S3Server, scene, dst: str,
                                               vector: str) -> None:
    src, _ = scene
    dst, vector = dst.replace("B", BUCKET, 1), vector.replace("B", BUCKET, 1)
    code, output = _cli(["predict", str(src), dst, "--vectorize", vector, "--model", "unused"])
    assert code == 2 and ("same object" in output or "lies inside" in output), output
    assert _keys(s3, dst.split("/")[-2] + "/") == []


def test_preview_cli_from_a_zarr_on_s3_to_s3(s3: S3Server, scene, zarr_mask: str,
                                            tmp_path: Path) -> None:
    from PIL import Image

    src, _ = scene
    zarr_url = zarr_mask
    png = f"s3://{BUCKET}/pic/mask.png"
    for _ in range(2):  # the second one replaces tileseg's own picture
        code, output = _cli(["preview", zarr_url, "-o", png, "--over", str(src), "--size", "128"])
        assert code == 0, output
    with Image.open(_fetch(s3, "pic/mask.png", tmp_path / "p.png")) as picture:
        assert picture.size[0] <= 128 and picture.text["Software"].startswith("tileseg")
    assert json.dumps(_keys(s3, "pic/")).count("mask.png") == 1


# -- style sidecars beside a COG on the store -------------------------------------------------

def test_cog_on_s3_gets_its_sidecars_and_a_user_style_stays(s3: S3Server, scene,
                                                            tmp_path: Path) -> None:
    src, _ = scene
    users = b"<qgis><!-- tuned by hand --></qgis>"
    s3.client().put_object(Bucket=BUCKET, Key="styled/b.qml", Body=users)
    predict(_config(src, f"s3://{BUCKET}/styled/b.tif"), model=per_pixel_model(3, 4))
    assert _keys(s3, "styled/") == ["styled/b.qml", "styled/b.stac.json", "styled/b.tif",
                                    "styled/b.tif.aux.xml"]
    assert s3.client().get_object(Bucket=BUCKET, Key="styled/b.qml")["Body"].read() == users
    # what a reader gets after a plain download: GDAL reads the class names from the sidecar
    folder = tmp_path / "download"
    folder.mkdir()
    for key in ("styled/b.tif", "styled/b.tif.aux.xml"):
        _fetch(s3, key, folder / Path(key).name)
    names, _, rows = gdal_categories_and_rat(folder / "b.tif")
    assert names == [f"class {i}" for i in range(4)] and len(rows) == 4


# -- tileseg batch with scenes, output folder, summary and manifest on the store ----------------

def _put_scene(s3: S3Server, make_raster, key: str, seed: int) -> None:
    path = make_raster(random_image(3, 70, 90, seed=seed), name=f"src{seed}.tif")
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())


def _batch(manifest: str, *args: str, model: Path) -> tuple[int, str]:
    return _cli(["batch", manifest, "--model", str(model), "--tile-size", "64", "--overlap", "16",
                 "--chunk-size", "96", "--workers", "1", *args])


def test_batch_with_manifest_scenes_and_output_dir_on_s3(s3: S3Server, make_raster,
                                                         deeplab_dir: Path) -> None:
    for n in (1, 2):
        _put_scene(s3, make_raster, f"jobs/in/s{n}.tif", n)
    s3.client().put_object(Bucket=BUCKET, Key="jobs/scenes.txt",
                           Body=b"# relative to the manifest's prefix\nin/s1.tif\nin/s2.tif\n")
    manifest, out = f"s3://{BUCKET}/jobs/scenes.txt", f"s3://{BUCKET}/results/run1/"
    code, output = _batch(manifest, "--output-dir", out, model=deeplab_dir)
    assert code == 0, output
    keys = _keys(s3, "results/run1/")
    for name in ("s1_mask.tif", "s2_mask.tif", "scenes.txt.summary.json",
                 "scenes.txt.summary.csv", "scenes.txt.summary.html"):
        assert f"results/run1/{name}" in keys, keys
    assert not [k for k in keys if ".partial" in k or ".lock" in k or "probe" in k], keys
    summary = json.loads(s3.client().get_object(
        Bucket=BUCKET, Key="results/run1/scenes.txt.summary.json")["Body"].read())
    assert [s["status"] for s in summary["scenes"]] == ["succeeded", "succeeded"]
    assert summary["scenes"][0]["src"] == f"s3://{BUCKET}/jobs/in/s1.tif"
    code, output = _batch(manifest, "--output-dir", out, model=deeplab_dir)  # idempotent
    assert code == 0 and "2 scenes: 2 skipped" in output, output


def test_batch_vectorize_beside_an_s3_mask_and_redo_only_the_missing_layer(
        s3: S3Server, make_raster, deeplab_dir: Path, tmp_path: Path) -> None:
    _put_scene(s3, make_raster, "vb/in/a.tif", 3)
    manifest = tmp_path / "scenes.yaml"
    manifest.write_text(f"- src: s3://{BUCKET}/vb/in/a.tif\n  dst: s3://{BUCKET}/vb/out/a.tif\n"
                        "  vectorize: true\n")
    assert _batch(str(manifest), model=deeplab_dir)[0] == 0
    assert "vb/out/a.gpkg" in _keys(s3, "vb/out/")
    s3.client().delete_object(Bucket=BUCKET, Key="vb/out/a.gpkg")
    code, output = _batch(str(manifest), model=deeplab_dir)
    assert code == 0 and "resumed" in output, output  # the mask kept, its polygons redone
    layer = _fetch(s3, "vb/out/a.gpkg", tmp_path / "a.gpkg")
    import pyogrio

    assert pyogrio.read_info(layer, layer=0)["features"] >= 1


def test_batch_leaves_a_foreign_summary_object_and_runs_no_scene(s3: S3Server, make_raster,
                                                                 deeplab_dir: Path) -> None:
    _put_scene(s3, make_raster, "fs/in/a.tif", 4)
    s3.client().put_object(Bucket=BUCKET, Key="fs/scenes.txt", Body=b"in/a.tif\n")
    theirs = b"date,amount\n2026-01-01,3\n"
    s3.client().put_object(Bucket=BUCKET, Key="fs/out/scenes.txt.summary.csv", Body=theirs)
    code, output = _batch(f"s3://{BUCKET}/fs/scenes.txt", "--output-dir",
                          f"s3://{BUCKET}/fs/out", model=deeplab_dir)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 4 and len(lines) == 1 and "not a tileseg batch summary" in lines[0], output
    assert s3.client().get_object(Bucket=BUCKET,
                                  Key="fs/out/scenes.txt.summary.csv")["Body"].read() == theirs
    assert _keys(s3, "fs/out/") == ["fs/out/scenes.txt.summary.csv"]  # no scene ran


@pytest.mark.parametrize("mask", ["s3://no-such-bucket-9/m.zarr", f"s3://{BUCKET}/absent/m.tif"])
def test_a_mask_missing_on_the_store_is_one_line_exit_2(s3: S3Server, tmp_path: Path,
                                                        mask: str) -> None:
    code, output = _cli(["vectorize", mask, str(tmp_path / "out.gpkg")])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and mask in lines[0], output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("yaml", "match"), [
    ("- {src: s3://b/a.tif, dst: s3://b/out/a.tif, preview: true}\n"
     "- {src: s3://b/c.tif, dst: s3://b/out/a.png}\n", "are the same object"),
    ("- {src: s3://b/a.tif, dst: s3://b/out/a.zarr}\n"
     "- {src: s3://b/c.tif, dst: s3://b/out/a.zarr/c.tif}\n", "lies inside scene 1 dst"),
    ("- {src: s3://b/a.tif, dst: /vsis3/b/x/../a.tif}\n", "the same object"),
])
def test_manifest_urls_are_checked_like_paths(tmp_path: Path, yaml: str, match: str) -> None:
    from tileseg.batch import load_manifest
    from tileseg.errors import InputError

    manifest = tmp_path / "scenes.yaml"
    manifest.write_text(yaml)
    with pytest.raises(InputError, match=match):
        load_manifest(manifest)


def test_output_dir_on_a_store_names_the_scenes_under_it(tmp_path: Path) -> None:
    from tileseg.batch import load_manifest

    manifest = tmp_path / "scenes.csv"
    manifest.write_text("src,dst,vectorize\ns3://in/a.tif,,true\nb.tif,sub/b.zarr,\n")
    first, second = load_manifest(manifest, output_dir="s3://out/run1/")
    assert (first.dst, first.options["vectorize"]) == ("s3://out/run1/a_mask.tif",
                                                       "s3://out/run1/a_mask.gpkg")
    assert (second.src, second.dst) == (str(tmp_path / "b.tif"), "s3://out/run1/sub/b.zarr")
