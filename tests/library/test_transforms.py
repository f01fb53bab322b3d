"""landcover/transforms.py: the one definition of a tile's transforms, the same on numpy and torch, its
named copies and test-time flips, training's augment moving image and target alike, and paste_boxes
(CutMix) pasting boxes of one other tile of the batch into each, and jitter_bands changing each tile's
band brightness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landcover.transforms import BOX_SIDE, NAMED, TTA, augment, dihedral, jitter_bands, paste_boxes


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


def test_paste_boxes_pastes_boxes_of_one_other_tile_into_each_image_and_target_alike():
    """Tile i holds the value i everywhere: after paste_boxes each tile holds its own value and one
    other tile's, in image and target at the same pixels; the pasted pixels lie in at most ``boxes``
    boxes whose sides are within BOX_SIDE; the same seed gives the same batch; 0 boxes or a batch of one
    tile is left as it was."""
    b, h, w, boxes = 6, 40, 50, 3
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 4, h, w).clone()
    y = torch.arange(b).view(b, 1, 1).expand(b, h, w).clone()
    torch.manual_seed(1)
    mx, my = paste_boxes(x, y, boxes)
    assert torch.equal(mx, my[:, None].float().expand_as(mx))  # every band and the target alike
    shares = []
    for i in range(b):
        values = set(my[i].unique().tolist())
        assert i in values and len(values) == 2, values  # its own and exactly one other tile's
        pasted = (my[i] != i).numpy()
        rows, cols = np.nonzero(pasted.any(axis=1))[0], np.nonzero(pasted.any(axis=0))[0]
        assert cols.size and rows.size
        assert pasted.sum() <= boxes * (BOX_SIDE[1] * h + 1) * (BOX_SIDE[1] * w + 1)
        assert pasted.sum() >= round(BOX_SIDE[0] * h) * round(BOX_SIDE[0] * w)  # at least one box
        shares.append(pasted.mean())
    assert 0.02 < np.mean(shares) < 0.5
    torch.manual_seed(1)
    assert torch.equal(paste_boxes(x, y, boxes)[1], my)  # seeded: the same boxes
    x1, y1 = x[:1], y[:1]
    assert paste_boxes(x, y, 0)[1] is y and paste_boxes(x1, y1, boxes)[1] is y1


def test_jitter_bands_scales_and_shifts_each_band_of_each_tile_alike_and_keeps_nodata():
    """Each (tile, band) is mapped by one affine map over the whole tile (the pixels' spectral shape
    within a band is kept, so a field stays a field), with gains and shifts spread by ``strength``
    and differing between tiles and bands; pixels without data (0 in every band) stay 0, a pixel with
    data in some bands is jittered; the dtype is kept; the same seed gives the same batch; strength 0
    leaves the batch as it was."""
    b, c, h, w, strength = 64, 4, 8, 9, 0.1
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w)
    x[:, :, 0, 0] = 0  # no data in every band
    x[:, 1:, 0, 1] = 0  # data in band 0 only: a valid pixel, jittered like the rest
    torch.manual_seed(1)
    out = jitter_bands(x, strength)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[:, :, 0, 0], torch.zeros(b, c))
    assert (out[:, 1:, 0, 1] != 0).all()
    assert jitter_bands(x.bfloat16(), strength).dtype == torch.bfloat16  # as under autocast
    src, dst = x.flatten(2)[..., 1:], out.flatten(2)[..., 1:]  # (b, c, pixels), valid ones
    gain = ((dst - dst.mean(-1, keepdim=True)) * (src - src.mean(-1, keepdim=True))).sum(-1)
    gain = gain / ((src - src.mean(-1, keepdim=True)) ** 2).sum(-1)
    shift = dst.mean(-1) - gain * src.mean(-1)
    assert torch.allclose(dst, gain[..., None] * src + shift[..., None], atol=1e-5)  # affine per band
    for name, spread in (("gain", (gain - 1).std()), ("shift", shift.std())):
        assert 0.7 * strength < spread < 1.3 * strength, (name, spread)
    assert (gain - 1).abs().min() > 0 and len(set(gain.flatten().tolist())) == b * c
    torch.manual_seed(1)
    assert torch.equal(jitter_bands(x, strength), out)  # seeded: the same draws
    assert jitter_bands(x, 0) is x
