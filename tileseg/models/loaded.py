"""Building, saving and loading segmentation models.

A model directory is what ``smp``'s ``model.save_pretrained(dir)`` writes (``config.json`` and
``model.safetensors``), optionally with tileseg's ``tileseg.json`` metadata beside it. Models as
users hold them otherwise (a TorchGeo checkpoint, plain weights, an ONNX file, a STAC MLM item)
are read by :mod:`tileseg.models.formats`, whose :func:`~tileseg.models.formats.load_model` takes any of
them. Loading never
touches the network and never executes code from the file: weights come from safetensors, or
from ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from tileseg.choices import OUTPUT_STRIDES, check_choice
from tileseg.errors import ModelError, log_params
from tileseg.models.metadata import ModelMetadata, save_metadata, scaling_words
from tileseg.tiling.grid import round_up

logger = logging.getLogger(__name__)

T = TypeVar("T")

# what `tileseg train` trains; any smp architecture below runs
ARCHITECTURES: tuple[str, ...] = ("DeepLabV3Plus", "DeepLabV3", "PSPNet")
SMP_ARCHITECTURES: tuple[str, ...] = (
    "DeepLabV3Plus", "DeepLabV3", "PSPNet", "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN",
    "PAN", "UPerNet", "Segformer", "DPT",
)
DEEPLAB = ("DeepLabV3Plus", "DeepLabV3")  # the architectures with an output stride option
_ALIASES = {
    **{name.lower(): name for name in SMP_ARCHITECTURES},
    "deeplabv3+": "DeepLabV3Plus",
    "deeplab": "DeepLabV3Plus",
    "unet++": "UnetPlusPlus",
    "u-net": "Unet",
}


def canonical_architecture(name: str) -> str:
    """Map user spellings (``deeplabv3+``, ``pspnet``, ``unet``) and smp's qualified class names
    (``segmentation_models_pytorch.decoders.unet.model.Unet``) to smp class names."""
    key = name.strip().lower()
    if key.startswith("segmentation_models_pytorch.") or key.startswith("smp."):
        key = key.rsplit(".", 1)[-1]
    if key in _ALIASES:
        return _ALIASES[key]
    raise ModelError(f"unknown architecture {name!r}; choose one of "
                     f"{', '.join(SMP_ARCHITECTURES)}")


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
        if self.encoder_output_stride is not None:
            check_choice(self.encoder_output_stride, OUTPUT_STRIDES, "encoder_output_stride",
                         error=ModelError)
        if self.encoder_output_stride is not None and self.architecture not in DEEPLAB:
            raise ModelError(f"{self.architecture} has no output stride option; use "
                             "DeepLabV3Plus or DeepLabV3")

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "encoder_name": self.encoder_name,
            "encoder_weights": None,
            "in_channels": self.in_channels,
            "classes": self.classes,
            **self.extra,
        }
        if self.architecture in DEEPLAB:
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
    # what the model was read from: smp, torchgeo, weights, onnx; "module" for a caller's object
    format: str = "module"
    input_size: int | None = None  # a network that takes one input size only (height = width)
    files: tuple[str, ...] = ()  # every file read to load it (a run fingerprints them)
    onnx_path: str | None = None  # a user's ONNX file, run by ONNX Runtime as it is
    spec: ModelSpec | None = None  # how it was built, for an smp network
    item: str | None = None  # the STAC MLM item it was loaded through, if any
    origin: dict[str, str] = field(default_factory=dict)  # fact -> where tileseg read it

    def context_size(self, tile_size: int) -> int:
        """Smallest network input (>= tile_size) the model accepts."""
        if self.input_size is not None:
            return self.input_size
        return round_up(tile_size, self.divisor)


def _divisor(module: nn.Module) -> int:
    explicit = getattr(module, "tileseg_divisor", None)
    if explicit is not None:
        return int(explicit)
    encoder = getattr(module, "encoder", None)
    # an smp network: its input on the encoder's grid (a U-Net runs at any size, but pads
    # inside its decoder differently from one tile to the next off that grid)
    if getattr(module, "requires_divisible_input_shape", None) is not None and encoder is not None:
        return int(getattr(encoder, "output_stride", 32))
    return 1


def fixed_input_size(module: nn.Module) -> int | None:
    """The one input size a network takes, or None: a timm ViT encoder (smp's DPT) is built
    for one image size unless made with ``dynamic_img_size``."""
    inner = getattr(getattr(module, "encoder", None), "model", None)
    embed = getattr(inner, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or getattr(embed, "dynamic_img_size", False):
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height != width:
        raise ModelError(f"the network takes {height} x {width} inputs only; tileseg's network "
                         "inputs are square: build it with a square img_size")
    return int(height)


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
    metadata = with_scaling(metadata, source, dtype, why)
    return LoadedModel(
        module=module,
        metadata=metadata,
        source=source,
        architecture=type(module).__name__,
        divisor=_divisor(module),
        input_size=fixed_input_size(module),
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


def with_scaling(metadata: ModelMetadata, source: str, raster_dtype: str | None,
                 why: str) -> ModelMetadata:
    """``metadata`` with the dtype-default scaling where it gives no normalization (the model's
    dtype, else the raster's), said in a warning: tileseg guessed it."""
    if not metadata.guessed_scaling:
        return metadata
    warn_once(logger, source, "%s: %s: the input is scaled by a guess (%s); give normalization "
              "(scale, offset, mean, std) for the values the model was trained on",
              source, why, scaling_words(metadata.dtype or raster_dtype))
    return metadata.with_guessed_scaling(raster_dtype)


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
