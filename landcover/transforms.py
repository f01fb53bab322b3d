"""The transforms of a tile: the one definition that training, rare-class copies and test-time
augmentation use.

Bottom floor: imports nothing of ours. ``dihedral(x, k)`` is one of the 8 symmetries of the square on the
last two dims (rows, cols) of a numpy array or a torch tensor: flip left-right if k >= 4, then rotate
k % 4 quarter turns counter-clockwise (as np.rot90 and torch.rot90). Pure data movement: exact, so an
image and its mask stay aligned. ``augment`` is training's transform of a tile and its target for one
draw of the sampler (a k of ``dihedral`` today): the worker loader applies it to one tile, the resident
loader to a batch of tiles drawn alike, so a new augmentation is written there once. ``paste_boxes``
and ``jitter_bands`` are the transforms of a whole batch on the device (training's, after
normalisation): boxes of other tiles pasted into each tile, image and target alike; each tile's bands
scaled and shifted by amounts of its own.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

A = TypeVar("A", np.ndarray, torch.Tensor)

# create_new_images.py's copies, by the name in their file name: k of ``dihedral``
NAMED = {"rot90": 1, "rot180": 2, "rot270": 3, "flip_h": 4, "flip_v": 6}
# test-time augmentation: none, left-right, up-down, both (k = 0, 4, 6, 2), each its own inverse
TTA = (0, 4, 6, 2)


def dihedral(x: A, k: int) -> A:
    """Transform ``k`` (0..7) of the last two dims; a numpy result is a view (``np.ascontiguousarray``
    copies it: numpy rather than torch on the host, faster on uint16 tiles)."""
    if isinstance(x, torch.Tensor):
        if k >= 4:
            x = x.flip(-1)
        return torch.rot90(x, k % 4, (-2, -1)) if k % 4 else x
    if k >= 4:
        x = x[..., ::-1]
    return np.rot90(x, k % 4, axes=(-2, -1))


def augment(img: A, y: A, k: int) -> tuple[A, A]:
    """Training's transform ``k`` of images (..., C, H, W) and their targets (..., H, W), alike."""
    return dihedral(img, k), dihedral(y, k)


BOX_SIDE = (0.1, 0.35)  # paste_boxes: a box's height and width, each a uniform share of the tile's


def paste_boxes(x: torch.Tensor, y: torch.Tensor, boxes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Into each tile of a batch (x: B, C, H, W; y: B, H, W), ``boxes`` boxes of one other tile of the
    batch, at the same place, image and target alike (CutMix). The labelled pixels along a box's edges
    then sit in a neighbourhood that is not their own: with sparse labels (polygon interiors) a network
    otherwise learns a pixel's class from its surroundings and fails at every boundary it never saw.
    Draws from torch's global generator (train.py seeds it per epoch and process)."""
    b, _, h, w = x.shape
    if boxes <= 0 or b < 2:
        return x, y
    src = (torch.arange(b) + torch.randint(1, b, (b,))) % b  # another tile, never the tile itself
    size = torch.rand(2, b, boxes) * (BOX_SIDE[1] - BOX_SIDE[0]) + BOX_SIDE[0]
    size = (size * torch.tensor([h, w]).view(2, 1, 1)).round().long().clamp(min=1)
    start = (torch.rand(2, b, boxes) * (torch.tensor([h, w]).view(2, 1, 1) - size + 1)).long()
    start, stop, src = start.to(x.device), (start + size).to(x.device), src.to(x.device)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (rows >= start[0, ..., None, None]) & (rows < stop[0, ..., None, None])
    inside = inside & (cols >= start[1, ..., None, None]) & (cols < stop[1, ..., None, None])
    pasted = inside.any(dim=1)  # B, H, W
    return torch.where(pasted[:, None], x[src], x), torch.where(pasted, y[src], y)


def jitter_bands(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Each band of each tile (x: B, C, H, W, normalised) scaled by 1 + s * N(0, 1) and shifted by
    s * N(0, 1), drawn per tile and band, the same over the tile: the per-band brightness that haze,
    illumination and sensor calibration change from place to place and date to date, which a
    classifier of single pixels would otherwise learn as exact. Pixels with no data (0 in every band)
    stay 0. Draws from torch's global generator (train.py seeds it per epoch and process)."""
    if strength <= 0:
        return x
    b, c = x.shape[:2]
    gain, shift = (strength * torch.randn(2, b, c, 1, 1)).to(x.device, x.dtype).unbind()
    valid = (x != 0).any(dim=1, keepdim=True)
    return torch.where(valid, x * (1 + gain) + shift, x)
