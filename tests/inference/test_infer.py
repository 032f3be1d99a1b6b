"""infer and device: a caller's model stays where it was; device rules resolve once."""

from __future__ import annotations

import pytest
import torch
from conftest import per_pixel_model

from tileseg.errors import ConfigError
from tileseg.inference import device
from tileseg.inference.infer import make_runtime


def test_make_runtime_leaves_a_callers_training_model_alone() -> None:
    model = per_pixel_model(2, 3)
    model.module.train()
    runtime = make_runtime(model, device="cpu", precision="fp32", batch_size=2, tile_size=32,
                           overlap=8, blend="hann")
    assert model.module.training, "the caller's module was switched to eval mode"
    assert runtime.model.module is not model.module and not runtime.model.module.training


def test_make_runtime_uses_an_eval_model_on_the_device_as_is() -> None:
    model = per_pixel_model(2, 3)
    runtime = make_runtime(model, device="cpu", precision="fp32", batch_size=2, tile_size=32,
                           overlap=8, blend="hann")
    assert runtime.model.module is model.module  # no copy of a model already placed


def test_owned_model_is_placed_in_place() -> None:
    model = per_pixel_model(2, 3)
    model.module.train()
    runtime = make_runtime(model, device="cpu", precision="fp32", batch_size=2, tile_size=32,
                           overlap=8, blend="hann", owned=True)
    assert runtime.model.module is model.module and not model.module.training


def test_device_rules() -> None:
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device("cpu") is device.resolve_device("cpu")  # resolved once
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) is None
    assert device.resolve_precision("bf16", cpu) is torch.bfloat16
    assert device.precision_name(device.resolve_precision("bf16", cpu)) == "bf16"
    assert device.default_batch_size(cpu, 528) == device.CPU_BATCH_SIZE
    with pytest.raises(ConfigError, match="fp16"):
        device.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="not a torch device"):
        device.resolve_device("tpu:x")
