"""Test-time augmentation: exact inverse transforms, exact averages, tiles on their own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from click.testing import CliRunner
from conftest import interrupt_after, metadata, per_pixel_model, random_image, untiled_mask
from torch import nn

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError
from tileseg.inference import tta
from tileseg.inference.infer import make_runtime
from tileseg.models.formats import load_model
from tileseg.models.loaded import wrap_module
from tileseg.pipeline import predict


def _config(src: Path, dst: Path, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=96)
    base.update(kw)
    return PredictConfig(src=str(src), dst=str(dst), **base)  # type: ignore[arg-type]


def _runtime(model, mode: str, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = dict(device="cpu", precision="fp32", batch_size=4, tile_size=48,
                                   overlap=8, blend="hann", tta=mode)
    args.update(kw)
    return make_runtime(model, **args)  # type: ignore[arg-type]


def test_every_transform_is_undone_exactly_and_d4_has_eight_distinct_ones() -> None:
    x = torch.randn(2, 3, 9, 9)
    seen = []
    for mode, n in (("none", 1), ("flips", 4), ("d4", 8)):
        assert tta.passes(mode) == n
        for turns, mirror in tta._TRANSFORMS[mode]:
            moved = tta.apply(x, turns, mirror)
            assert torch.equal(tta.invert(moved, turns, mirror), x)
            if mode == "d4":
                seen.append(moved)
    assert len({t.numpy().tobytes() for t in seen}) == 8
    with pytest.raises(ConfigError, match="choose none, flips or d4"):
        PredictConfig("a.tif", "b.tif", tta="rot")  # type: ignore[arg-type]


class Identity(nn.Module):
    """The 1x1-convolution identity: logits = the normalized bands, exactly (x * 1 + 0)."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(bands, bands, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(bands)[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_the_1x1_identity_gives_the_same_logits_and_the_untiled_mask(make_raster, tmp_path,
                                                                    mode: str) -> None:
    """Every pass of the identity gives the tile's own values, so their average is that value
    exactly: TTA changes no bit of the probabilities, and the mask is each pixel's argmax."""
    data = random_image(3, 101, 133)
    src = make_raster(data)
    model = wrap_module(Identity(3), metadata(3, 3, scale=1 / 255))
    probabilities = {}
    for m in ("none", mode):
        result = predict(_config(src, tmp_path / f"{m}.zarr", tta=m, probabilities="float16"),
                         model=model)
        group = zarr.open_group(result.dst, mode="r")
        np.testing.assert_array_equal(group["mask"][:], data.argmax(0))
        probabilities[m] = group["probabilities"][:]
    np.testing.assert_array_equal(probabilities["none"], probabilities[mode])


def test_a_per_pixel_model_with_tta_gives_the_untiled_mask(make_raster, tmp_path) -> None:
    data = random_image(3, 90, 70, seed=2)
    model = per_pixel_model(3, 4, scale=1 / 255)
    result = predict(_config(make_raster(data), tmp_path / "o.tif", tta="d4"), model=model)
    with rasterio.open(result.dst) as out:
        np.testing.assert_array_equal(out.read(1), untiled_mask(model, data, 1 / 255))


def test_constant_tiles_give_their_constant_logits_exactly() -> None:
    model = wrap_module(Identity(3), metadata(3, 3))
    x = torch.full((3, 3, 48, 48), 0.3)
    plain = _runtime(model, "none").forward(x)
    assert torch.equal(plain, plain[:, :, :1, :1].expand_as(plain))  # constant in each tile
    for mode in ("flips", "d4"):
        assert torch.equal(_runtime(model, mode).forward(x), plain)


class Asymmetric(nn.Module):
    """A 3x3 convolution with random (so neither flip- nor rotation-symmetric) kernels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_flips_change_the_logits_of_an_asymmetric_model_by_their_exact_average(mode: str) -> None:
    model = wrap_module(Asymmetric(), metadata(3, 3))
    x = torch.rand(2, 3, 48, 48)
    runtime = _runtime(model, mode)
    got = runtime.forward(x)
    assert not torch.equal(got, _runtime(model, "none").forward(x))
    # the average, summed pairwise in the transforms' order and scaled by a power of two
    passes = [tta.invert(runtime._forward_once(tta.apply(x, t, m).contiguous()), t, m)
              for t, m in tta._TRANSFORMS[mode]]
    while len(passes) > 1:
        passes = [passes[i] + passes[i + 1] for i in range(0, len(passes), 2)]
    assert torch.equal(got, passes[0] / tta.passes(mode))
    # each tile alone: its logits are those it has in a batch of two
    assert torch.equal(runtime.forward(x[1:]), got[1:])


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_tta_logits_of_a_real_network_do_not_depend_on_the_batch(deeplab_dir: Path,
                                                                  engine: str) -> None:
    runtime = _runtime(load_model(deeplab_dir), "d4", engine=engine, owned=True,
                       from_directory=True, tile_size=64)
    x = torch.rand(3, 3, runtime.context, runtime.context)
    together = runtime.forward(x)
    for k in range(3):
        assert torch.equal(runtime.forward(x[k : k + 1]), together[k : k + 1])


def test_resume_refuses_another_tta(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 300, 300))
    dst = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, dst, workers=1), model=per_pixel_model(3, 4),
                progress=interrupt_after(2))
    with pytest.raises(ConfigError, match="tta flips [(]the interrupted run had none[)]"):
        predict(_config(src, dst, resume=True, tta="flips"), model=per_pixel_model(3, 4))


def test_the_report_and_the_summary_say_the_multiplier(make_raster, tmp_path,
                                                       deeplab_dir: Path) -> None:
    src = make_raster(random_image(3, 80, 90))
    report = tmp_path / "run.json"
    res = CliRunner().invoke(cli, ["predict", str(src), str(tmp_path / "o.tif"), "-m",
                                   str(deeplab_dir), "--tile-size", "64", "--overlap", "16",
                                   "--tta", "d4", "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "tta d4: 8 forward passes a tile" in res.output
    facts = json.loads(report.read_text())
    assert facts["tta"] == "d4" and facts["forward_passes_per_tile"] == 8
    with rasterio.open(tmp_path / "o.tif") as out:
        assert out.read(1).shape == (80, 90)


def test_near_tie_mask_with_d4_is_the_same_whatever_the_layout(make_raster, tmp_path,
                                                               near_tie_deeplab: Path) -> None:
    """The near-tie model's two classes differ by a rounding step almost everywhere: any
    dependence of the averaged logits on the batch or the chunk would flip pixels."""
    src = make_raster(random_image(3, 120, 120, seed=11))
    outputs = []
    for chunk_size, batch_size in ((2048, 4), (48, 3)):
        result = predict(_config(src, tmp_path / f"{chunk_size}.zarr", model=str(near_tie_deeplab),
                                 tta="d4", chunk_size=chunk_size, batch_size=batch_size,
                                 engine="torch", probabilities="float16"))
        group = zarr.open_group(result.dst, mode="r")
        outputs.append((group["mask"][:], group["probabilities"][:]))
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert 0.05 < outputs[0][0].mean() < 0.95  # both classes present: a near tie indeed
