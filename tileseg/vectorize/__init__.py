"""Class masks into exact, seamless polygons, streamed chunk by chunk (see :func:`vectorize`)."""

from tileseg.vectorize.api import (
    Polygons,
    VectorizeConfig,
    VectorizeResult,
    polygonize,
    vectorize,
)
from tileseg.vectorize.source import MaskSource, open_mask
from tileseg.vectorize.writers import format_for

__all__ = [
    "MaskSource",
    "Polygons",
    "VectorizeConfig",
    "VectorizeResult",
    "format_for",
    "open_mask",
    "polygonize",
    "vectorize",
]
