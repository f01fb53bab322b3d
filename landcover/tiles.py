"""Tiles as the model sees them: reading a pair, checking a split, valid pixels and training targets.

Middle floor: rests on common.py (one-line failures, raster opening) and colormap.py (codes). A tile
is read as stored (uint16 for Sentinel-2) with its mask; a pixel is valid where the image has data
(nodata is 0 in every band) and the mask holds a code the model knows (0..12). ``scan_tiles`` checks
that every tile of a split shares size, band count and dtype before any work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from colormap import NODATA, NUM_CLASSES
from landcover.common import fail, open_raster, ordered_map, progress, read_pixels


@dataclass(frozen=True)
class TileInfo:
    """What every tile of a split shares."""

    bands: int
    height: int
    width: int
    dtype: str
    descriptions: tuple[str, ...]


def scan_tiles(pairs: list[tuple[Path, Path]]) -> TileInfo:
    """Check that every tile opens and all share size, band count and dtype; masks have one band."""
    first: TileInfo | None = None
    for img_path, mask_path in progress(pairs, desc="checking tiles", unit="tile", leave=False):
        with open_raster(img_path, "image tile", sidecars=False) as src:
            descriptions = tuple(d or f"band{i + 1}" for i, d in enumerate(src.descriptions))
            info = TileInfo(src.count, src.height, src.width, src.dtypes[0], descriptions)
        with open_raster(mask_path, "mask tile", sidecars=False) as m:
            if np.dtype(m.dtypes[0]).kind not in "ui":
                fail(f"mask tile holds {m.dtypes[0]} values, expected integer class codes: {mask_path}")
            if m.count != 1 or (m.height, m.width) != (info.height, info.width):
                fail(
                    f"mask tile does not fit its image ({m.count} band(s), {m.height} x {m.width}; "
                    f"image {info.height} x {info.width}): {mask_path}"
                )
        if first is None:
            first = info
        elif (info.bands, info.height, info.width, info.dtype) != (
            first.bands,
            first.height,
            first.width,
            first.dtype,
        ):
            fail(
                f"tile differs from the others ({info.bands} bands {info.height} x {info.width} "
                f"{info.dtype}, expected {first.bands} bands {first.height} x {first.width} "
                f"{first.dtype}): {img_path}"
            )
    assert first is not None
    return first


def read_tile(img_path: Path, mask_path: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """An image tile (C, H, W) as stored and its mask (H, W) uint8, or None without a mask.

    A tile that cannot be opened or decoded (damaged blocks) is an error naming it.
    """
    with open_raster(img_path, "image tile", sidecars=False) as src:
        img = read_pixels(src, "image tile")
    mask = None
    if mask_path is not None:
        with open_raster(mask_path, "mask tile", sidecars=False) as m:
            mask = read_pixels(m, "mask tile", 1)
    return img, mask


def each_in_threads(
    fn: Callable[..., None], items: Sequence, threads: int, desc: str, leave: bool = True
) -> None:
    """``fn(item)`` for every item on ``threads`` threads (GDAL decodes without holding the GIL), with a
    progress bar; the first error is raised at once (``ordered_map``: the items not started never
    start, where a pool's ``map`` would first decode every other tile of the split)."""
    threads = max(1, threads)
    with contextlib.closing(ordered_map(fn, items, threads, 2 * threads)) as done:
        for _ in progress(done, total=len(items), desc=desc, unit="tile", leave=leave):
            pass


def check_tiles(pairs: list[tuple[Path, Path]], threads: int = 4, desc: str = "checking tiles") -> None:
    """Decode every tile pair once (``threads`` GDAL readers): a tile damaged inside opens fine and fails
    only when its pixels are read; found now, it is a one-line error instead of a stop hours later."""
    each_in_threads(lambda p: read_tile(*p) and None, pairs, threads, desc, leave=False)


def valid_pixels(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels where the image has data (nodata is 0 in every band)."""
    return np.any(img != NODATA, axis=0)


def target(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 training target: the mask's code, 0 (nodata) where the mask is nodata or holds a code
    outside 0..12 (it would index past the model's outputs: a crash on CUDA) or the image has no data."""
    known = (mask >= 0) & (mask < NUM_CLASSES)  # signed masks may hold negative codes
    return np.where(valid_pixels(img) & known, mask, NODATA).astype(np.uint8)


def fingerprint(pairs: list[tuple[Path, Path]], ctime: bool = False) -> str:
    """Names, sizes and modification times of the tiles (and inode change times with ``ctime``): changes
    when any tile is rewritten."""
    h = hashlib.sha256()
    for img, mask in pairs:
        for p in (img, mask):
            st = p.stat()
            h.update(
                f"{p.name}:{st.st_size}:{st.st_mtime_ns}{f':{st.st_ctime_ns}' if ctime else ''};".encode()
            )
    return h.hexdigest()[:16]
