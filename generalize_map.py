"""Apply a minimum mapping unit to a land-cover map: every patch smaller than --mmu hectares takes the code
of its largest neighbour, exactly as GDAL's sieve filter does (gdal_sieve.py), without reading the map
whole.

Reads: ``--map MAP.tif`` (predict.py's class map: uint8 codes 1..12, nodata 0) and, when they are beside
it, ``MAP_confidence.tif`` and ``MAP_probabilities.tif`` (predict.py --probabilities). Writes ``--out
MAP_mmu.tif`` (a Cloud-Optimized GeoTIFF on the same grid, colour table, class names, overviews),
``MAP_mmu_confidence.tif`` (the confidence carried along: a merged pixel gets the probability of the class
it now carries when the probabilities are beside the map, else 0, "not the model's choice", so that a
review threshold flags it), the previews MAP_mmu.png and MAP_mmu_confidence.png, and prints the area of
each class before and after; then ``MAP_mmu.json``, its STAC item. Nodata never grows or shrinks; a patch
touching only nodata stays. The map is read three times, strip by strip (``landcover.sieve`` says how, and why
the result is GDAL's on every pixel); everything is written under temporary names and renamed, the map
last.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from colormap import CLASSES, CODES, NODATA, NUM_CLASSES, gdal_colour_table
from landcover.common import (
    ArgumentParser,
    atomic_path,
    atomic_write_text,
    check_range,
    fail,
    open_raster,
    progress,
    read_pixels,
    run_main,
    whole_raster,
)
from landcover.figures import write_confidence_preview, write_preview
from landcover.geo import Grid, map_profile
from landcover.rasters import (
    CONFIDENCE_NODATA,
    OVERVIEW_RESAMPLING,
    BlockWriter,
    MapFiles,
    category_names_xml,
    describe_rasters,
    gdal_env,
    overview_factors,
    staged,
    to_cog,
)
from landcover.sieve import STRIP, SievePlan, Survey, strips
from landcover.stac import item_path, write_item


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser.for_script(__doc__)
    parser.add_argument("--map", type=Path, required=True, help="the class map (predict.py's MAP.tif)")
    parser.add_argument(
        "--mmu", type=float, required=True, metavar="HA",
        help="minimum mapping unit in hectares: patches smaller than this are merged (0.5 ha: 50 pixels "
        "of 10 m)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=argparse.SUPPRESS,
        help="the generalised map (.tif); its confidence, previews and category names go beside it "
        "(default: MAP_mmu.tif beside the map)",
    )  # fmt: skip
    parser.add_argument(
        "--connectivity", type=int, choices=(4, 8), default=4,
        help="pixels of a patch touch by an edge (4) or also by a corner (8), as gdal_sieve.py -4/-8",
    )  # fmt: skip
    parser.add_argument("--no-preview", action="store_true", help="write no PNG preview")
    args = parser.parse_args(argv)
    check_range("--mmu", args.mmu, 0, low_open=True)
    return args


def threshold_pixels(mmu_ha: float, pixel_area_m2: float) -> int:
    """The smallest patch size in pixels kept: a patch of n pixels is below the MMU when n * area < mmu
    (rounding error of a tenth of a pixel forgiven, so 0.5 ha of 10 m pixels is 50, not 51)."""
    return max(1, math.ceil(mmu_ha * 1e4 / pixel_area_m2 - 1e-6))


def check_map(src, what: str = "map") -> None:
    """Fail unless ``src`` is a class map: one uint8 band with nodata 0 (or none) on a georeferenced grid."""
    if src.count != 1 or src.dtypes[0] != "uint8":
        bands = f"{src.count} {src.dtypes[0]} band(s)"
        fail(f"{what} is not a class map (one uint8 band of codes), it has {bands}: {src.name}")
    if src.nodata not in (None, NODATA):
        fail(f"{what} nodata is {src.nodata:g}, a class map has nodata {NODATA}: {src.name}")
    if src.transform.is_identity:
        fail(f"{what} has no georeferencing (pixel size unknown): {src.name}")


def output_files(args: argparse.Namespace, inputs: Sequence[Path]) -> MapFiles:
    """``--out`` (default MAP_mmu.tif), refused when one of its files would replace an input."""
    out = getattr(args, "out", None) or MapFiles(args.map).beside("_mmu")
    if out.suffix.lower() not in (".tif", ".tiff"):
        fail(f"--out must end with .tif or .tiff: {out}")
    files = MapFiles(out)
    taken = {Path(p).resolve() for p in inputs}
    for path in [*files.all(False, not args.no_preview), item_path(out)]:
        if path.resolve() in taken:
            fail(f"--out would overwrite an input: {path}")
        if path.is_dir():
            fail(f"--out: {path} is a folder, where the map's file would go")
    return files


def read_strip(src, r: int, h: int, what: str) -> np.ndarray:
    """Rows r..r+h of band 1 (all bands of a multi-band raster), whole width."""
    bands = None if src.count > 1 else 1
    return read_pixels(src, what, bands, window=Window(0, r, src.width, h))


def survey(src, threshold: int, connectivity: int) -> SievePlan:
    """The first two passes: every strip's patches (codes outside 0..12 refused, before anything is
    written), then every strip's neighbours."""
    survey = Survey(src.width, threshold, connectivity)
    bar = progress(total=2 * src.height, desc="patches", unit="row", delay=1)  # an early error: no bar
    for r, h in strips(src.height, STRIP):
        codes = read_strip(src, r, h, "map")
        if codes.max(initial=0) >= NUM_CLASSES:
            bad = int(codes[codes >= NUM_CLASSES][0])
            fail(f"map holds code {bad} (rows {r}..{r + h - 1}), not a class code 0..12: {src.name}")
        survey.add(codes)
        bar.update(h)
    survey.join()
    for i, (r, h) in enumerate(strips(src.height, STRIP)):
        survey.add_neighbours(i, read_strip(src, r, h, "map"))
        bar.update(h)
    bar.close()
    return survey.plan()


def carried_confidence(
    old: np.ndarray, new: np.ndarray, confidence: np.ndarray, probabilities: np.ndarray | None
) -> np.ndarray:
    """The confidence of the generalised pixels: unchanged where the code is; where it changed, the
    probability of the new class (percent) when known, else 0."""
    changed = new != old
    if probabilities is None:
        merged = np.zeros_like(confidence)
    else:
        index = np.clip(new.astype(np.intp) - 1, 0, probabilities.shape[0] - 1)
        merged = np.take_along_axis(probabilities, index[None], axis=0)[0]
    return np.where(changed, merged, confidence).astype(np.uint8, copy=False)


def generalize(plan: SievePlan, src, sides: dict, writers: list[BlockWriter]) -> np.ndarray:
    """Second pass: each strip sieved and written with its confidence; returns the (13, 13) matrix of
    pixels by code before (rows) and after (columns)."""
    moved = np.zeros(NUM_CLASSES * NUM_CLASSES, dtype=np.int64)
    bar = progress(total=src.height, desc="generalising", unit="row")
    for i, (r, h) in enumerate(strips(src.height, STRIP)):
        old = read_strip(src, r, h, "map")
        new = plan.apply(i, old)
        moved += np.bincount(old.ravel() * NUM_CLASSES + new.ravel(), minlength=NUM_CLASSES**2)
        writers[0](r, new)
        if "confidence" in sides:
            conf = read_strip(sides["confidence"], r, h, "confidence")
            probs = sides.get("probabilities")
            probs = None if probs is None else read_strip(probs, r, h, "probabilities")
            conf = np.where(new == NODATA, CONFIDENCE_NODATA, carried_confidence(old, new, conf, probs))
            writers[1](r, conf.astype(np.uint8))
        bar.update(h)
    bar.close()
    return moved.reshape(NUM_CLASSES, NUM_CLASSES)


def open_sides(files: MapFiles, grid: Grid, stack: contextlib.ExitStack) -> dict:
    """The confidence and probability rasters beside the map, when there, on the map's grid."""
    sides = {}
    probabilities = files.beside("_probabilities")
    for key, path in (("confidence", files.confidence), ("probabilities", probabilities)):
        if path.is_file():
            ds = stack.enter_context(contextlib.closing(open_raster(path, key)))
            if not Grid.of(ds).matches(grid):
                fail(f"{key} raster is not on the map's grid ({Grid.of(ds)} vs {grid}): {path}")
            sides[key] = ds
    if "probabilities" in sides and "confidence" not in sides:
        del sides["probabilities"]
    return sides


def area_change_table(moved: np.ndarray, pixel_area_m2: float) -> str:
    """Each class's area before and after, and the share of its pixels that changed class."""
    lines = [f"{'code':>4}  {'class':<42} {'before ha':>12} {'after ha':>12} {'changed %':>9}"]
    for c in CODES:
        before, after = int(moved[c].sum()), int(moved[:, c].sum())
        if before or after:
            lost = before - int(moved[c, c])
            share = 100 * lost / before if before else 0.0
            ha = pixel_area_m2 / 1e4
            lines.append(
                f"{c:>4}  {CLASSES[c][0][:42]:<42} {before * ha:>12,.1f} {after * ha:>12,.1f} {share:>9.2f}"
            )
    total = max(int(moved[1:].sum()), 1)
    changed = total - int(np.trace(moved[1:, 1:]))
    lines.append(f"pixels changed: {changed:,} ({100 * changed / total:.2f}% of the mapped pixels)")
    return "\n".join(lines)


def write_outputs(args, src, files: MapFiles, plan: SievePlan, threshold: int) -> np.ndarray:
    """The generalised map and its confidence, previews and category names; the map renamed last."""
    grid = Grid.of(src)
    with contextlib.ExitStack() as inputs:
        sides = open_sides(MapFiles(args.map), grid, inputs)
        paths = files.rasters(False)[: 1 + ("confidence" in sides)]
        with gdal_env(2), contextlib.ExitStack() as placed:
            tmps = [placed.enter_context(atomic_path(p)) for p in paths]
            stagings = [placed.enter_context(staged(t)) for t in tmps]  # tiled GeoTIFFs, then COGs
            with whole_raster(*stagings), contextlib.ExitStack() as opened:
                nodata = (NODATA, CONFIDENCE_NODATA)
                dsts = [
                    opened.enter_context(rasterio.open(t, "w", **map_profile(grid, nd)))
                    for t, nd in zip(stagings, nodata, strict=False)
                ]
                describe(dsts, src, sides, args, threshold)
                moved = generalize(plan, src, sides, [BlockWriter(d) for d in dsts])
                for dst, how in zip(dsts, OVERVIEW_RESAMPLING, strict=False):
                    dst.build_overviews(overview_factors(grid.height, grid.width), how)
                    dst.update_tags(
                        OVERVIEW_RESAMPLING=how.name
                    )  # the COG copy keeps the default domain only
            with whole_raster(*tmps):
                for staging, tmp in zip(stagings, tmps, strict=True):
                    to_cog(staging, tmp)
                    staging.unlink()
            if not args.no_preview:
                title = f"{files.map.name}: {args.map.name}, minimum mapping unit {args.mmu:g} ha"
                write_preview(tmps[0], files.preview, moved.sum(axis=0), title)
                if len(tmps) > 1:
                    write_confidence_preview(tmps[1], files.confidence_preview, f"{files.confidence.name}")
            atomic_write_text(files.categories, category_names_xml())
    return moved


def describe(dsts, src, sides: dict, args, threshold: int) -> None:
    """The map's colour table, names and tags, with the MMU; the confidence says what merged pixels hold."""
    tags = {k: v for k, v in src.tags().items() if k != "AREA_OR_POINT"}
    tags.update(mmu_ha=f"{args.mmu:g}", mmu_pixels=str(threshold), connectivity=str(args.connectivity),
                generalized_from=str(args.map))  # fmt: skip
    if "datetime" not in tags:  # a map predict.py did not write: its file's time, the same on a re-run
        tags["datetime"] = dt.datetime.fromtimestamp(int(args.map.stat().st_mtime), dt.UTC).isoformat()
    if len(dsts) == 1:
        _describe_map_only(dsts[0], tags)
        return
    temperature = float(sides["confidence"].tags().get("temperature", 1))
    describe_rasters(dsts, tags, temperature, None)
    merged = "the probability of the class now carried" if "probabilities" in sides else "0"
    dsts[1].update_tags(1, MERGED_PIXELS=f"pixels merged by the MMU hold {merged}")


def _describe_map_only(dst, tags: dict) -> None:
    """The map's colour table, names and tags when no confidence is beside the input."""
    dst.update_tags(**tags)
    dst.write_colormap(1, gdal_colour_table())
    dst.set_band_description(1, "land-cover class code")
    dst.update_tags(1, **{f"CLASS_{c}": CLASSES[c][0] for c in range(NUM_CLASSES)})


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    inputs = MapFiles(args.map)
    with contextlib.closing(open_raster(args.map, "map")) as src:
        check_map(src)
        files = output_files(args, [args.map, inputs.confidence, inputs.beside("_probabilities")])
        pixel_area = abs(src.transform.a * src.transform.e)
        threshold = threshold_pixels(args.mmu, pixel_area)
        with gdal_env(2):
            plan = survey(src, threshold, args.connectivity)
        files.map.parent.mkdir(parents=True, exist_ok=True)
        moved = write_outputs(args, src, files, plan, threshold)
    print(f"minimum mapping unit {args.mmu:g} ha = {threshold} pixels ({args.connectivity}-connected): "
          f"{plan.merged_patches:,} patches merged, {plan.unmergeable_patches:,} small ones left (no "
          "neighbour of the MMU's size)")  # fmt: skip
    print(area_change_table(moved, pixel_area))
    for path in files.all(False, not args.no_preview)[:-1]:
        if path.exists():
            print(f"wrote {path}")
    print(f"wrote {write_item(files.map)} (STAC item)")


if __name__ == "__main__":
    sys.exit(run_main(main))
