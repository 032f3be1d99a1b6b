"""Inference engines on the CPU: eager torch vs ONNX Runtime, model-only and end to end.

Every measurement runs in its own subprocess, so its peak RSS is its own, and the variants are
interleaved (repeat 1 of every variant, then repeat 2, ...) so that other load on a shared
machine spreads over all of them; the table gives the median of the repeats. The ONNX export
is made once beforehand (its time is reported); end-to-end runs find it in the cache, as every
run after the first does.

Models: smp DeepLabV3+ resnet18 (random weights, 6 classes, bands 3,2,1) and the bundled
EfficientNet-Lite0 DeepLabV3+ (5 bands, 7 classes). Raster: the landsat-multiband sample mirrored
to SIZE x SIZE (float32, deflate, 256-px blocks). Tiles 513/64 (step 448, input 528), batch 4.

Variants (end to end; ``--workers 1``, the CPU default, unless named):
  torch          eager PyTorch, channels-last on the CPU (the torch engine's default)
  torch-nchw     eager PyTorch, contiguous NCHW
  onnxruntime    the exported model on ONNX Runtime's CPU provider (``--engine auto`` on a CPU)
  torch-bf16     eager PyTorch, channels-last, ``--precision bf16`` (bf16 autocast on the CPU)
  *-w2           the same with ``--workers 2`` (one forward pass at a time per process)
  torch-before   eager NCHW, ``--workers 2`` with two forward passes at once: tileseg before
                 this change

End to end = the report's compute phase (tiles/s while chunks are inferred, blended and written
to Zarr: reading, the model, blending); "total s" adds setup (model load, ONNX Runtime session)
and the COG pass.

    python benchmarks/bench_engine.py [--size 2048] [--repeats 2] [--models resnet18,landcover]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
E2E_VARIANTS = ("torch", "torch-nchw", "onnxruntime", "torch-bf16", "torch-w2", "onnxruntime-w2",
                "torch-before")
MODEL_VARIANTS = ("torch", "torch-nchw", "onnxruntime", "torch-bf16")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _apply_variant(variant: str) -> tuple[str, int, str]:
    """Set the process up for a variant; returns (engine, workers, precision)."""
    import tileseg.inference.infer as infer

    if variant in ("torch-nchw", "torch-before"):
        infer.CPU_CHANNELS_LAST = False
    if variant == "torch-before":
        infer.CPU_FORWARD_LOCK = contextlib.nullcontext()  # type: ignore[attr-defined,assignment]
    engine = "onnxruntime" if variant.startswith("onnxruntime") else "torch"
    workers = 2 if variant.endswith("-w2") or variant == "torch-before" else 1
    return engine, workers, "bf16" if variant.endswith("-bf16") else "auto"


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    engine, workers, precision = _apply_variant(spec["variant"])
    if spec["kind"] == "e2e":
        config = PredictConfig(spec["src"], spec["dst"], model=spec["model"],
                               bands=tuple(spec["bands"]) if spec["bands"] else None,
                               chunk_size=spec["chunk_size"], batch_size=spec["batch_size"],
                               engine=engine, workers=workers, precision=precision,  # type: ignore[arg-type]
                               overwrite=True)
        result = predict(config)
        return {"tiles_per_s": result.report["tiles_per_second"],
                "total_s": result.report["seconds"]["total"],
                "tiles": result.tiles_inferred, "engine": result.report["engine"],
                "rss_mb": _peak_rss_mb()}
    from tileseg.inference.infer import make_runtime
    from tileseg.models.formats import load_model

    runtime = make_runtime(load_model(spec["model"]), device="cpu", precision=precision,
                           batch_size=spec["batch_size"], tile_size=513, overlap=65,
                           blend="hann", engine=engine, from_directory=True)
    bands = runtime.model.metadata.in_channels
    x = torch.randn(spec["batch_size"], bands, runtime.context, runtime.context)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        runtime.forward(x)  # warm-up
        for _ in range(spec["iterations"]):
            t = time.perf_counter()
            runtime.forward(x)
            times.append(time.perf_counter() - t)
    return {"tiles_per_s": spec["batch_size"] / statistics.median(times),
            "engine": runtime.engine, "rss_mb": _peak_rss_mb()}


def _agreement(mask: Path, reference: Path) -> str:
    """Share of pixels whose class equals the reference run's (the last repeat of each)."""
    import numpy as np
    import rasterio

    if not (mask.exists() and reference.exists()):
        return ""
    with rasterio.open(mask) as a, rasterio.open(reference) as b:
        return f"{100 * float(np.mean(a.read(1) == b.read(1))):.3f}%"


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {spec}\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def prepare(work: Path, size: int) -> dict[str, dict[str, Any]]:
    import numpy as np
    import rasterio
    import torch
    from bench_fidelity import mirrored_sample  # the same scene as the fidelity benchmark

    from tileseg.models import BUNDLED_MODEL
    from tileseg.models.loaded import ModelSpec, build_model, save_model
    from tileseg.models.metadata import ModelMetadata, Normalization
    from tileseg.samples import fetch

    with rasterio.open(fetch("landsat-multiband")) as src:
        stats = src.read(masked=True).astype(np.float64)
    scene = mirrored_sample(size, work / "scene.tif")
    torch.manual_seed(0)
    module = build_model(ModelSpec("DeepLabV3Plus", "resnet18", in_channels=3, classes=6))
    mean = stats.mean(axis=(1, 2)).filled(0.0)[[2, 1, 0]]
    std = stats.std(axis=(1, 2)).filled(1.0)[[2, 1, 0]] + 1e-6
    meta = ModelMetadata.default(6, 3, "float32")
    from dataclasses import replace

    meta = replace(meta, normalization=Normalization(mean=tuple(mean), std=tuple(std)))
    save_model(module, work / "resnet18", meta)
    return {
        "resnet18": {"model": str(work / "resnet18"), "bands": [3, 2, 1], "src": str(scene)},
        "landcover": {"model": str(BUNDLED_MODEL), "bands": None, "src": str(scene)},
    }


def warm_export(model_dir: str) -> float:
    from tileseg.inference.infer import make_runtime
    from tileseg.models.formats import load_model
    from tileseg.models.loaded import clear_cache

    started = time.perf_counter()
    make_runtime(load_model(model_dir), device="cpu", precision="auto", batch_size=4,
                 tile_size=513, overlap=65, blend="hann", engine="onnxruntime",
                 from_directory=True)
    clear_cache()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="chunk side: several chunks, so that --workers matters")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5, help="model-only forward passes")
    parser.add_argument("--models", default="resnet18,landcover")
    parser.add_argument("--variants", default=",".join(E2E_VARIANTS))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    work.mkdir(parents=True, exist_ok=True)
    models = {k: v for k, v in prepare(work, args.size).items() if k in args.models.split(",")}
    e2e_variants = args.variants.split(",")
    exports = {name: warm_export(m["model"]) for name, m in models.items()}
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for name, m in models.items():
            for variant in MODEL_VARIANTS:
                spec = {"kind": "model", "variant": variant, "model": m["model"],
                        "batch_size": args.batch_size, "iterations": args.iterations}
                results.setdefault((name, "model", variant), []).append(run_child(spec))
            for variant in e2e_variants:
                spec = {"kind": "e2e", "variant": variant, **m,
                        "dst": str(work / f"{name}-{variant}.tif"),
                        "chunk_size": args.chunk_size, "batch_size": args.batch_size}
                results.setdefault((name, "e2e", variant), []).append(run_child(spec))
                r = results[(name, "e2e", variant)][-1]
                print(f"rep {rep + 1} {name} {variant}: {r['tiles_per_s']:.2f} tiles/s, "
                      f"{r['total_s']:.1f} s, {r['rss_mb']:.0f} MB", file=sys.stderr, flush=True)

    print(f"CPU: {os.cpu_count()} cores, torch threads = cores; raster {args.size}x{args.size}, "
          f"chunk {args.chunk_size}, batch {args.batch_size}, {args.repeats} repeats (median), "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    for name in models:
        med = {key[1:]: (statistics.median(r["tiles_per_s"] for r in runs),
                         statistics.median(r["rss_mb"] for r in runs),
                         statistics.median(r.get("total_s", 0.0) for r in runs))
               for key, runs in results.items() if key[0] == name}
        base_model = med[("model", "torch-nchw")][0]
        base_e2e, base_rss, _ = med[("e2e", "torch-nchw")] if ("e2e", "torch-nchw") in med else (
            med[("e2e", "torch")])
        tiles = results[(name, "e2e", e2e_variants[0])][0]["tiles"]
        print(f"\n### {name} ({tiles} tiles end to end; ONNX export once: {exports[name]:.1f} s)\n")
        print("| variant | model-only tiles/s | vs eager NCHW | end-to-end tiles/s | "
              "vs eager NCHW | total s | peak RSS MB (e2e) | vs eager NCHW | mask = eager NCHW |")
        print("|---|---|---|---|---|---|---|---|---|")
        for variant in dict.fromkeys((*MODEL_VARIANTS, *e2e_variants)):
            mo = med.get(("model", variant))
            e2e = med.get(("e2e", variant))
            cells = [f"{mo[0]:.2f}", f"{mo[0] / base_model:.2f}x"] if mo else ["", ""]
            cells += ([f"{e2e[0]:.2f}", f"{e2e[0] / base_e2e:.2f}x", f"{e2e[2]:.1f}",
                       f"{e2e[1]:.0f}", f"{e2e[1] / base_rss:.2f}x",
                       _agreement(work / f"{name}-{variant}.tif", work / f"{name}-torch-nchw.tif")]
                      if e2e else [""] * 6)
            print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
