"""What single-object outputs on a store cost: requests and bytes of polygon layers, previews and
a COG's style sidecars on a loopback S3 server (moto behind a counting proxy).

The ownership check of an existing object downloads it once (see tileseg.outputs.store_objects); this
shows how that compares with the upload itself. Loopback: no latency, no bandwidth limit, so the
figures count what tileseg asks for, not how long a real store takes.

    python benchmarks/bench_store_objects.py --size 2048
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from conftest import NORTH_UP, UTM, per_pixel_model  # noqa: E402
from s3_server import S3Server, running_s3, s3_environment  # noqa: E402

from tileseg.cli.main import cli  # noqa: E402
from tileseg.config import PredictConfig  # noqa: E402
from tileseg.pipeline import predict  # noqa: E402

BUCKET = "bench-objects"


def make_scene(folder: Path, size: int) -> Path:
    """Blocky classes (32 px patches), like land cover rather than per-pixel noise."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (3, size // 32 + 1, size // 32 + 1), dtype=np.uint8)
    data = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :size, :size]
    path = folder / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3,
                       dtype="uint8", crs=UTM, transform=NORTH_UP, tiled=True, blockxsize=256,
                       blockysize=256) as out:
        out.write(data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048, help="raster side in pixels")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-store-objects-"))
    src = make_scene(folder, args.size)
    model = per_pixel_model(3, 4)
    settings = dict(tile_size=256, overlap=32, chunk_size=512)
    mask = folder / "mask.tif"
    predict(PredictConfig(str(src), str(mask), **settings), model=model)  # type: ignore[arg-type]

    with running_s3() as server, s3_environment(server):
        server.client().create_bucket(Bucket=BUCKET)

        def cli_ok(*argv: str) -> None:
            result = CliRunner().invoke(cli, list(argv))
            if result.exit_code != 0:
                raise SystemExit(result.output)

        def size_mib(key: str) -> float:
            head = server.client().head_object(Bucket=BUCKET, Key=key)
            return float(head["ContentLength"]) / 2**20

        steps: list[tuple[str, Callable[[], None], str]] = [
            ("vectorize local mask -> new s3 .gpkg",
             lambda: cli_ok("vectorize", str(mask), f"s3://{BUCKET}/p.gpkg", "-q"), "p.gpkg"),
            ("same, --overwrite over tileseg's .gpkg (new process: nothing cached)",
             lambda: _fresh_overwrite(mask, server), "p.gpkg"),
            ("preview local mask -> new s3 .png",
             lambda: cli_ok("preview", str(mask), "-o", f"s3://{BUCKET}/p.png", "-q"), "p.png"),
            ("predict -> s3 COG + .aux.xml + .qml",
             lambda: predict(PredictConfig(str(src), f"s3://{BUCKET}/m.tif", **settings),  # type: ignore[arg-type]
                             model=model) and None, "m.tif"),
            ("vectorize that s3 COG -> s3 .gpkg",
             lambda: cli_ok("vectorize", f"s3://{BUCKET}/m.tif", f"s3://{BUCKET}/m.gpkg", "-q"),
             "m.gpkg"),
        ]
        print(f"{args.size}x{args.size} mask, 4 classes in 32 px patches; loopback S3 (moto)\n")
        print("| step | requests | GET / HEAD / PUT / POST | MiB up | MiB down | object MiB |")
        print("|---|---|---|---|---|---|")
        for label, step, key in steps:
            server.traffic.reset()
            step()
            t = server.traffic
            by = "/".join(str(t.requests.get(m, 0)) for m in ("GET", "HEAD", "PUT", "POST"))
            print(f"| {label} | {sum(t.requests.values())} | {by} | {t.bytes_in / 2**20:.2f} "
                  f"| {t.bytes_out / 2**20:.2f} | {size_mib(key):.2f} |")


def _fresh_overwrite(mask: Path, server: S3Server) -> None:
    # a new process knows no ETag it proved before: it downloads the layer once to check it
    import subprocess

    subprocess.run([sys.executable, "-m", "tileseg", "vectorize", str(mask),
                    f"s3://{BUCKET}/p.gpkg", "--overwrite", "-q"], check=True)


if __name__ == "__main__":
    main()
