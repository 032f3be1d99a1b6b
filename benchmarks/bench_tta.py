"""What test-time augmentation does for the bundled model, and what it costs.

* quality: ``predict`` of the landsat-multiband sample with the bundled model and
  ``--tta none|flips|d4`` (default tiling, default engine), each mask scored by ``evaluate``
  on the holdout strip (the left quarter, ``--window 0,0,443,122``) against the
  landcover-strata labels: pixel accuracy, mean class accuracy, mean IoU, frequency-weighted
  IoU. Needs the two samples (``tileseg sample landsat-multiband``, ``landcover-strata``).
* cost: seconds a batch of 4 network inputs (528 px, 5 bands) takes with each mode, both
  engines: the best of ``--repeats`` timings of each transform's forward pass (interleaved),
  summed over the mode's transforms, plus TTA's own work (flipping, turning back, summing);
  and the end-to-end ``predict`` compute time of the sample (median of ``--repeats``).

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
    """Per engine: the best time of one forward pass of 4 tiles for each transform (a busy
    machine makes sums of passes noisy; each pass's minimum is not), their sum for each mode,
    and TTA's own work on top (transforms, inverse transforms, sums: timed with a network that
    returns precomputed logits)."""
    import torch

    from tileseg.inference import tta
    from tileseg.inference.infer import make_runtime
    from tileseg.models import BUNDLED_MODEL
    from tileseg.models.formats import load_model

    out: dict[str, dict[str, float]] = {}
    x = torch.randn(4, 5, 528, 528)
    for engine in engines:
        runtime = make_runtime(load_model(BUNDLED_MODEL), device="cpu", precision="fp32",
                               batch_size=4, tile_size=513, overlap=64, blend="hann",
                               engine=engine, owned=True, from_directory=True)
        inputs = {t: tta.apply(x, *t).contiguous() for t in tta._TRANSFORMS["d4"]}
        runtime.forward(x)  # warm up: sessions, caches, thread pools
        best = {t: float("inf") for t in inputs}
        for _ in range(repeats):
            for t, xt in inputs.items():
                start = time.perf_counter()
                runtime.forward(xt)
                best[t] = min(best[t], time.perf_counter() - start)
        logits = runtime.forward(x)
        row: dict[str, float] = {}
        for mode in MODES:
            own = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                tta.averaged(lambda _, out=logits: out, x, mode)
                own = min(own, time.perf_counter() - start)
            passes = sum(best[t] for t in tta._TRANSFORMS[mode])
            row[mode] = passes + (own if mode != "none" else 0.0)
            row[f"{mode}_own"] = own if mode != "none" else 0.0
        out[engine] = row
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
    print("| engine | " + " | ".join(f"{m}: s / 4 tiles (x none; TTA's own s)" for m in MODES)
          + " |")
    print("|---|" + "---|" * len(MODES))
    for engine, row in timings.items():
        cells = [f"{row[m]:.2f} ({row[m] / row['none']:.2f}x; {row[m + '_own']:.3f})"
                 for m in MODES]
        print(f"| {engine} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
