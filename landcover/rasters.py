"""The rasters of a map: writing finished rows by whole blocks, the files beside a map, their metadata,
and the Cloud-Optimized GeoTIFF layout they are delivered in.

Middle floor: rests on colormap.py, geo.py and common.py. A map is uint8 codes (nodata 0) with the class
colour table and names; its confidence and review mask are uint8 with nodata 255; all are tiled like
``geo.map_profile`` says, with internal overviews (mode for classes, average for confidence).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from colormap import CLASSES, NODATA, NUM_CLASSES, gdal_colour_table
from landcover.common import PARTIAL
from landcover.geo import MAP_BLOCK

OVERVIEW_MIN = 256  # overviews are added until the smallest fits in this many pixels
GDAL_CACHE_MB = 256  # a fixed GDAL block cache: reading and writing never hold more than this
CONFIDENCE_NODATA = 255  # nodata of the confidence and review rasters (0 is a confidence and a flag)
REVIEW_COLOURS = {0: (0, 0, 0, 0), 1: (230, 0, 77, 255), CONFIDENCE_NODATA: (0, 0, 0, 0)}
OVERVIEW_RESAMPLING = (Resampling.mode, Resampling.average, Resampling.mode)  # map, confidence, review


class BlockWriter:
    """Writes finished rows to a GeoTIFF in whole rows of blocks (a compressed block is written once);
    rows of a multi-band raster come as (bands, n, width)."""

    def __init__(self, dst: rasterio.io.DatasetWriter, block: int = MAP_BLOCK):
        self.dst, self.block = dst, block
        shape = (0, dst.width) if dst.count == 1 else (dst.count, 0, dst.width)
        self.row0, self.buf = 0, np.zeros(shape, dtype=np.uint8)

    def __call__(self, row0: int, values: np.ndarray) -> None:
        held = self.buf.shape[-2]
        assert row0 == self.row0 + held, "rows must come in order"
        self.buf = np.concatenate([self.buf, values], axis=-2) if held else values.copy()
        end = self.row0 + self.buf.shape[-2]
        upto = end if end == self.dst.height else (end // self.block) * self.block
        if upto > self.row0:
            n = upto - self.row0
            bands = 1 if self.dst.count == 1 else list(range(1, self.dst.count + 1))
            try:
                self.dst.write(self.buf[..., :n, :], bands, window=Window(0, self.row0, self.dst.width, n))
            except OSError as e:  # a full disk: name this raster (several are written at once)
                e.filename = e.filename or self.dst.name
                raise
            self.row0, self.buf = upto, self.buf[..., n:, :]


class MapWriters:
    """Writes finished rows to the map, its confidence and (with ``review_below``) its review mask, each
    through its own ``BlockWriter``; sums what the summary reports."""

    def __init__(self, dsts: Sequence[rasterio.io.DatasetWriter], review_below: float | None):
        self.writers = [BlockWriter(d) for d in dsts]
        self.review_below = review_below
        self.valid = 0  # mapped pixels
        self.confidence_sum = 0  # their confidence, percent
        self.flagged = 0  # those below review_below

    def __call__(
        self, row0: int, codes: np.ndarray, confidence: np.ndarray, percent: np.ndarray | None = None
    ) -> None:
        valid = codes != NODATA
        layers = [codes, confidence]
        if self.review_below is not None:
            flag = (confidence < self.review_below) & valid
            layers.append(np.where(valid, flag, CONFIDENCE_NODATA).astype(np.uint8))
            self.flagged += int(np.count_nonzero(flag))
        if percent is not None:  # (12, n, width): the class probabilities, last
            layers.append(percent)
        self.valid += int(np.count_nonzero(valid))
        self.confidence_sum += int(confidence.sum(where=valid, dtype=np.int64))
        for writer, layer in zip(self.writers, layers, strict=True):
            writer(row0, layer)


@dataclass(frozen=True)
class MapFiles:
    """The files of one map, named after ``--out MAP.tif``."""

    map: Path

    def beside(self, suffix: str, ext: str | None = None) -> Path:
        return self.map.with_name(f"{self.map.stem}{suffix}{ext or self.map.suffix}")

    @property
    def confidence(self) -> Path:
        return self.beside("_confidence")

    @property
    def review(self) -> Path:
        return self.beside("_review")

    @property
    def probabilities(self) -> Path:
        return self.beside("_probabilities")

    @property
    def preview(self) -> Path:
        return self.map.with_suffix(".png")

    @property
    def confidence_preview(self) -> Path:
        return self.beside("_confidence", ".png")

    @property
    def categories(self) -> Path:
        return self.map.with_name(self.map.name + ".aux.xml")

    def rasters(self, review: bool, probabilities: bool = False) -> list[Path]:
        """The GeoTIFFs written, the map first (it is renamed into place last)."""
        extra = [self.review] if review else []
        return [self.map, self.confidence, *extra, *([self.probabilities] if probabilities else [])]

    def all(self, review: bool, preview: bool, probabilities: bool = False) -> list[Path]:
        pictures = [self.preview, self.confidence_preview] if preview else []
        return [*self.rasters(review, probabilities), *pictures, self.categories]


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels 2, 4, 8 ... until the smallest fits in OVERVIEW_MIN pixels (at least one level)."""
    factors = [2]
    while max(height, width) / factors[-1] > OVERVIEW_MIN:
        factors.append(factors[-1] * 2)
    return factors


def category_names_xml() -> str:
    """GDAL's PAM side-car (MAP.tif.aux.xml) naming the classes: QGIS labels the colour table with it."""
    cats = "\n".join(f"      <Category>{escape(CLASSES[c][0])}</Category>" for c in range(NUM_CLASSES))
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n'
        f"{cats}\n    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )


def describe_rasters(
    dsts: Sequence[rasterio.io.DatasetWriter], tags: dict, temperature: float, review_below: float | None
) -> None:
    """Colour tables, band descriptions and tags of the map, its confidence and its review mask."""
    for dst in dsts:
        dst.update_tags(**tags)
    dsts[0].write_colormap(1, gdal_colour_table())
    dsts[0].set_band_description(1, "land-cover class code")
    dsts[0].update_tags(1, **{f"CLASS_{c}": CLASSES[c][0] for c in range(NUM_CLASSES)})
    what = f"confidence of the mapped class, percent (temperature {temperature:.3g})"
    dsts[1].set_band_description(1, what)
    dsts[1].set_band_unit(1, "%")
    if review_below is not None:
        dsts[2].write_colormap(1, REVIEW_COLOURS)
        dsts[2].set_band_description(1, f"1: confidence below {review_below:g} %, for review; 0: not")
        dsts[2].update_tags(1, REVIEW_BELOW=f"{review_below:g}")


def describe_probabilities(dst: rasterio.io.DatasetWriter, tags: dict, temperature: float) -> None:
    """The class probability raster: band k is code k's calibrated probability, named by its class."""
    dst.update_tags(**tags)
    for c in range(1, NUM_CLASSES):
        dst.set_band_description(c, CLASSES[c][0])
        dst.set_band_unit(c, "%")
        dst.update_tags(c, CODE=str(c))
    dst.update_tags(PROBABILITIES=f"percent, calibrated at temperature {temperature:.3g}; band k: code k")


def gdal_env(workers: int) -> rasterio.Env:
    """GDAL's settings for reading the scenes and writing the rasters: a fixed block cache, a chunk's
    blocks decoded in parallel, overviews compressed and tiled like the rasters."""
    return rasterio.Env(
        GDAL_CACHEMAX=GDAL_CACHE_MB,
        GDAL_NUM_THREADS=max(workers, 1),
        COMPRESS_OVERVIEW="DEFLATE",
        GDAL_TIFF_OVR_BLOCKSIZE=MAP_BLOCK,
    )


# GDAL's GTiff copy with the source's overviews writes the COG layout (IFDs first, overviews before the
# full resolution, the ghost header that makes GDAL report LAYOUT=COG; GDAL's COG validator passes it), and
# unlike the COG driver (GDAL 3.10) it keeps the bands' metadata (class names, review threshold). Only the
# default metadata domain is copied (asking for others, SRC_MDD, drops the bands' default domain)
COG_OPTIONS = dict(
    TILED="YES", BLOCKXSIZE=MAP_BLOCK, BLOCKYSIZE=MAP_BLOCK, COMPRESS="DEFLATE", BIGTIFF="IF_SAFER",
    COPY_SRC_OVERVIEWS="YES",
)  # fmt: skip


@contextlib.contextmanager
def staged(tmp: Path) -> Iterator[Path]:
    """A second temporary name beside ``tmp`` for the tiled GeoTIFF a COG is copied from; removed
    however the block ends (it ends in .partial: an interrupted run's is removed by the next)."""
    staging = tmp.with_name(tmp.name.removesuffix(PARTIAL) + ".staging" + PARTIAL)
    staging.unlink(missing_ok=True)
    try:
        yield staging
    except OSError as e:  # name the file the user knows (atomic_path turns ``tmp`` into the final name)
        if e.filename == str(staging):
            e.filename = str(tmp)
        raise
    finally:
        staging.unlink(missing_ok=True)


def to_cog(staging: Path, tmp: Path) -> None:
    """Copy a finished tiled GeoTIFF with internal overviews into GDAL's Cloud-Optimized GeoTIFF layout
    (IFDs first, overviews before the full resolution, LAYOUT=COG): block by block through GDAL's fixed
    cache, colour table, names, tags and nodata included."""
    import rasterio.shutil

    rasterio.shutil.copy(staging, tmp, driver="GTiff", **COG_OPTIONS)


def write_class_raster(src: rasterio.io.DatasetReader, out: Path, cog: bool = True) -> None:
    """Write band 1 of ``src`` as our class map (tiled, DEFLATE, mode overviews; a COG by default) strip
    by strip: what predict.py does with finished rows, for bench/products.py's cost of the COG."""
    from landcover.common import atomic_path, whole_raster
    from landcover.geo import Grid, map_profile

    grid = Grid.of(src)
    with gdal_env(2), atomic_path(out) as tmp, staged(tmp) as staging:
        target = staging if cog else tmp
        with whole_raster(target), rasterio.open(target, "w", **map_profile(grid, NODATA)) as dst:
            dst.write_colormap(1, gdal_colour_table())
            writer = BlockWriter(dst)
            for r in range(0, grid.height, MAP_BLOCK):
                h = min(MAP_BLOCK, grid.height - r)
                writer(r, src.read(1, window=Window(0, r, grid.width, h)))
            dst.build_overviews(overview_factors(grid.height, grid.width), Resampling.mode)
        if cog:
            with whole_raster(tmp):
                to_cog(staging, tmp)
