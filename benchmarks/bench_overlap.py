"""Overlap vs compute cost vs seam quality (a benchmark, not a test).

The reference is the whole raster inferred in ONE forward pass (no tiles, no seams). For each
overlap, ``predict`` runs tiled with the default blend window and we measure how far its
probabilities and mask are from the reference, overall and on the pixels next to tile-core
borders (where seams would show), and how many tiles it costs.

    python benchmarks/bench_overlap.py                         # landsat8 sample, random DeepLabv3+
    python benchmarks/bench_overlap.py --model tileseg/models/landcover \
        --sample landsat-multiband --tile-size 128 --overlaps 0,8,16,32,64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from tileseg.config import PredictConfig
from tileseg.models.formats import load_model
from tileseg.models.loaded import LoadedModel, ModelSpec, build_model, wrap_module
from tileseg.pipeline import predict
from tileseg.sources.raster import WindowReader, open_raster


def reference(model: LoadedModel, src: str) -> np.ndarray:
    """Whole-raster probabilities from a single forward pass (reflect-padded to the divisor)."""
    info = open_raster(src)
    with WindowReader(info) as reader:
        from tileseg.tiling.grid import Rect

        d = model.divisor
        ph = -(-info.height // d) * d
        pw = -(-info.width // d) * d
        data, valid = reader.read(Rect(0, 0, ph, pw))
    a, b = model.metadata.normalization.coefficients(model.metadata.in_channels)
    x = torch.from_numpy(data.astype(np.float32)) * torch.from_numpy(a)[:, None, None]
    x = x + torch.from_numpy(b)[:, None, None]
    x = torch.where(torch.from_numpy(valid)[None], x, torch.zeros(()))
    with torch.inference_mode():
        logits = model.module(x[None])[0, :, : info.height, : info.width]
    return torch.softmax(logits, 0).numpy()


def seam_mask(height: int, width: int, stride: int, halo_before: int, band: int = 4) -> np.ndarray:
    """Pixels within ``band`` of a boundary between two tile cores."""
    def near(n: int) -> np.ndarray:
        idx = np.arange(n)
        dist = np.abs(((idx + band) % stride) - band)
        return (dist < band) & (idx >= band) & (idx < n - band)

    return near(height)[:, None] | near(width)[None, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="raster path (default: the --sample)")
    parser.add_argument("--sample", default="landsat8")
    parser.add_argument("--model", help="model directory (default: random DeepLabv3+)")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--tile-size", type=int, default=513)
    parser.add_argument("--overlaps", default="0,32,64,128,256")
    parser.add_argument("--blend", default="hann")
    args = parser.parse_args()

    src = args.src
    if src is None:
        from tileseg.samples import fetch

        src = str(fetch(args.sample))
    info = open_raster(src)
    if args.model:
        model = load_model(args.model, raster_dtype=info.dtype)
        name = args.model
    else:
        torch.manual_seed(0)
        module = build_model(ModelSpec(encoder_name=args.encoder, in_channels=len(info.indexes),
                                       classes=7))
        model = wrap_module(module, dtype=info.dtype)
        name = f"random DeepLabV3+ {args.encoder}"
    t = time.perf_counter()
    ref = reference(model, src)
    ref_mask = ref.argmax(0)
    print(f"reference: {name} on {Path(src).name} {info.height}x{info.width}, one pass in "
          f"{time.perf_counter() - t:.1f} s")

    rows = []
    base_tiles = None
    work = Path(tempfile.mkdtemp(prefix="tileseg-overlap-"))
    for overlap in (int(v) for v in args.overlaps.split(",")):
        dst = work / f"o{overlap}.zarr"
        t = time.perf_counter()
        result = predict(PredictConfig(src, str(dst), tile_size=args.tile_size, overlap=overlap,
                                       blend=args.blend, probabilities="float16",
                                       precision="fp32"), model=model)
        seconds = time.perf_counter() - t
        root = zarr.open_group(str(dst), mode="r")
        probs = np.asarray(root["probabilities"][:]).astype(np.float32)
        mask = np.asarray(root["mask"][:])
        stride = args.tile_size - overlap
        seams = seam_mask(info.height, info.width, stride, overlap // 2)
        diff = np.abs(probs - ref).sum(0) / 2  # total variation distance per pixel
        disagree = mask != ref_mask
        base_tiles = base_tiles or result.tiles_inferred
        rows.append((overlap, result.tiles_inferred, result.tiles_inferred / base_tiles, seconds,
                     100 * disagree.mean(), 100 * disagree[seams].mean(),
                     100 * disagree[~seams].mean(), diff[seams].mean(), diff[~seams].mean()))

    print("| overlap | tiles | cost vs 0 | seconds | mask differs % | at seams % | elsewhere % "
          "| TV at seams | TV elsewhere |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f}x | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.2f} | "
              f"{r[6]:.2f} | {r[7]:.4f} | {r[8]:.4f} |")


if __name__ == "__main__":
    main()
