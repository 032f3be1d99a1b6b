"""tileseg.outputs.location: one interface, the same answers on a disk and on a store (a real S3
API server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server, s3_with_buckets

from tileseg.errors import InputNotFoundError, OutputError
from tileseg.outputs.location import LocalLocation, Location, StoreLocation, location

BUCKET = "tileseg-location-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_with_buckets(BUCKET) as server:
        yield server


@pytest.fixture(params=["disk", "store"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "disk":
        return location(tmp_path)
    server = request.getfixturevalue("s3")
    assert server is not None
    return location(f"s3://{BUCKET}/{tmp_path.name}")


def _ours(path: Path) -> bool:
    return path.read_text(encoding="utf-8").startswith("tileseg")


def test_a_place_is_parsed_once_into_its_kind(tmp_path: Path) -> None:
    assert isinstance(location(tmp_path / "m.tif"), LocalLocation)
    assert isinstance(location("s3://b/run/m.tif"), StoreLocation)
    place = location("s3://b/run/m.zarr/")
    assert location(place) is place
    assert place.sibling(".partial").text == "s3://b/run/m.zarr.partial"
    assert place.with_suffix(".stac.json").text == "s3://b/run/m.stac.json"
    assert place.child("../other/x.tif").text == "s3://b/run/other/x.tif"
    assert place.parent.text == "s3://b/run" and place.name == "m.zarr"


def test_written_text_reads_back_and_is_stamped(folder: Location) -> None:
    report = folder.child("report.json")
    assert not report.exists() and report.read_text() is None
    report.write_text("tileseg 1\n")
    assert report.exists() and report.read_text() == "tileseg 1\n"
    first = report.stamp()
    report.write_text("tileseg 2, longer\n")
    assert report.read_text() == "tileseg 2, longer\n" and report.stamp() != first
    assert report.read_document(1 << 20, "report") == "tileseg 2, longer\n"
    with pytest.raises(InputNotFoundError, match="no such report"):
        folder.child("absent.json").read_document(1 << 20, "report")


def test_only_tileseg_s_own_file_is_replaced(folder: Location) -> None:
    theirs = folder.child("theirs.txt")
    theirs.write_text("my notes\n")
    with pytest.raises(OutputError, match="already exists; pass overwrite"):
        theirs.check_replaceable(overwrite=False, owned=_ours, foreign="not ours")
    with pytest.raises(OutputError, match="not ours"):
        theirs.check_replaceable(overwrite=True, owned=_ours, foreign="not ours")
    with pytest.raises(OutputError, match="not ours"), \
            theirs.replacing(owned=_ours, foreign="not ours") as local:
        local.write_text("tileseg\n", encoding="utf-8")
    assert theirs.read_text() == "my notes\n"  # checked again before the rename or upload
    mine = folder.child("mine.txt")
    mine.write_text("tileseg 1\n")
    mine.check_replaceable(overwrite=True, owned=_ours, foreign="not ours")
    with mine.replacing(owned=_ours, foreign="not ours") as local:
        local.write_text("tileseg 2\n", encoding="utf-8")
    assert mine.read_text() == "tileseg 2\n"


def test_a_failed_write_changes_nothing(folder: Location) -> None:
    target = folder.child("out.txt")
    target.write_text("before\n")
    with pytest.raises(RuntimeError), target.writing() as local:
        local.write_text("half", encoding="utf-8")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "before\n"


def test_one_writer_at_a_time(folder: Location) -> None:
    from tileseg.errors import DestinationBusyError

    target = folder.child("locked.gpkg")
    with target.lock(), pytest.raises(DestinationBusyError), target.lock():
        pass
