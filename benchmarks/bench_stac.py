"""A STAC item of per-band COGs at mixed resolutions vs the same bands stacked by hand (a
benchmark, not a test).

The scene is Sentinel-2 L2A-shaped (tests/stac_scenes.py, scaled up): ``blue`` and ``green`` at
10 m (SIZE x SIZE), ``nir08`` at 20 m, ``swir16`` at 20 m in the next UTM zone (warped with the
exact transformer), deflate COGs with 512-px blocks. The reference is the four bands reprojected
onto the 10 m grid beforehand into one 4-band COG.

Reported:
  * end-to-end tiles/s of ``predict`` on the item and on the pre-stacked COG, and their ratio
    (both local files; the same model);
  * the item on a real S3 API server (moto) on loopback, through a proxy that counts bytes and
    GET requests per object: bytes fetched per asset over the asset's size, and requests per tile
    (the pre-stacked COG from the same store beside it);
  * peak RSS of ``predict`` on the item at two scene sizes, each in a fresh process.

    python benchmarks/bench_stac.py                        # 4096 px, 1x1-conv model
    python benchmarks/bench_stac.py --encoder resnet18     # a real network (the model hides I/O)
    python benchmarks/bench_stac.py --rss-sizes 2048,8192

The default model is a per-pixel (1x1 convolution) model, so reading and warping dominate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from s3_server import running_s3, s3_environment  # noqa: E402
from stac_scenes import CRS, X0, Y0, write_item, write_scene  # noqa: E402

from tileseg.config import PredictConfig  # noqa: E402
from tileseg.models.loaded import LoadedModel, ModelSpec, build_model, wrap_module  # noqa: E402
from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization  # noqa: E402
from tileseg.pipeline import predict  # noqa: E402

BANDS = ("blue", "green", "nir08", "swir16")
BUCKET = "tileseg-bench-stac"


def make_model(encoder: str | None, classes: int = 4) -> LoadedModel:
    meta = ModelMetadata(classes=tuple(ClassInfo(i, f"c{i}", (40 * i, 40 * i, 40 * i))
                                       for i in range(classes)),
                         in_channels=4, bands=BANDS, dtype="uint16",
                         normalization=Normalization(scale=(1e-4,)), gsd=10.0)
    torch.manual_seed(0)
    if encoder is None:
        return wrap_module(torch.nn.Conv2d(4, classes, 1).eval(), meta)
    module = build_model(ModelSpec(encoder_name=encoder, in_channels=4, classes=classes))
    return wrap_module(module.eval(), meta)


def make_scene(folder: Path, size: int) -> tuple[Path, dict[str, Path]]:
    files = write_scene(folder, side=size, block=512)
    return write_item(folder, files), files


def prestack(files: dict[str, Path], size: int, path: Path) -> Path:
    """The bands reprojected by hand onto the 10 m grid (bilinear), as one 4-band COG."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    grid = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
    stack = np.zeros((len(BANDS), size, size), np.uint16)
    for i, key in enumerate(BANDS):
        with rasterio.open(files[key]) as src:
            reproject(rasterio.band(src, 1), stack[i], dst_transform=grid, dst_crs=CRS,
                      resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
    with rasterio.open(path, "w", driver="COG", height=size, width=size, count=len(BANDS),
                       dtype="uint16", crs=CRS, transform=grid, nodata=0, blocksize=512,
                       compress="deflate", overviews="NONE") as dst:
        dst.write(stack)
    return path


def run(src: str, dst: str, model: LoadedModel, args: argparse.Namespace) -> tuple[float, int]:
    config = PredictConfig(src=src, dst=dst, tile_size=args.tile_size, overlap=args.overlap,
                           chunk_size=args.chunk_size, batch_size=args.batch_size,
                           precision="fp32", format="zarr", stac_item=False)
    started = time.perf_counter()
    result = predict(config, model=model)
    return time.perf_counter() - started, result.tiles_inferred


def rss_child(item: str, out: str, encoder: str | None, tile_size: int) -> None:
    """In a fresh process: one run on the item; prints its report's peak RSS."""
    config = PredictConfig(src=item, dst=out, tile_size=tile_size, overlap=64,
                           precision="fp32", format="zarr", stac_item=False,
                           report=out + ".json")
    predict(config, model=make_model(encoder))
    report = json.loads(Path(out + ".json").read_text())
    print(json.dumps({"peak_rss_mb": report["peak_rss_mb"],
                      "peak_rss_mb_compute": report["peak_rss_mb_compute"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="10 m bands' side in pixels")
    p.add_argument("--encoder", help="smp encoder (default: a 1x1-conv model, I/O-bound)")
    p.add_argument("--tile-size", type=int, default=513)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2, help="local runs of each (best kept)")
    p.add_argument("--rss-sizes", default="2048,4096", help="two scene sides for peak RSS")
    p.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], args.encoder, args.tile_size)
        return
    model = make_model(args.encoder)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        item, files = make_scene(tmp / "scene", args.size)
        stacked = prestack(files, args.size, tmp / "stacked.tif")
        sizes = {k: files[k].stat().st_size for k in BANDS}
        stacked_size = stacked.stat().st_size
        times: dict[str, float] = {}
        tiles = 0
        for n in range(args.repeat):  # alternated, so a busy moment hits both alike
            for name, src in (("item", str(item)), ("stacked", str(stacked))):
                seconds, tiles = run(src, str(tmp / f"{name}-{n}.zarr"), model, args)
                times[name] = min(times.get(name, float("inf")), seconds)
        with running_s3() as server, s3_environment(server):
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            for path in [*item.parent.iterdir(), stacked]:
                client.upload_file(str(path), BUCKET, f"scene/{path.name}")
            traffic = {}
            for name, src in (("item", f"s3://{BUCKET}/scene/item.json"),
                              ("stacked", f"s3://{BUCKET}/scene/stacked.tif")):
                server.traffic.reset()
                seconds, _ = run(src, str(tmp / f"s3-{name}.zarr"), model, args)
                traffic[name] = (seconds, dict(server.traffic.per_object),
                                 dict(server.traffic.gets_per_object))
        rss = {}
        for side in (int(s) for s in args.rss_sizes.split(",")):
            folder = tmp / f"rss-{side}"
            rss_item, rss_files = make_scene(folder, side)
            rss_stacked = prestack(rss_files, side, folder / "stacked.tif")
            for kind, src in (("item", rss_item), ("stacked", rss_stacked)):
                cmd = [sys.executable, __file__, "--rss-child", str(src),
                       str(folder / f"{kind}.zarr"), "--tile-size", str(args.tile_size)]
                if args.encoder:
                    cmd += ["--encoder", args.encoder]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                rss[(kind, side)] = json.loads(done.stdout.strip().splitlines()[-1])

    print(f"\nScene {args.size}x{args.size} at 10 m (blue, green; nir08 at 20 m; swir16 at 20 m "
          f"in EPSG:32632), uint16 deflate COGs, 512-px blocks; model {args.encoder or '1x1 conv'}"
          f", tile {args.tile_size}, overlap {args.overlap}, chunk {args.chunk_size}, "
          f"{tiles} tiles; CPU\n")
    print("| run | seconds | tiles/s |")
    print("|---|---|---|")
    for name in ("stacked", "item"):
        print(f"| local {name} | {times[name]:.2f} | {tiles / times[name]:.2f} |")
    print(f"\nitem / pre-stacked tiles/s: {times['stacked'] / times['item']:.3f}\n")
    print("| asset (loopback S3) | size MiB | bytes fetched / size | GET requests |")
    print("|---|---|---|---|")
    _, per_object, gets = traffic["item"]
    for key in BANDS:
        path = f"/{BUCKET}/scene/{files[key].name}"
        print(f"| {key} ({files[key].name}) | {sizes[key] / 2**20:.1f} | "
              f"{per_object.get(path, 0) / sizes[key]:.3f} | {gets.get(path, 0)} |")
    item_gets = sum(v for k, v in traffic["item"][2].items() if k.endswith(".tif"))
    stacked_gets = sum(traffic["stacked"][2].values())
    stacked_bytes = traffic["stacked"][1].get(f"/{BUCKET}/scene/stacked.tif", 0)
    print(f"\nrequests per tile: item {item_gets / tiles:.2f} (+1 GET of item.json), "
          f"pre-stacked COG {stacked_gets / tiles:.2f} (bytes fetched / size "
          f"{stacked_bytes / stacked_size:.3f}); loopback S3 seconds: item "
          f"{traffic['item'][0]:.2f}, pre-stacked {traffic['stacked'][0]:.2f}")
    print("\n| source | scene side | peak RSS MB |")
    print("|---|---|---|")
    for (kind, side), values in rss.items():
        print(f"| {kind} | {side} | {values['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
