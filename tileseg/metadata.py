"""Model metadata: what a model expects from a raster and what its classes mean.

A model directory holds smp's ``config.json`` + ``model.safetensors`` and, optionally, a
``tileseg.json`` written by :func:`save_metadata`. Normalization travels with the model:

    x_norm = ((x * scale + offset) - mean) / std        (per band, after casting to float32)
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.errors import ModelError

logger = logging.getLogger(__name__)

METADATA_FILENAME = "tileseg.json"
METADATA_FORMAT = "tileseg-model/1"

# Fallback colours (RGB) for classes that come without one. The first nine are matplotlib's
# "tab10" (its grey left out); the rest are picked greedily, each as far as possible (in RGB) from
# all before it, among colours neither near black (black reads as nodata) nor near white (reads as
# empty). Pairwise RGB distance stays >= 76 up to 32 classes, >= 33 up to 256.
_SEED_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207),
)
PALETTE_SIZE = 256  # beyond this many classes the colours repeat

# Defaults used when a model has no tileseg.json: bring every dtype roughly into [0, 1].
DEFAULT_SCALE = {
    "uint8": 1.0 / 255.0,
    "uint16": 1.0 / 10000.0,  # surface reflectance products scale 0..10000; DNs up to 65535 stay O(1)
    "int16": 1.0 / 10000.0,
    "uint32": 1.0 / 10000.0,
    "int32": 1.0 / 10000.0,
    "float32": 1.0,
    "float64": 1.0,
}
SUPPORTED_DTYPES = tuple(DEFAULT_SCALE)


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its id in the mask, a name, an RGB colour, and optionally the value the
    class had in the label raster the model was trained on (so evaluation against such labels
    needs no value mapping)."""

    id: int
    name: str
    color: tuple[int, int, int]
    label_value: int | None = None


@dataclass(frozen=True)
class Normalization:
    """Per-band affine normalization; each field is one value per band (or one for all bands)."""

    scale: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("scale", "offset", "mean", "std"):
            values = getattr(self, name)
            if len(values) == 0:
                raise ModelError(f"normalization.{name} is empty; give one value per band")
            # a NaN or infinite coefficient turns every probability into NaN without an error
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise ModelError(f"normalization.{name} contains {bad[0]}; every value must be a "
                                 "finite number")
        if any(s == 0 for s in self.std):
            raise ModelError("normalization.std contains 0; every std must be non-zero")

    def coefficients(self, bands: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(a, b)`` of shape ``(bands,)`` so that ``x_norm = x * a + b``."""
        arrays = []
        for name in ("scale", "offset", "mean", "std"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.size == 1:
                values = np.repeat(values, bands)
            if values.size != bands:
                raise ModelError(
                    f"normalization.{name} has {values.size} values but the model takes {bands} "
                    "bands; give one value per band"
                )
            arrays.append(values)
        scale, offset, mean, std = arrays
        a = scale / std
        b = (offset - mean) / std
        return a.astype(np.float32), b.astype(np.float32)


@dataclass(frozen=True)
class ModelMetadata:
    """What a model expects and produces. Stored as ``tileseg.json`` in the model directory."""

    classes: tuple[ClassInfo, ...]
    in_channels: int
    bands: tuple[str, ...] = ()
    dtype: str | None = None
    normalization: Normalization = field(default_factory=Normalization)
    gsd: float | None = None
    description: str = ""
    tile_size: int = 513
    is_default: bool = False  # True when made up because the model had no tileseg.json

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ModelError("in_channels must be at least 1")
        if len(self.classes) < 1:
            raise ModelError("a model needs at least one class")
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ModelError("class ids must be 0, 1, 2, ... in order")
        if self.bands and len(self.bands) != self.in_channels:
            raise ModelError(
                f"metadata names {len(self.bands)} bands but in_channels is {self.in_channels}"
            )
        if self.dtype is not None and self.dtype not in SUPPORTED_DTYPES:
            raise ModelError(f"metadata dtype {self.dtype!r} is not one of {SUPPORTED_DTYPES}")
        self.normalization.coefficients(self.in_channels)  # one value (or one per band) each

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("is_default")
        data["classes"] = [class_json(c) for c in self.classes]
        return {"format": METADATA_FORMAT, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "metadata") -> ModelMetadata:
        try:
            classes = tuple(
                ClassInfo(
                    id=int(c["id"]),
                    name=str(c["name"]),
                    color=parse_color(c.get("color"), int(c["id"])),
                    label_value=None if c.get("label_value") is None else int(c["label_value"]),
                )
                for c in data["classes"]
            )
            norm = data.get("normalization") or {}
            normalization = Normalization(
                **{k: tuple(float(v) for v in _as_list(norm[k])) for k in norm}
            )
            return cls(
                classes=classes,
                in_channels=int(data["in_channels"]),
                bands=tuple(str(b) for b in data.get("bands", ())),
                dtype=data.get("dtype"),
                normalization=normalization,
                gsd=None if data.get("gsd") is None else float(data["gsd"]),
                description=str(data.get("description", "")),
                tile_size=int(data.get("tile_size", 513)),
            )
        except ModelError as exc:
            if str(exc).startswith(source):
                raise
            raise ModelError(f"{source}: {exc}; fix or remove it") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: invalid tileseg metadata ({exc}); fix or remove it") from exc

    @classmethod
    def default(cls, num_classes: int, in_channels: int, dtype: str | None) -> ModelMetadata:
        """Metadata for a model that has none: numbered classes and dtype-based scaling."""
        scale = DEFAULT_SCALE.get(dtype or "float32", 1.0)
        return cls(
            classes=tuple(
                ClassInfo(id=i, name=f"class_{i}", color=default_color(i))
                for i in range(num_classes)
            ),
            in_channels=in_channels,
            normalization=Normalization(scale=(scale,)),
            is_default=True,
        )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def default_color(class_id: int) -> tuple[int, int, int]:
    """The fallback colour of a class: distinct from its neighbours' and never black or white."""
    return _palette()[class_id % PALETTE_SIZE]


@functools.cache
def _palette() -> tuple[tuple[int, int, int], ...]:
    # Prefix-stable (class i's colour does not depend on how many classes a model has), and cheap
    # enough to compute on first use: 256 steps over ~4,000 candidate colours.
    levels = np.linspace(0, 255, 18).round()
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    luma = grid @ np.array([0.299, 0.587, 0.114])
    candidates = grid[(luma > 70) & (luma < 225)]
    chosen: list[tuple[int, int, int]] = list(_SEED_PALETTE)
    nearest = np.full(len(candidates), np.inf)
    for color in chosen:
        nearest = np.minimum(nearest, np.linalg.norm(candidates - np.asarray(color), axis=1))
    while len(chosen) < PALETTE_SIZE:
        pick = candidates[int(nearest.argmax())]
        chosen.append((int(pick[0]), int(pick[1]), int(pick[2])))
        nearest = np.minimum(nearest, np.linalg.norm(candidates - pick, axis=1))
    return tuple(chosen)


def parse_color(value: Any, class_id: int) -> tuple[int, int, int]:
    """Accept ``"#rrggbb"`` or ``[r, g, b]``; fall back to the palette."""
    if value is None:
        return default_color(class_id)
    if isinstance(value, str):
        text = value.lstrip("#")
        if len(text) != 6:
            raise ValueError(f"colour {value!r} is not #rrggbb")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    r, g, b = (int(v) for v in value)
    return (r, g, b)


def class_json(c: ClassInfo) -> dict[str, Any]:
    """A class as stored in tileseg.json and in the masks' class lists."""
    out: dict[str, Any] = {"id": c.id, "name": c.name,
                           "color": "#{:02x}{:02x}{:02x}".format(*c.color)}
    if c.label_value is not None:
        out["label_value"] = c.label_value
    return out


def save_metadata(metadata: ModelMetadata, directory: str | Path) -> Path:
    """Write ``tileseg.json`` into a model directory and return its path."""
    path = Path(directory) / METADATA_FILENAME
    path.write_text(json.dumps(metadata.to_json(), indent=2) + "\n")
    return path


def load_metadata(directory: str | Path) -> ModelMetadata | None:
    """Read ``tileseg.json`` from a model directory, or return None when there is none."""
    path = Path(directory) / METADATA_FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{path}: not valid JSON ({exc}); fix or remove it") from exc
    return ModelMetadata.from_json(data, source=str(path))
