"""Estimate a map's accuracy and its classes' areas, with confidence intervals, from a labelled sample.

Reads ``--sample`` (sample_map.py's GeoPackage, its field ``--reference-field`` filled by the
interpreters) and the map to assess (``--map``; by default the map the sample was drawn from). Writes
into ``--out``: ``assessment.json`` (overall, user's and producer's accuracy, every class's
error-adjusted area, each with its standard error and 95 % interval, and the error matrix in sample
counts and in estimated area proportions), ``assessment.md`` (the tables a report prints) and
``areas.png`` (mapped against error-adjusted area per class). This is the statement a map is
published with: the pixel count of a class is biased by the map's errors, the estimate is not. The
map's STAC item (``MAP.json`` beside it), when there is one, then lists the assessment.

Estimators: when the map assessed is the map the sample was stratified on, Olofsson et al. 2014 (Remote
Sensing of Environment 148); another map on the same grid (the map after a minimum mapping unit, a
second model, next year's map), Stehman 2014 (International Journal of Remote Sensing 35), whose strata
differ from the map classes. A change raster (compare_maps.py --stable) is assessed like a map: its
from-to pair codes and names come from the raster, each transition's area estimated. Points whose
reference is NULL or 0 are skipped (and counted); the variances include the finite population
correction (see landcover/accuracy.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from colormap import CLASSES, NODATA, name
from landcover.accuracy import Assessment, Estimate, olofsson, stehman
from landcover.change import pair_colour, pair_name
from landcover.common import ArgumentParser, atomic_write_text, fail, require_file, run_main
from landcover.figures import area_figure, save_figure
from landcover.geo import Grid
from landcover.sampling import (
    MAX_CODE,
    MapInfo,
    class_names,
    count_classes,
    largest_code,
    open_class_map,
    read_map_info,
    read_points,
    read_table,
    reading,
    values_at,
    windows,
)
from landcover.stac import add_to_item

OUTPUTS = ("assessment.json", "assessment.md", "areas.png")


def build_parser() -> ArgumentParser:
    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--sample", type=Path, required=True, help="the labelled sample (sample_map.py's .gpkg)")
    p.add_argument("--map", type=Path, help="the map to assess (default: the one the sample was drawn from)")
    p.add_argument(
        "--strata-map",
        type=Path,
        help="the map the sample was drawn from, when it is no longer where the sample says",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for assessment.json, .md and areas.png")
    p.add_argument("--reference-field", default="reference", help="the field holding the reference codes")
    return p


class Inputs:
    """The sample, its strata and the two maps (the stratification map and the map assessed)."""

    def __init__(self, args):
        self.sample = require_file(args.sample, "sample")
        self.info = read_map_info(self.sample)
        strata = read_table(self.sample, "strata", ("stratum", "pixels", "n"))
        self.pixels = {int(s): int(n) for s, n in zip(strata["stratum"], strata["pixels"], strict=True)}
        self.drawn = int(np.sum(strata["n"]))
        self.strata_map = locate_strata_map(args.strata_map, self.info, self.sample)
        with reading(), open_class_map(self.strata_map, "the sample's map") as ds:
            self.names, self.largest = class_names(ds), largest_code(ds)  # a change raster's pairs, or 1..12
        self.points = read_points(self.sample, args.reference_field, self.largest)
        self.map = args.map if args.map is not None else self.strata_map
        self.same = self.map.resolve() == self.strata_map.resolve()

    def name(self, code: int) -> str:
        """A code's name: the map's own, else its class's or from-to pair's."""
        if code in self.names:
            return self.names[code]
        return pair_name(code) if self.largest > MAX_CODE else name(code)

    def colour(self, code: int) -> str:
        """A code's colour in the figure: its class's, or its from-to pair's."""
        if self.largest == MAX_CODE:
            return CLASSES[code][1]
        return "#{:02x}{:02x}{:02x}".format(*pair_colour(code)[:3])

    def check_points(self) -> None:
        """The points are the sample's: in the grid, each pixel once, strata of the table."""
        p, g = self.points, self.info.grid
        if len(p) == 0:
            fail(f"the sample has no point: {self.sample}")
        if np.any((p.row < 0) | (p.row >= g.height) | (p.col < 0) | (p.col >= g.width)):
            fail(f"the sample has points outside the map's grid (row, col edited?): {self.sample}")
        if len(np.unique(p.row * g.width + p.col)) < len(p):
            fail(f"the sample has a pixel twice (points copied?): {self.sample}")
        unknown = sorted(set(np.unique(p.stratum).tolist()) - set(self.pixels))
        if unknown:
            fail(f"the sample has points of stratum {unknown[0]}, not in its strata table: {self.sample}")


def locate_strata_map(given: Path | None, info: MapInfo, sample: Path) -> Path:
    """The map the sample was drawn from: --strata-map, the path it was drawn at, or its name beside
    the sample."""
    if given is not None:
        return require_file(given, "--strata-map")
    for candidate in (Path(info.path), sample.parent / info.file):
        if candidate.is_file():
            return candidate
    fail(f"the sample's map {info.file} is not at {info.path} nor beside the sample: give --strata-map")


def check_grid(ds, info: MapInfo, what: str, path: Path) -> None:
    if not Grid.of(ds).matches(info.grid):
        fail(
            f"{what} is not on the grid the sample was drawn from ({Grid.of(ds)}; "
            f"the sample's: {info.grid}): {path}"
        )


def read_maps(inp: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each code of the map assessed (within the stratification map's valid pixels), and its
    codes at the points; the stratification map must be the one the sample was drawn from."""
    p = inp.points
    with contextlib.ExitStack() as stack:
        stack.enter_context(reading())
        strata = stack.enter_context(open_class_map(inp.strata_map, "the sample's map"))
        check_grid(strata, inp.info, "the sample's map", inp.strata_map)
        wins = windows(strata)
        totals, _ = count_classes(strata, "the sample's map", wins, max_code=inp.largest)
        changed = [c for c in range(1, len(totals)) if int(totals[c]) != inp.pixels.get(c, 0)]
        if changed:
            c = changed[0]
            fail(
                f"the sample was drawn from another map: class {c} has {int(totals[c])} pixels in "
                f"{inp.strata_map}, {inp.pixels.get(c, 0)} in the sample's strata table"
            )
        here = values_at(strata, p.row, p.col, "the sample's map").astype(np.int64)
        if np.any(here != p.stratum):
            i = int(np.flatnonzero(here != p.stratum)[0])
            fail(f"point id {p.id[i]}: stratum {p.stratum[i]} but the map has {here[i]} there: {inp.sample}")
        if inp.same:
            return totals, here
        other = stack.enter_context(open_class_map(inp.map, "map"))
        check_grid(other, inp.info, "map", inp.map)
        mapped, _ = count_classes(other, "map", windows(other), within=strata, max_code=largest_code(other))
        return mapped, values_at(other, p.row, p.col, "map").astype(np.int64)


def assess(inp: Inputs, mapped: np.ndarray, codes_at: np.ndarray) -> tuple[str, Assessment]:
    """The estimator that fits, on the labelled points."""
    p = inp.points
    used = p.reference > 0
    stratum, code, ref = p.stratum[used], codes_at[used], p.reference[used]
    missing = sorted(c for c, n in inp.pixels.items() if n > 0 and not np.any(stratum == c))
    if missing:
        c = missing[0]
        fail(f"no labelled point in stratum {c} ({inp.name(c)}): label some to assess the map")
    same = np.array_equal(codes_at, p.stratum) and all(
        int(mapped[c]) == inp.pixels.get(c, 0) for c in range(1, len(mapped))
    )
    if not same:
        return "stehman2014", stehman(stratum, code, ref, inp.pixels)
    classes = sorted(set(inp.pixels) | set(np.unique(ref).tolist()))
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(counts, ([index[c] for c in stratum], [index[c] for c in ref]), 1)
    return "olofsson2014", olofsson(counts, [inp.pixels.get(c, 0) for c in classes], classes)


def as_json(e: Estimate, scale: float = 1.0) -> dict:
    """{"estimate", "se", "ci95"} of an estimate (in hectares with ``scale``); NaN as null."""
    s = e.scaled(scale)
    low, high = s.ci95(0.0, scale)
    return {"estimate": _num(s.estimate), "se": _num(s.se), "ci95": [_num(low), _num(high)]}


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def result(estimator: str, a: Assessment, mapped: np.ndarray, inp: Inputs, total_ha: float) -> dict:
    """assessment.json's content."""
    used = int((inp.points.reference > 0).sum())
    classes = {}
    for i, c in enumerate(a.classes):
        classes[str(c)] = {
            "name": inp.name(c),
            "mapped_area_ha": float(mapped[c]) * inp.info.pixel_area_ha,
            "area_ha": as_json(a.area[i], total_ha),
            "area_proportion": as_json(a.area[i]),
            "users_accuracy": as_json(a.users[i]),
            "producers_accuracy": as_json(a.producers[i]),
        }
    matrix = {
        "rows": "map class",
        "columns": "reference class",
        "classes": list(a.classes),
        "counts": a.counts.tolist(),
        "proportions": [[_num(v) for v in row] for row in a.proportions],
    }
    return {
        "estimator": estimator,
        "samples_used": used,
        "samples_skipped": inp.drawn - used,
        "overall_accuracy": as_json(a.overall),
        "classes": classes,
        "error_matrix": matrix,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args_none_unshown(argv)
    inp = Inputs(args)
    inp.check_points()
    check_out(args.out, [inp.sample, inp.map, inp.strata_map])
    mapped, codes_at = read_maps(inp)
    estimator, a = assess(inp, mapped, codes_at)
    total_ha = float(sum(inp.pixels.values())) * inp.info.pixel_area_ha
    res = result(estimator, a, mapped, inp, total_ha)
    skipped = res["samples_skipped"]
    if skipped:
        deleted = inp.drawn - len(inp.points)
        gone = f", {deleted} of them no longer in the layer" if deleted > 0 else ""
        print(f"skipped {skipped} of {inp.drawn} points whose reference is empty or 0{gone}")
    if np.any(codes_at[inp.points.reference > 0] == NODATA):
        print("some labelled points are nodata in the map assessed: wrong in overall accuracy")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "assessment.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(args.out / "assessment.md", markdown(res, inp))
    write_figure(res, args.out / "areas.png", inp.colour)
    print_summary(res)
    print(f"wrote {', '.join(str(args.out / f) for f in OUTPUTS)}")
    item = add_to_item(
        inp.map, {"assessment": args.out / OUTPUTS[0], "assessment_report": args.out / OUTPUTS[1]}
    )
    if item:
        print(f"wrote {item} (the map's STAC item, now listing the assessment)")


def check_out(out: Path, inputs: Sequence[Path]) -> None:
    """--out: a folder (made if missing) whose outputs are none of the inputs."""
    if out.exists() and not out.is_dir():
        fail(f"--out is a file, not a folder: {out}")
    for f in OUTPUTS:
        if any((out / f).resolve() == p.resolve() for p in inputs):
            fail(f"--out would overwrite an input: {out / f}")


def interval(e: dict, digits: int = 3, scale: float = 1.0) -> str:
    """'0.947 (0.929-0.965)', or 'n/a'."""
    if e["estimate"] is None:
        return "n/a"
    low, high = (("n/a" if v is None else f"{v * scale:,.{digits}f}") for v in e["ci95"])
    return f"{e['estimate'] * scale:,.{digits}f} ({low} to {high})"


def markdown(res: dict, inp: Inputs) -> str:
    """assessment.md: the tables a report prints."""
    oa = res["overall_accuracy"]
    lines = [
        f"# Accuracy assessment of {inp.map.name}",
        "",
        f"Sample: {inp.sample.name} (drawn from {inp.info.file}, {inp.drawn} points); estimator "
        f"{res['estimator']}; {res['samples_used']} points used, {res['samples_skipped']} skipped "
        "(no reference).",
        "",
        f"Overall accuracy: {interval(oa)} (95 % interval), standard error {_fmt(oa['se'])}.",
        "",
        "| class | mapped area (ha) | error-adjusted area (ha), 95 % interval | user's accuracy "
        "| producer's accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for code, c in res["classes"].items():
        area = interval(c["area_ha"], 1)
        lines.append(
            f"| {code} {c['name']} | {c['mapped_area_ha']:,.1f} | {area} | "
            f"{interval(c['users_accuracy'])} | {interval(c['producers_accuracy'])} |"
        )
    m = res["error_matrix"]
    for title, key, fmt in (
        ("sample counts", "counts", "{:d}"),
        ("estimated area proportions", "proportions", "{:.4f}"),
    ):
        lines += ["", f"Error matrix in {title} (rows: map class, columns: reference class):", ""]
        lines.append("| map \\ reference | " + " | ".join(str(c) for c in m["classes"]) + " |")
        lines.append("|---|" + "---:|" * len(m["classes"]))
        for c, row in zip(m["classes"], m[key], strict=True):
            lines.append(f"| {c} | " + " | ".join(fmt.format(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_figure(res: dict, path: Path, colour=lambda code: CLASSES[code][1]) -> None:
    """areas.png: mapped and error-adjusted area of each class, with the 95 % intervals."""
    save_figure(area_figure(res, colour), path, dpi=120)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


def print_summary(res: dict) -> None:
    """Overall accuracy and the three classes whose error-adjusted area differs most from the map's."""
    print(f"estimator {res['estimator']}: {res['samples_used']} points used")
    print(f"overall accuracy {interval(res['overall_accuracy'])}")
    diff = [
        (abs(c["area_ha"]["estimate"] - c["mapped_area_ha"]), k, c)
        for k, c in res["classes"].items()
        if c["area_ha"]["estimate"] is not None
    ]
    for _, k, c in sorted(diff, key=lambda t: -t[0])[:3]:
        print(
            f"  {k:>2} {c['name']}: mapped {c['mapped_area_ha']:,.1f} ha, "
            f"estimated {interval(c['area_ha'], 1)} ha"
        )


if __name__ == "__main__":
    sys.exit(run_main(main))
