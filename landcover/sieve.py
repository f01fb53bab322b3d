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

Here the same scan runs on strips of whole rows (``STRIP`` rows: the map's block rows), in three passes:

1. ``Survey.add``: each strip is labelled (scikit-image, every class at once); pieces touching across
   the strip's top edge are linked and each piece's pixel count summed. ``Survey.join`` joins the pieces
   into patches (connected components of the links) and sums their sizes.
2. ``Survey.add_neighbours``: each strip is labelled again (the same labels); every pair of different
   patches side by side, with the raster-order index at which GDAL's scan meets it (``4 * (row * width
   + column) + direction``), updates the small patch's biggest neighbour: the largest, the first met
   among equals (an earlier strip's is replaced only by a strictly larger one: it was met first),
   exactly the patch GDAL's strictly-larger updates end with. ``Survey.plan`` follows the chains by
   pointer doubling.
3. ``SievePlan.apply``: each strip is labelled a third time and its pixels take their patch's new code.

Memory: two strips (width x STRIP pixels, a few bytes each) and a few integers per patch piece (its
patch; per patch its size, code and biggest neighbour): it grows with the number of patches, as
GDAL's own does, never with the map's area.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage import measure

from colormap import NODATA

STRIP = 512  # rows labelled at once (one row of the map's blocks)

# the neighbours GDAL's scan compares a pixel with, in its order: (row offset, column offset, 8-only)
DIRECTIONS = ((-1, 0, False), (-1, -1, True), (-1, 1, True), (0, -1, False))


def structure(connectivity: int) -> np.ndarray:
    """scipy's structuring element for 4- or 8-connected patches."""
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def label_strip(
    codes: np.ndarray, connectivity: int, values: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(h, w) codes -> (h, w) int32 piece labels 1..n (0 on nodata) and (unless ``values`` is False) the
    code of each label (index 0: nodata), every class in one labelling pass. The labels depend on the
    strip's pixels only, so a later pass finds the same ones."""
    labels, n = measure.label(
        codes, background=NODATA, connectivity=1 if connectivity == 4 else 2, return_num=True
    )
    labels = labels.astype(np.int32, copy=False)
    if not values:
        return labels, None
    code = np.zeros(n + 1, dtype=np.uint8)
    code[labels.ravel()] = codes.ravel()
    return labels, code


def shifted(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of the pixels of rows 1.. of ``a`` and of their neighbour at (dy, dx) (dy 0 or -1), where
    that neighbour exists: (this, other), both (h - 1, w - |dx|)."""
    h, w = a.shape
    rows_this = slice(1, h)
    rows_other = slice(1 + dy, h + dy)
    cols_this = slice(max(0, -dx), w - max(0, dx))
    cols_other = slice(max(0, dx), w - max(0, -dx))
    return a[rows_this, cols_this], a[rows_other, cols_other]


def piece_ids(labels: np.ndarray, base: int) -> np.ndarray:
    """A strip's piece labels (1..) numbered on from ``base``, across the whole map (0 stays nodata)."""
    return np.where(labels > 0, labels.astype(np.int64) + base, 0)


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
        labels, _ = label_strip(codes, self.connectivity, values=False)
        new = self.new_code[piece_ids(labels, self.bases[strip])]
        return np.where(new > 0, new, codes).astype(np.uint8, copy=False)


@dataclass
class Survey:
    """What the passes over the map learn about its patches (see the module's docstring): ``add`` each
    strip (pieces, sizes, links), ``join``, ``add_neighbours`` each strip again, then ``plan``."""

    width: int
    threshold: int
    connectivity: int
    bases: list[int] = field(default_factory=list)
    sizes: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    links: list[np.ndarray] = field(default_factory=list)
    n: int = 1  # piece ids start at 1 (0: nodata)
    last: tuple[np.ndarray, np.ndarray] | None = None  # the previous strip's last row: codes and piece ids
    patch: np.ndarray | None = None  # per piece, its patch (after join)
    size: np.ndarray | None = None  # per patch, its pixels
    value: np.ndarray | None = None  # per patch, its code
    best: np.ndarray | None = None  # per patch, its biggest neighbour so far (-1: none)
    row0: int = 0

    def add(self, codes: np.ndarray) -> None:
        """First pass: the next strip of rows (h, width) uint8 codes, top to bottom."""
        labels, values = label_strip(codes, self.connectivity)
        self.bases.append(self.n - 1)
        ids = piece_ids(labels, self.n - 1)
        self.sizes.append(np.bincount(labels.ravel(), minlength=len(values))[1:])
        self.values.append(values[1:])
        if self.last is not None:  # same code across the top edge: one patch
            both_codes, both_ids = self._above(codes, ids)
            for dy, dx, eight_only in DIRECTIONS[:3]:
                if eight_only and self.connectivity == 4:
                    continue
                this, other = shifted(both_ids, dy, dx)
                c_this, c_other = shifted(both_codes, dy, dx)
                edge = (this > 0) & (other > 0) & (c_this == c_other)
                self.links.append(np.stack([this[edge], other[edge]]))
        self.n += len(values) - 1
        self.last = (codes[-1:].copy(), ids[-1:].copy())

    def _ids(self, codes: np.ndarray, strip: int) -> np.ndarray:
        """The piece ids of strip ``strip`` (0 on nodata), as the first pass numbered them."""
        labels, _ = label_strip(codes, self.connectivity, values=False)
        return piece_ids(labels, self.bases[strip])

    def _above(self, codes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        above_codes, above_ids = self.last
        return np.concatenate([above_codes, codes[:1]]), np.concatenate([above_ids, ids[:1]])

    def join(self) -> None:
        """Between the passes: the pieces joined into patches, each patch's size and code."""
        n = self.n
        links = np.concatenate([np.zeros((2, 0), dtype=np.int64), *self.links], axis=1)
        graph = coo_matrix((np.ones(links.shape[1], dtype=np.int8), (links[0], links[1])), shape=(n, n))
        _, self.patch = connected_components(graph, directed=False)
        piece_size = np.concatenate([[0], *self.sizes]).astype(np.int64)
        self.size = np.bincount(self.patch, weights=piece_size, minlength=self.patch.max() + 1).astype(
            np.int64
        )
        self.value = np.zeros(len(self.size), dtype=np.uint8)
        self.value[self.patch] = np.concatenate([[NODATA], *self.values]).astype(np.uint8)
        self.best = np.full(len(self.size), -1, dtype=np.int64)
        self.sizes, self.values, self.links, self.last = [], [], [], None

    def add_neighbours(self, strip: int, codes: np.ndarray) -> None:
        """Second pass, strip ``strip`` again: each small patch's biggest neighbour so far, the largest
        patch it touches, the first met in GDAL's scan among equals (later strips only meet later)."""
        ids = self._ids(codes, strip)
        all_ids = self.patch[np.concatenate([self.last[1], ids]) if self.last else ids]
        all_codes = np.concatenate([self.last[0], codes]) if self.last else codes
        top = 1 if self.last else 0  # rows of all_* above the strip
        p, q, index = [], [], []
        for k, (dy, dx, eight_only) in enumerate(DIRECTIONS):
            if eight_only and self.connectivity == 4:
                continue
            if dy == 0:  # left: within the strip's own rows
                this, other = all_ids[top:, 1:], all_ids[top:, :-1]
                c_this, c_other = all_codes[top:, 1:], all_codes[top:, :-1]
                row_of = top
            else:
                this, other = shifted(all_ids, dy, dx)
                c_this, c_other = shifted(all_codes, dy, dx)
                row_of = 1
            rows, cols = np.nonzero((c_this != c_other) & (c_this > 0) & (c_other > 0))
            a, b = this[rows, cols], other[rows, cols]
            at = (
                4 * ((self.row0 + rows + row_of - top).astype(np.int64) * self.width + cols + max(0, -dx)) + k
            )
            p += [a, b]
            q += [b, a]
            index += [at, at]
        self._keep_best(np.concatenate(p), np.concatenate(q), np.concatenate(index))
        self.row0 += len(codes)
        self.last = (codes[-1:].copy(), ids[-1:].copy())

    def _keep_best(self, p: np.ndarray, q: np.ndarray, index: np.ndarray) -> None:
        """For each small patch p met here: its largest neighbour q, the first met among equals; it
        replaces the one kept from earlier strips only when strictly larger (those were met first)."""
        keep = self.size[p] < self.threshold
        p, q, index = p[keep], q[keep], index[keep]
        if not len(p):
            return
        order = np.argsort(p, kind="stable")
        p, q, index = p[order], q[order], index[order]
        q_size = self.size[q]
        new = np.r_[True, p[1:] != p[:-1]]
        starts, group = np.flatnonzero(new), np.cumsum(new) - 1
        largest = np.maximum.reduceat(q_size, starts)
        index = np.where(q_size == largest[group], index, np.iinfo(np.int64).max)
        chosen = index == np.minimum.reduceat(index, starts)[group]
        p, q = p[chosen], q[chosen]
        old = self.best[p]
        better = (old < 0) | (self.size[q] > self.size[np.maximum(old, 0)])
        self.best[p[better]] = q[better]

    def plan(self) -> SievePlan:
        """Each small patch's new code: the code of the first patch of the MMU's size its chain of
        biggest neighbours reaches (see the docstring)."""
        patch, size = self.patch, self.size
        final = follow_chains(self.best, size, self.threshold)
        small = size < self.threshold
        small[patch[0]] = False  # nodata's id
        merged = small & (final >= 0)
        new_patch_code = np.where(merged, self.value[np.maximum(final, 0)], 0).astype(np.uint8)
        new_code = new_patch_code[patch]
        new_code[0] = 0
        return SievePlan(
            self.connectivity, self.bases, new_code, int(merged.sum()), int((small & ~merged).sum())
        )


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
    parts = list(strips(codes.shape[0], rows))
    for r, h in parts:
        survey.add(codes[r : r + h])
    survey.join()
    for i, (r, h) in enumerate(parts):
        survey.add_neighbours(i, codes[r : r + h])
    plan = survey.plan()
    out = [plan.apply(i, codes[r : r + h]) for i, (r, h) in enumerate(parts)]
    return np.concatenate(out) if out else codes.copy()
