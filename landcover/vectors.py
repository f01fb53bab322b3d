"""A class map's patches as polygons, strip by strip: one polygon per 4-connected patch, with GDAL
polygonize's pixel-edge outlines, even for a patch that crosses many strips.

Middle floor: rests on sieve.py (the strip labels) and colormap.py. Each strip of rows is labelled and
outlined (``rasterio.features.shapes``, GDAL's polygonize) in pixel coordinates, where every vertex is an
integer and the edge shared by two strips is the same line on both sides; pieces that touch across the
strip's top edge with the same code are one patch. A patch that no longer reaches the current strip's
bottom row is finished: its pieces are unioned (shapely) and its outline is moved to map coordinates
by one affine transform, so that neighbouring polygons share their vertices exactly (no gaps, no
overlaps). Memory: two strips, plus the pieces of the patches still open (those touching the current
strip's bottom row): it grows with the map's width and the largest patch's outline, not its area.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import rasterio.features
import shapely
from affine import Affine

from colormap import NODATA
from landcover.sieve import label_strip


@dataclass
class Patch:
    """A finished patch: its outline (map coordinates), code, pixel count and confidence sum."""

    geometry: shapely.Polygon
    code: int
    pixels: int
    confidence_sum: int


@dataclass(eq=False)
class Open:
    """The pieces of a patch still growing downwards; ``into``: the patch it was joined to."""

    code: int
    pieces: list = field(default_factory=list)
    pixels: int = 0
    confidence_sum: int = 0
    into: Open | None = None

    def root(self) -> Open:
        patch = self
        while patch.into is not None:
            patch = patch.into
        return patch

    def join(self, other: Open) -> None:
        """Take ``other``'s pieces (``other`` then points here)."""
        self.pieces += other.pieces
        self.pixels += other.pixels
        self.confidence_sum += other.confidence_sum
        other.pieces, other.into = [], self


class Outliner:
    """Turns strips of codes, top to bottom, into finished ``Patch`` es (see the module docstring)."""

    def __init__(self, transform: Affine):
        self.transform = transform
        self.row0 = 0
        self.open: dict[int, Open] = {}  # by the label of the previous strip's bottom row
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # that row's codes and labels

    def add(self, codes: np.ndarray, confidence: np.ndarray | None = None) -> Iterator[Patch]:
        """The patches finished by this strip ((h, w) uint8 codes, its confidence or None)."""
        labels, values = label_strip(codes, 4)
        n = len(values)
        pixels = np.bincount(labels.ravel(), minlength=n)
        sums = np.zeros(n, dtype=np.int64)
        if confidence is not None:
            sums = np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=n).astype(np.int64)
        joined = self._join_above(codes, labels)
        bottom = set(np.unique(labels[-1]).tolist()) - {0}
        now: dict[int, Open] = {}
        shift = Affine.translation(0, self.row0)
        for geom, value in rasterio.features.shapes(labels, mask=labels > 0, connectivity=4, transform=shift):
            k = int(value)
            piece = Open(int(values[k]), [shapely.geometry.shape(geom)], int(pixels[k]), int(sums[k]))
            if k in joined:
                patch = joined[k].root()
                patch.join(piece)
                piece = patch
            if k in bottom:
                now[k] = piece
            elif k not in joined:
                yield self._finish(piece)
        yield from self._close(joined, now)
        self.open = {k: v.root() for k, v in now.items()}
        self.last = (codes[-1].copy(), labels[-1].copy())
        self.row0 += len(codes)

    def _join_above(self, codes: np.ndarray, labels: np.ndarray) -> dict[int, Open]:
        """This strip's top-row pieces that continue an open patch, each mapped to that patch (open
        patches that one piece continues are joined into one)."""
        if self.last is None:
            return {}
        above_codes, above_labels = self.last
        touch = (labels[0] > 0) & (above_labels > 0) & (codes[0] == above_codes)
        pairs = np.unique(np.stack([labels[0][touch], above_labels[touch]], axis=1), axis=0)
        joined: dict[int, Open] = {}
        for here, above in pairs.tolist():
            patch = self.open[above].root()
            if here not in joined:
                joined[here] = patch
                continue
            mine = joined[here].root()
            if mine is not patch:
                mine.join(patch)
        return joined

    def _close(self, joined: dict[int, Open], now: dict[int, Open]) -> Iterator[Patch]:
        """Finished: the patches open above or continued here that reach no pixel of this strip's bottom
        row (a patch open above that nothing here continues ended on the strip above)."""
        growing = {id(p.root()) for p in now.values()}
        done: set[int] = set()
        for patch in [*self.open.values(), *joined.values()]:
            patch = patch.root()
            if id(patch) not in growing and id(patch) not in done:
                done.add(id(patch))
                yield self._finish(patch)

    def finish(self) -> Iterator[Patch]:
        """The patches still open after the last strip."""
        seen: set[int] = set()
        for patch in self.open.values():
            patch = patch.root()
            if id(patch) not in seen:
                seen.add(id(patch))
                yield self._finish(patch)
        self.open = {}

    def _finish(self, patch: Open) -> Patch:
        """One polygon of the pieces, in map coordinates."""
        geom = patch.pieces[0] if len(patch.pieces) == 1 else shapely.union_all(patch.pieces)
        t = self.transform
        geom = shapely.transform(geom, lambda xy: np.c_[t.a * xy[:, 0] + t.b * xy[:, 1] + t.c,
                                                        t.d * xy[:, 0] + t.e * xy[:, 1] + t.f])  # fmt: skip
        return Patch(geom, patch.code, patch.pixels, patch.confidence_sum)


def mean_confidence(patch: Patch) -> float:
    """The patch's mean confidence in percent, to a tenth."""
    return round(patch.confidence_sum / max(patch.pixels, 1), 1)


def valid_codes(codes: np.ndarray) -> np.ndarray:
    """The mask of mapped pixels."""
    return codes != NODATA
