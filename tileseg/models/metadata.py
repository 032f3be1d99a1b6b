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
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tileseg.errors import ModelError
from tileseg.sources import SUPPORTED_DTYPES
from tileseg.text import counted

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

# Defaults used when a model has no tileseg.json: bring every dtype tileseg reads
# (SUPPORTED_DTYPES) roughly into [0, 1].
DEFAULT_SCALE = {
    "uint8": 1.0 / 255.0,
    "uint16": 1.0 / 10000.0,  # surface reflectance products scale 0..10000; DNs up to 65535 stay O(1)
    "int16": 1.0 / 10000.0,
    "uint32": 1.0 / 10000.0,
    "int32": 1.0 / 10000.0,
    "float32": 1.0,
    "float64": 1.0,
}
_SCALE_WORDS = {1.0 / 255.0: "divided by 255", 1.0 / 10000.0: "divided by 10000", 1.0: "as they are"}

_HEX_COLOR = re.compile(r"#?[0-9a-fA-F]{6}")


def default_scale(dtype: str | None) -> float:
    """The scale tileseg guesses for ``dtype`` values when a model gives no normalization."""
    return DEFAULT_SCALE.get(dtype or "float32", 1.0)


def scaling_words(dtype: str | None) -> str:
    """How the guessed scaling treats ``dtype`` values, for warnings: ``uint8 values divided by
    255``."""
    scale = default_scale(dtype)
    return f"{dtype or 'float32'} values {_SCALE_WORDS.get(scale, f'multiplied by {scale:g}')}"


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
        # a negative std mirrors every band: the model sees the negative of what it learned on
        bad_std = [s for s in self.std if s <= 0]
        if bad_std:
            raise ModelError(f"normalization.std contains {bad_std[0]}; every std must be "
                             "positive")

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
    # True when tileseg.json gives no normalization: tileseg guesses the scaling from the dtype
    # (see with_guessed_scaling), as for a model without tileseg.json
    guessed_scaling: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ModelError("in_channels must be at least 1")
        if len(self.classes) < 1:
            raise ModelError("a model needs at least one class")
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ModelError("class ids must be 0, 1, 2, ... in order")
        for c in self.classes:
            check_class(c)
        if self.bands and len(self.bands) != self.in_channels:
            raise ModelError(
                f"metadata names {counted(len(self.bands), 'band')} but in_channels is "
                f"{self.in_channels}"
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
        if data.pop("guessed_scaling"):  # saved as it was read: still without normalization
            data.pop("normalization")
        data["classes"] = [class_json(c) for c in self.classes]
        return {"format": METADATA_FORMAT, **data}

    def with_guessed_scaling(self, raster_dtype: str | None) -> ModelMetadata:
        """This metadata with the scaling tileseg guesses when none is given: by the dtype the
        model names, else by the raster's (:data:`DEFAULT_SCALE`). Unchanged when it gives one."""
        if not self.guessed_scaling:
            return self
        scale = default_scale(self.dtype or raster_dtype)
        return replace(self, normalization=Normalization(scale=(scale,)))

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
            norm = data.get("normalization")
            given = norm or {}
            normalization = Normalization(
                **{k: tuple(float(v) for v in _as_list(given[k])) for k in given}
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
                guessed_scaling=norm is None,
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
        return cls(
            classes=tuple(
                ClassInfo(id=i, name=f"class_{i}", color=default_color(i))
                for i in range(num_classes)
            ),
            in_channels=in_channels,
            is_default=True,
            guessed_scaling=True,
        ).with_guessed_scaling(dtype)


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
    """Accept ``"#rrggbb"`` or ``[r, g, b]`` (integers 0-255); fall back to the palette."""
    if value is None:
        return default_color(class_id)
    if isinstance(value, str):
        if not _HEX_COLOR.fullmatch(value):
            raise ValueError(f"colour {value!r} is not #rrggbb")
        text = value.lstrip("#")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"colour {value!r} is not #rrggbb or [r, g, b]")
    color = (value[0], value[1], value[2])
    check_color(color)
    return color


def check_color(color: Any) -> None:
    """A ``ValueError`` unless ``color`` is three integers 0-255 (GDAL's colour table and the
    styles take nothing else, and would refuse it only once the mask is written)."""
    if (not isinstance(color, tuple | list) or len(color) != 3
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                       and 0 <= v <= 255 for v in color)):
        raise ValueError(f"colour {color!r} is not three integers 0-255")


def check_class(c: ClassInfo) -> None:
    """A :class:`ModelError` for a class whose colour or name the outputs cannot carry."""
    try:
        check_color(c.color)
    except ValueError as exc:
        raise ModelError(f"class {c.id} ({c.name!r}): {exc}") from None
    # XML 1.0 (the .qml and .aux.xml styles) cannot hold control characters, not even escaped,
    # and UTF-8 cannot hold a lone surrogate
    bad = next((ch for ch in c.name if unicodedata.category(ch) in ("Cc", "Cs")
                or ch in "\ufffe\uffff"), None)
    if bad is not None:
        raise ModelError(f"class {c.id} name {c.name!r} contains U+{ord(bad):04X}, a control "
                         "character the .qml and .aux.xml styles cannot hold; use printable "
                         "characters only")


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
    data = read_metadata_json(path)
    return None if data is None else ModelMetadata.from_json(data, source=str(path))


def read_metadata_json(path: Path) -> Any:
    """The JSON document of a ``tileseg.json`` at ``path``, or None when there is none."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise unreadable(path, exc) from exc
    # a folder or a dangling link there: an error, not "none"
    data = read_json_file(path, "fix or remove it")
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object; fix or remove it")
    return data


def read_json_file(path: Path, remedy: str) -> Any:
    """The JSON document of a model's file; a one-line :class:`ModelError` naming it when it
    cannot be read or is not JSON (``remedy``: what to do about the latter)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise unreadable(path, exc) from exc
    try:
        return json.loads(text.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{path}: not valid JSON ({exc}); {remedy}") from exc


def unreadable(path: Path, exc: OSError) -> ModelError:
    """The one-line error for a model file or folder that is there but cannot be read."""
    where = exc.filename if exc.filename is not None else path
    if isinstance(exc, IsADirectoryError):
        hint = "it must be a file: re-save the model (model.save_pretrained(dir))"
    elif isinstance(exc, PermissionError):
        hint = "make the model folder readable (chmod -R a+rX DIR) or copy it where you can read it"
    else:
        hint = "check the disk or re-save the model"
    return ModelError(f"{where}: the model cannot be read ({exc.strerror or exc}); {hint}")
