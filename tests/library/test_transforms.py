"""landcover/transforms.py: the one definition of a tile's transforms, the same on numpy and torch, its
named copies and test-time flips, and training's augment moving image and target alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landcover.transforms import NAMED, TTA, augment, dihedral


def test_the_eight_transforms_are_distinct_and_the_same_on_numpy_and_torch():
    a = np.arange(2 * 5 * 5, dtype=np.uint16).reshape(2, 5, 5)
    seen = set()
    for k in range(8):
        n = np.ascontiguousarray(dihedral(a, k))
        assert np.array_equal(dihedral(torch.from_numpy(a), k).numpy(), n), k
        seen.add(n.tobytes())
    assert len(seen) == 8, "the dihedral group of the square has 8 elements"


@pytest.mark.parametrize(("op", "want"), [
    ("rot90", lambda a: np.rot90(a, 1, axes=(-2, -1))),  # counter-clockwise, as np.rot90 and torch.rot90
    ("rot180", lambda a: a[..., ::-1, ::-1]),
    ("rot270", lambda a: np.rot90(a, -1, axes=(-2, -1))),
    ("flip_h", lambda a: a[..., :, ::-1]),  # mirrored left-right
    ("flip_v", lambda a: a[..., ::-1, :]),  # upside down
])  # fmt: skip
def test_named_copies_are_what_their_names_say(op, want):
    a = np.arange(3 * 4 * 4).reshape(3, 4, 4)
    assert np.array_equal(dihedral(a, NAMED[op]), want(a))


def test_test_time_flips_are_none_lr_ud_both_and_undo_themselves():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)  # not square: flips only
    dims = [(), (-1,), (-2,), (-2, -1)]
    for k, d in zip(TTA, dims, strict=True):
        assert torch.equal(dihedral(x, k), x.flip(d) if d else x), k
        assert torch.equal(dihedral(dihedral(x, k), k), x), k


def test_augment_moves_a_batch_and_its_targets_alike():
    img = torch.randint(0, 60000, (3, 2, 6, 6), dtype=torch.int32)
    y = img[:, 0].to(torch.uint8)  # a target that is a function of the image's first band
    for k in range(8):
        a, b = augment(img, y, k)
        assert torch.equal(a[:, 0].to(torch.uint8), b), k
        assert a.shape == img.shape and b.shape == y.shape
