"""Every option of tileseg that takes one of a fixed set of values, declared once.

A set is a ``Literal`` alias: type hints, config fields and dispatch tables use it, and the
tuple of its values is read from it (``get_args``) by the CLI's ``click.Choice``
(:func:`tileseg.cli.options.choice`), its help text, the configs' checks
(:func:`check_choices`), batch manifests (which build those configs) and the messages. So
adding a value is one edit here plus the code that acts on it, and adding a set is one alias
here, the config field typed with it, and the option that sets it.

This module imports nothing of tileseg but its errors: the configs, the engines and the CLI all
read it.

Examples
--------
>>> PRECISIONS
('auto', 'fp32', 'bf16', 'fp16')
>>> choice_words(TTA_MODES)
'none, flips or d4'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args

from tileseg.errors import ConfigError, TilesegError

# ---- predict: how the model runs
Engine = Literal["auto", "torch", "onnxruntime"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
TtaMode = Literal["none", "flips", "d4"]  # test-time augmentation (tileseg.inference.tta)
TTA_MODES: tuple[TtaMode, ...] = get_args(TtaMode)
OutputStride = Literal[8, 16]  # a DeepLab encoder's output stride
OUTPUT_STRIDES: tuple[OutputStride, ...] = get_args(OutputStride)
# device kinds ``--device`` names; a GPU other than the first is cuda:N (torch checks the rest)
DeviceKind = Literal["auto", "cpu", "cuda"]
DEVICE_KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)

# ---- predict: tiling and outputs
BlendName = Literal["hann", "gaussian", "triangular", "uniform", "center"]  # tileseg.tiling.blend
BLEND_WINDOWS: tuple[BlendName, ...] = get_args(BlendName)
OutputFormat = Literal["gtiff", "cog", "zarr"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
ProbabilityMode = Literal["none", "uint8", "float16"]
PROBABILITY_MODES: tuple[ProbabilityMode, ...] = get_args(ProbabilityMode)
# GDAL's warp resampling methods, by rasterio's names (tileseg.scenes.stack)
ResamplingMethod = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average",
                           "mode", "max", "min", "med", "q1", "q3", "sum", "rms"]
RESAMPLING_METHODS: tuple[ResamplingMethod, ...] = get_args(ResamplingMethod)

# ---- vectorize and preview
VectorFormat = Literal["gpkg", "parquet", "geojson", "fgb"]  # each also its file extension
VECTOR_FORMATS: tuple[VectorFormat, ...] = get_args(VectorFormat)
AreaUnit = Literal["pixels", "map"]  # of min_area: pixels, or squared CRS units
AREA_UNITS: tuple[AreaUnit, ...] = get_args(AreaUnit)
Connectivity = Literal[4, 8]  # 4: pixels sharing a side are one polygon; 8: a corner too
CONNECTIVITIES: tuple[Connectivity, ...] = get_args(Connectivity)
AreaMethod = Literal["exact", "estimate"]  # a preview's class areas: every pixel, or the picture
AREA_METHODS: tuple[AreaMethod, ...] = get_args(AreaMethod)

# ---- train
HoldoutSide = Literal["left", "right", "top", "bottom"]
HOLDOUT_SIDES: tuple[HoldoutSide, ...] = get_args(HoldoutSide)
Flips = Literal["none", "lr", "dihedral"]
FLIPS: tuple[Flips, ...] = get_args(Flips)
SaveDtype = Literal["float32", "float16"]
SAVE_DTYPES: tuple[SaveDtype, ...] = get_args(SaveDtype)
ClassWeighting = Literal["none", "inverse-sqrt", "inverse"]
CLASS_WEIGHTINGS: tuple[ClassWeighting, ...] = get_args(ClassWeighting)

# ---- where dask graphs run (tileseg.execution; names and addresses are resolved there)
SchedulerKind = Literal["threads", "sync", "processes", "distributed", "callable"]
SCHEDULER_KINDS: tuple[SchedulerKind, ...] = get_args(SchedulerKind)


def choice_words(choices: Sequence[object]) -> str:
    """``a, b or c``: the values as a message or a help text lists them."""
    words = [str(c) for c in choices]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def check_choice(value: object, choices: Sequence[object], param: str, *,
                 error: type[TilesegError] = ConfigError) -> None:
    """Raise ``error`` (a :class:`ConfigError` by default) naming ``param`` unless ``value`` is
    one of ``choices``.

    >>> check_choice("fp8", PRECISIONS, "precision")
    Traceback (most recent call last):
    ...
    tileseg.errors.ConfigError: precision 'fp8': choose auto, fp32, bf16 or fp16
    """
    if isinstance(value, bool) or value not in choices:
        raise error(f"{param} {value!r}: choose {choice_words(choices)}", params=(param,))


def check_choices(config: Any, *, prefix: str = "") -> None:
    """Check every field of the dataclass ``config`` typed with a choice set (or with one or
    None), as its ``__post_init__`` does; the message names the field (``prefix`` + name)."""
    for name, choices in _choice_fields(type(config)):
        value = getattr(config, name)
        if value is not None or None not in choices:  # None: the field's "not given"
            check_choice(value, [c for c in choices if c is not None], prefix + name)


_FIELDS: dict[type, tuple[tuple[str, tuple[object, ...]], ...]] = {}


def _choice_fields(cls: type) -> tuple[tuple[str, tuple[object, ...]], ...]:
    """``(field, its values)`` for the fields of ``cls`` typed ``Literal[...]`` or
    ``Literal[...] | None`` (None then among the values); a field that also takes other types
    (``float | Literal["model"]``) checks itself. Read once per class."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple((f.name, values) for f in dataclasses.fields(cls)
                             if (values := _literal_values(hints[f.name])) is not None)
    return _FIELDS[cls]


def _literal_values(hint: Any) -> tuple[object, ...] | None:
    if typing.get_origin(hint) is Literal:
        return get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = get_args(hint)
        literals = [p for p in parts if typing.get_origin(p) is Literal]
        if len(literals) == 1 and all(p is type(None) or p in literals for p in parts):
            return (*get_args(literals[0]), None)
    return None
