"""The HTML page of a batch: one row per scene with its preview, status, tiles, time and class areas.

Written beside the JSON/CSV summary (``scenes.txt.summary.html``) each time the summary is, with
the scenes' thumbnails in a folder beside it (``scenes.txt.summary.previews/``), so the page and its
pictures move together and open from disk in any browser, without a server or a script.
A thumbnail and its class areas are drawn once per mask and reused while the mask is unchanged.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tileseg.errors import TilesegError
from tileseg.text import counted

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256


@dataclass(frozen=True)
class ScenePicture:
    """A scene's thumbnail (path relative to the HTML page) and its class areas."""

    png: str
    areas: tuple[dict[str, Any], ...]  # id, name, color, pixels, km2, share


HTML_MARKER = '<meta name="generator" content="tileseg batch">'


def html_path(summary: str | os.PathLike[str]) -> Path:
    """``scenes.txt.summary.json`` (or ``.csv``) -> ``scenes.txt.summary.html``."""
    return Path(summary).with_suffix(".html")


def previews_dir(summary: str | os.PathLike[str]) -> Path:
    """``scenes.txt.summary.json`` -> ``scenes.txt.summary.previews/``."""
    path = Path(summary)
    return path.with_name(path.with_suffix("").name + ".previews")


def scene_picture(dst: str | os.PathLike[str], index: int,
                  summary: str | os.PathLike[str]) -> ScenePicture | None:
    """Draw (or reuse) the thumbnail of the mask at ``dst``; None when it cannot be drawn.

    A failure here never fails the scene: the mask is complete, only its picture is missing.
    """
    from tileseg.outputs.location import location
    from tileseg.outputs.naming import source_name
    from tileseg.preview import PreviewConfig, make_preview

    mask = location(dst)
    folder = previews_dir(summary)
    png = folder / f"{index + 1:04d}-{source_name(str(mask))}.png"
    record = png.with_suffix(".json")
    relative = f"{folder.name}/{png.name}"
    try:
        # when the mask was written (a Zarr: its root zarr.json; an object: its ETag)
        stamp = mask.stamp()
        if stamp is None:
            raise OSError(f"{mask}: cannot tell when it was written")
        if png.exists() and record.exists():
            known = json.loads(record.read_text())
            if known.get("mask") == str(mask) and known.get("stamp") == stamp:
                return ScenePicture(relative, tuple(known["areas"]))
        folder.mkdir(exist_ok=True)
        drawn = make_preview(str(mask), png, PreviewConfig(size=THUMBNAIL_SIZE, legend=False))
        areas = tuple({**asdict(a), "color": list(a.color)} for a in drawn.areas)
        location(record).write_text(json.dumps({"mask": str(mask), "stamp": stamp,
                                                 "areas": areas}))
        return ScenePicture(relative, areas)
    except (TilesegError, OSError, ValueError, KeyError) as exc:
        logger.warning("%s: no preview (%s)", mask, exc)
        return None


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { display: block; border: 1px solid #ccc; }
.path { font-family: ui-monospace, monospace; font-size: 12px; }
.dst { color: #666; }
.status { font-weight: 600; }
.failed .status { color: #b00020; }
.succeeded .status, .resumed .status { color: #1b7f3b; }
.skipped .status { color: #666; }
.pending .status { color: #a66f00; }
.error { color: #b00020; font-size: 12px; max-width: 28em; }
ul.areas { list-style: none; margin: 0; padding: 0; white-space: nowrap; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 6px;
          border: 1px solid #555; vertical-align: -1px; }
"""


def _areas_cell(picture: ScenePicture | None) -> str:
    if picture is None or not picture.areas:
        return "<td></td>"
    items = []
    for a in sorted(picture.areas, key=lambda a: -float(a["share"])):
        r, g, b = (int(v) for v in a["color"][:3])
        km2 = a.get("km2")
        size = f"{km2:,.2f} km²" if km2 is not None else ""
        items.append(f'<li><span class="swatch" style="background:#{r:02x}{g:02x}{b:02x}">'
                     f"</span>{html.escape(str(a['name']))} {size} "
                     f"({100 * float(a['share']):.1f}%)</li>")
    return f'<td><ul class="areas">{"".join(items)}</ul></td>'


def render_html(title: str, doc: Mapping[str, Any],
                pictures: Mapping[int, ScenePicture | None]) -> str:
    """The page for a summary document (as ``batch`` writes to JSON) and the scenes' pictures."""
    rows = []
    scenes: Sequence[Mapping[str, Any]] = doc["scenes"]
    for i, row in enumerate(scenes):
        status = str(row["status"])
        picture = pictures.get(i)
        img = (f'<a href="{html.escape(picture.png)}"><img src="{html.escape(picture.png)}" '
               f'alt="preview of {html.escape(Path(str(row["dst"])).name)}" '
               f'style="max-width:{THUMBNAIL_SIZE}px;max-height:{THUMBNAIL_SIZE}px"></a>'
               if picture is not None else "")
        error = f'<div class="error">{html.escape(str(row["error"]))}</div>' if row["error"] else ""
        tiles = (f"{row['tiles_inferred']} / {row['tiles_total']}" if row["tiles_total"] else "")
        seconds = f"{float(row['seconds']):.1f}" if row["seconds"] else ""
        rows.append(
            f'<tr class="{html.escape(status)}" data-status="{html.escape(status)}">'
            f"<td>{img}</td>"
            f'<td><div class="path src">{html.escape(str(row["src"]))}</div>'
            f'<div class="path dst">{html.escape(str(row["dst"]))}</div></td>'
            f'<td><span class="status">{html.escape(status)}</span>{error}</td>'
            f'<td class="num">{tiles}</td><td class="num">{seconds}</td>'
            f"{_areas_cell(picture)}</tr>")
    counts = ", ".join(f"{n} {s}" for s, n in doc["counts"].items() if n)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"{HTML_MARKER}\n"
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="totals">{counted(doc["scenes_total"], "scene")}: {html.escape(counts)}; '
        f'{float(doc["seconds"]):.1f} s; finished {html.escape(str(doc["finished"]))}</p>\n'
        '<table id="scenes">\n<thead><tr><th>preview</th><th>scene (source, mask)</th>'
        "<th>status</th><th>tiles inferred / total</th><th>seconds</th>"
        "<th>area per class</th></tr></thead>\n<tbody>\n" + "\n".join(rows)
        + "\n</tbody>\n</table>\n</body>\n</html>\n")
