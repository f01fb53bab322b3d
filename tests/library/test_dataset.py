"""dataset.py: the Dataset's targets (nodata and unknown codes ignored) and dihedral transforms that
keep image and mask aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_pair

from landcover.common import InputError
from landcover.dataset import EpochSampler, TileDataset, rare_class_weights
from landcover.distributed import Proc
from landcover.layout import tile_pairs
from landcover.transforms import dihedral


def test_dataset_targets_ignore_nodata_and_unknown_codes(tmp_path):
    split = tmp_path / "train"
    img = np.full((2, 4, 4), 500, np.uint16)
    img[:, 0, 0] = 0  # image nodata
    mask = np.full((4, 4), 3, np.uint8)
    mask[1, 1], mask[2, 2] = 0, 41  # mask nodata, an unknown code
    write_pair(split, "a.tif", img, mask)
    ds = TileDataset(tile_pairs(split), 2)
    x, y = ds[0]  # as stored: uint16 bands (half the bytes of float32 to move), uint8 targets
    assert x.dtype == torch.uint16 and x.shape == (2, 4, 4) and y.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(img))
    assert y[0, 0] == 0 and y[1, 1] == 0 and y[2, 2] == 0 and (y == 3).sum() == 13


def test_dataset_refuses_a_tile_with_other_bands(tmp_path):
    split = tmp_path / "train"
    write_pair(split, "a.tif", np.ones((3, 4, 4), np.uint16), np.ones((4, 4), np.uint8))
    with pytest.raises(InputError, match="3 bands, expected 2"):
        TileDataset(tile_pairs(split), 2)[0]


def aligned(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Band 0 of the image holds 100 x the class code: recover it and compare with the target."""
    return torch.equal(x[0].long() // 100, y.long())


def test_dihedral_transforms_keep_image_and_mask_aligned(tmp_path):
    split = tmp_path / "train"
    rng = np.random.default_rng(3)
    mask = rng.integers(1, 13, (6, 5)).astype(np.uint8)  # not square: rotations change the shape
    img = np.stack([mask.astype(np.uint16) * 100, rng.integers(1, 9, (6, 5)).astype(np.uint16)])
    write_pair(split, "a.tif", img, mask)
    ds = TileDataset(tile_pairs(split), 2, augment=True)
    seen = set()
    for k in range(8):
        x, y = ds[(0, k)]  # the transform chosen by the caller (train.py's sampler)
        assert x.is_contiguous() and y.is_contiguous()
        assert aligned(x, y), k
        assert np.array_equal(y.numpy(), dihedral(mask, k))
        seen.add(y.numpy().tobytes())
    assert len(seen) == 8  # eight different transforms
    torch.manual_seed(0)
    for _ in range(10):  # random transforms (augment=True, plain index)
        x, y = ds[0]
        assert aligned(x, y)
    x, y = TileDataset(tile_pairs(split), 2)[0]  # no augmentation: as stored
    assert torch.equal(y, torch.from_numpy(mask)) and torch.equal(x, torch.from_numpy(img))


def test_weighted_sampler_follows_its_weights_and_its_seed():
    """--sampler rare: draws in proportion to the weights, the same for the same (seed, epoch), and
    the ranks' shards partition the padded epoch exactly as the uniform sampler's do."""
    weights = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    n = len(weights)
    counts = np.zeros(n)
    for epoch in range(2000):
        s = EpochSampler(n, seed=4, proc=Proc(), weights=weights)
        s.set_epoch(epoch)
        for i, _ in s:
            counts[i] += 1
    assert counts[4] == 0
    assert np.allclose(counts / counts.sum(), weights, atol=0.02)
    a, b = (EpochSampler(n, seed=4, proc=Proc(), weights=weights) for _ in range(2))
    a.set_epoch(7)
    b.set_epoch(7)
    assert list(a) == list(b)
    b.set_epoch(8)
    assert list(a) != list(b)
    whole = list(a)
    shards = []
    for rank in range(2):
        s = EpochSampler(n, seed=4, proc=Proc(rank, 2), weights=weights)
        s.set_epoch(7)
        shards.append(list(s))
    padded = whole + whole[: 6 - n]  # padded to a multiple of the processes, as DistributedSampler does
    assert shards[0] == padded[0::2] and shards[1] == padded[1::2]


def test_rare_class_weights_give_every_class_an_equal_share():
    """Each class gets share / K of the draws, spread over its tiles by its pixels; the rest uniform."""
    tiles = np.zeros((4, 13), dtype=np.int64)
    tiles[:3, 1] = 1000  # a common class on three tiles
    tiles[3, 11] = 10  # a rare one on the fourth
    tiles[:, 0] = 50  # nodata never counts
    w = rare_class_weights(tiles.tolist(), share=1.0)
    assert np.isclose(w.sum(), 1) and np.isclose(w[3], 0.5) and np.allclose(w[:3], 0.5 / 3)
    assert np.allclose(rare_class_weights(tiles.tolist(), share=0.0), 0.25)
