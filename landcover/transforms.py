"""The transforms of a tile: the one definition that training, rare-class copies and test-time
augmentation use.

Bottom floor: imports nothing of ours. ``dihedral(x, k)`` is one of the 8 symmetries of the square on the
last two dims (rows, cols) of a numpy array or a torch tensor: flip left-right if k >= 4, then rotate
k % 4 quarter turns counter-clockwise (as np.rot90 and torch.rot90). Pure data movement: exact, so an
image and its mask stay aligned. ``augment`` is training's transform of a tile and its target for one
draw of the sampler (a k of ``dihedral`` today): the worker loader applies it to one tile, the resident
loader to a batch of tiles drawn alike, so a new augmentation is written there once.
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
