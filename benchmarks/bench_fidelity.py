"""How close tiled masks come to one untiled pass: the stride-grid phase (a benchmark, not a test).

The reference is the whole raster inferred in ONE forward pass (reflect-padded at the bottom
and right to the model's input multiple, so its phase on the encoder's grid starts at pixel 0).
Each tiling is run through ``predict`` and its mask compared with the reference's argmax, on all
pixels and on pixels within 8 px of a boundary between tile cores. Tilings:

* ``default`` - 513/64 as tileseg plans it now (step rounded to 448, context on the 16-px grid);
* ``513/64 unaligned`` - the previous plan (step 449: every tile at another phase), emulated;
* ``512/64`` - 512-px tiles, step 448, the grid-aligned run peers use.

Models: the bundled land-cover model, and a random smp DeepLabV3+ (resnet18) whose head bias is
shifted so several classes appear (a model whose output follows its input closely: shifting the
input by 1 px changes a large share of its pixels, reported first). The raster is the bundled
model's real sample (``tileseg sample landsat-multiband``, 443x489) mirrored to 1024x1024 so
that 513-px tiles meet at seams.

    python benchmarks/bench_fidelity.py [--size 1024] [--engine auto]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch

import tileseg.pipeline as predict_module
from tileseg.config import PredictConfig
from tileseg.models import BUNDLED_MODEL
from tileseg.models.formats import load_model
from tileseg.models.loaded import LoadedModel, ModelSpec, build_model, save_model
from tileseg.pipeline import predict
from tileseg.samples import fetch
from tileseg.sources.raster import WindowReader, open_raster
from tileseg.tiling.grid import TileGrid


def mirrored_sample(size: int, path: Path) -> Path:
    with rasterio.open(fetch("landsat-multiband")) as src:
        data = src.read()
        profile = src.profile
    reps = (-(-size // data.shape[1]), -(-size // data.shape[2]))
    rows = np.concatenate([data if i % 2 == 0 else data[:, ::-1] for i in range(reps[0])], axis=1)
    full = np.concatenate([rows if j % 2 == 0 else rows[:, :, ::-1] for j in range(reps[1])],
                          axis=2)[:, :size, :size]
    profile.update(height=size, width=size, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(full))
    return path


def reference_logits(model: LoadedModel, src: str, shift: int = 0) -> np.ndarray:
    """Whole-raster logits from one forward pass; ``shift`` px of reflection before the origin
    moves the input against the encoder's grid (to measure how shift-sensitive the model is)."""
    info = open_raster(src)
    d = model.divisor
    ph = -(-(info.height + shift) // d) * d
    pw = -(-(info.width + shift) // d) * d
    from tileseg.tiling.grid import Rect

    with WindowReader(info) as reader:
        data, valid = reader.read(Rect(-shift, -shift, ph, pw))
    a, b = model.metadata.normalization.coefficients(model.metadata.in_channels)
    x = torch.from_numpy(data.astype(np.float32)) * torch.from_numpy(a)[:, None, None]
    x = x + torch.from_numpy(b)[:, None, None]
    x = torch.where(torch.from_numpy(valid)[None], x, torch.zeros(()))
    with torch.inference_mode():
        logits = model.module.eval()(x[None])[0]
    return logits[:, shift : shift + info.height, shift : shift + info.width].numpy()


def near_core_boundaries(n: int, stride: int, band: int = 8) -> np.ndarray:
    idx = np.arange(n)
    dist = np.abs(((idx + band) % stride) - band)
    near = (dist < band) & (idx >= band) & (idx < n - band)
    return near[:, None] | near[None, :]


@contextlib.contextmanager
def unaligned() -> Iterator[None]:
    """Plan as tileseg did before tiles were put on the divisor grid (step 449 for 513/64)."""
    saved = predict_module.aligned_overlap, predict_module.TileGrid

    def grid(*args: object, divisor: int = 1, **kwargs: object) -> TileGrid:
        return TileGrid(*args, **kwargs)  # type: ignore[arg-type]

    predict_module.aligned_overlap = lambda tile, overlap, divisor: overlap  # type: ignore[assignment]
    predict_module.TileGrid = grid  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        predict_module.aligned_overlap, predict_module.TileGrid = saved  # type: ignore[misc]


def random_model(path: Path, bands: int, src: str) -> Path:
    """resnet18 DeepLabV3+ with random weights, its head bias shifted so that about equal
    shares of the reference's pixels go to each of 6 classes."""
    from tileseg.models.metadata import ModelMetadata

    torch.manual_seed(0)
    module = build_model(ModelSpec("DeepLabV3Plus", "resnet18", in_channels=bands, classes=6))
    with rasterio.open(src) as ds:
        sample = ds.read(masked=True).astype(np.float64)
    mean = sample.mean(axis=(1, 2)).filled(0.0)
    std = sample.std(axis=(1, 2)).filled(1.0) + 1e-6
    meta = ModelMetadata.default(6, bands, "float32")
    from dataclasses import replace

    from tileseg.models.metadata import Normalization

    meta = replace(meta, normalization=Normalization(mean=tuple(mean), std=tuple(std)))
    save_model(module, path, meta)
    loaded = load_model(path)
    logits = reference_logits(loaded, src)
    # subtract each class's median logit: every class then wins somewhere
    bias = -np.median(logits.reshape(6, -1), axis=1)
    with torch.no_grad():
        module.segmentation_head[0].bias.add_(torch.from_numpy(bias).float())  # type: ignore[index,union-attr]
    save_model(module, path, meta)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    src = str(mirrored_sample(args.size, work / "scene.tif"))
    models = {"bundled EfficientNet-Lite0": BUNDLED_MODEL,
              "random resnet18 (shift-sensitive)": random_model(work / "random", 5, src)}
    runs = [("default 513/64", dict(tile_size=513, overlap=64), False),
            ("513/64 unaligned (before)", dict(tile_size=513, overlap=64), True),
            ("512/64 aligned", dict(tile_size=512, overlap=64), False)]
    print(f"raster: landsat-multiband mirrored to {args.size}x{args.size}; engine {args.engine}")
    print()
    for name, model_dir in models.items():
        model = load_model(model_dir)
        ref_logits = reference_logits(model, src)
        ref = ref_logits.argmax(0)
        with rasterio.open(src) as ds:
            data_valid = ds.dataset_mask() > 0
        shares = np.bincount(ref[data_valid], minlength=model.metadata.num_classes) / data_valid.sum()
        shifts = {s: 100 * (reference_logits(model, src, s).argmax(0) != ref)[data_valid].mean()
                  for s in (1, 8, 16)}
        print(f"### {name}")
        print(f"reference classes (share %): {', '.join(f'{100 * v:.1f}' for v in shares)}; "
              f"pixels changed by shifting the input 1/8/16 px: "
              f"{shifts[1]:.1f} / {shifts[8]:.1f} / {shifts[16]:.1f} %")
        print()
        print("| tiling | step | tiles | agree with untiled, all % | near core boundaries % | s |")
        print("|---|---|---|---|---|---|")
        for label, tiling, old in runs:
            dst = work / f"{name.split()[0]}-{tiling['tile_size']}-{old}.tif"
            config = PredictConfig(src, str(dst), model=str(model_dir), overwrite=True,
                                   engine=args.engine, **tiling)  # type: ignore[arg-type]
            started = time.perf_counter()
            with unaligned() if old else contextlib.nullcontext():
                plan = predict_module.make_plan(config)
                result = predict(config)
            seconds = time.perf_counter() - started
            with rasterio.open(result.dst) as out:
                mask = out.read(1)
            valid = mask != out.nodata
            near = near_core_boundaries(args.size, plan.grid.stride) & valid
            agree = 100 * (mask == ref)[valid].mean()
            agree_near = 100 * (mask == ref)[near].mean()
            print(f"| {label} | {plan.grid.stride} | {result.tiles_inferred} | {agree:.1f} | "
                  f"{agree_near:.1f} | {seconds:.1f} |")
        print()


if __name__ == "__main__":
    main()
