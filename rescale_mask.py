"""Rescale the 1 m land-cover mask onto a scene's 10 m grid (remap first, then resample).

Reads ``--mask`` (one-band integer GeoTIFF, any extent and CRS, nodata 0) and the grid of ``--like``
(a scene: only its CRS, transform, width and height are used). Writes ``--out``: a uint8 GeoTIFF on
exactly that grid (tiled 512, DEFLATE, nodata 0, the class colour table; the method and weights in its
tags), and prints the weights and each class's share before and after. It exists because the tiles,
the model and the map live on the scene's 10 m pixels; the README's "1. rescale_mask.py" section says
how the methods (near, mode, weighted) vote and how the mask streams in flat memory.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject, transform, transform_bounds
from rasterio.windows import Window

from colormap import CLASSES, CODES, DEFAULT_REMAP, NODATA, gdal_colour_table, remap_lut
from landcover.common import (
    ArgumentParser,
    atomic_path,
    check_range,
    fail,
    first_line,
    open_raster,
    ordered_map,
    progress,
    run_main,
    whole_raster,
)
from landcover.geo import MAP_BLOCK, Grid, map_profile
from landcover.layout import MASK_10M, RAW

METHODS = ("near", "mode", "weighted")
BLOCK_SOURCE_PIXELS = 64_000_000  # mask pixels read per block (uint8: 64 MB)
MARGIN = 3  # extra mask pixels read around each block, so GDAL's kernels see all they need
GDAL_CACHE_MB = 128  # GDAL's block cache: a fixed amount, whatever the mask size
WARP_MEM_MB = 16  # GDAL's warp chunks: small enough to be recycled by malloc (no fresh pages per block)
LATTICE = 64  # step (mask pixels) of the coordinate lattice used when the grids are not simple


@dataclass(frozen=True)
class Block:
    """One block of the output and the window of the mask it needs.

    ``core`` is the part of ``src`` whose pixels are counted in the histogram (their centres lie in
    this block): a (rows, cols) slice pair on simple grids, None where membership is computed from
    coordinates. ``src`` is None where the block is outside the mask.
    """

    dst: Window
    src: Window | None
    core: tuple[slice, slice] | None = None


@dataclass
class Counts:
    """Pixel counts by code: of the mask (by its own codes) and of the output."""

    source: Counter = field(default_factory=Counter)
    output: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))


# ---------------------------------------------------------------------------------------------------
# The plan: which output blocks, which mask windows


def apply(t: Affine, x, y) -> tuple:
    """``t`` applied to coordinates (numbers or arrays): pixel (col, row) -> (x, y), or back with ``~t``."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def is_north_up(t: Affine) -> bool:
    return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0


def simple_grids(mask: Grid, grid: Grid) -> bool:
    """Same CRS, north up, no rotation: every output pixel's footprint on the mask is a rectangle."""
    return mask.crs == grid.crs and is_north_up(mask.transform) and is_north_up(grid.transform)


def vote_by_centres(mask: Grid, grid: Grid) -> bool:
    """Whether ``weighted`` counts votes pixel by pixel: on simple grids whose output pixels are at
    least as large as the mask's (so that each holds at least one mask pixel centre)."""
    g, m = grid.transform, mask.transform
    return simple_grids(mask, grid) and g.a >= m.a and -g.e >= -m.e


def block_shape(pixel_ratio: float, grid: Grid, budget: int) -> tuple[int, int]:
    """Output block (rows, cols): whole tiles where possible, about ``budget`` mask pixels each."""
    rows, cols = MAP_BLOCK, MAP_BLOCK
    while rows > 16 and rows * cols * pixel_ratio > budget:
        rows //= 2
        cols //= 2
    if rows == MAP_BLOCK:
        cols = max(MAP_BLOCK, int(budget / (MAP_BLOCK * pixel_ratio)) // MAP_BLOCK * MAP_BLOCK)
    return min(rows, grid.height), min(cols, grid.width)


def source_rect(mask: Grid, grid: Grid, win: Window) -> tuple[float, float, float, float] | None:
    """(row0, row1, col0, col1) in mask pixel coordinates covering an output window, None if unknown."""
    t = grid.transform
    corners = [
        apply(t, win.col_off + dc, win.row_off + dr) for dr in (0, win.height) for dc in (0, win.width)
    ]
    if mask.crs != grid.crs:
        xs, ys = zip(*corners, strict=True)
        try:
            left, bottom, right, top = transform_bounds(
                grid.crs, mask.crs, min(xs), min(ys), max(xs), max(ys), densify_pts=21
            )
        except Exception:  # outside the projection's domain: no footprint
            return None
        if not all(map(math.isfinite, (left, bottom, right, top))):
            return None
        corners = [(left, bottom), (left, top), (right, bottom), (right, top)]
    inv = ~mask.transform
    cols, rows = zip(*(apply(inv, *c) for c in corners), strict=True)
    return min(rows), max(rows), min(cols), max(cols)


def plan_blocks(mask: Grid, grid: Grid, method: str) -> list[Block]:
    """Cut the output into blocks and find the window of the mask each one needs.

    On simple grids each block also gets its ``core``: the mask pixels whose centres fall in it, so
    that the blocks' cores partition the mask over the scene and the histogram counts each pixel once.
    """
    simple = simple_grids(mask, grid)
    exact = method == "weighted" and vote_by_centres(mask, grid)  # read exactly the pixels that vote
    ratio = abs(grid.transform.determinant / mask.transform.determinant)
    if not simple:  # the footprint's bounding box is larger than the footprint
        probe = source_rect(mask, grid, Window(0, 0, grid.width, grid.height))
        if probe is not None:
            ratio = max(ratio, (probe[1] - probe[0]) * (probe[3] - probe[2]) / (grid.width * grid.height))
    budget = BLOCK_SOURCE_PIXELS
    if method == "weighted" and not exact:
        budget //= len(CODES) + 2  # one indicator band per class plus the float result
    bh, bw = block_shape(ratio, grid, budget)
    blocks = []
    for r in range(0, grid.height, bh):
        for c in range(0, grid.width, bw):
            dst = Window(c, r, min(bw, grid.width - c), min(bh, grid.height - r))
            blocks.append(block_for(mask, grid, dst, simple, exact))
    return blocks


def block_for(mask: Grid, grid: Grid, dst: Window, with_core: bool, core_only: bool = False) -> Block:
    """The mask window (clipped to the mask) and histogram core of one output block.

    The window covers the block's footprint plus ``MARGIN`` pixels; with ``core_only`` it is the core
    itself (the pixels whose centres lie in the block).
    """
    rect = source_rect(mask, grid, dst)
    if rect is None:
        return Block(dst, None)
    fr0, fr1, fc0, fc1 = rect
    r0, r1 = max(math.floor(fr0) - MARGIN, 0), min(math.ceil(fr1) + MARGIN, mask.height)
    c0, c1 = max(math.floor(fc0) - MARGIN, 0), min(math.ceil(fc1) + MARGIN, mask.width)
    if with_core:  # pixels whose centre i + 0.5 lies in [edge0, edge1)
        cr0, cr1 = (min(max(math.ceil(v - 0.5), 0), mask.height) for v in (fr0, fr1))
        cc0, cc1 = (min(max(math.ceil(v - 0.5), 0), mask.width) for v in (fc0, fc1))
        if core_only:
            r0, r1, c0, c1 = cr0, cr1, cc0, cc1
    if r0 >= r1 or c0 >= c1:
        return Block(dst, None)
    src = Window(c0, r0, c1 - c0, r1 - r0)
    if not with_core:
        return Block(dst, src)
    return Block(dst, src, (slice(cr0 - r0, max(cr1, cr0) - r0), slice(cc0 - c0, max(cc1, cc0) - c0)))


# ---------------------------------------------------------------------------------------------------
# Per-block work: counting, remapping, resampling


def count_codes(a: np.ndarray) -> Counter:
    """Pixel count of every value of an integer array.

    Counted by run lengths along rows: a class map changes value rarely, so this is several times
    faster than ``np.bincount``; falls back to it when the runs are short.
    """
    if a.size and a.min() == a.max():  # one value (a window of sea, or outside the region)
        return Counter({int(a.flat[0]): a.size})
    hist = np.zeros(256, np.int64)  # uint8 values; any other dtype is counted in ``counts``
    counts: Counter = Counter()
    step = max(1, 1_000_000 // max(a.shape[1], 1)) if a.ndim == 2 else max(a.shape[0], 1)
    for r in range(0, a.shape[0], step):
        v = np.ascontiguousarray(a[r : r + step]).ravel()
        if v.size == 0:
            continue
        starts = np.flatnonzero(v[1:] != v[:-1]) + 1
        if a.dtype == np.uint8 and starts.size > v.size // 8:
            hist += np.bincount(v, minlength=256)
            continue
        starts = np.concatenate(([0], starts))
        lengths = np.diff(np.append(starts, v.size))
        if a.dtype == np.uint8:
            hist += np.bincount(v[starts], weights=lengths, minlength=256).astype(np.int64)
        else:
            values, inverse = np.unique(v[starts], return_inverse=True)
            totals = np.bincount(inverse, weights=lengths).astype(np.int64)
            counts.update(dict(zip(values.tolist(), totals.tolist(), strict=True)))
    present = np.flatnonzero(hist)
    counts.update(dict(zip(present.tolist(), hist[present].tolist(), strict=True)))
    return counts


def lut_threshold(lut: np.ndarray) -> tuple[int, bool]:
    """(t, tail): ``lut`` keeps 0..t unchanged; ``tail``: it sends every other code into 0..t."""
    changed = np.flatnonzero(lut != np.arange(256))
    t = int(changed[0]) - 1 if changed.size else 255
    return t, bool((lut <= t).all())


def to_codes(
    a: np.ndarray, lut: np.ndarray, threshold: tuple[int, bool], scratch: np.ndarray | None = None
) -> np.ndarray:
    """Apply the remap table: classes kept, stray codes remapped, anything else nodata (uint8).

    A uint8 window is changed in place. With the default table (codes 0..12 kept, the rest sent into
    0..12) only the stray codes present are touched, largest first, by cheap vectorised passes
    (``lut[a]`` costs several times more); windows without stray codes cost one ``max``. ``scratch``:
    a uint8 array of a's shape to work in (saves allocating one per stray code).
    """
    if a.dtype == np.uint8:
        t, tail = threshold
        for _ in range(8 if tail else 0):
            v = int(a.max()) if a.size else 0
            if v <= t:
                return a
            hit = np.empty(a.shape, np.uint8) if scratch is None else scratch
            np.equal(a, v, out=hit.view(bool))
            np.multiply(hit, np.uint8((int(lut[v]) - v) % 256), out=hit)
            np.add(a, hit, out=a)  # wraps round to lut[v] exactly where a == v
        if t < 255 and a.size and (not tail or a.max() > t):  # many stray codes, or a general table
            a = lut[a]
        return a
    out = np.zeros(a.shape, np.uint8)
    inside = (a >= 0) & (a <= 255)
    out[inside] = lut[a[inside].astype(np.intp)]
    return out


def window_coords(block: Block, mask: Grid, grid: Grid, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Output-grid (row, col) coordinates of the centres of some rows of a block's mask window.

    Computed exactly on a lattice every ``LATTICE`` pixels and interpolated linearly in between.
    """
    src = block.src
    r_idx = np.arange(rows.start, rows.stop) + src.row_off
    c_idx = np.arange(src.width) + src.col_off
    lr = np.unique(np.append(r_idx[:: LATTICE // 2 or 1], r_idx[-1]))
    lc = np.unique(np.append(c_idx[::LATTICE], c_idx[-1]))
    cc, rr = np.meshgrid(lc + 0.5, lr + 0.5)
    xs, ys = apply(mask.transform, cc.ravel(), rr.ravel())
    if mask.crs != grid.crs:
        xs, ys = transform(mask.crs, grid.crs, xs, ys)
    gc, gr = apply(~grid.transform, np.asarray(xs), np.asarray(ys))
    out = []
    for lattice in (np.asarray(gr).reshape(cc.shape), np.asarray(gc).reshape(cc.shape)):
        along = np.stack([np.interp(c_idx, lc, row) for row in lattice])  # (len(lr), width)
        i = np.clip(np.searchsorted(lr, r_idx, side="right") - 1, 0, max(len(lr) - 2, 0))
        j = np.minimum(i + 1, len(lr) - 1)
        span = np.maximum(lr[j] - lr[i], 1)
        t = ((r_idx - lr[i]) / span)[:, None]
        out.append(along[i] * (1 - t) + along[j] * t)
    return out[0], out[1]


def count_block(a: np.ndarray, block: Block, mask: Grid, grid: Grid) -> Counter:
    """Histogram of the pixels of a block's window whose centres lie in the block (each counted once)."""
    if block.core is not None:
        return count_codes(a[block.core])
    counts: Counter = Counter()
    d = block.dst
    step = max(1, 2_000_000 // max(a.shape[1], 1))
    for r in range(0, a.shape[0], step):
        rows = slice(r, min(r + step, a.shape[0]))
        gr, gc = window_coords(block, mask, grid, rows)
        inside = (
            (gr >= d.row_off) & (gr < d.row_off + d.height) & (gc >= d.col_off) & (gc < d.col_off + d.width)
        )
        if inside.any():
            values, n = np.unique(a[rows][inside], return_counts=True)
            counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    return counts


def outside_mask(block: Block, mask: Grid, grid: Grid) -> np.ndarray | None:
    """Output pixels of a block whose footprint misses the mask entirely; None where there are none.

    GDAL's ``mode`` and ``average`` never use an empty source window, so they give the output pixel
    just before the mask's top or left edge the value of the edge pixels; such pixels are outside the
    mask and must stay nodata.
    """
    s, d, eps = block.src, block.dst, 1e-6
    if (
        s.col_off > 0
        and s.row_off > 0
        and s.col_off + s.width < mask.width
        and s.row_off + s.height < mask.height
    ):
        return None
    if simple_grids(mask, grid):  # separable: one test per output column and per output row
        g, m = grid.transform, mask.transform
        c = (g.c + g.a * (np.arange(d.width + 1) + d.col_off) - m.c) / m.a
        r = (g.f + g.e * (np.arange(d.height + 1) + d.row_off) - m.f) / m.e
        out_c = (np.maximum(c[:-1], c[1:]) <= eps) | (np.minimum(c[:-1], c[1:]) >= mask.width - eps)
        out_r = (np.maximum(r[:-1], r[1:]) <= eps) | (np.minimum(r[:-1], r[1:]) >= mask.height - eps)
        return out_r[:, None] | out_c[None, :] if out_c.any() or out_r.any() else None
    cols, rows = np.meshgrid(np.arange(d.width + 1.0) + d.col_off, np.arange(d.height + 1.0) + d.row_off)
    x, y = apply(grid.transform, cols, rows)
    x, y = (np.reshape(v, cols.shape) for v in transform(grid.crs, mask.crs, x.ravel(), y.ravel()))
    mc, mr = apply(~mask.transform, np.asarray(x), np.asarray(y))
    out = np.zeros((d.height, d.width), bool)
    for v, size in ((mc, mask.width), (mr, mask.height)):
        corners = np.stack([v[:-1, :-1], v[:-1, 1:], v[1:, :-1], v[1:, 1:]])
        out |= (corners.max(axis=0) <= eps) | (corners.min(axis=0) >= size - eps)
    return out


def centre_cells(block: Block, mask: Grid, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (within the block) of the output pixel holding each mask row's and column's
    centres, for a window of pixels whose centres lie in the block (simple grids)."""
    m, g, s, d = mask.transform, grid.transform, block.src, block.dst
    y = m.f + m.e * (np.arange(s.row_off, s.row_off + s.height) + 0.5)
    x = m.c + m.a * (np.arange(s.col_off, s.col_off + s.width) + 0.5)
    rows = np.floor((y - g.f) / g.e).astype(np.intp) - d.row_off
    cols = np.floor((x - g.c) / g.a).astype(np.intp) - d.col_off
    return np.clip(rows, 0, d.height - 1), np.clip(cols, 0, d.width - 1)  # (rounding at the edges)


def vote_by_centre(
    codes: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], weights: np.ndarray
) -> np.ndarray:
    """Weighted majority per output pixel, each mask pixel voting in the pixel holding its centre.

    ``rows`` and ``cols`` (non-decreasing) give that pixel for each row and column of ``codes``.
    Ties go to the lower code; a pixel without valid votes is nodata. One ``bincount`` of
    (pixel, class) keys counts every class of a few rows of output pixels at once.
    """
    h, w = shape
    nc = len(CLASSES)  # key = (row * w + col) * nc + code
    starts = np.searchsorted(rows, np.arange(h + 1))  # mask rows of each output row
    per_row = max(1, codes.shape[0] // max(h, 1))
    step = max(1, 2_000_000 // (codes.shape[1] * per_row))  # output rows per bincount (bounded memory)
    col_key = cols * nc
    out = np.zeros(shape, np.uint8)
    for a in range(0, h, step):
        b = min(a + step, h)
        i0, i1 = starts[a], starts[b]
        keys = ((rows[i0:i1] - a) * (w * nc))[:, None] + col_key[None, :] + codes[i0:i1]
        counts = np.bincount(keys.ravel(), minlength=(b - a) * w * nc).reshape(b - a, w, nc)
        score = counts[..., 1:] * weights[1:nc]
        best = score.argmax(axis=-1)  # first maximum: the lower code
        out[a:b] = np.where(np.take_along_axis(score, best[..., None], -1)[..., 0] > 0, best + 1, 0)
    return out


def vote_warped(
    codes: np.ndarray, src_t: Affine, mask: Grid, dst_t: Affine, grid: Grid, shape, weights, present
) -> np.ndarray:
    """Weighted majority on any grid: each class's covered fraction from GDAL's ``average``, weighted."""
    out = np.zeros(shape, np.uint8)
    if not present:
        return out
    valid = codes != NODATA
    stack = np.empty((len(present), *codes.shape), np.uint8)
    for i, c in enumerate(present):
        np.equal(codes, c, out=stack[i].view(bool))
        stack[i][~valid] = 255
    frac = np.full((len(present), *shape), -1, np.float32)
    reproject(
        stack, frac, src_transform=src_t, src_crs=mask.crs, src_nodata=255, dst_transform=dst_t,
        dst_crs=grid.crs, dst_nodata=-1, resampling=Resampling.average, num_threads=1,
        warp_mem_limit=WARP_MEM_MB,
    )  # fmt: skip
    score = frac * np.asarray([weights[c] for c in present], np.float32)[:, None, None]
    best = score.argmax(axis=0)
    hit = np.take_along_axis(score, best[None], axis=0)[0] > 0
    out[hit] = np.asarray(present, np.uint8)[best[hit]]
    return out


class Worker:
    """Processes blocks on a thread pool; each thread opens the mask once (GDAL handles are not shared).

    Each block's warp runs single-threaded: the blocks themselves run ``--threads`` at a time, which
    also overlaps the reading, counting and remapping of one block with the warping of another.
    """

    def __init__(
        self, path: Path, mask: Grid, grid: Grid, method: str, lut: np.ndarray, weights: np.ndarray | None
    ):
        self.path, self.mask, self.grid, self.method = path, mask, grid, method
        self.lut, self.weights = lut, weights
        self.threshold = lut_threshold(lut)
        self.by_centres = vote_by_centres(mask, grid)
        self.local = threading.local()
        self.opened: list = []
        self.lock = threading.Lock()

    def dataset(self):
        ds = getattr(self.local, "ds", None)
        if ds is None:
            ds = self.local.ds = rasterio.open(self.path)
            with self.lock:
                self.opened.append(ds)
        return ds

    def close(self) -> None:
        for ds in self.opened:
            ds.close()

    def read_raw(self, block: Block) -> np.ndarray:
        """The block's mask window as stored; a read error is one line naming the file.

        Read into a buffer that each thread reuses (valid until its next read): fresh 64 MB arrays
        would cost page faults on every block.
        """
        ds = self.dataset()
        out = self.buffer("window", (block.src.height, block.src.width), ds.dtypes[0])
        try:
            return ds.read(1, window=block.src, out=out)
        except rasterio.errors.RasterioError as e:
            fail(f"mask is not readable at {block.src}: {self.path} ({first_line(e, limit=None)})")

    def buffer(self, name: str, shape: tuple[int, int], dtype) -> np.ndarray:
        """A per-thread array reused from block to block (contents undefined)."""
        n = shape[0] * shape[1]
        buf = getattr(self.local, name, None)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = np.empty(n, dtype)
            setattr(self.local, name, buf)
        return buf[:n].reshape(shape)

    def run(self, block: Block, count: bool) -> tuple[np.ndarray, Counter]:
        """The output block and the histogram of its mask pixels (empty unless ``count``)."""
        shape = (block.dst.height, block.dst.width)
        if block.src is None:
            return np.zeros(shape, np.uint8), Counter()
        a = self.read_raw(block)
        counts = count_block(a, block, self.mask, self.grid) if count else Counter()
        if a.max() == NODATA and a.min() == NODATA:  # nothing but nodata (outside the region): no warp
            return np.zeros(shape, np.uint8), counts
        dst_t = self.grid.transform @ Affine.translation(block.dst.col_off, block.dst.row_off)
        src_t = self.mask.transform @ Affine.translation(block.src.col_off, block.src.row_off)
        if self.method == "near":
            # near picks one pixel, the same before or after the remap: a uint8 mask is remapped
            # after, on 100x fewer pixels; a wider one before, to fit in uint8
            after = a.dtype == np.uint8
            out = np.zeros(shape, np.uint8)
            reproject(
                a if after else to_codes(a, self.lut, self.threshold), out, src_transform=src_t,
                src_crs=self.mask.crs, dst_transform=dst_t, dst_crs=self.grid.crs, dst_nodata=NODATA,
                resampling=Resampling.nearest, num_threads=1, warp_mem_limit=WARP_MEM_MB,
            )  # fmt: skip
            return (to_codes(out, self.lut, self.threshold) if after else out), counts
        codes = to_codes(a, self.lut, self.threshold, self.buffer("scratch", a.shape, np.uint8))
        if self.method == "weighted" and self.by_centres:
            rows, cols = centre_cells(block, self.mask, self.grid)
            return vote_by_centre(codes, rows, cols, shape, self.weights), counts
        if self.method == "weighted":
            present = [c for c in CODES if (codes == c).any()]
            out = vote_warped(codes, src_t, self.mask, dst_t, self.grid, shape, self.weights, present)
            return self._clear_outside(out, block), counts
        out = np.zeros(shape, np.uint8)
        # GDAL builds a validity mask from the nodata value, a large part of mode's time: skip it when the
        # window holds no nodata (most windows), the result is the same
        nodata = NODATA if codes.size and codes.min() == NODATA else None
        reproject(
            codes, out, src_transform=src_t, src_crs=self.mask.crs, src_nodata=nodata, dst_transform=dst_t,
            dst_crs=self.grid.crs, dst_nodata=NODATA, resampling=Resampling.mode, num_threads=1,
            warp_mem_limit=WARP_MEM_MB,
        )  # fmt: skip
        return self._clear_outside(out, block), counts

    def _clear_outside(self, out: np.ndarray, block: Block) -> np.ndarray:
        outside = outside_mask(block, self.mask, self.grid)
        if outside is not None:
            out[outside] = NODATA
        return out

    def count_only(self, block: Block) -> Counter:
        """Histogram of a block's mask pixels, without resampling (the pass before ``weighted``)."""
        if block.src is None:
            return Counter()
        return count_block(self.read_raw(block), block, self.mask, self.grid)


# ---------------------------------------------------------------------------------------------------
# The whole job


def default_weights(counts: Counter, lut: np.ndarray, power: float) -> np.ndarray:
    """w_c = (f_max / f_c) ** power over the classes present (absent classes get the largest weight)."""
    per_class = class_counts(counts, lut)[1:]
    weights = np.ones(256, np.float64)
    present = per_class > 0
    if present.any():
        w = (per_class.max() / np.where(present, per_class, 1)) ** power
        w[~present] = w[present].max()
        weights[1 : len(CODES) + 1] = w
    return weights


def class_counts(counts: Counter, lut: np.ndarray) -> np.ndarray:
    """Counts by class (index = code 0..12) after the remap; unknown codes fall into 0."""
    out = np.zeros(len(CLASSES), np.int64)
    for v, n in counts.items():
        out[lut[v] if 0 <= v <= 255 else NODATA] += n
    return out


def rescale(
    mask_path: Path, mask: Grid, grid: Grid, out_path: Path, method: str, lut: np.ndarray,
    weights: np.ndarray | None = None, weight_power: float = 0.5, threads: int = 2,
) -> tuple[Counts, np.ndarray | None]:  # fmt: skip
    """Write the rescaled mask to ``out_path`` (atomically) and return the counts and weights used."""
    prepass = method == "weighted" and weights is None
    blocks = plan_blocks(mask, grid, method)
    if all(b.src is None for b in blocks):
        fail(f"the mask does not overlap the scene: {mask_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    counts = Counts()
    worker = Worker(mask_path, mask, grid, method, lut, weights)
    try:
        if prepass:
            bar = progress(total=len(blocks), desc="counting classes", unit="block")
            with contextlib.closing(ordered_map(worker.count_only, blocks, threads, 2 * threads)) as results:
                for c in results:
                    counts.source.update(c)
                    bar.update()
            bar.close()
            weights = worker.weights = default_weights(counts.source, lut, weight_power)
            print_weights(weights, weight_power)
        with (
            atomic_path(out_path) as tmp,
            whole_raster(tmp),
            rasterio.open(tmp, "w", **map_profile(grid, NODATA)) as dst,
        ):
            dst.write_colormap(1, gdal_colour_table())
            dst.update_tags(1, method=method, source=Path(mask_path).name)
            if weights is not None:
                dst.update_tags(1, weights=" ".join(f"{c}={weights[c]:.4g}" for c in CODES))
            bar = progress(total=len(blocks), desc=f"rescaling ({method})", unit="block")
            # without the pre-pass, the histogram is counted on the windows already read (no extra pass)
            run = functools.partial(worker.run, count=not prepass)
            rows = TileRows(dst, grid)
            with contextlib.closing(ordered_map(run, blocks, threads, threads + 1)) as results:
                for block, (data, c) in zip(blocks, results, strict=True):
                    rows.add(block.dst, data)
                    counts.source.update(c)
                    counts.output += np.bincount(data.ravel(), minlength=256)
                    bar.update()
            bar.close()
    finally:
        worker.close()
    return counts, weights


class TileRows:
    """Collects the output blocks (in order) into whole rows of tiles and writes each row when it is
    complete: every tile is compressed once, and a re-run writes the same bytes."""

    def __init__(self, dst, grid: Grid):
        self.dst, self.grid = dst, grid
        self.strip = np.zeros((min(MAP_BLOCK, grid.height), grid.width), np.uint8)

    def add(self, win: Window, data: np.ndarray) -> None:
        top = win.row_off // MAP_BLOCK * MAP_BLOCK
        bottom = win.row_off + win.height
        self.strip[win.row_off - top : bottom - top, win.col_off : win.col_off + win.width] = data
        if win.col_off + win.width == self.grid.width and (
            bottom - top == MAP_BLOCK or bottom == self.grid.height
        ):
            self.dst.write(
                self.strip[: bottom - top], 1, window=Window(0, top, self.grid.width, bottom - top)
            )


# ---------------------------------------------------------------------------------------------------
# Reporting


def print_weights(weights: np.ndarray, power: float | None) -> None:
    """The weights of ``weighted``, one line per class."""
    how = f"(f_max / f_c) ** {power:g} from the mask's class shares" if power is not None else "as given"
    print(f"weights, {how}:")
    for c in CODES:
        print(f"  {c:>2} {CLASSES[c][0]:<42} {weights[c]:8.3f}")


def print_report(counts: Counts, lut: np.ndarray, remap: dict[int, int], nodata_code: int | None) -> None:
    """Per class: share of the valid pixels before (1 m mask over the scene) and after (output)."""
    before = class_counts(counts.source, lut)
    after = counts.output[: len(CLASSES)]
    for v, n in sorted(counts.source.items()):
        if v in remap:
            print(f"remapped code {v} -> {remap[v]} ({CLASSES[remap[v]][0]}): {n} px")
        elif v not in (NODATA, nodata_code) and (not 0 <= v <= 255 or lut[v] == NODATA):
            print(f"unknown code {v}: {n} px, treated as nodata")
    vb, va = before[1:].sum(), after[1:].sum()
    print(f"{'code':>4} {'class':<42} {'before %':>9} {'after %':>9}")
    for c in CODES:
        pb = 100 * before[c] / vb if vb else 0.0
        pa = 100 * after[c] / va if va else 0.0
        print(f"{c:>4} {CLASSES[c][0]:<42} {pb:9.3f} {pa:9.3f}")
    print(f"valid pixels: {vb} before (1 m), {va} after; nodata: {before[0]} before, {after[0]} after")


# ---------------------------------------------------------------------------------------------------
# Command line


def parse_pairs(items: Sequence[str], option: str, value_type=int) -> dict:
    """``CODE=VALUE`` pairs of an option; one-line error on anything else."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[int(key)] = value_type(value)
        except ValueError:
            fail(f"{option} expects CODE=VALUE pairs, got {item!r}")
    return out


def check_inputs(mask_ds, scene_ds, mask_path: Path, scene_path: Path) -> None:
    """One-line errors for masks and scenes the job cannot use."""
    if mask_ds.count != 1:
        fail(f"mask must have one band, it has {mask_ds.count}: {mask_path}")
    if not np.issubdtype(np.dtype(mask_ds.dtypes[0]), np.integer):
        fail(f"mask must hold integer class codes, it is {mask_ds.dtypes[0]}: {mask_path}")
    for ds, path, what in ((mask_ds, mask_path, "mask"), (scene_ds, scene_path, "scene")):
        if ds.crs is None:
            fail(f"{what} has no CRS: {path}")
        if ds.transform == Affine.identity():
            fail(f"{what} has no georeferencing (identity transform): {path}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser.for_script(
        __doc__,
        epilog="weighted: w_c = (f_max / f_c) ** POWER from the class shares of the mask over the scene "
        "(f_max: the commonest class, weight 1); POWER 1 is plain inverse frequency, 0 plain mode. "
        "The weights used are printed and stored in the output's tags.",
    )
    p.add_argument("--mask", type=Path, default=RAW / "landcover_1m.tif", help="the 1 m mask (1 band)")
    p.add_argument("--like", type=Path, default=RAW / "s2_april.tif", help="scene whose grid to match")
    p.add_argument("--out", type=Path, default=MASK_10M, help="output mask on the scene's grid")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="near",
        help="near: the pixel under each centre (gdalwarp -r near); mode: the majority (gdalwarp -r mode); "
        "weighted: a majority where rare classes count more",
    )
    p.add_argument(
        "--weights", nargs="+", default=None, metavar="CODE=W",
        help="weighted: class weights by hand (unlisted classes weigh 1); default: from inverse class "
        "frequency, see below%(default).0s",
    )  # fmt: skip
    p.add_argument(
        "--weight-power", type=float, default=0.5, metavar="POWER",
        help="weighted: exponent of the inverse class frequency in the default weights",
    )  # fmt: skip
    p.add_argument(
        "--remap", nargs="*", default=None, metavar="CODE=CLASS",
        help=f"stray codes merged into a class before resampling (default: "
        f"{' '.join(f'{k}={v}' for k, v in DEFAULT_REMAP.items())}; give none to remap nothing)%(default).0s",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads (blocks resampled at once)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_range("--threads", args.threads, 1)
    check_range("--weight-power", args.weight_power, 0)
    remap = DEFAULT_REMAP if args.remap is None else parse_pairs(args.remap, "--remap")
    for src, dst in remap.items():
        if not 0 < src <= 255 or dst not in CODES:
            fail(f"--remap {src}={dst}: codes are 1..255 and classes {CODES[0]}..{CODES[-1]}")
    weights = None
    if args.weights is not None:
        if args.method != "weighted":
            fail("--weights only applies to --method weighted")
        given = parse_pairs(args.weights, "--weights", float)
        weights = np.ones(256, np.float64)
        for c, w in given.items():
            if c not in CODES or not w > 0 or not math.isfinite(w):
                fail(f"--weights {c}={w}: classes are {CODES[0]}..{CODES[-1]}, weights positive numbers")
            weights[c] = w
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        with open_raster(args.mask, "mask") as m, open_raster(args.like, "scene") as s:
            check_inputs(m, s, args.mask, args.like)
            mask, grid, nodata = Grid.of(m), Grid.of(s), m.nodata
        out = args.out
        if out.exists() and out.is_dir():
            fail(f"--out is a folder: {out}")
        for other in (args.mask, args.like):
            if out.resolve() == other.resolve():
                fail(f"--out would overwrite an input: {out}")
        lut, _ = remap_lut(remap)
        nodata_code = int(nodata) if nodata is not None and float(nodata).is_integer() else None
        if nodata_code is not None and 0 <= nodata_code <= 255:
            lut[nodata_code] = NODATA  # the mask's own nodata value is nodata, not an unknown code
        if weights is not None:
            print_weights(weights, None)
        counts, _ = rescale(
            args.mask, mask, grid, out, args.method, lut, weights, args.weight_power, args.threads
        )
    print_report(counts, lut, remap, nodata_code)
    print(f"wrote {out} ({grid.width} x {grid.height}, {grid.crs}, method {args.method})")


if __name__ == "__main__":
    sys.exit(run_main(main))
