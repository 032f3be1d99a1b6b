"""Building, saving and loading segmentation models.

A model directory is what ``smp``'s ``model.save_pretrained(dir)`` writes (``config.json`` and
``model.safetensors``), optionally with tileseg's ``tileseg.json`` metadata beside it. Loading
never touches the network and never executes code from the file: weights come from safetensors,
or from ``torch.load(weights_only=True)`` for a plain state dict.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from tileseg.errors import InputNotFoundError, ModelError, log_params
from tileseg.metadata import (
    ModelMetadata,
    load_metadata,
    save_metadata,
    scaling_words,
    unreadable,
)
from tileseg.text import counted

logger = logging.getLogger(__name__)

T = TypeVar("T")

ARCHITECTURES: tuple[str, ...] = ("DeepLabV3Plus", "DeepLabV3", "PSPNet")
_ALIASES = {
    "deeplabv3plus": "DeepLabV3Plus",
    "deeplabv3+": "DeepLabV3Plus",
    "deeplab": "DeepLabV3Plus",
    "deeplabv3": "DeepLabV3",
    "pspnet": "PSPNet",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")


def canonical_architecture(name: str) -> str:
    """Map user spellings (``deeplabv3+``, ``pspnet``) to smp class names."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise ModelError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")


@dataclass(frozen=True)
class ModelSpec:
    """How to build an smp model from scratch (always with ``encoder_weights=None``)."""

    architecture: str = "DeepLabV3Plus"
    encoder_name: str = "resnet50"
    in_channels: int = 3
    classes: int = 2
    encoder_output_stride: int | None = None  # 8 or 16 (DeepLab only); None: smp's default
    decoder_atrous_rates: tuple[int, ...] | None = None  # DeepLab only
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "architecture", canonical_architecture(self.architecture))
        if self.in_channels < 1 or self.classes < 1:
            raise ModelError("in_channels and classes must be at least 1")
        if self.encoder_output_stride not in (None, 8, 16):
            raise ModelError("encoder_output_stride must be 8 or 16")
        if self.encoder_output_stride is not None and self.architecture == "PSPNet":
            raise ModelError("PSPNet has no output stride option; use DeepLabV3Plus or DeepLabV3")

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "encoder_name": self.encoder_name,
            "encoder_weights": None,
            "in_channels": self.in_channels,
            "classes": self.classes,
            **self.extra,
        }
        if self.architecture != "PSPNet":
            if self.encoder_output_stride is not None:
                kw["encoder_output_stride"] = self.encoder_output_stride
            if self.decoder_atrous_rates is not None:
                kw["decoder_atrous_rates"] = tuple(self.decoder_atrous_rates)
        return kw


def build_model(spec: ModelSpec) -> nn.Module:
    """Build an untrained smp model. Never downloads: encoder weights are always None."""
    import segmentation_models_pytorch as smp

    cls: Any = getattr(smp, spec.architecture)
    try:
        return cls(**spec.kwargs())
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"cannot build {spec.architecture} with {spec.encoder_name}: {exc}") from exc


def save_model(model: nn.Module, directory: str | Path, metadata: ModelMetadata) -> Path:
    """Save an smp model (``save_pretrained`` layout) with its tileseg metadata."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "save_pretrained"):
        raise ModelError("save_model needs an smp model (it has save_pretrained)")
    smp_model: Any = model  # smp models add save_pretrained; nn.Module does not declare it
    smp_model.save_pretrained(str(path))
    save_metadata(metadata, path)
    weights = path / "model.safetensors"
    if weights.is_file():
        readable_like_others(weights)
    return path


def readable_like_others(path: Path) -> None:
    """Give ``path`` the permissions a newly created file gets (0666 less the umask).

    safetensors writes through a private temporary file (0600): dask workers running as another
    user could not read the weights although they read every other file of the model folder.
    """
    import os

    umask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(umask)
    path.chmod(0o666 & ~umask)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """An eval-mode model with what tileseg needs to feed it.

    Compared and hashed by identity: two loads of one directory are two models.
    """

    module: nn.Module
    metadata: ModelMetadata
    source: str
    architecture: str
    divisor: int  # input height/width must be a multiple of this

    def context_size(self, tile_size: int) -> int:
        """Smallest network input (>= tile_size) the model accepts."""
        return -(-tile_size // self.divisor) * self.divisor


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.json"
    try:
        with open(config_path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise unreadable(config_path, exc) from exc
    try:
        config = json.loads(text.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{config_path}: not valid JSON ({exc}); re-save the model") from exc
    if not isinstance(config, dict) or "_model_class" not in config:
        raise ModelError(
            f"{config_path}: not an smp config (no _model_class); save the model with "
            "model.save_pretrained(dir)"
        )
    return config


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:  # safetensors reports a file it may not read as "No such file or directory"
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: corrupt safetensors file ({exc}); re-save the model") from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"{path}: holds pickled Python objects, which tileseg refuses to execute; save a "
            "state dict (torch.save(model.state_dict(), f)) or use model.save_pretrained(dir)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors; re-save it with model.state_dict()")
    return state


def _divisor(module: nn.Module) -> int:
    explicit = getattr(module, "tileseg_divisor", None)
    if explicit is not None:
        return int(explicit)
    if getattr(module, "requires_divisible_input_shape", False):
        return int(getattr(module.encoder, "output_stride", 32))
    return 1


def _infer_classes_and_channels(module: nn.Module) -> tuple[int, int]:
    in_channels = classes = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if in_channels is None:
                in_channels = m.in_channels
            classes = m.out_channels
    if in_channels is None or classes is None:
        raise ModelError("cannot tell the model's input bands and classes; add tileseg.json")
    seg_head = getattr(module, "segmentation_head", None)
    if seg_head is not None:
        convs = [m for m in seg_head.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            classes = convs[-1].out_channels
    encoder = getattr(module, "encoder", None)
    if encoder is not None and hasattr(encoder, "_in_channels"):
        in_channels = int(encoder._in_channels)
    return classes, in_channels


def wrap_module(
    module: nn.Module,
    metadata: ModelMetadata | None = None,
    *,
    source: str = "<module>",
    dtype: str | None = None,
) -> LoadedModel:
    """Wrap any ``nn.Module`` mapping ``(N, bands, H, W)`` to ``(N, classes, H, W)`` logits.

    A module with one output channel is a binary model: its mask has two classes, the second
    where the sigmoid of its output is above 0.5 (see :func:`class_logits`).
    """
    module = module.eval()
    why = "its metadata gives no normalization"
    if metadata is None:
        outputs, in_channels = _infer_classes_and_channels(module)
        metadata = ModelMetadata.default(mask_classes(outputs), in_channels, dtype)
        why = "no metadata given"
    metadata = _with_scaling(metadata, source, dtype, why)
    return LoadedModel(
        module=module,
        metadata=metadata,
        source=source,
        architecture=type(module).__name__,
        divisor=_divisor(module),
    )


def mask_classes(outputs: int) -> int:
    """The classes of the mask a model with ``outputs`` output channels gives: a binary model's
    one channel (smp's ``classes=1``, a sigmoid output) gives two."""
    return 2 if outputs == 1 else outputs


def class_logits(out: torch.Tensor, classes: int) -> torch.Tensor:
    """A forward pass's output ``(N, channels, H, W)`` as logits of the mask's ``classes``.

    A binary model's single logit ``x`` becomes ``[0, x]``: its softmax is ``(1 - sigmoid(x),
    sigmoid(x))`` and its argmax the 0.5 threshold of the sigmoid, also once blended (the
    blended ``x`` is compared with 0).
    """
    channels = out.shape[1]
    if channels == 1 and classes == 2:
        return torch.cat([torch.zeros_like(out), out], dim=1)
    if channels != classes:
        # summed into a (classes, ...) buffer, a wrong count would broadcast into a wrong mask
        raise ModelError(f"the model gives {channels} output channels but its metadata names "
                         f"{classes} classes; give metadata with {mask_classes(channels)} classes")
    return out


def load_model(
    path: str | Path,
    *,
    spec: ModelSpec | None = None,
    encoder_output_stride: int | None = None,
    decoder_atrous_rates: tuple[int, ...] | None = None,
    raster_dtype: str | None = None,
) -> LoadedModel:
    """Load a model directory (or a state-dict file plus a ``spec``) in eval mode on the CPU.

    Parameters
    ----------
    path
        A directory written by ``model.save_pretrained(dir)`` (optionally with ``tileseg.json``),
        or a ``.safetensors``/``.pt`` state dict, in which case ``spec`` says what to build.
    encoder_output_stride, decoder_atrous_rates
        Run a DeepLab model at another output stride or with other atrous rates than it was
        saved with (the weights do not change shape).
    raster_dtype
        Used only to choose default normalization when the model has no metadata.

    Examples
    --------
    >>> model = load_model("models/landcover")          # doctest: +SKIP
    >>> model.metadata.class_names                       # doctest: +SKIP
    """
    path = Path(path)
    config, weights, meta_dir = _locate(path)
    stored = load_metadata(meta_dir)
    spec = _resolve_spec(path, config, spec, encoder_output_stride, decoder_atrous_rates)
    module = _build_with_weights(path, spec, weights)
    metadata = _checked_metadata(path, stored, spec, raster_dtype)
    module.eval()
    return LoadedModel(module=module, metadata=metadata, source=str(path),
                       architecture=spec.architecture, divisor=_divisor(module))


def _locate(path: Path) -> tuple[dict[str, Any] | None, Path, Path]:
    """The smp config (None for a bare weights file), the weights file and the metadata folder."""
    try:
        found, folder = path.exists(), path.is_dir()
        # listed, not only looked up by name: the run fingerprints and ships every file of it
        names = set(os.listdir(path)) if folder else set()
    except OSError as exc:  # e.g. a folder without read or search permission
        raise unreadable(path, exc) from exc
    if not found:
        raise InputNotFoundError(f"{path}: not found; pass model DIR (a save_pretrained dir)",
                                 params=("model",))
    if not folder:
        return None, path, path.parent
    # by name: a folder called config.json is a config that cannot be read, not a missing one
    config = _read_config(path) if "config.json" in names else None
    weights = next((path / n for n in WEIGHT_FILES if n in names), None)
    if weights is None:
        raise ModelError(f"{path}: no model.safetensors in the directory; save with save_pretrained")
    return config, weights, path


def _resolve_spec(path: Path, config: dict[str, Any] | None, spec: ModelSpec | None,
                  encoder_output_stride: int | None,
                  decoder_atrous_rates: tuple[int, ...] | None) -> ModelSpec:
    """What to build: the directory's config (else the caller's spec), with the overrides."""
    if config is not None:
        spec = _spec_from_config(config, path / "config.json")
    elif spec is None:
        raise ModelError(
            f"{path}: a bare weights file needs the architecture; pass a save_pretrained "
            "directory instead (config.json + model.safetensors)"
        )
    overrides: dict[str, Any] = {}
    if encoder_output_stride is not None:
        overrides["encoder_output_stride"] = encoder_output_stride
    if decoder_atrous_rates is not None:
        overrides["decoder_atrous_rates"] = tuple(decoder_atrous_rates)
    if not overrides:
        return spec
    if spec.architecture == "PSPNet":
        raise ModelError("encoder_output_stride and decoder_atrous_rates apply to DeepLab models "
                         "only", params=("encoder_output_stride", "decoder_atrous_rates"))
    return replace(spec, **overrides)


def _build_with_weights(path: Path, spec: ModelSpec, weights: Path) -> nn.Module:
    state = _read_state_dict(weights)
    try:
        # built without memory or random initialization (4-7x faster: every worker process
        # loads the model): the weights then become its tensors
        with torch.device("meta"):
            module = build_model(spec)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    # assigned tensors keep their dtype: cast to the module's, as copying into it would (a
    # model saved in half precision runs in float32)
    wanted = {k: t.dtype for k, t in module.state_dict().items()}
    state = {k: v.to(wanted[k]) if k in wanted and v.is_floating_point() else v
             for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights}: weights do not match {spec.architecture}/"
                         f"{spec.encoder_name} ({first})") from exc
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        # a tensor the weights file does not hold (a non-persistent buffer): built for real
        module = build_model(spec)
        module.load_state_dict(state, strict=True)
    return module


def _checked_metadata(path: Path, metadata: ModelMetadata | None, spec: ModelSpec,
                      raster_dtype: str | None) -> ModelMetadata:
    """The model's tileseg.json, checked against its weights; numbered defaults without one."""
    classes = mask_classes(spec.classes)
    if metadata is None:
        warn_once(
            logger, str(path.resolve()),
            "%s has no tileseg.json: classes are numbered and the input is scaled by a guess "
            "(%s); add metadata (tileseg.metadata.save_metadata) for real class names and "
            "normalization", path, scaling_words(raster_dtype),
        )
        return ModelMetadata.default(classes, spec.in_channels, raster_dtype)
    if spec.classes == 1 and metadata.num_classes == 1:
        raise ModelError(
            f"{path}: the model has one output (a binary model, thresholded at sigmoid 0.5) but "
            "tileseg.json names one class; name two in tileseg.json: below 0.5, then above "
            "(e.g. background, building)"
        )
    if metadata.num_classes != classes or metadata.in_channels != spec.in_channels:
        raise ModelError(
            f"{path}: tileseg.json says {counted(metadata.num_classes, 'class')}/"
            f"{counted(metadata.in_channels, 'band')} but the weights have "
            f"{classes}/{spec.in_channels}; fix tileseg.json"
        )
    return _with_scaling(metadata, str(path), raster_dtype, "tileseg.json gives no normalization")


def _with_scaling(metadata: ModelMetadata, source: str, raster_dtype: str | None,
                  why: str) -> ModelMetadata:
    """``metadata`` with the dtype-default scaling where it gives no normalization (the model's
    dtype, else the raster's), said in a warning: tileseg guessed it."""
    if not metadata.guessed_scaling:
        return metadata
    warn_once(logger, source, "%s: %s: the input is scaled by a guess (%s); give normalization "
              "(scale, offset, mean, std) for the values the model was trained on",
              source, why, scaling_words(metadata.dtype or raster_dtype))
    return metadata.with_guessed_scaling(raster_dtype)


def _spec_from_config(config: dict[str, Any], config_path: Path) -> ModelSpec:
    """The :class:`ModelSpec` smp's ``config.json`` describes; a :class:`ModelError` naming the
    file for anything missing or malformed."""
    known = {"encoder_name", "in_channels", "classes", "encoder_output_stride",
             "decoder_atrous_rates"}
    try:
        rates = config.get("decoder_atrous_rates")
        return ModelSpec(
            architecture=canonical_architecture(str(config["_model_class"])),
            encoder_name=str(config["encoder_name"]),
            in_channels=int(config.get("in_channels", 3)),
            classes=int(config.get("classes", 1)),
            encoder_output_stride=config.get("encoder_output_stride"),
            decoder_atrous_rates=None if rates is None else tuple(int(r) for r in rates),
            extra={k: v for k, v in config.items()
                   if k not in known and k != "encoder_weights" and not k.startswith("_")},
        )
    except ModelError as exc:
        raise ModelError(f"{config_path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{config_path}: invalid smp config ({type(exc).__name__}: {exc}); "
                         "re-save the model with model.save_pretrained(dir)") from exc


_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


def warn_once(log: logging.Logger, key: str, message: str, *args: Any,
              params: tuple[str, ...] = ()) -> None:
    """Log a warning once per process for ``key`` (a model loaded by each batch scene or each
    worker thread would otherwise repeat it); ``params``: the parameters it names (the CLI
    shows them as flags)."""
    with _WARNED_LOCK:
        if (key, message) in _WARNED:
            return
        _WARNED.add((key, message))
    log.warning(message, *args, extra=log_params(*params))


_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()  # guards the dicts only, never held while a factory runs
_KEY_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}


def cached(key: tuple[Any, ...], factory: Callable[[], T]) -> T:
    """Process-wide cache so each worker process loads a model once and keeps it.

    Threads asking for the same key wait for one ``factory()`` call; threads asking for other
    keys (another model, another scene) are not held up by it.
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]  # type: ignore[no-any-return]
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]  # type: ignore[no-any-return]
        value = factory()
        with _CACHE_LOCK:
            _CACHE[key] = value
            _KEY_LOCKS.pop(key, None)
        return value


def forget_cached(stale: Callable[[tuple[Any, ...]], bool]) -> None:
    """Drop the cached values whose key ``stale`` says is gone (e.g. a released model)."""
    with _CACHE_LOCK:
        for key in [k for k in _CACHE if stale(k)]:
            del _CACHE[key]


def clear_cache() -> None:
    """Drop every cached model and runtime of this process (tests and long-lived services
    that reload a changed model directory use it)."""
    forget_cached(lambda key: True)
