"""Does the mask depend on the tile grouping on this device? A check for the GPU (runs on a CPU).

1. Per-tile logits by batch shape: the same tiles run as one batch of B, as batches of 1 and 3,
   and as a last batch of 3 padded to B (what tileseg does on CUDA), for fp32 and bf16. Bitwise
   equal rows mean the device's kernels do not depend on the batch shape there.
2. Masks by layout: ``predict`` of one raster with chunk sizes 1024, 2048 and 4096 and batch
   sizes 16 and 7 (the chunk sizes regroup tiles into other batches): pixels that differ from
   the first run.
3. What padding the last batch costs: tiles run / tiles needed at each chunk size.

Model: smp DeepLabV3+ (``--encoder``, resnet50 by default), random weights with its head
shifted so its 6 classes are balanced on the raster (random uint8, SIZE x SIZE).

    python benchmarks/check_layout.py [--device auto] [--size 3072] [--encoder resnet50]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np


def per_tile(device: str, batch: int, encoder: str) -> None:
    import torch

    from tileseg.inference.infer import make_runtime
    from tileseg.models.loaded import ModelSpec, build_model, wrap_module

    torch.manual_seed(0)
    module = build_model(ModelSpec("DeepLabV3Plus", encoder, in_channels=3, classes=6))
    print("| precision | batches | bitwise equal to one batch of", batch, "| max abs diff |")
    print("|---|---|---|---|")
    x = torch.randn(batch, 3, 528, 528)
    for precision in ("fp32", "bf16"):
        runtime = make_runtime(wrap_module(module), device=device, precision=precision,
                               batch_size=batch, tile_size=513, overlap=65, blend="hann")
        with torch.inference_mode():
            whole = runtime.forward(x.to(runtime.device))
            for name, sizes in (("1 each", [1] * batch), ("3 each", [3] * (batch // 3)),
                                ("last 3 (padded)", [batch - 3, 3])):
                parts, at = [], 0
                for n in sizes:
                    parts.append(runtime.forward(x[at:at + n].to(runtime.device)))
                    at += n
                got = torch.cat(parts)
                diff = float((got - whole[:at]).abs().max())
                print(f"| {precision} | {name} | {torch.equal(got, whole[:at])} | {diff:.3g} |")


def layouts(device: str, size: int, work: Path, encoder: str) -> None:
    import rasterio
    import torch
    from affine import Affine

    from tileseg.config import PredictConfig
    from tileseg.models.loaded import ModelSpec, build_model, save_model
    from tileseg.models.metadata import ModelMetadata
    from tileseg.pipeline import predict

    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    scene = work / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", height=size, width=size, count=3,
                       dtype="uint8", crs="EPSG:32631", tiled=True, blockxsize=512,
                       blockysize=512, transform=Affine(10, 0, 5e5, 0, -10, 6e6)) as dst:
        dst.write(data)
    torch.manual_seed(0)
    module = build_model(ModelSpec("DeepLabV3Plus", encoder, in_channels=3, classes=6)).eval()
    x = torch.from_numpy(data[:, :528, :528].astype(np.float32) / 255)[None]
    with torch.no_grad():
        module.segmentation_head[0].bias -= module(x)[0].mean((1, 2))
    save_model(module, work / "model", ModelMetadata.default(6, 3, "uint8"))
    print("\n| chunk | batch | pixels differing from the first run | classes >= 5% |")
    print("|---|---|---|---|")
    first = None
    for chunk, batch in ((2048, 16), (1024, 16), (4096, 16), (2048, 7)):
        dst = work / f"mask-{chunk}-{batch}.tif"
        predict(PredictConfig(str(scene), str(dst), model=str(work / "model"), chunk_size=chunk,
                              batch_size=batch, device=device, overwrite=True))
        with rasterio.open(dst) as src:
            mask = src.read(1)
        first = mask if first is None else first
        shares = np.bincount(mask.ravel(), minlength=6) / mask.size
        print(f"| {chunk} | {batch} | {int((mask != first).sum())} | {int((shares >= .05).sum())} |")


def padding_cost(size: int, batch: int) -> None:
    from tileseg.tiling.grid import TileGrid

    print(f"\n| chunk | tiles | tiles run with the last batch padded to {batch} | overhead |")
    print("|---|---|---|---|")
    for chunk in (1024, 2048, 4096):
        grid = TileGrid.for_raster(size, size, 513, 65, chunk, divisor=16)
        tiles = run = 0
        for r, c in grid.chunks():
            n = len(grid.chunk_tiles_of(r, c))
            tiles += n
            run += math.ceil(n / batch) * batch
        print(f"| {chunk} | {tiles} | {run} | {100 * (run / tiles - 1):.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--encoder", default="resnet50")
    args = parser.parse_args()
    from tileseg.inference.device import resolve_device

    device = str(resolve_device(args.device))
    print(f"device {device}\n")
    per_tile(device, args.batch, args.encoder)
    layouts(device, args.size, Path(tempfile.mkdtemp(prefix="check-layout-")), args.encoder)
    padding_cost(args.size * 4, args.batch)


if __name__ == "__main__":
    main()
