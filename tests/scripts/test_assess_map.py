"""assess_map.py: end to end after sample_map.py --reference (Olofsson on the map sampled, Stehman on
another map of the grid), the keys of assessment.json, skipped points, and bad input (a sample of
another map, a reference outside 1..12, a missing field, an --out over an input, not a class map):
one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import assert_one_line_error, edit_gpkg, validate_stac_item, write_raster

from landcover.accuracy import olofsson, stehman
from landcover.sampling import read_points
from landcover.stac import write_item

ESTIMATE = {"estimate", "se", "ci95"}
CLASS_KEYS = {"name", "mapped_area_ha", "area_ha", "area_proportion", "users_accuracy", "producers_accuracy"}
TOP_KEYS = {"estimator", "samples_used", "samples_skipped", "overall_accuracy", "classes", "error_matrix"}


def tree(folder) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, runner):
    """A 300 x 400 map, a truth differing on ~12 %, and a sample of it labelled from the truth."""
    d = tmp_path_factory.mktemp("assess")
    rng = np.random.default_rng(0)
    m = rng.choice([1, 3, 4, 12], p=[0.5, 0.3, 0.15, 0.05], size=(300, 400)).astype(np.uint8)
    m[:5] = 0
    wrong = (rng.random(m.shape) < 0.12) & (m > 0)
    truth = np.where(wrong, rng.choice([1, 3, 4, 7, 12], size=m.shape), m).astype(np.uint8)
    kw = dict(tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    write_raster(d / "map.tif", m, **kw)
    write_raster(d / "truth.tif", truth)
    res = runner.run(
        "sample_map.py",
        "--map",
        d / "map.tif",
        "--out",
        d / "s.gpkg",
        "--size",
        300,
        "--reference",
        d / "truth.tif",
    )
    assert res.returncode == 0, res.stderr
    return d, m, truth


def test_end_to_end_olofsson(runner, drawn, tmp_path):
    d, m, _ = drawn
    out = tmp_path / "out"
    res = runner.run("assess_map.py", "--sample", d / "s.gpkg", "--out", out)
    assert res.returncode == 0, res.stderr
    a = json.loads((out / "assessment.json").read_text())
    assert set(a) == TOP_KEYS
    assert a["estimator"] == "olofsson2014" and a["samples_used"] == 300 and a["samples_skipped"] == 0
    assert set(a["overall_accuracy"]) == ESTIMATE
    assert set(a["classes"]) == {"1", "3", "4", "7", "12"}  # 7 only in the reference
    for c in a["classes"].values():
        assert set(c) == CLASS_KEYS
        assert all(set(c[k]) == ESTIMATE for k in CLASS_KEYS - {"name", "mapped_area_ha"})
    assert (
        a["classes"]["7"]["mapped_area_ha"] == 0 and a["classes"]["7"]["users_accuracy"]["estimate"] is None
    )
    assert a["classes"]["3"]["mapped_area_ha"] == pytest.approx((m == 3).sum() * 0.01)
    # the same numbers as the library on the points
    p = read_points(d / "s.gpkg", "reference")
    classes = [1, 3, 4, 7, 12]
    counts = np.zeros((5, 5), np.int64)
    np.add.at(counts, ([classes.index(c) for c in p.stratum], [classes.index(c) for c in p.reference]), 1)
    lib = olofsson(counts, [int((m == c).sum()) for c in classes], classes)
    assert a["overall_accuracy"]["estimate"] == pytest.approx(lib.overall.estimate)
    total_ha = (m > 0).sum() * 0.01
    assert a["classes"]["4"]["area_ha"]["estimate"] == pytest.approx(lib.area[2].estimate * total_ha)
    assert a["error_matrix"]["counts"] == counts.tolist()
    assert sum(a["classes"][k]["area_ha"]["estimate"] for k in a["classes"]) == pytest.approx(total_ha)
    md = (out / "assessment.md").read_text()
    assert "Overall accuracy:" in md and "| 3 Forest |" in md and "Error matrix in sample counts" in md
    assert (out / "areas.png").read_bytes()[:4] == b"\x89PNG"
    assert "overall accuracy" in res.stdout
    assert not list(out.glob("*.partial"))


def test_skipped_points_are_counted(runner, drawn, tmp_path):
    d, _, _ = drawn
    sample = shutil.copy(d / "s.gpkg", tmp_path / "s.gpkg")
    edit_gpkg(sample, "UPDATE sample SET reference = NULL WHERE id <= 10")
    edit_gpkg(sample, "UPDATE sample SET reference = 0 WHERE id = 11")
    edit_gpkg(sample, "DELETE FROM sample WHERE id = 12")
    res = runner.run("assess_map.py", "--sample", sample, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "out/assessment.json").read_text())
    assert (a["samples_used"], a["samples_skipped"]) == (288, 12)
    assert "skipped 12 of 300 points" in res.stdout and "1 of them no longer in the layer" in res.stdout


def test_another_map_on_the_grid_gets_stehman(runner, drawn, tmp_path):
    d, m, _ = drawn
    other = m.copy()
    other[100:150, 100:200] = np.where(other[100:150, 100:200] > 0, 4, 0)  # a second model, say
    write_raster(tmp_path / "other.tif", other)
    res = runner.run(
        "assess_map.py", "--sample", d / "s.gpkg", "--map", tmp_path / "other.tif", "--out", tmp_path / "o"
    )
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "o/assessment.json").read_text())
    assert a["estimator"] == "stehman2014"
    assert a["classes"]["4"]["mapped_area_ha"] == pytest.approx((other == 4).sum() * 0.01)
    p = read_points(d / "s.gpkg", "reference")
    pixels = {c: int((m == c).sum()) for c in (1, 3, 4, 12)}
    lib = stehman(p.stratum, other[p.row, p.col], p.reference, pixels)
    assert a["overall_accuracy"]["estimate"] == pytest.approx(lib.overall.estimate)
    assert a["overall_accuracy"]["se"] == pytest.approx(lib.overall.se)
    # the map sampled, given explicitly, is still Olofsson's case
    res = runner.run(
        "assess_map.py", "--sample", d / "s.gpkg", "--map", d / "map.tif", "--out", tmp_path / "p"
    )
    assert json.loads((tmp_path / "p/assessment.json").read_text())["estimator"] == "olofsson2014"


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("map on another grid", "not on the grid the sample was drawn from"),
        ("strata map changed", "the sample was drawn from another map"),
        ("reference 13", "is not a class code"),
        ("reference 4.5", "holds 4.5"),
        ("missing field", "field 'label' missing"),
        ("out over the sample", "would overwrite an input"),
        ("not a class map", "not a class map"),
        ("stratum edited", "but the map has"),
        ("no labels in a stratum", "no labelled point in stratum"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runner, drawn, tmp_path, case, needle):
    d, m, _ = drawn
    sample = shutil.copy(d / "s.gpkg", tmp_path / "s.gpkg")
    out, extra = tmp_path / "out", []
    if case == "map on another grid":
        extra = ["--map", write_raster(tmp_path / "x.tif", m[:, :-1])]
    elif case == "strata map changed":
        changed = m.copy()
        changed[changed == 4] = 3
        extra = ["--strata-map", write_raster(tmp_path / "x.tif", changed)]
    elif case == "reference 13":
        edit_gpkg(sample, "UPDATE sample SET reference = 13 WHERE id = 5")
    elif case == "reference 4.5":
        edit_gpkg(sample, "UPDATE sample SET reference = 4.5 WHERE id = 5")
    elif case == "missing field":
        extra = ["--reference-field", "label"]
    elif case == "out over the sample":
        sample = shutil.copy(sample, tmp_path / "assessment.json")  # a GeoPackage under that name
        out = tmp_path
    elif case == "not a class map":
        extra = ["--map", write_raster(tmp_path / "x.tif", m.astype(np.float32))]
    elif case == "stratum edited":
        edit_gpkg(
            sample, "UPDATE sample SET stratum = CASE WHEN stratum = 12 THEN 1 ELSE 12 END WHERE id = 5"
        )
    elif case == "no labels in a stratum":
        edit_gpkg(sample, "UPDATE sample SET reference = NULL WHERE stratum = 12")
    before = tree(tmp_path)
    res = runner.run("assess_map.py", "--sample", sample, "--out", out, *extra)
    assert_one_line_error(res, needle)
    assert tree(tmp_path) == before


def test_a_moved_sample_finds_its_map_beside_it(runner, drawn, tmp_path):
    d = drawn[0]
    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    shutil.copy(d / "map.tif", first / "map.tif")
    res = runner.run("sample_map.py", "--map", first / "map.tif", "--out", first / "s.gpkg", "--size", 100)
    assert res.returncode == 0, res.stderr
    first.rename(moved)  # the path the sample recorded is gone: the map beside the sample is used
    edit_gpkg(moved / "s.gpkg", "UPDATE sample SET reference = map_code")
    res = runner.run("assess_map.py", "--sample", moved / "s.gpkg", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out/assessment.json").read_text())["overall_accuracy"]["estimate"] == 1.0
    (moved / "map.tif").rename(tmp_path / "elsewhere.tif")
    res = runner.run("assess_map.py", "--sample", moved / "s.gpkg", "--out", tmp_path / "out2")
    assert_one_line_error(res, "give --strata-map")
    res = runner.run(
        "assess_map.py",
        "--sample",
        moved / "s.gpkg",
        "--strata-map",
        tmp_path / "elsewhere.tif",
        "--out",
        tmp_path / "out2",
    )
    assert res.returncode == 0, res.stderr


def test_the_maps_stac_item_then_lists_the_assessment(runner, drawn, tmp_path):
    d = drawn[0]
    shutil.copy(d / "map.tif", tmp_path / "map.tif")
    write_item(tmp_path / "map.tif")  # as predict.py leaves it
    args = ("--sample", d / "s.gpkg", "--strata-map", tmp_path / "map.tif", "--out", tmp_path / "out")
    res = runner.run("assess_map.py", *args)
    assert res.returncode == 0, res.stderr
    assets = json.loads((tmp_path / "map.json").read_text())["assets"]
    assert assets["assessment"]["href"] == "./out/assessment.json"
    assert assets["assessment_report"]["href"] == "./out/assessment.md"
    validate_stac_item(tmp_path / "map.json")


# The area of each transition between two years, from a sample of the change raster (compare_maps.py
# --stable): its pair codes and names come from the raster, the strata include the unchanged classes.


@pytest.fixture(scope="module")
def two_years(tmp_path_factory, runner):
    """Two truths 400 x 500 with a burn (3 -> 5, 3600 px) and an estate (1 -> 7, 1600 px), two maps of
    them each wrong on ~6 % of the pixels, and the mapped and true change rasters."""
    d = tmp_path_factory.mktemp("years")
    rng = np.random.default_rng(3)
    t1 = np.repeat(np.repeat(rng.choice([1, 3, 4], size=(20, 25)), 20, 0), 20, 1).astype(np.uint8)
    t1[100:160, 100:160], t1[300:340, 300:340] = 3, 1
    t2 = t1.copy()
    t2[100:160, 100:160], t2[300:340, 300:340] = 5, 7
    maps = [np.where(rng.random(t.shape) < 0.06, rng.choice([1, 3, 4, 5], size=t.shape), t) for t in (t1, t2)]
    for name, a in (("t1", t1), ("t2", t2), ("m1", maps[0]), ("m2", maps[1])):
        write_raster(d / f"{name}.tif", a.astype(np.uint8), tiled=True, blockxsize=128, blockysize=128)
    for pair, out in ((("m1", "m2"), "mapped/change.tif"), (("t1", "t2"), "true/change.tif")):
        args = [
            "--before",
            d / f"{pair[0]}.tif",
            "--after",
            d / f"{pair[1]}.tif",
            "--out",
            d / out,
            "--stable",
        ]
        assert runner.run("compare_maps.py", *args).returncode == 0
    return d


def test_transition_areas_from_a_sample_of_the_change_raster(runner, two_years, tmp_path):
    d = two_years
    sample = tmp_path / "change.gpkg"
    draw = ["--map", d / "mapped/change.tif", "--out", sample, "--reference", d / "true/change.tif"]
    res = runner.run("sample_map.py", *draw, "--size", 1500, "--min-per-class", 30, "--seed", 0)
    assert res.returncode == 0, res.stderr
    assert "Forest -> Bare soil" in res.stdout and "Forest (unchanged)" in res.stdout  # the raster's names
    assert runner.run("assess_map.py", "--sample", sample, "--out", tmp_path / "a").returncode == 0
    a = json.loads((tmp_path / "a/assessment.json").read_text())
    assert a["estimator"] == "olofsson2014"
    burn, estate = a["classes"][str((3 - 1) * 12 + 5)], a["classes"][str((1 - 1) * 12 + 7)]
    assert burn["name"] == "Forest -> Bare soil"
    for c, true_ha in ((burn, 36.0), (estate, 16.0)):
        low, high = c["area_ha"]["ci95"]
        assert low <= true_ha <= high, c  # the interval holds the true area
    changed = [c for k, c in a["classes"].items() if (int(k) - 1) // 12 != (int(k) - 1) % 12]
    mapped = sum(c["mapped_area_ha"] for c in changed)
    estimated = sum(c["area_ha"]["estimate"] for c in changed)
    print(f"change: mapped {mapped:.1f} ha, estimated {estimated:.1f} ha, true 52.0 ha")
    assert mapped > 4 * 52.0 and abs(estimated - 52.0) < 0.5 * 52.0  # the pixel count overstates it


def test_transition_areas_of_another_change_raster_by_stehman(runner, two_years, tmp_path):
    """Strata from the sure changes (--min-confidence: here the same maps), assessing every change."""
    d = two_years
    sample = tmp_path / "s.gpkg"
    draw = ["--map", d / "mapped/change.tif", "--out", sample, "--reference", d / "true/change.tif"]
    assert runner.run("sample_map.py", *draw, "--size", 1200, "--min-per-class", 20).returncode == 0
    other = tmp_path / "other/change.tif"
    args = ["--before", d / "m1.tif", "--after", d / "t2.tif", "--out", other, "--stable"]
    assert runner.run("compare_maps.py", *args).returncode == 0
    res = runner.run("assess_map.py", "--sample", sample, "--map", other, "--out", tmp_path / "a")
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "a/assessment.json").read_text())
    assert a["estimator"] == "stehman2014"
    low, high = a["classes"][str(2 * 12 + 5)]["area_ha"]["ci95"]
    assert low <= 36.0 <= high
