"""Draw a stratified random sample of a land-cover map's pixels for its accuracy assessment.

Reads ``--map`` (a class map: one uint8 band, codes 1..12, nodata 0, e.g. predict.py's output; or a
change raster of compare_maps.py, its from-to pair codes named in the raster), the
confidence raster beside it (``MAP_confidence.tif``, when there is one) and optionally ``--reference``
(a land-cover raster on the same grid). Writes ``--out``, a GeoPackage: the point layer ``sample``
(one point per sampled pixel centre; the field ``reference`` is what the interpreters fill in QGIS)
and the tables ``strata`` and ``map``. assess_map.py turns the labelled sample into the map's accuracy
and error-adjusted areas with confidence intervals (Olofsson et al. 2014): a map is published with
those, not with a test split's scores.

The strata are the map's classes. Sample size: ``--size``, or Cochran's formula for a target standard
error of overall accuracy (``--target-se``, with every class's user's accuracy conjectured at
``--expected-accuracy``; Olofsson 2014 eq. 13). Allocation: each class gets at least
``--min-per-class`` (all its pixels when it has fewer), the rest in proportion to mapped area;
``--allocation 3=100 11=80`` fixes a class's size (with every class fixed, no size is needed). No
pixel is drawn twice, and the same ``--seed`` draws the same sample. The map is read by blocks, twice
at most (memory does not grow with the map). An existing ``--out`` is never overwritten: it may hold
labels.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from colormap import NODATA
from landcover.accuracy import allocate, cochran_size
from landcover.common import ArgumentParser, atomic_path, check_range, fail, open_raster, run_main
from landcover.geo import Grid
from landcover.sampling import (
    Points,
    class_names,
    count_classes,
    draw_ordinals,
    largest_code,
    locate,
    map_info,
    open_class_map,
    reading,
    values_at,
    windows,
    write_sample,
)

CONFIDENCE_NODATA = 255
MIN_POINTS = 2  # the fewest points of a class with more pixels: a stratum's variance needs two


def build_parser() -> ArgumentParser:
    p = ArgumentParser.for_script(__doc__)
    p.add_argument(
        "--map",
        type=Path,
        required=True,
        help="the class map to assess (uint8, codes 1..12, or a change raster's pair codes)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the GeoPackage to write (.gpkg; never overwritten)"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="total sample size (default: from --target-se)")
    size.add_argument(
        "--target-se", type=float, default=0.01, help="target standard error of overall accuracy (Cochran)"
    )
    p.add_argument("--min-per-class", type=int, default=50, help="smallest sample of a class")
    p.add_argument(
        "--allocation", nargs="+", metavar="CODE=N", default=[], help="fixed sample sizes of classes"
    )
    p.add_argument(
        "--expected-accuracy",
        type=float,
        default=0.85,
        help="conjectured user's accuracy of every class, for Cochran's formula",
    )
    p.add_argument(
        "--reference", type=Path, help="a land-cover raster on the map's grid that fills the reference field"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (same seed, same sample)")
    return p


def parse_allocation(pairs: Sequence[str]) -> dict[int, int]:
    """--allocation CODE=N ... as {code: n}."""
    out = {}
    for pair in pairs:
        code, _, n = pair.partition("=")
        try:
            c, k = int(code), int(n)
        except ValueError:
            fail(f"--allocation {pair}: expected CODE=N, e.g. 3=100")
        if c < 1 or k < 0:
            fail(f"--allocation {pair}: codes are 1 or more (the map's classes), sizes 0 or more")
        out[c] = k
    return out


def check_paths(args) -> None:
    """The output: a new .gpkg that is none of the inputs."""
    out = args.out
    if out.suffix.lower() != ".gpkg":
        fail(f"--out must be a GeoPackage (.gpkg): {out}")
    for other in (args.map, args.reference, confidence_path(args.map)):
        if other is not None and out.resolve() == other.resolve():
            fail(f"--out would overwrite an input: {out}")
    if out.exists():
        fail(f"--out exists: {out} (it may hold labels: remove it or name another file to draw again)")
    if out.parent.exists() and not out.parent.is_dir():
        fail(f"--out is under a file: {out}")


def confidence_path(map_path: Path) -> Path:
    """predict.py's confidence raster beside a map: MAP_confidence.tif."""
    return map_path.with_name(f"{map_path.stem}_confidence.tif")


def open_on_grid(path: Path, what: str, grid: Grid):
    """A one-band integer raster on the map's grid, or one line."""
    ds = open_raster(path, what)
    if ds.count != 1 or not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
        ds.close()
        fail(f"{what} must be one band of integers: {path}")
    if not Grid.of(ds).matches(grid):
        ds.close()
        fail(f"{what} is not on the map's grid ({Grid.of(ds)}; the map: {grid}): {path}")
    return ds


def sample_sizes(args, pixels: dict[int, int], fixed: dict[int, int]) -> dict[int, int]:
    """Each class's sample size: fixed, or from --size / Cochran with the minimum per class."""
    codes = sorted(pixels)
    for c, k in fixed.items():
        if c not in pixels:
            fail(f"--allocation {c}={k}: the map has no pixel of class {c}")
        if k > pixels[c]:
            fail(f"--allocation {c}={k}: class {c} has only {pixels[c]} pixels")
        if k < min(MIN_POINTS, pixels[c]):
            fail(f"--allocation {c}={k}: a class needs {MIN_POINTS} points at least (for its variance)")
    size = args.size
    if size is None and any(c not in fixed for c in codes):
        weights = [pixels[c] for c in codes]
        size = cochran_size(weights, [args.expected_accuracy] * len(codes), args.target_se)
        print(
            f"Cochran: n = {size} for a standard error of {args.target_se:g} on overall accuracy "
            f"(user's accuracies conjectured at {args.expected_accuracy:g})"
        )
    index = {c: i for i, c in enumerate(codes)}
    n = allocate(
        [pixels[c] for c in codes], size, args.min_per_class, {index[c]: k for c, k in fixed.items()}
    )
    if size is not None and n.sum() > size:
        print(f"the minimum per class and the fixed sizes take the sample to {int(n.sum())} (asked: {size})")
    return {c: int(k) for c, k in zip(codes, n, strict=True)}


def fill(points: Points, ds, what: str, nodata: set[int], allowed: range | None) -> np.ndarray:
    """Values of another raster at the sampled pixels, -1 where it has no data."""
    v = values_at(ds, points.row, points.col, what).astype(np.int64)
    out = np.where(np.isin(v, list(nodata)), -1, v)
    if allowed is not None:
        bad = (out >= 0) & ~np.isin(out, list(allowed))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            fail(
                f"{what} has code {out[i]} at row {points.row[i]}, col {points.col[i]}: classes are "
                f"{allowed.start}..{allowed.stop - 1}, nodata {sorted(nodata)}: {ds.name}"
            )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args_none_unshown(argv)
    if args.size is not None:
        check_range("--size", args.size, 1)
    check_range("--target-se", args.target_se, 0, 1, low_open=True)
    check_range("--min-per-class", args.min_per_class, MIN_POINTS)
    check_range("--expected-accuracy", args.expected_accuracy, 0, 1)
    fixed = parse_allocation(args.allocation)
    check_paths(args)
    with contextlib.ExitStack() as stack:
        stack.enter_context(reading())
        ds = stack.enter_context(open_class_map(args.map))
        info = map_info(ds, args.map, args.seed)
        conf, ref = (r if r is None else stack.enter_context(r) for r in open_extras(args, info.grid))
        wins, names = windows(ds), class_names(ds)  # a change raster's pair codes, else 1..12
        totals, per = count_classes(ds, "map", wins, max_code=largest_code(ds))
        pixels = {c: int(totals[c]) for c in names if totals[c] > 0}
        if not pixels:
            fail(f"map has no valid pixel (codes {min(names)}..{max(names)}): {args.map}")
        sizes = sample_sizes(args, pixels, fixed)
        points = locate(ds, wins, per, draw_ordinals(pixels, sizes, args.seed))
        if conf is not None:
            points.confidence = fill(points, conf, "confidence raster", {CONFIDENCE_NODATA}, range(0, 101))
        if ref is not None:
            nodata = {NODATA} | ({int(ref.nodata)} if ref.nodata is not None else set())
            allowed = range(1, largest_code(ds) + 1)
            points.reference = fill(points, ref, "reference raster", nodata, allowed)
    strata = [
        dict(stratum=c, name=names[c], pixels=pixels[c], area_ha=pixels[c] * info.pixel_area_ha, n=sizes[c])
        for c in sorted(pixels)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        write_sample(tmp, points, strata, info)
    report(args, strata, points, conf is not None)


def open_extras(args, grid: Grid) -> tuple:
    """The confidence raster beside the map (None without one) and the --reference raster (or None)."""
    path = confidence_path(args.map)
    conf = open_on_grid(path, "confidence raster", grid) if path.is_file() else None
    ref = open_on_grid(args.reference, "reference raster", grid) if args.reference is not None else None
    return conf, ref


def report(args, strata: list[dict], points: Points, with_confidence: bool) -> None:
    """The allocation and what was written."""
    print(f"{'class':44s} {'pixels':>12s} {'area ha':>12s} {'n':>6s}")
    for s in strata:
        print(f"{s['stratum']:2d} {s['name']:41s} {s['pixels']:12,d} {s['area_ha']:12,.1f} {s['n']:6d}")
    filled = int((points.reference > 0).sum())
    notes = [] if with_confidence else ["no confidence raster beside the map: confidence NULL"]
    if args.reference is not None:
        notes.append(f"reference filled from {args.reference} at {filled} of {len(points)} points")
    for note in notes:
        print(note)
    print(f"wrote {args.out} ({len(points)} points, seed {args.seed}): label the field 'reference'")


if __name__ == "__main__":
    sys.exit(run_main(main))
