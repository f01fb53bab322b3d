"""GDAL's sieve filter (``rasterio.features.sieve``, ``gdal_sieve.py``) computed strip by strip, with the
same result on every pixel, for maps far larger than memory.

Middle floor: rests on colormap.py and common.py. What GDAL does (alg/gdalsievefilter.cpp): a patch
(polygon) is a connected set of valid pixels of one code (4- or 8-connected); nodata pixels (mask 0)
belong to no patch, never change and are never anyone's neighbour. Each patch's "biggest neighbour" is
found by one raster-order scan that, at every pixel, compares its patch with the patch above, above-left
and above-right (8-connected only) and left, in that order, updating both patches' biggest neighbour
when the other is strictly larger: so among the largest neighbours the one met first wins. A patch
smaller than the threshold follows biggest neighbours until it reaches a patch at least as large as the
threshold and takes its code; a chain that ends (no neighbour) or loops back leaves the patch as it is.

Here the same scan runs on strips of whole rows (``STRIP`` rows: the map's block rows):

1. ``Survey``: each strip is labelled (scipy, one class at a time); patch pieces touching across the
   strip's top edge are linked; each piece's pixel count is summed; and the neighbour pairs of the strip
   are kept, each pair once with the raster-order index at which GDAL's scan first meets it
   (``4 * (row * width + column) + direction``), only for pieces that could be small.
2. ``Survey.plan``: pieces are joined into patches (connected components of the links), sizes summed;
   each small patch's biggest neighbour is the largest neighbour, ties to the smallest first-met index:
   exactly the patch GDAL's strictly-larger updates end with; chains are followed by pointer doubling.
3. ``SievePlan.apply``: each strip is labelled again (the same labels) and its pixels take their patch's
   new code.

Memory: two strips (width x STRIP pixels, a few bytes each) and, per patch piece, a few integers (its
patch, size and code; pieces are patches cut by strip edges) plus the neighbour pairs of the pieces that
are small in their own strip: it grows with the number of patches, never with the map's area.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from colormap import NODATA

STRIP = 512  # rows labelled at once (one row of the map's blocks)

# the neighbours GDAL's scan compares a pixel with, in its order: (row offset, column offset, 8-only)
DIRECTIONS = ((-1, 0, False), (-1, -1, True), (-1, 1, True), (0, -1, False))


def structure(connectivity: int) -> np.ndarray:
    """scipy's structuring element for 4- or 8-connected patches."""
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def label_strip(codes: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) codes -> (h, w) int32 piece labels 1..n (0 on nodata) and the code of each label (index 0:
    nodata). The labels depend on the strip's pixels only, so a second pass finds the same ones."""
    labels = np.zeros(codes.shape, dtype=np.int32)
    lab = np.empty(codes.shape, dtype=np.int32)
    first = np.zeros(256, dtype=np.int32)  # per code: the labels of its pieces start after this
    values = [np.zeros(1, dtype=np.uint8)]
    n = 0
    element = structure(connectivity)
    for c in np.flatnonzero(np.bincount(codes.ravel(), minlength=256)):
        if c == NODATA:
            continue
        k = ndimage.label(codes == c, element, output=lab)
        labels += lab  # the classes' pieces never overlap
        first[c] = n
        values.append(np.full(k, c, dtype=np.uint8))
        n += k
    labels += first[codes]
    return labels, np.concatenate(values)


def shifted(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of the pixels of rows 1.. of ``a`` and of their neighbour at (dy, dx) (dy 0 or -1), where
    that neighbour exists: (this, other), both (h - 1, w - |dx|)."""
    h, w = a.shape
    rows_this = slice(1, h)
    rows_other = slice(1 + dy, h + dy)
    cols_this = slice(max(0, -dx), w - max(0, dx))
    cols_other = slice(max(0, dx), w - max(0, -dx))
    return a[rows_this, cols_this], a[rows_other, cols_other]


@dataclass
class SievePlan:
    """The new code of every patch piece (0: unchanged), found by ``Survey.plan``."""

    connectivity: int
    bases: list[int]  # the first piece id of each strip
    new_code: np.ndarray  # per piece id (index 0 unused)
    merged_patches: int
    unmergeable_patches: int

    def apply(self, strip: int, codes: np.ndarray) -> np.ndarray:
        """The sieved codes of strip number ``strip`` (the same pixels the survey saw)."""
        labels, _ = label_strip(codes, self.connectivity)
        ids = np.where(labels > 0, labels.astype(np.int64) + self.bases[strip], 0)
        new = self.new_code[ids]
        return np.where(new > 0, new, codes).astype(np.uint8, copy=False)


@dataclass
class Survey:
    """What the first pass learns about the patches, strip by strip (see the module's docstring)."""

    width: int
    threshold: int
    connectivity: int
    bases: list[int] = field(default_factory=list)
    sizes: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    links: list[np.ndarray] = field(default_factory=list)
    pairs: list[np.ndarray] = field(default_factory=list)
    n: int = 1  # piece ids start at 1 (0: nodata)
    row0: int = 0
    last: np.ndarray | None = None  # the previous strip's last row: codes and piece ids

    def add(self, codes: np.ndarray) -> None:
        """Survey the next strip of rows (h, width) uint8 codes, top to bottom."""
        labels, values = label_strip(codes, self.connectivity)
        ids = np.where(labels > 0, labels.astype(np.int64) + (self.n - 1), 0)
        size = np.bincount(labels.ravel(), minlength=len(values))[1:]
        self.bases.append(self.n - 1)
        self.sizes.append(size)
        self.values.append(values[1:])
        if self.last is None:
            above_codes = np.zeros((1, self.width), dtype=codes.dtype)
            above_ids = np.zeros((1, self.width), dtype=np.int64)
        else:
            above_codes, above_ids = self.last
        all_codes = np.concatenate([above_codes, codes])
        all_ids = np.concatenate([above_ids, ids])
        small = np.ones(self.n + len(size), dtype=bool)  # pieces of earlier strips: not known here
        small[self.n :] = size < self.threshold
        self._neighbours(all_codes, all_ids, small)
        self.n += len(size)
        self.row0 += len(codes)
        self.last = (codes[-1:].copy(), ids[-1:].copy())

    def _neighbours(self, codes: np.ndarray, ids: np.ndarray, small: np.ndarray) -> None:
        """Links across the strip's top edge and the strip's neighbour pairs, first-met index each."""
        for k, (dy, dx, eight_only) in enumerate(DIRECTIONS):
            if eight_only and self.connectivity == 4:
                continue
            if dy == 0:  # left: within the strip's own rows
                this, other = ids[1:, 1:], ids[1:, :-1]
                c_this, c_other = codes[1:, 1:], codes[1:, :-1]
            else:
                this, other = shifted(ids, dy, dx)
                c_this, c_other = shifted(codes, dy, dx)
            both = (this > 0) & (other > 0)
            if dy == -1:  # same code across the top edge: one patch
                edge = both[0] & (c_this[0] == c_other[0])
                self.links.append(np.stack([this[0][edge], other[0][edge]]))
            differ = both & (c_this != c_other)
            rows, cols = np.nonzero(differ)
            pick = small[this[rows, cols]] | small[other[rows, cols]]
            rows, cols = rows[pick], cols[pick]
            a, b = this[rows, cols], other[rows, cols]
            index = 4 * ((self.row0 + rows).astype(np.int64) * self.width + cols + max(0, -dx)) + k
            self._keep_pairs(np.concatenate([a, b]), np.concatenate([b, a]), np.tile(index, 2), small)

    def _keep_pairs(self, p: np.ndarray, q: np.ndarray, index: np.ndarray, small: np.ndarray) -> None:
        """Keep (p, q, index) with p possibly small, each ordered pair once at its smallest index."""
        keep = small[p]
        p, q, index = p[keep], q[keep], index[keep]
        if not len(p):
            return
        key = p.astype(np.int64) << 32 | q.astype(np.int64)  # piece ids stay below 2**31
        order = np.argsort(key, kind="stable")
        key = key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        first_met = np.minimum.reduceat(index[order], starts)
        self.pairs.append(np.stack([key[starts] >> 32, key[starts] & 0xFFFFFFFF, first_met]))

    def plan(self) -> SievePlan:
        """Join the pieces into patches and decide each small patch's new code (see the docstring)."""
        n = self.n
        links = np.concatenate([np.zeros((2, 0), dtype=np.int64), *self.links], axis=1)
        graph = coo_matrix((np.ones(links.shape[1], dtype=np.int8), (links[0], links[1])), shape=(n, n))
        _, patch = connected_components(graph, directed=False)
        piece_size = np.concatenate([[0], *self.sizes]).astype(np.int64)
        piece_value = np.concatenate([[NODATA], *self.values]).astype(np.uint8)
        size = np.bincount(patch, weights=piece_size, minlength=patch.max() + 1).astype(np.int64)
        value = np.zeros(len(size), dtype=np.uint8)
        value[patch] = piece_value
        target = biggest_neighbours(self.pairs, patch, size, self.threshold)
        final = follow_chains(target, size, self.threshold)
        small = size < self.threshold
        small[patch[0]] = False  # nodata's id
        merged = small & (final >= 0)
        new_patch_code = np.where(merged, value[np.maximum(final, 0)], 0).astype(np.uint8)
        new_code = new_patch_code[patch]
        new_code[0] = 0
        return SievePlan(
            self.connectivity, self.bases, new_code, int(merged.sum()), int((small & ~merged).sum())
        )


def biggest_neighbours(pairs: list[np.ndarray], patch: np.ndarray, size: np.ndarray, threshold: int):
    """Each small patch's biggest neighbour (-1: none): the largest, the first met among equals."""
    all_pairs = np.concatenate([np.zeros((3, 0), dtype=np.int64), *pairs], axis=1)
    p, q, index = patch[all_pairs[0]], patch[all_pairs[1]], all_pairs[2]
    keep = size[p] < threshold
    p, q, index = p[keep], q[keep], index[keep]
    target = np.full(len(size), -1, dtype=np.int64)
    if not len(p):
        return target
    order = np.argsort(p, kind="stable")
    p, q, index = p[order], q[order], index[order]
    new = np.r_[True, p[1:] != p[:-1]]
    starts, group = np.flatnonzero(new), np.cumsum(new) - 1
    largest = np.maximum.reduceat(size[q], starts)
    best = size[q] == largest[group]  # the largest neighbours of each patch; then the first met
    index = np.where(best, index, np.iinfo(np.int64).max)
    first_met = np.minimum.reduceat(index, starts)
    chosen = best & (index == first_met[group])
    target[p[chosen]] = q[chosen]
    return target


def follow_chains(target: np.ndarray, size: np.ndarray, threshold: int) -> np.ndarray:
    """The patch each patch's chain of biggest neighbours reaches first among those at least
    ``threshold`` pixels (a large patch reaches itself); -1 where the chain ends or loops first."""
    n = len(size)
    big = size >= threshold
    step = np.where(big, np.arange(n), target)  # large patches stay; -1: a dead end
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2))))) + 1):  # pointer doubling
        step = np.where(step >= 0, step[np.maximum(step, 0)], -1)
    return np.where((step >= 0) & big[np.maximum(step, 0)], step, -1)


def strips(height: int, rows: int = STRIP) -> Iterator[tuple[int, int]]:
    """(first row, row count) of each strip of the map, top to bottom."""
    for r in range(0, height, rows):
        yield r, min(rows, height - r)


def sieve_array(codes: np.ndarray, threshold: int, connectivity: int = 4, rows: int = STRIP) -> np.ndarray:
    """The strip-wise sieve of a whole array (for tests and small maps): equal to
    ``rasterio.features.sieve(codes, threshold, mask=codes != 0, connectivity=connectivity)``."""
    survey = Survey(codes.shape[1], threshold, connectivity)
    for r, h in strips(codes.shape[0], rows):
        survey.add(codes[r : r + h])
    plan = survey.plan()
    out = [plan.apply(i, codes[r : r + h]) for i, (r, h) in enumerate(strips(codes.shape[0], rows))]
    return np.concatenate(out) if out else codes.copy()
