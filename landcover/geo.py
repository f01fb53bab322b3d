"""Grids and GeoTIFF profiles: where a raster's pixels are and how our maps are written.

Bottom floor: imports nothing of ours. Owns ``Grid`` (a raster's CRS, transform and size: read,
compared, described in one line), ``map_profile`` (a class map's GeoTIFF: one uint8 band, tiled in
``MAP_BLOCK`` blocks, DEFLATE, nodata, BigTIFF when it could outgrow 4 GB) and ``colour_table``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rasterio is imported by the scripts that read rasters, not here
    from affine import Affine
    from rasterio.crs import CRS

MAP_BLOCK = 512  # side of a class map's tiles (and of its overviews' tiles)


@dataclass(frozen=True)
class Grid:
    """Where a raster's pixels are: CRS, affine transform and size."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, ds) -> Grid:
        """The grid of an open rasterio dataset."""
        return cls(ds.crs, ds.transform, ds.width, ds.height)

    def matches(self, other: Grid) -> bool:
        """Same size, CRS and transform (to a millionth of a pixel)."""
        return (
            (self.width, self.height) == (other.width, other.height)
            and self.crs == other.crs
            and self.transform.almost_equals(other.transform, precision=1e-6 * abs(self.transform.a))
        )

    def __str__(self) -> str:
        t = self.transform
        crs = self.crs.to_string() if self.crs else "no CRS"
        origin, pixel = f"({t.c:.10g}, {t.f:.10g})", f"{t.a:.10g} x {-t.e:.10g}"
        return f"{self.width} x {self.height} px, {crs}, origin {origin}, pixel {pixel}"


def colour_table(ds) -> dict | None:
    """The colour table of an open dataset's first band; None when it has none."""
    try:
        return ds.colormap(1)
    except ValueError:
        return None


def map_profile(grid: Grid, nodata: int) -> dict:
    """The rasterio profile of a class map on ``grid``: one uint8 band, tiled, DEFLATE, ``nodata``."""
    return dict(
        driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8", crs=grid.crs,
        transform=grid.transform, nodata=nodata, tiled=True, blockxsize=MAP_BLOCK, blockysize=MAP_BLOCK,
        compress="deflate", bigtiff="if_safer",
    )  # fmt: skip
