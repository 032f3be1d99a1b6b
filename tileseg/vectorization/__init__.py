"""Class masks into exact, seamless polygons, streamed chunk by chunk (see :func:`vectorize`)."""

from tileseg.vectorization.api import (
    Polygons,
    VectorizeConfig,
    VectorizeResult,
    polygonize,
    vectorize,
)
from tileseg.vectorization.source import MaskSource, open_mask
from tileseg.vectorization.writers import check_destination, format_for, read_marker

__all__ = [
    "MaskSource",
    "Polygons",
    "VectorizeConfig",
    "VectorizeResult",
    "check_destination",
    "format_for",
    "open_mask",
    "polygonize",
    "read_marker",
    "vectorize",
]
