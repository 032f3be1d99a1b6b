"""What test-time augmentation does for the bundled model, and what it costs.

* quality: ``predict`` of the landsat-multiband sample with the bundled model and
  ``--tta none|flips|d4`` (default tiling, default engine), each mask scored by ``evaluate``
  on the holdout strip (the left quarter, ``--window 0,0,443,122``) against the
  landcover-strata labels: pixel accuracy, mean class accuracy, mean IoU, frequency-weighted
  IoU. Needs the two samples (``tileseg sample landsat-multiband``, ``landcover-strata``).
* cost: seconds a batch of 4 network inputs (528 px, 5 bands) takes through the runtime's
  ``forward`` with each mode, both engines: the minimum of ``--repeats`` timings, the modes
  interleaved so a busy machine slows them alike; and the end-to-end ``predict`` compute time
  of the sample (median of ``--repeats``).

    python benchmarks/bench_tta.py [--repeats 5] [--engines torch,onnxruntime]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

MODES = ("none", "flips", "d4")
HOLDOUT = (0, 0, 443, 122)  # row_off, col_off, height, width: the left quarter


def quality(workdir: Path, repeats: int) -> dict[str, dict[str, float]]:
    from tileseg.config import PredictConfig
    from tileseg.evaluation import EvaluateConfig, evaluate
    from tileseg.pipeline import predict
    from tileseg.samples import fetch

    scene, labels = fetch("landsat-multiband"), fetch("landcover-strata")
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        seconds = []
        for _ in range(repeats):
            dst = workdir / f"{mode}.tif"
            result = predict(PredictConfig(str(scene), str(dst), tta=mode,  # type: ignore[arg-type]
                                           overwrite=True))
            seconds.append(result.report["seconds"]["compute"])
        score = evaluate(EvaluateConfig(str(dst), str(labels), window=HOLDOUT)).metrics
        out[mode] = {"pixel_accuracy": score.pixel_accuracy,
                     "mean_class_accuracy": score.mean_class_accuracy,
                     "mean_iou": score.mean_iou,
                     "frequency_weighted_iou": score.frequency_weighted_iou,
                     "predict_compute_s": statistics.median(seconds),
                     "engine": result.report["engine"]}
    return out


def cost(engines: list[str], repeats: int) -> dict[str, dict[str, float]]:
    import torch

    from tileseg.infer import make_runtime
    from tileseg.model import load_model
    from tileseg.pipeline import BUNDLED_MODEL

    out: dict[str, dict[str, float]] = {}
    for engine in engines:
        runtimes = {mode: make_runtime(load_model(BUNDLED_MODEL), device="cpu",
                                       precision="fp32", batch_size=4, tile_size=513,
                                       overlap=64, blend="hann", engine=engine, owned=True,
                                       from_directory=True, tta=mode) for mode in MODES}
        x = torch.randn(4, 5, 528, 528)
        for runtime in runtimes.values():  # warm up: sessions, caches, thread pools
            runtime.forward(x)
        best = {mode: float("inf") for mode in MODES}
        for _ in range(repeats):
            for mode, runtime in runtimes.items():
                start = time.perf_counter()
                runtime.forward(x)
                best[mode] = min(best[mode], time.perf_counter() - start)
        out[engine] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", default="torch,onnxruntime")
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        scores = quality(Path(tmp), args.repeats)
    print("| --tta | pixel accuracy | mean class accuracy | mean IoU | fw IoU | predict compute s |")
    print("|---|---|---|---|---|---|")
    for mode, s in scores.items():
        print(f"| {mode} | {s['pixel_accuracy']:.3f} | {s['mean_class_accuracy']:.3f} | "
              f"{s['mean_iou']:.3f} | {s['frequency_weighted_iou']:.3f} | "
              f"{s['predict_compute_s']:.2f} ({s['engine']}) |")
    timings = cost(args.engines.split(","), args.repeats)
    print()
    print("| engine | " + " | ".join(f"{m}: s / 4 tiles (x none)" for m in MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for engine, best in timings.items():
        cells = [f"{best[m]:.2f} ({best[m] / best['none']:.2f}x)" for m in MODES]
        print(f"| {engine} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
