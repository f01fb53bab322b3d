"""landcover/sieve.py: the strip-wise sieve equals GDAL's whole-raster sieve (rasterio.features.sieve with
the nodata mask) on every pixel, on random and adversarial maps: ties between equal neighbours, nested
rings (chains of small patches), patches touching nodata or only nodata, 4 and 8 connectivity, strips
of one row and patches crossing many strips; nodata never grows or shrinks."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features

from landcover.sieve import follow_chains, sieve_array


def gdal(codes: np.ndarray, threshold: int, connectivity: int) -> np.ndarray:
    return rasterio.features.sieve(codes, threshold, mask=codes != 0, connectivity=connectivity)


def random_map(rng: np.random.Generator, kind: int, h: int, w: int) -> np.ndarray:
    """Maps that stress the sieve's choices (see the module docstring)."""
    if kind == 0:  # salt and pepper of 3 codes and nodata: many ties of one-pixel patches
        codes = rng.integers(0, 4, (h, w))
    elif kind == 1:  # 2 x 2 blocks: equal-sized neighbours everywhere
        codes = rng.integers(0, 4, (h // 2 + 1, w // 2 + 1)).repeat(2, 0).repeat(2, 1)[:h, :w]
    elif kind == 2:  # nested square rings: each ring's biggest neighbour is the next ring (chains)
        yy, xx = np.mgrid[:h, :w]
        codes = (np.maximum(abs(yy - h // 2), abs(xx - w // 2)) // rng.integers(1, 4)) % 3 + 1
        codes[rng.random((h, w)) < 0.05] = 0
    else:  # two codes with nodata holes: patches touching nodata
        codes = (rng.random((h, w)) < 0.5) + 1
        codes[rng.random((h, w)) < 0.15] = 0
    return codes.astype(np.uint8)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_equals_gdal_sieve_on_random_maps(kind, connectivity):
    rng = np.random.default_rng(100 * kind + connectivity)
    for _ in range(150):
        h, w = rng.integers(2, 50, 2)
        codes = random_map(rng, kind, h, w)
        threshold = min(int(rng.integers(2, 30)), h * w - 1)
        rows = int(rng.integers(1, 10))
        got = sieve_array(codes, threshold, connectivity, rows=rows)
        assert np.array_equal(got, gdal(codes, threshold, connectivity)), (h, w, threshold, rows)
        assert np.array_equal(got == 0, codes == 0), "nodata never grows or shrinks"


@pytest.mark.parametrize("connectivity", [4, 8])
def test_patches_crossing_many_strips_are_one_patch(connectivity):
    """A snake of 60 pixels crosses 30 strips of 2 rows: in no strip is it large, as a whole it is kept;
    a 3-pixel speck beside it crosses a strip edge and is merged."""
    codes = np.ones((60, 20), dtype=np.uint8)
    codes[:, 5] = 2  # the snake, 60 pixels
    codes[29:32, 12] = 3  # the speck, across the edge of rows 28-29 / 30-31
    got = sieve_array(codes, 50, connectivity, rows=2)
    assert (got[:, 5] == 2).all() and (got[29:32, 12] == 1).all()
    assert np.array_equal(got, gdal(codes, 50, connectivity))


def test_patch_touching_only_nodata_stays_and_ties_go_to_the_first_met():
    codes = np.zeros((7, 9), dtype=np.uint8)
    codes[1, 1] = 5  # alone in nodata: no neighbour, kept
    codes[3:6, 2:8] = 1
    codes[3:6, 5:8] = 2  # two 9-pixel neighbours of the speck below
    codes[4, 4:6] = 3  # meets 1 at (4, 3) first (left), 2 at (4, 6)
    for rows in (1, 2, 7):
        got = sieve_array(codes, 5, 4, rows=rows)
        assert got[1, 1] == 5
        assert (got[4, 4:6] == 1).all(), "class 1 is met first (above the speck's first pixel)"
        assert np.array_equal(got, gdal(codes, 5, 4))


def test_chains_end_at_the_first_large_patch_or_not_at_all():
    size = np.array([1, 1, 10, 1, 1])
    target = np.array([1, 2, -1, 4, 3])  # 0 -> 1 -> 2 (large); 3 <-> 4 loop
    assert follow_chains(target, size, 5).tolist() == [2, 2, 2, -1, -1]
