"""Sentinel-2 L2A-like scenes for tests: one COG per band at 10 and 20 m, one in a second CRS,
and a STAC item (pystac) shaped like a public catalogue's (Earth Search ``sentinel-2-l2a``:
asset keys ``blue``, ``green``, ``nir08``, ``swir16``, ``scl``; STAC 1.0 ``eo:bands`` with
common names and ``raster:bands`` with nodata 0, scale and offset), written with relative
hrefs so the same folder works on a disk and under a store prefix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

CRS = "EPSG:32631"
SECOND_CRS = "EPSG:32632"
X0, Y0 = 699_000.0, 5_001_200.0  # near UTM 31's eastern edge, so 32N is a sensible second CRS
SIDE = 120  # pixels at 10 m
GRID = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
# asset key, eo name, common name, pixel size, CRS
BANDS = (("blue", "B02", "blue", 10.0, CRS), ("green", "B03", "green", 10.0, CRS),
         ("nir08", "B8A", "nir08", 20.0, CRS), ("swir16", "B11", "swir16", 20.0, SECOND_CRS))


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    """Reflectance-like uint16: a smooth field (so the bilinear warp moves values little) with
    mild noise, never 0 (the nodata value)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.28, 2)
    field = (3000 + 1500 * np.sin(rows / 9.0 + phase[0]) * np.cos(cols / 11.0 + phase[1])
             + 20 * rows + 10 * cols)
    return (field + rng.integers(0, 30, (height, width))).clip(1, 60000).astype(np.uint16)


def write_cog(path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: float = 0,
              block: int = 64) -> Path:
    with rasterio.open(path, "w", driver="COG", height=data.shape[0], width=data.shape[1],
                       count=1, dtype=data.dtype.name, crs=crs, transform=transform,
                       nodata=nodata, blocksize=block) as dst:
        dst.write(data[None])
    return path


def write_scene(folder: Path, side: int = SIDE, block: int = 64) -> dict[str, Path]:
    """The COGs of one scene, ``side`` pixels a side at 10 m; returns them by asset key."""
    from rasterio.warp import transform_bounds

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for n, (key, name, _, size, crs) in enumerate(BANDS):
        if crs == CRS:
            pixels = round(side * 10 / size)
            transform = Affine(size, 0.0, X0, 0.0, -size, Y0)
            data = smooth(pixels, pixels, seed=n)
        else:  # the same place in the next UTM zone, with a margin of a few pixels
            left, bottom, right, top = transform_bounds(CRS, crs, X0 - 60, Y0 - side * 10 - 60,
                                                        X0 + side * 10 + 60, Y0 + 60,
                                                        densify_pts=21)
            transform = Affine(size, 0.0, left, 0.0, -size, top)
            data = smooth(int((top - bottom) // size) + 1, int((right - left) // size) + 1,
                          seed=n)
        files[key] = write_cog(folder / f"{name}.tif", data, transform, crs, block=block)
    rng = np.random.default_rng(9)  # scene classification: class codes 1..11 at 20 m
    scl = rng.integers(1, 12, (side // 2, side // 2)).astype(np.uint8)
    files["scl"] = write_cog(folder / "SCL.tif", scl, Affine(20.0, 0.0, X0, 0.0, -20.0, Y0), CRS,
                             block=block)
    return files


def write_item(folder: Path, files: dict[str, Path], item_id: str = "S2B_31TGK_20240601_0_L2A"
               ) -> Path:
    """``folder/item.json`` describing ``files`` as Earth Search describes a Sentinel-2 L2A
    scene, with hrefs relative to the item."""
    import pystac

    item = pystac.Item(item_id, geometry=None, bbox=None,
                       datetime=datetime(2024, 6, 1, 10, 56, 21, tzinfo=UTC),
                       properties={"platform": "sentinel-2b", "constellation": "sentinel-2",
                                   "eo:cloud_cover": 3.2, "proj:code": CRS},
                       collection="sentinel-2-l2a")
    item.stac_extensions = ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json"]
    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    for key, name, common, size, _ in BANDS:
        asset = pystac.Asset(f"./{files[key].name}", title=f"{key} ({name}) - {size:g}m",
                             media_type=cog, roles=["data", "reflectance"])
        asset.extra_fields["eo:bands"] = [{"name": name, "common_name": common}]
        asset.extra_fields["raster:bands"] = [{"nodata": 0, "data_type": "uint16",
                                               "spatial_resolution": size, "scale": 0.0001,
                                               "offset": -0.1}]
        asset.extra_fields["gsd"] = size
        item.add_asset(key, asset)
    scl = pystac.Asset(f"./{files['scl'].name}", title="Scene classification map (SCL)",
                       media_type=cog, roles=["data", "reflectance"])
    scl.extra_fields["raster:bands"] = [{"nodata": 0, "data_type": "uint8",
                                         "spatial_resolution": 20}]
    item.add_asset("scl", scl)
    item.add_asset("thumbnail", pystac.Asset("./preview.jpg", media_type="image/jpeg",
                                             roles=["thumbnail"]))
    item.add_asset("granule_metadata", pystac.Asset("./metadata.xml",
                                                    media_type="application/xml",
                                                    roles=["metadata"]))
    path = folder / "item.json"
    item.set_self_href(str(path))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    return path
