"""model: the process cache and the registry of in-process models."""

from __future__ import annotations

import gc
import threading
import time

from conftest import per_pixel_model

from tileseg import model as model_mod
from tileseg import mosaic


def test_cached_calls_the_factory_once_per_key_and_does_not_block_other_keys() -> None:
    calls: list[str] = []
    slow_started = threading.Event()

    def slow() -> str:
        slow_started.set()
        time.sleep(0.5)
        calls.append("slow")
        return "slow"

    key_slow, key_fast = ("test-slow", object()), ("test-fast", object())
    worker = threading.Thread(target=model_mod.cached, args=(key_slow, slow))
    worker.start()
    slow_started.wait(5)
    began = time.perf_counter()
    assert model_mod.cached(key_fast, lambda: "fast") == "fast"
    waited = time.perf_counter() - began
    worker.join()
    assert waited < 0.4, "a load under way held up a load of another key"
    assert model_mod.cached(key_slow, lambda: "again") == "slow" and calls == ["slow"]


def test_registry_forgets_a_released_model_and_its_runtime() -> None:
    model = per_pixel_model(2, 3)
    key = mosaic.register_model(model)
    assert mosaic.register_model(model) == key  # one key per object
    ref = mosaic.ModelRef(key=key)
    model_mod.cached(("runtime", ref), lambda: "placed")
    del model
    gc.collect()
    assert key not in mosaic._IN_PROCESS_MODELS
    mosaic.register_model(per_pixel_model(2, 3))  # registering prunes dead entries' runtimes
    assert all(k[1:2] != (ref,) for k in model_mod._CACHE)
