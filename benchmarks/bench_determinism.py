"""What the layout-independent mask costs on the CPU: fixed-point sums and one tile a pass.

Since the mask became a function of the raster, the model and the tiling options alone (see
docs/guide/same-mask.md), tileseg blends into int64 fixed-point sums
instead of float32 ones and runs eager torch on the CPU one tile a forward pass, on one thread,
as many passes at once as there are cores. This measures both, in one run:

* blend (in this process): adding one chunk's tiles to its sums and turning the sums into a
  mask, float32 sums (before, re-implemented here as it was) against int64 fixed point (now),
  per tile; and the bytes the sums of one chunk hold.
* end to end (a subprocess each, interleaved, median of the repeats): tiles/s and peak RSS of
  ``predict`` with the torch engine, now and as the code of ``--before`` (a git commit: its
  ``tileseg/`` is extracted to a temporary folder) ran it; ``onnxruntime`` now and before too.
  Model: smp DeepLabV3+ resnet18, random weights, 6 classes; raster: the landsat-multiband
  sample mirrored to SIZE x SIZE (bench_engine.prepare); tiles 513/64, batch 4, ``--workers 1``.

    python benchmarks/bench_determinism.py [--size 2048] [--chunk-sizes 1024,2048]
        [--repeats 2] [--before a50371a]
"""

from __future__ import annotations

import argparse
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
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    result = predict(PredictConfig(spec["src"], spec["dst"], model=spec["model"],
                                   bands=tuple(spec["bands"]), chunk_size=spec["chunk_size"],
                                   batch_size=4, engine=spec["engine"], workers=1,
                                   device="cpu", overwrite=True))
    return {"tiles_per_s": result.report["tiles_per_second"], "tiles": result.tiles_inferred,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(spec: dict[str, Any], pythonpath: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {spec}\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def extract(commit: str, into: Path) -> Path:
    """The package of ``commit``, extracted (not checked out: the working tree is left alone)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "tileseg"],
                             capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def blend_micro(classes: int = 6, tiles_per_side: int = 5, repeats: int = 3) -> dict[str, Any]:
    """Per-tile cost of adding a tile to a chunk's sums, and of the argmax, before and now."""
    import numpy as np

    from tileseg.tiling.blend import fixed_point_window, logit_limit, weight_window

    size, step = 513, 448
    side = step * (tiles_per_side - 1) + size
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (classes, size, size)).astype(np.float32)
    valid = np.ones((size, size), bool)
    window = weight_window("hann", size, 65, 32)
    scaled, units = fixed_point_window(window)
    limit = logit_limit(size, 65)
    offsets = [(r * step, c * step) for r in range(tiles_per_side) for c in range(tiles_per_side)]
    out: dict[str, Any] = {"tiles": len(offsets), "extent": side}
    for name, dtype in (("float32 sums (before)", np.float32), ("int64 fixed point (now)", np.int64)):
        sums = np.zeros((classes, side, side), dtype)
        weights = np.zeros((side, side), dtype)
        times, argmax = [], []
        for _ in range(repeats):
            sums[:] = 0
            weights[:] = 0
            started = time.perf_counter()
            for r, c in offsets:
                region = (slice(None), slice(r, r + size), slice(c, c + size))
                if dtype is np.float32:
                    w = window * valid
                    sums[region] += logits * w
                    weights[region[1:]] += w
                else:
                    term = np.clip(logits, -limit, limit) * (scaled * valid)
                    sums[region] += np.rint(term, out=term).astype(np.int64)
                    weights[region[1:]] += units * valid
            times.append((time.perf_counter() - started) / len(offsets))
            started = time.perf_counter()
            if dtype is np.float32:
                (sums / np.where(weights > 0, weights, 1)).argmax(0)
            else:
                sums.argmax(0)
            argmax.append(time.perf_counter() - started)
        out[name] = {"ms_per_tile": 1000 * statistics.median(times),
                     "argmax_ms": 1000 * statistics.median(argmax),
                     "sums_mib": (sums.nbytes + weights.nbytes) / 2**20}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chunk-sizes", default="1024,2048")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="a50371a",
                        help="git commit whose tileseg/ is the 'before' (float32 sums, batches)")
    parser.add_argument("--engines", default="torch,onnxruntime")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from bench_engine import prepare

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-determinism-"))
    work.mkdir(parents=True, exist_ok=True)
    model = prepare(work, args.size)["resnet18"]
    before = str(extract(args.before, work / "before"))
    code = {"now": str(ROOT), f"before ({args.before})": before}

    micro = blend_micro()
    print(f"blend, one chunk of {micro['tiles']} tiles of 513 px over {micro['extent']}^2 px, "
          "6 classes (median of 3):")
    print("| sums | ms per tile | argmax ms per chunk | MiB of sums per chunk |")
    print("|---|---|---|---|")
    for name in ("float32 sums (before)", "int64 fixed point (now)"):
        m = micro[name]
        print(f"| {name} | {m['ms_per_tile']:.1f} | {m['argmax_ms']:.0f} | {m['sums_mib']:.0f} |")

    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for chunk in (int(c) for c in args.chunk_sizes.split(",")):
            for engine in args.engines.split(","):
                for label, path in code.items():
                    spec = {**model, "dst": str(work / f"{engine}-{chunk}.tif"),
                            "chunk_size": chunk, "engine": engine}
                    results.setdefault((engine, label, chunk), []).append(run_child(spec, path))
    print(f"\nend to end, {args.size}^2 px, resnet18 DeepLabV3+, --workers 1, batch 4 "
          f"(median of {args.repeats}; {os.cpu_count()} cores):")
    print("| engine | code | chunk | tiles/s | peak RSS MB | tiles/s now / before | RSS now / before |")
    print("|---|---|---|---|---|---|---|")
    for (engine, label, chunk), runs in results.items():
        speed = statistics.median(r["tiles_per_s"] for r in runs)
        rss = statistics.median(r["rss_mb"] for r in runs)
        ratio = ""
        if label == "now":
            old = results[(engine, f"before ({args.before})", chunk)]
            ratio = (f"{speed / statistics.median(r['tiles_per_s'] for r in old):.2f} | "
                     f"{rss / statistics.median(r['rss_mb'] for r in old):.2f}")
        print(f"| {engine} | {label} | {chunk} | {speed:.2f} | {rss:.0f} | {ratio or ' | '} |")


if __name__ == "__main__":
    main()
