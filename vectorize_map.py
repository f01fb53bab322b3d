"""Vectorize a land-cover map: one polygon per connected patch, in a GeoPackage that QGIS opens coloured and
labelled by class.

Reads: ``--map MAP.tif`` (predict.py's or generalize_map.py's class map: uint8 codes 1..12, nodata 0) and,
when it is beside the map, ``MAP_confidence.tif``. Writes ``--out MAP.gpkg``: one layer of polygons with
the pixel edges exactly as GDAL's polygonize (gdal_polygonize.py) draws them, one per 4-connected patch (a
patch crossing the strips the work is split into is still one polygon), holes as interior rings, no gaps
and no overlaps; fields ``code``, ``name``, ``area_ha`` (pixels x pixel area) and ``confidence`` (the
patch's mean, percent; with the confidence raster); and the QGIS default style in the ``layer_styles``
table; the map's STAC item (``MAP.json``), when there is one, then lists it. Bounded memory
(``landcover.vectors``); written under a temporary name and renamed. Vectorize a generalised map
(generalize_map.py --mmu): a 10 m map has a polygon per speck.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import shapely
from rasterio.windows import Window

from colormap import CLASSES, NUM_CLASSES
from landcover.common import ArgumentParser, atomic_path, fail, open_raster, progress, read_pixels, run_main
from landcover.geo import Grid
from landcover.qgis_style import layer_styles_row
from landcover.rasters import MapFiles, gdal_env
from landcover.sieve import STRIP, strips
from landcover.stac import add_to_item
from landcover.vectors import Outliner, Patch, mean_confidence

BATCH = 20000  # polygons written at once


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser.for_script(__doc__)
    parser.add_argument("--map", type=Path, required=True, help="the class map (MAP.tif)")
    parser.add_argument(
        "--out", type=Path, default=argparse.SUPPRESS, help="the GeoPackage to write (default: MAP.gpkg)"
    )
    parser.add_argument("--layer", default=None, help="the layer's name (default: the map's file name stem)")
    return parser.parse_args(argv)


def check_map(src) -> None:
    """Fail unless ``src`` is a class map: one uint8 band, nodata 0 or none, georeferenced."""
    if src.count != 1 or src.dtypes[0] != "uint8":
        bands = f"{src.count} {src.dtypes[0]} band(s)"
        fail(f"map is not a class map (one uint8 band of codes), it has {bands}: {src.name}")
    if src.nodata not in (None, 0):
        fail(f"map nodata is {src.nodata:g}, a class map has nodata 0: {src.name}")
    if src.transform.is_identity:
        fail(f"map has no georeferencing (pixel size unknown): {src.name}")


def output_path(args: argparse.Namespace) -> Path:
    """``--out`` (default MAP.gpkg): a .gpkg that is neither an input nor a folder."""
    out = getattr(args, "out", None) or args.map.with_suffix(".gpkg")
    if out.suffix.lower() != ".gpkg":
        fail(f"--out must end with .gpkg (a GeoPackage): {out}")
    inputs = {args.map.resolve(), MapFiles(args.map).confidence.resolve()}
    if out.resolve() in inputs:
        fail(f"--out would overwrite an input: {out}")
    if out.is_dir():
        fail(f"--out: {out} is a folder, where the GeoPackage would go")
    return out


class LayerWriter:
    """Appends polygons to one GeoPackage layer in batches (pyogrio), the first batch creating it."""

    def __init__(self, path: Path, layer: str, crs: str | None, confidence: bool, pixel_area_m2: float):
        self.path, self.layer, self.crs = path, layer, crs
        self.confidence, self.pixel_area = confidence, pixel_area_m2
        self.batch: list[Patch] = []
        self.written = 0
        self.pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
        self.polygons = np.zeros(NUM_CLASSES, dtype=np.int64)

    def add(self, patches) -> None:
        for patch in patches:
            self.batch.append(patch)
            self.pixels[patch.code] += patch.pixels
            self.polygons[patch.code] += 1
            if len(self.batch) >= BATCH:
                self.flush()

    def flush(self, last: bool = False) -> None:
        """Write the batch (and, when ``last``, at least an empty layer)."""
        if not self.batch and not (last and self.written == 0):
            return
        b = self.batch
        fields = ["code", "name", "area_ha"]
        data = [
            np.array([p.code for p in b], dtype=np.int16),
            np.array([CLASSES[p.code][0] for p in b], dtype=object),
            np.array([p.pixels * self.pixel_area / 1e4 for p in b], dtype=np.float64),
        ]
        if self.confidence:
            fields.append("confidence")
            data.append(np.array([mean_confidence(p) for p in b], dtype=np.float64))
        geometry = shapely.to_wkb(np.array([p.geometry for p in b], dtype=object))
        pyogrio.raw.write(
            self.path, geometry, data, fields, layer=self.layer, driver="GPKG", geometry_type="Polygon",
            crs=self.crs, append=self.written > 0, promote_to_multi=False,
        )  # fmt: skip
        self.written += len(b)
        self.batch = []


def write_style(path: Path, layer: str, when: str) -> None:
    """The ``layer_styles`` table QGIS reads its default style from (an attributes table, via GDAL)."""
    row = layer_styles_row(layer, "geom", when)
    fields = list(row)
    data = [np.array([v], dtype=bool if isinstance(v, bool) else object) for v in row.values()]
    pyogrio.raw.write(path, None, data, fields, layer="layer_styles", driver="GPKG", append=True)


def outline(src, conf, writer: LayerWriter) -> None:
    """Every strip of the map (and its confidence) outlined, finished patches written as they come."""
    outliner = Outliner(src.transform)
    bar = progress(total=src.height, desc="polygons", unit="row", delay=1)
    for r, h in strips(src.height, STRIP):
        window = Window(0, r, src.width, h)
        codes = read_pixels(src, "map", 1, window=window)
        if codes.max(initial=0) >= NUM_CLASSES:
            where = f"rows {r}..{r + h - 1}"
            fail(f"map holds code {int(codes.max())} ({where}), not a class code 0..12: {src.name}")
        confidence = None if conf is None else read_pixels(conf, "confidence", 1, window=window)
        writer.add(outliner.add(codes, confidence))
        bar.update(h)
    writer.add(outliner.finish())
    writer.flush(last=True)
    bar.close()


def open_confidence(path: Path, grid: Grid, stack: contextlib.ExitStack):
    """The confidence raster beside the map on its grid, or None."""
    if not path.is_file():
        return None
    conf = stack.enter_context(contextlib.closing(open_raster(path, "confidence")))
    if not Grid.of(conf).matches(grid):
        fail(f"confidence raster is not on the map's grid ({Grid.of(conf)} vs {grid}): {path}")
    return conf


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(contextlib.closing(open_raster(args.map, "map")))
        check_map(src)
        out = output_path(args)
        conf = open_confidence(MapFiles(args.map).confidence, Grid.of(src), stack)
        layer = args.layer or args.map.stem
        pixel_area = abs(src.transform.a * src.transform.e)
        # the GeoPackage's timestamps: the map's, so that the same map gives the same file
        stamp = datetime.datetime.fromtimestamp(int(args.map.stat().st_mtime), datetime.UTC)
        when = stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": when})
        out.parent.mkdir(parents=True, exist_ok=True)
        with gdal_env(2), atomic_path(out) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The filename extension", RuntimeWarning)  # *.gpkg.partial
            warnings.filterwarnings("ignore", ".*non conformant file extension", RuntimeWarning)
            crs = src.crs.to_wkt() if src.crs else None
            writer = LayerWriter(tmp, layer, crs, conf is not None, pixel_area)
            outline(src, conf, writer)
            write_style(tmp, layer, when)
    print(f"{'code':>4}  {'class':<42} {'polygons':>10} {'hectares':>14}")
    for c in range(1, NUM_CLASSES):
        if writer.polygons[c]:
            ha = writer.pixels[c] * pixel_area / 1e4
            print(f"{c:>4}  {CLASSES[c][0][:42]:<42} {writer.polygons[c]:>10,} {ha:>14,.1f}")
    print(f"wrote {out} (layer {layer}: {writer.written:,} polygons, QGIS style in layer_styles)")
    item = add_to_item(args.map, {"vector": out})
    if item:
        print(f"wrote {item} (the map's STAC item, now listing the vector map)")


if __name__ == "__main__":
    sys.exit(run_main(main))
