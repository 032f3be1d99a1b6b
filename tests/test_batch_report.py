"""The batch's HTML page: parsed with html.parser always, rendered in headless Chromium if present."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import NORTH_UP, UTM, random_image
from PIL import Image

from tileseg.cli.main import cli
from tileseg.models.loaded import ModelSpec, build_model, save_model
from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization

SMALL = ["--tile-size", "64", "--overlap", "16", "--chunk-size", "96"]
RED, GREEN, BLUE = (230, 60, 60), (60, 170, 90), (70, 90, 220)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepLabV3+ whose head has no bias, so its mask holds more than one class."""
    torch.manual_seed(0)
    module = build_model(ModelSpec(encoder_name="resnet18", in_channels=3, classes=3))
    head: Any = module.segmentation_head
    with torch.no_grad():
        head[0].bias.zero_()
    path = tmp_path_factory.mktemp("models") / "coloured"
    meta = ModelMetadata(
        classes=(ClassInfo(0, "roof", RED), ClassInfo(1, "grass", GREEN),
                 ClassInfo(2, "pool & pond", BLUE)),
        in_channels=3, dtype="uint8", normalization=Normalization(scale=(1 / 255,)))
    save_model(module, path, meta)
    return path


class _Page(HTMLParser):
    """Rows of the scenes table: their class, image sources and text, plus every <li>."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "tr" and a.get("data-status"):
            self.rows.append({"status": a["data-status"], "imgs": [], "text": "", "swatches": []})
        elif self.rows and tag == "img":
            self.rows[-1]["imgs"].append(a.get("src"))
        elif self.rows and tag == "span" and a.get("class") == "swatch":
            self.rows[-1]["swatches"].append(a.get("style"))

    def handle_endtag(self, tag: str) -> None:
        self._in_title = self._in_title and tag != "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self.rows:
            self.rows[-1]["text"] += data


@pytest.fixture(scope="module")
def batch_page(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """One batch of two real scenes and a broken one; returns its HTML page (shared: a run
    costs seconds)."""
    folder = tmp_path_factory.mktemp("batch")
    for i in range(2):
        data = random_image(3, 90 + 20 * i, 110, seed=i)
        with rasterio.open(folder / f"s{i}.tif", "w", driver="GTiff", height=data.shape[1],
                           width=data.shape[2], count=3, dtype="uint8", crs=UTM,
                           transform=NORTH_UP) as dst:
            dst.write(data)
    (folder / "bad.tif").write_bytes(b"not a raster")
    (folder / "scenes.txt").write_text("s0.tif\nbad.tif\ns1.tif\n")
    result = CliRunner().invoke(cli, _batch_args(folder, model_dir))
    assert result.exit_code == 5, result.output  # the bad scene fails, the others run
    return folder / "scenes.txt.summary.html"


def _batch_args(folder: Path, model_dir: Path) -> list[str]:
    return ["batch", str(folder / "scenes.txt"), "-o", str(folder / "out"), "--model",
            str(model_dir), *SMALL]


def test_batch_writes_an_html_page_with_thumbnails_status_and_areas(batch_page: Path,
                                                                     model_dir: Path) -> None:
    page_path, folder = batch_page, batch_page.parent
    page = _Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    assert page.title == "tileseg batch: scenes.txt.summary"
    assert [r["status"] for r in page.rows] == ["succeeded", "failed", "succeeded"]
    summary = json.loads((folder / "scenes.txt.summary.json").read_text())["scenes"]
    for row, record in zip(page.rows, summary, strict=True):
        assert record["src"] in row["text"] and record["dst"] in row["text"]
        if row["status"] == "failed":
            assert row["imgs"] == [] and record["error"] in row["text"]  # quotes escaped
            continue
        assert f"{record['tiles_inferred']} / {record['tiles_total']}" in row["text"]
        assert f"{record['seconds']:.1f}" in row["text"]
        (src,) = row["imgs"]
        thumb = page_path.parent / src  # relative: the page opens from disk anywhere
        assert src.startswith("scenes.txt.summary.previews/") and thumb.is_file()
        assert max(Image.open(thumb).size) <= 256
        with Image.open(thumb) as image:
            colours = {tuple(c) for c in np.asarray(image.convert("RGB")).reshape(-1, 3)}
        assert len(colours & {RED, GREEN, BLUE}) >= 2  # several classes, in their palette
        assert "km²" in row["text"] and "%" in row["text"]
        assert row["swatches"] and all("background:#" in s for s in row["swatches"])

    # rerun: skipped scenes keep their pictures (reused, not redrawn), the page is rewritten
    thumbs = sorted((folder / "scenes.txt.summary.previews").glob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in thumbs]
    CliRunner().invoke(cli, _batch_args(folder, model_dir))
    again = _Page()
    again.feed(page_path.read_text(encoding="utf-8"))
    assert [r["status"] for r in again.rows] == ["skipped", "failed", "skipped"]
    assert [len(r["imgs"]) for r in again.rows] == [1, 0, 1]
    assert [p.stat().st_mtime_ns for p in thumbs] == stamps


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install "
                    "chromium); the page is still parsed by the test above")
def test_the_html_page_renders_its_thumbnails_in_a_real_browser(batch_page: Path,
                                                                tmp_path: Path) -> None:
    page_path = batch_page
    shot = tmp_path / "shot.png"
    assert CHROMIUM is not None
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--window-size=1400,900", "--allow-file-access-from-files",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         page_path.resolve().as_uri()],
        check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(colour: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.asarray(colour)).max(axis=1) <= 3).sum())

    # The thumbnails (hundreds of pixels of class colour each) were loaded from their relative
    # paths and drawn; the legend swatches alone would be 11x11 px per class and scene.
    assert max(count(RED), count(GREEN), count(BLUE)) > 5000


def test_a_manifest_can_ask_each_scene_for_its_own_preview(tmp_path: Path) -> None:
    from tileseg.batch import load_manifest

    manifest = tmp_path / "scenes.yaml"
    manifest.write_text("- {src: a.tif, dst: out/a_mask.tif, preview: true}\n"
                        "- {src: b.tif, dst: out/b_mask.zarr, preview: pics/b.png}\n")
    a, b = load_manifest(manifest)
    assert a.options["preview"] == str(tmp_path / "out" / "a_mask.png")
    assert b.options["preview"] == str(tmp_path / "pics" / "b.png")
