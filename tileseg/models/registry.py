"""How chunk tasks reach the model: a path each worker process loads once, or a model object
registered in this process.

A task must stay small and picklable, so it carries a :class:`ModelRef`, never a network. A
model handed to ``predict()`` as an object is registered here under a key; a worker process
that lacks the key is told to pass the model's directory instead. The model the driver loaded
while planning is handed over to the first runtime of this process that asks for it
(:func:`hand_over`), so an in-process run loads it once.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from tileseg.errors import RunError
from tileseg.models.formats import load_model
from tileseg.models.loaded import LoadedModel, forget_cached

# Models handed to predict() as objects live here, keyed by a token, so jobs stay small and
# picklable; a worker process that lacks the key must load the model from its path instead.
# Weak on both sides: once the caller drops a model, its entry and its cached runtime go too.
_IN_PROCESS_MODELS: weakref.WeakValueDictionary[str, LoadedModel] = weakref.WeakValueDictionary()
_IN_PROCESS_KEYS: weakref.WeakKeyDictionary[LoadedModel, str] = weakref.WeakKeyDictionary()
_IN_PROCESS_LOCK = threading.Lock()


def register_model(model: LoadedModel) -> str:
    """The registry key of ``model`` (the same key each time for one object)."""
    with _IN_PROCESS_LOCK:
        key = _IN_PROCESS_KEYS.get(model)
        if key is None:
            # Not id(model): an id is reused once its object is freed, and would find the
            # runtime cached for the previous model.
            key = f"in-process-{uuid.uuid4().hex}"
            _IN_PROCESS_KEYS[model] = key
            _IN_PROCESS_MODELS[key] = model
        live = set(_IN_PROCESS_MODELS.keys())
    forget_cached(lambda k: isinstance(k[1], ModelRef) and k[1].key is not None
                  and k[1].key not in live)
    return key


@dataclass(frozen=True)
class ModelRef:
    """How a worker gets the model: a path it loads itself, or an in-process registry key.

    ``files`` (name, size, mtime) of the model directory are part of the value, so a runtime
    cached for a model that has since been retrained in place is never reused.
    """

    path: str | None = None
    key: str | None = None
    encoder_output_stride: int | None = None
    decoder_atrous_rates: tuple[int, ...] | None = None
    files: tuple[tuple[str, int, int], ...] = ()
    architecture: str | None = None  # the network of plain weights
    encoder_name: str | None = None

    def load(self, raster_dtype: str) -> LoadedModel:
        with _HANDED_OVER_LOCK:
            handed = _HANDED_OVER.pop(self, None)
        if handed is not None:
            return handed
        if self.key is not None:
            try:
                return _IN_PROCESS_MODELS[self.key]
            except KeyError:
                raise RunError(
                    "a model object passed to predict() cannot reach another process; pass the "
                    "model directory instead for distributed runs"
                ) from None
        assert self.path is not None
        return load_model(self.path, encoder_output_stride=self.encoder_output_stride,
                          decoder_atrous_rates=self.decoder_atrous_rates, raster_dtype=raster_dtype,
                          architecture=self.architecture, encoder_name=self.encoder_name)


# A model the driver loaded while planning, handed to the first runtime of this process that
# asks for the same reference instead of loading it a second time; taken once, so no two
# runtimes (which may move or convert their module) ever share one module. Weak: once the run
# that planned it is over, an unused model is not kept.
_HANDED_OVER: weakref.WeakValueDictionary[ModelRef, LoadedModel] = weakref.WeakValueDictionary()
_HANDED_OVER_LOCK = threading.Lock()


def hand_over(ref: ModelRef, model: LoadedModel) -> None:
    """Offer the planning stage's ``model`` to the first runtime built for ``ref`` here."""
    with _HANDED_OVER_LOCK:
        _HANDED_OVER[ref] = model


def model_files(path: str | os.PathLike[str],
                model: LoadedModel | None = None) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the files of a model: every file ``model`` was loaded from
    (a checkpoint and the tileseg.json beside it, an MLM item and its artifact), else those of
    the directory (or the weights file) at ``path``."""
    root = Path(path)
    if model is not None and model.files:
        files = [Path(f) for f in model.files]
    else:
        files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    return tuple((str(p) if model is not None and model.files else p.name,
                  (st := p.stat()).st_size, st.st_mtime_ns) for p in files)
