"""Test-time augmentation: each tile's logits averaged over flips (and 90-degree rotations).

``flips`` runs every tile four times (as it is, flipped left-right, up-down, and both), ``d4``
eight times (the four rotations of the tile and of its mirror image: the symmetries of a
square, which the network input always is). Each pass's logits are mapped back by the exact
inverse transform (flips and quarter turns only move pixels), then averaged in float32 in one
fixed order, as a balanced tree of pairwise sums scaled by 1/4 or 1/8 (powers of two: exact).
The average of a tile therefore depends on that tile alone (not on its batch), and passes
that agree give their common value exactly: a per-pixel model (a 1x1 convolution) gives the
same logits with and without TTA, and a constant tile's constant logits stay that constant.
Blending (:mod:`tileseg.tiling.blend`) happens after, on the averaged logits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tileseg.choices import TTA_MODES, check_choice

# (quarter turns counter-clockwise, mirror left-right first), in the order passes are summed
# (tests/test_choices.py: the modes are those of TtaMode)
_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    # identity, left-right, up-down (a mirror and a half turn), both (a half turn)
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": ((0, False), (0, True), (1, False), (1, True),
           (2, False), (2, True), (3, False), (3, True)),
}
_H, _W = -2, -1


def passes(mode: str) -> int:
    """Forward passes a tile takes under ``mode``: the cost multiplier of TTA."""
    return len(_TRANSFORMS[mode])


def check_mode(mode: str) -> None:
    check_choice(mode, TTA_MODES, "tta")


def apply(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """The transform of a ``(..., height, width)`` tensor: mirror, then turn."""
    if mirror:
        x = x.flip(_W)
    return torch.rot90(x, turns, dims=(_H, _W)) if turns else x


def invert(y: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """The inverse of :func:`apply`: turn back, then mirror."""
    if turns:
        y = torch.rot90(y, -turns, dims=(_H, _W))
    return y.flip(_W) if mirror else y


def averaged(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             mode: str) -> torch.Tensor:
    """``forward``'s float32 logits of ``x`` averaged over ``mode``'s transforms."""
    transforms = _TRANSFORMS[mode]
    if len(transforms) == 1:
        return forward(x)
    if x.device.type == "cpu":
        return _averaged_on_host(forward, x, transforms)
    outs = [invert(forward(apply(x, t, m).contiguous()).float(), t, m) for t, m in transforms]
    while len(outs) > 1:  # a balanced tree: the same sum whatever the batch or the device
        outs = [outs[i] + outs[i + 1] for i in range(0, len(outs), 2)]
    return outs[0] * (1.0 / len(transforms))


def _averaged_on_host(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      transforms: tuple[tuple[int, bool], ...]) -> torch.Tensor:
    """:func:`averaged` in numpy, whose flips and turns are views: the logits are turned back
    as they are summed, not copied first (about 3x less time than torch's copies), with the
    same float32 sums in the same order, so the same bits."""
    source = x.numpy()
    outs = []
    for turns, mirror in transforms:
        moved = _np_apply(source, turns, mirror)
        inp = x if moved is source else torch.from_numpy(np.ascontiguousarray(moved))
        outs.append(_np_invert(forward(inp).float().numpy(), turns, mirror))
    while len(outs) > 1:
        outs = [np.add(outs[i], outs[i + 1]) for i in range(0, len(outs), 2)]
    return torch.from_numpy(np.multiply(outs[0], np.float32(1.0 / len(transforms))))


def _np_apply(a: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    if mirror:
        a = a[..., ::-1]
    return np.rot90(a, turns, axes=(-2, -1)) if turns else a


def _np_invert(a: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    if turns:
        a = np.rot90(a, -turns, axes=(-2, -1))
    return a[..., ::-1] if mirror else a
