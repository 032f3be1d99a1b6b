"""Joining the pieces of components that cross chunk borders into whole components.

Two pieces belong to one component when a pixel of one touches a pixel of the other across a chunk
border (sharing a side; or, with 8-connectivity, also a corner, including the corner where four
chunks meet) and both have the same class. Those contacts are read from the chunks' edge rows and
columns only, the pieces are grouped with connected components of the contact graph (a union-find),
and each group's polygons are unioned exactly in integer pixel coordinates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tileseg.choices import Connectivity
from tileseg.vectorization.polygons import ChunkPieces

logger = logging.getLogger(__name__)


@dataclass
class Components:
    """Whole connected components: one row per component, geometry in raster pixel coordinates."""

    class_id: np.ndarray  # int64
    pixels: np.ndarray  # int64
    probability_sum: np.ndarray | None  # float64
    geometry: np.ndarray  # object
    merged: int  # how many components were joined from pieces of several chunks

    def __len__(self) -> int:
        return len(self.class_id)

    def select(self, keep: np.ndarray) -> Components:
        psum = None if self.probability_sum is None else self.probability_sum[keep]
        return Components(self.class_id[keep], self.pixels[keep], psum, self.geometry[keep],
                          self.merged)


def _contacts(a_gid: np.ndarray, a_cls: np.ndarray, b_gid: np.ndarray, b_cls: np.ndarray,
              diagonal: bool) -> np.ndarray:
    """Pairs (gid_a, gid_b) of same-class pixels facing each other across a border.

    ``a`` and ``b`` are the two pixel lines on each side of the border, aligned; with ``diagonal``
    also the pixels one step along the border (8-connectivity).
    """
    pairs = []
    shifts = (0, 1, -1) if diagonal else (0,)
    n = len(a_gid)
    for s in shifts:
        a = slice(max(0, -s), n - max(0, s))
        b = slice(max(0, s), n - max(0, -s))
        ga, gb = a_gid[a], b_gid[b]
        touch = (ga > 0) & (gb > 0) & (a_cls[a] == b_cls[b])
        pairs.append(np.stack([ga[touch], gb[touch]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)


def border_contacts(grid: list[list[ChunkPieces]], connectivity: Connectivity) -> np.ndarray:
    """All piece-to-piece contacts across chunk borders, as an (n, 2) array of gids."""
    diagonal = connectivity == 8
    rows, cols = len(grid), len(grid[0])
    found = [np.empty((0, 2), np.int64)]
    for i in range(rows):
        for j in range(cols):
            here = grid[i][j]
            if j + 1 < cols:
                right = grid[i][j + 1]
                found.append(_contacts(here.edge_gid["right"], here.edge_class["right"],
                                       right.edge_gid["left"], right.edge_class["left"], diagonal))
            if i + 1 < rows:
                below = grid[i + 1][j]
                found.append(_contacts(here.edge_gid["bottom"], here.edge_class["bottom"],
                                       below.edge_gid["top"], below.edge_class["top"], diagonal))
            if diagonal and i + 1 < rows and j + 1 < cols:
                # The corner where four chunks meet: the two diagonals cross no chunk side.
                br = grid[i + 1][j + 1]
                found.append(_contacts(here.edge_gid["bottom"][-1:], here.edge_class["bottom"][-1:],
                                       br.edge_gid["top"][:1], br.edge_class["top"][:1], False))
                tr, bl = grid[i][j + 1], grid[i + 1][j]
                found.append(_contacts(tr.edge_gid["bottom"][:1], tr.edge_class["bottom"][:1],
                                       bl.edge_gid["top"][-1:], bl.edge_class["top"][-1:], False))
    return np.concatenate(found)


def merge_pieces(grid: list[list[ChunkPieces]], connectivity: Connectivity) -> Components:
    """Join the pieces of every chunk into whole components (see the module docstring)."""
    pieces = [p for row in grid for p in row]
    gid = np.concatenate([p.gid for p in pieces])
    class_id = np.concatenate([p.class_id for p in pieces])
    pixels = np.concatenate([p.pixels for p in pieces])
    geometry = np.concatenate([p.geometry for p in pieces])
    has_probs = pieces[0].probability_sum is not None
    psum = np.concatenate([p.probability_sum for p in pieces]) if has_probs else None  # type: ignore[misc]

    # Group id per piece: the contact graph's component for pieces on a border, else its own.
    group = np.arange(len(gid), dtype=np.int64)
    pairs = border_contacts(grid, connectivity)
    if len(pairs):
        nodes, inverse = np.unique(pairs, return_inverse=True)
        inverse = inverse.reshape(pairs.shape)
        graph = coo_matrix((np.ones(len(pairs)), (inverse[:, 0], inverse[:, 1])),
                           shape=(len(nodes), len(nodes)))
        _, comp = connected_components(graph, directed=False)
        # gid is sorted (chunks in order, labels ascending), so searchsorted finds each node.
        where = np.searchsorted(gid, nodes)
        group[where] = len(gid) + comp  # ids past every piece index, so they cannot collide
    _, first, inverse, sizes = np.unique(group, return_index=True, return_inverse=True,
                                         return_counts=True)
    # Output order: by the first piece of each component (chunk order, then label order).
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inverse = rank[inverse]
    sizes = sizes[order]
    n = len(order)

    out_geom = np.empty(n, dtype=object)
    single = sizes[inverse] == 1
    out_geom[inverse[single]] = geometry[single]
    multi = np.flatnonzero(~single)
    if len(multi):
        by_group = multi[np.argsort(inverse[multi], kind="stable")]
        groups, starts = np.unique(inverse[by_group], return_index=True)
        for g, members in zip(groups, np.split(by_group, starts[1:]), strict=True):
            out_geom[g] = shapely.union_all(geometry[members])
    out_class = np.empty(n, dtype=np.int64)
    out_class[inverse] = class_id
    out_pixels = np.bincount(inverse, weights=pixels, minlength=n).astype(np.int64)
    out_psum = None if psum is None else np.bincount(inverse, weights=psum, minlength=n)
    merged = int((sizes > 1).sum())
    logger.debug("%d pieces -> %d components (%d across chunk borders)", len(gid), n, merged)
    return Components(out_class, out_pixels, out_psum, out_geom, merged)
