"""Compare two land-cover maps of one grid: what changed, from which class to which, and how much.

Reads ``--before`` and ``--after``, two class maps on the same grid (one uint8 band, codes 1..12,
nodata 0: predict.py's maps of two years), and the confidence rasters beside them
(``MAP_confidence.tif``) when both exist. Writes ``--out``, the change raster: per pixel the pair
code of its from-to transition, ``(before - 1) * 12 + after``, 0 where the maps agree or either has
no data, with a colour table (the after class's colour) and the names of the pairs present (band
tags ``CHANGE_<code>``); its preview (``.png``); with both confidences, ``CHANGE_confidence.tif``
(the lower of the two years' confidence of each change, percent; 255 elsewhere); and beside it
``change_matrix.csv`` (rows the before class, columns the after class, codes 1..12, hectares) and
``change.md`` (the transitions, the largest first).

Two maps differ wherever either is wrong, so the pixel count of a transition counts every error of
either year as change: on a map of 90 % accuracy, the apparent change far exceeds the real one.
``--min-confidence`` keeps only the changes both maps are sure of; the honest area of each
transition comes from a sample of the change raster written with ``--stable`` (unchanged pixels as
their class's own pair a -> a, so that they form strata; sample_map.py, assess_map.py; README:
"Change between two years"). The maps are read by blocks: memory does not grow with the map.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from colormap import CLASSES, CODES, NODATA
from landcover.change import (
    CONFIDENCE_NODATA,
    change_block,
    change_confidence,
    matrix_csv,
    pair_code,
    pair_colour,
    pair_counts,
    pair_name,
    transitions,
    with_stable,
)
from landcover.common import ArgumentParser, atomic_path, check_range, fail, open_raster, progress, run_main
from landcover.figures import picture_figure, write_png
from landcover.geo import Grid, map_profile
from landcover.sampling import map_info, open_class_map, reading, windows

PREVIEW_SIDE = 1200  # longest side of the preview, pixels


def build_parser() -> ArgumentParser:
    p = ArgumentParser.for_script(__doc__)
    none = dict(default=argparse.SUPPRESS)  # no "(default: None)" in --help
    p.add_argument(
        "--before", type=Path, required=True, help="the earlier class map (uint8, codes 1..12)", **none
    )
    p.add_argument("--after", type=Path, required=True, help="the later class map, on the same grid", **none)
    p.add_argument("--out", type=Path, required=True, help="the change raster to write (.tif)", **none)
    p.add_argument(
        "--min-confidence",
        type=int,
        metavar="PERCENT",
        **none,
        help="keep only the changes both maps are at least this sure of (needs both confidence rasters)",
    )
    p.add_argument(
        "--stable",
        action="store_true",
        help="code the unchanged pixels as their class's own pair (a -> a) instead of 0, so that 0 is only "
        "no data: the change raster to sample for the area of each transition (sample_map.py)",
    )
    return p


def confidence_path(map_path: Path) -> Path:
    """predict.py's confidence raster beside a map: MAP_confidence.tif."""
    return map_path.with_name(f"{map_path.stem}_confidence.tif")


def outputs(out: Path, with_confidence: bool) -> dict[str, Path]:
    """Every file written, by role."""
    files = {
        "change": out,
        "preview": out.with_suffix(".png"),
        "matrix": out.with_name("change_matrix.csv"),
        "report": out.with_name("change.md"),
    }
    if with_confidence:
        files["confidence"] = confidence_path(out)
    return files


def check_paths(args, inputs: Sequence[Path]) -> None:
    """The output: a .tif that is none of the inputs, in a folder that can be made."""
    if args.out.suffix.lower() not in (".tif", ".tiff"):
        fail(f"--out must be a GeoTIFF (.tif): {args.out}")
    mine = {p.resolve() for p in outputs(args.out, True).values()}
    for path in inputs:
        if path.resolve() in mine:
            fail(f"--out would overwrite an input: {path}")
    if args.out.parent.exists() and not args.out.parent.is_dir():
        fail(f"--out is under a file: {args.out}")


def open_inputs(args, stack: contextlib.ExitStack) -> tuple[list, list | None]:
    """The two maps (class maps on one grid) and their confidence rasters (None unless both exist)."""
    maps = [
        stack.enter_context(open_class_map(p, what))
        for p, what in ((args.before, "--before"), (args.after, "--after"))
    ]
    grids = [Grid.of(ds) for ds in maps]
    if not grids[0].matches(grids[1]):
        fail(f"--after is not on --before's grid ({grids[1]}; --before: {grids[0]}): {args.after}")
    paths = [confidence_path(args.before), confidence_path(args.after)]
    if not all(p.is_file() for p in paths):
        if args.min_confidence is not None:
            missing = next(p for p in paths if not p.is_file())
            fail(f"--min-confidence needs both maps' confidence rasters; missing: {missing}")
        return maps, None
    confs = [stack.enter_context(open_raster(p, "confidence raster")) for p in paths]
    for p, ds in zip(paths, confs, strict=True):
        if ds.count != 1 or ds.dtypes[0] != "uint8":
            fail(f"confidence raster is not one uint8 band (percent): {p}")
        if not Grid.of(ds).matches(grids[0]):
            fail(f"confidence raster is not on the maps' grid ({Grid.of(ds)}): {p}")
    return maps, confs


class Preview:
    """A decimated copy of the change raster (every ``step``-th row and column), for the PNG."""

    def __init__(self, height: int, width: int):
        self.step = max(1, -(-max(height, width) // PREVIEW_SIDE))
        self.codes = np.zeros((-(-height // self.step), -(-width // self.step)), dtype=np.uint8)
        self.valid = np.zeros(self.codes.shape, dtype=bool)

    def add(self, win, codes: np.ndarray, valid: np.ndarray) -> None:
        """Keep a block's pixels on the preview's rows and columns."""
        s = self.step
        r0, c0 = (-win.row_off) % s, (-win.col_off) % s
        sub = (slice(r0, None, s), slice(c0, None, s))
        rows = slice((win.row_off + r0) // s, (win.row_off + r0) // s + codes[sub].shape[0])
        cols = slice((win.col_off + c0) // s, (win.col_off + c0) // s + codes[sub].shape[1])
        self.codes[rows, cols], self.valid[rows, cols] = codes[sub], valid[sub]

    def write(self, path: Path, title: str) -> None:
        """The PNG: changes in their after class's colour, unchanged light grey, no data white."""
        rgb = np.full((*self.codes.shape, 3), 255, dtype=np.uint8)
        rgb[self.valid] = (225, 225, 225)
        for code in np.unique(self.codes[self.codes > 0]):
            rgb[self.codes == code] = pair_colour(int(code))[:3]
        write_png(picture_figure(rgb, title), path, dpi=120, tight=True)  # path: the caller's temporary


def compare(maps: list, confs: list | None, dst, dst_conf, args, preview: Preview):
    """Read both maps block by block; write the pair codes (and confidences); the (13, 13) counts."""
    counts = np.zeros((13, 13), dtype=np.int64)
    wins = windows(maps[0])
    for win in progress(wins, desc="comparing", unit="block", leave=False, delay=1.0):
        before, after = (ds.read(1, window=win) for ds in maps)
        if max(int(before.max()), int(after.max())) > max(CODES):
            which = maps[0] if before.max() > max(CODES) else maps[1]
            fail(
                f"map is not a class map: code {max(before.max(), after.max())} (classes 1..12): {which.name}"
            )
        codes, valid = change_block(before, after)
        counts += pair_counts(before, after, valid)
        if confs is not None:
            c_before, c_after = (ds.read(1, window=win) for ds in confs)
            codes, conf = change_confidence(codes, c_before, c_after, args.min_confidence)
            dst_conf.write(conf, 1, window=win)
        if args.min_confidence is not None:  # the dropped changes count as unchanged in the matrix too
            dropped = valid & (before != after) & (codes == 0)
            counts -= pair_counts(before, after, dropped)
            counts += pair_counts(before, before, dropped)
        if args.stable:
            codes = with_stable(codes, before, valid)
        dst.write(codes, 1, window=win)
        preview.add(win, codes, valid)
    return counts


def describe(dst, counts: np.ndarray, stable: bool) -> None:
    """The colour table and the names of the pairs present (tags CHANGE_<code>, and the band's)."""
    present = [pair_code(a, b) for a in CODES for b in CODES if (stable or a != b) and counts[a, b] > 0]
    dst.write_colormap(1, {0: (0, 0, 0, 0), **{c: pair_colour(c) for c in present}})
    zero = "No data" if stable else "Unchanged or no data"
    dst.set_band_description(1, f"from-to pair code: (before - 1) * 12 + after; 0: {zero.lower()}")
    dst.update_tags(1, CHANGE_0=zero, **{f"CHANGE_{c}": pair_name(c) for c in present})


def report_md(args, matrix_ha: np.ndarray, pixel_ha: float) -> str:
    """change.md: what was compared, the changed share, the transitions largest first."""
    valid = float(matrix_ha.sum())
    rows = transitions(matrix_ha)
    changed = sum(t[2] for t in rows)
    lines = [
        f"# Change from {args.before.name} to {args.after.name}",
        "",
        f"Compared area {valid:,.1f} ha (both maps with data); mapped change {changed:,.1f} ha "
        f"({100 * changed / max(valid, 1e-12):.2f} %) in {len(rows)} transitions"
        + (
            f", changes both maps are at least {args.min_confidence} % sure of."
            if args.min_confidence is not None
            else "."
        ),
        "",
        "Mapped areas are pixel counts: every error of either map counts as change. The area to "
        "publish is estimated from a sample of the change raster (sample_map.py, assess_map.py).",
        "",
        "| code | from | to | mapped area (ha) | share of the change |",
        "|---:|---|---|---:|---:|",
    ]
    for a, b, ha in rows:
        share = 100 * ha / max(changed, 1e-12)
        lines.append(
            f"| {pair_code(a, b)} | {a} {CLASSES[a][0]} | {b} {CLASSES[b][0]} | {ha:,.2f} | {share:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def write_all(args, maps: list, confs: list | None, files: dict[str, Path], pixel_ha: float) -> np.ndarray:
    """Every output under a temporary name, renamed into place together at the end; the matrix (ha)."""
    grid = Grid.of(maps[0])
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p)) for k, p in files.items()}
        dst = stack.enter_context(rasterio_open(tmp["change"], map_profile(grid, NODATA)))
        dst_conf = None
        if confs is not None:
            dst_conf = stack.enter_context(
                rasterio_open(tmp["confidence"], map_profile(grid, CONFIDENCE_NODATA))
            )
            dst_conf.set_band_description(1, "confidence of the change: the lower of both years', percent")
        preview = Preview(grid.height, grid.width)
        counts = compare(maps, confs, dst, dst_conf, args, preview)
        describe(dst, counts, args.stable)
        matrix_ha = counts * pixel_ha
        preview.write(
            tmp["preview"], f"{args.before.name} -> {args.after.name}: changes in the colour of the new class"
        )
        tmp["matrix"].write_text(matrix_csv(matrix_ha))
        tmp["report"].write_text(report_md(args, matrix_ha, pixel_ha))
        for ds in (dst, dst_conf):
            if ds is not None:
                ds.close()
    return matrix_ha


def rasterio_open(path: Path, profile: dict):
    """A raster opened for writing (rasterio imported only when there is work)."""
    import rasterio

    return rasterio.open(path, "w", **profile)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.min_confidence = getattr(args, "min_confidence", None)
    if args.min_confidence is not None:
        check_range("--min-confidence", args.min_confidence, 0, 100)
    inputs = [args.before, args.after, confidence_path(args.before), confidence_path(args.after)]
    check_paths(args, inputs)
    with contextlib.ExitStack() as stack:
        stack.enter_context(reading())
        maps, confs = open_inputs(args, stack)
        pixel_ha = map_info(maps[0], args.before).pixel_area_ha
        files = outputs(args.out, confs is not None)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        matrix_ha = write_all(args, maps, confs, files, pixel_ha)
    rows = transitions(matrix_ha)
    changed = sum(t[2] for t in rows)
    print(
        f"mapped change {changed:,.1f} ha of {matrix_ha.sum():,.1f} ha in {len(rows)} transitions; largest:"
    )
    for a, b, ha in rows[:8]:
        print(f"  {a:2d} -> {b:2d} {CLASSES[a][0][:28]:28s} -> {CLASSES[b][0][:28]:28s} {ha:12,.2f} ha")
    for path in files.values():
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
