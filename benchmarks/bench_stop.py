"""How long a clean stop takes: ``tileseg predict`` gets SIGTERM (what Kubernetes and Slurm send
before SIGKILL) mid-run; the chunk tasks in flight finish, then the process exits 143.

For each tiling, in one run: the seconds one chunk task takes (a clean run's compute time per
chunk and thread), and the seconds from SIGTERM to exit, sent as soon as the first chunk is done
(both threads are then inside a chunk: the stop waits for them). The worst case is a chunk that
has just started: about one chunk task, plus the exit.

CPU (about 3 minutes):  python benchmarks/bench_stop.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_predict import make_model, make_raster

TILINGS = {  # name: (raster side, tile, overlap, chunk)
    "small (64 px tiles, 96 px chunks)": (400, 64, 16, 96),
    "default tiles (513 px, 1024 px chunks)": (2048, 513, 64, 1024),
}


def predict_args(src: Path, dst: Path, model: Path, tile: int, overlap: int,
                 chunk: int) -> list[str]:
    return [sys.executable, "-m", "tileseg", "predict", str(src), str(dst), "-m", str(model),
            "--tile-size", str(tile), "--overlap", str(overlap), "--chunk-size", str(chunk),
            "--device", "cpu", "-q"]


def stop_seconds(args: list[str], done: Path) -> tuple[float, int]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not (done.is_dir() and os.listdir(done)):
        time.sleep(0.01)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=1200)
    return time.monotonic() - sent, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "model"
        make_model(model, args.encoder, 3)
        print("| tiling | chunk task (s) | SIGTERM to exit (s) | exit code |\n|---|---|---|---|")
        for name, (side, tile, overlap, chunk) in TILINGS.items():
            src = root / f"scene{side}.tif"
            if not src.exists():
                make_raster(src, side)
            report = root / f"clean{side}.json"
            clean = predict_args(src, root / f"clean{side}.tif", model, tile, overlap, chunk)
            subprocess.run([*clean, "--report", str(report)], check=True)
            facts = json.loads(report.read_text())
            per_chunk = facts["seconds"]["compute"] / facts["chunks"] * 2  # 2 worker threads
            dst = root / f"stopped{side}.tif"
            seconds, code = stop_seconds(predict_args(src, dst, model, tile, overlap, chunk),
                                         Path(f"{dst}.partial") / "work" / "done")
            print(f"| {name} | {per_chunk:.1f} | {seconds:.1f} | {code} |", flush=True)


if __name__ == "__main__":
    main()
