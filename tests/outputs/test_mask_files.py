"""outputs and mask: the Zarr mask and its GeoTIFF carry the format tileseg.outputs.mask reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import metadata, random_image

from tileseg.outputs import mask as mask_format
from tileseg.outputs.mask_files import create_zarr, mark_zarr_complete, mask_dtype_for, zarr_to_geotiff
from tileseg.outputs.styles import mask_legend
from tileseg.sources.raster import open_raster
from tileseg.vectorization.source import open_mask


def test_mask_dtype_leaves_room_for_nodata() -> None:
    assert mask_dtype_for(255) == (np.dtype(np.uint8), 255)
    assert mask_dtype_for(256) == (np.dtype(np.uint16), 65535)


def test_zarr_and_geotiff_round_trip_through_mask_module(make_raster, tmp_path: Path) -> None:
    raster = open_raster(make_raster(random_image(3, 40, 50)))
    meta = metadata(3, 3)
    store = tmp_path / "m.zarr"
    create_zarr(store, raster, meta, chunk_side=32, probabilities="none", source="models/x")
    root = zarr.open_group(str(store), mode="r+")
    facts = mask_format.read_facts(root)
    assert facts is not None and facts["complete"] is False and facts["nodata"] == 255
    values = (np.arange(40 * 50).reshape(40, 50) % 3).astype(np.uint8)
    root["mask"][:] = values
    mark_zarr_complete(store, {"fingerprint": "abc"})
    facts = mask_format.read_facts(zarr.open_group(str(store), mode="r"))
    assert facts is not None and facts["complete"] is True and facts["fingerprint"] == "abc"

    tif = tmp_path / "m.tif"
    zarr_to_geotiff(store, tif, cog=False, workdir=tmp_path)
    with rasterio.open(tif) as src:
        np.testing.assert_array_equal(src.read(1), values)
        tags = src.tags()
        assert tags[mask_format.FINGERPRINT_TAG] == "abc" and tags[mask_format.SOURCE_TAG] == "models/x"
        classes = mask_format.classes_from_tags(tags)
        assert classes is not None and [c["name"] for c in classes] == ["class 0", "class 1", "class 2"]
        assert src.colormap(1)[2][:3] == (20, 40, 60) and src.colormap(1)[255][3] == 0
    for path in (store, tif):
        assert open_mask(str(path)).class_names == {0: "class 0", 1: "class 1", 2: "class 2"}
        assert [c.color for c in mask_legend(path)] == [c.color for c in meta.classes]


def test_an_unreadable_classes_tag_is_a_value_error() -> None:
    assert mask_format.classes_from_tags({}) is None
    with pytest.raises(ValueError, match="TILESEG_CLASSES"):
        mask_format.classes_from_tags({mask_format.CLASSES_TAG: "[{\"name\": 1}]"})
