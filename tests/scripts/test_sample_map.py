"""sample_map.py: the allocation (minimum per class, all of a small class, --allocation, the rest in
proportion), reproducibility, the GeoPackage's content, and bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
from helpers import assert_one_line_error, write_raster

from landcover.accuracy import allocate, cochran_size


def tree(folder) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def read(path, layer: str) -> dict:
    meta, _, _, data = pyogrio.raw.read(path, layer=layer, read_geometry=False)
    return dict(zip(meta["fields"], data, strict=True))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 400 x 500 map (class 7 has 30 pixels), its confidence and a truth that differs on ~10 %."""
    d = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    m = rng.choice([1, 3, 4, 12], p=[0.5, 0.3, 0.15, 0.05], size=(400, 500)).astype(np.uint8)
    m[:10] = 0
    m[200, 100:130] = 7
    conf = np.where(m > 0, rng.integers(0, 101, m.shape), 255).astype(np.uint8)
    truth = np.where((rng.random(m.shape) < 0.1) & (m > 0), rng.choice([1, 3, 4, 12], size=m.shape), m)
    kw = dict(tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    write_raster(d / "map.tif", m, **kw)
    write_raster(d / "map_confidence.tif", conf, nodata=255, **kw)
    write_raster(d / "truth.tif", truth.astype(np.uint8))
    return d, m, conf, truth


def test_allocation_reproducibility_and_content(runner, scene, tmp_path):
    d, m, conf, truth = scene
    out = tmp_path / "s.gpkg"
    res = runner.run(
        "sample_map.py", "--map", d / "map.tif", "--out", out, "--size", 400, "--reference", d / "truth.tif"
    )
    assert res.returncode == 0, res.stderr
    strata, pts = read(out, "strata"), read(out, "sample")
    pixels = [int((m == c).sum()) for c in (1, 3, 4, 7, 12)]
    assert strata["stratum"].tolist() == [1, 3, 4, 7, 12]
    assert strata["pixels"].tolist() == pixels
    assert strata["n"].tolist() == allocate(pixels, 400, 50).tolist()
    assert strata["n"][3] == 30  # class 7: all of its 30 pixels
    assert strata["area_ha"].tolist() == pytest.approx([p * 0.01 for p in pixels])
    r, c = pts["row"], pts["col"]
    assert len(set(zip(r, c, strict=True))) == len(r) == 400
    assert np.all(m[r, c] == pts["stratum"]) and np.all(pts["map_code"] == pts["stratum"])
    assert np.all(pts["confidence"] == conf[r, c]) and np.all(pts["reference"] == truth[r, c])
    assert (pts["map_name"][pts["map_code"] == 3] == "Forest").all()
    info = read(out, "map")
    assert info["file"][0] == "map.tif" and info["width"][0] == 500 and info["pixel_area_ha"][0] == 0.01
    # the same seed: the same sample; another seed: another
    again, other = tmp_path / "again.gpkg", tmp_path / "other.gpkg"
    runner.run("sample_map.py", "--map", d / "map.tif", "--out", again, "--size", 400)
    runner.run("sample_map.py", "--map", d / "map.tif", "--out", other, "--size", 400, "--seed", 1)
    a, b = read(again, "sample"), read(other, "sample")
    assert np.array_equal(a["row"], r) and np.array_equal(a["col"], c)
    assert np.isnan(a["reference"]).all()  # without --reference: NULL for the interpreters
    assert not (np.array_equal(b["row"], r) and np.array_equal(b["col"], c))


def test_fixed_allocation_and_cochran(runner, scene, tmp_path):
    d, m, _, _ = scene
    out = tmp_path / "fixed.gpkg"
    fixed = ["1=60", "3=40", "4=20", "7=5", "12=10"]
    res = runner.run("sample_map.py", "--map", d / "map.tif", "--out", out, "--allocation", *fixed)
    assert res.returncode == 0, res.stderr
    assert read(out, "strata")["n"].tolist() == [60, 40, 20, 5, 10]  # every class fixed: no size needed
    out2 = tmp_path / "cochran.gpkg"
    res = runner.run(
        "sample_map.py", "--map", d / "map.tif", "--out", out2, "--target-se", 0.02, "--allocation", "3=100"
    )
    assert res.returncode == 0, res.stderr
    pixels = [int((m == c).sum()) for c in (1, 3, 4, 7, 12)]
    n = cochran_size(pixels, [0.85] * 5, 0.02)
    assert f"Cochran: n = {n}" in res.stdout
    assert read(out2, "strata")["n"].tolist() == allocate(pixels, n, 50, {1: 100}).tolist()


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("float map", "not a class map"),
        ("out over the map", "would overwrite an input"),
        ("out exists", "--out exists"),
        ("not gpkg", "must be a GeoPackage"),
        ("reference on another grid", "not on the map's grid"),
        ("reference code 13", "code 13"),
        ("allocation of an absent class", "no pixel of class 5"),
        ("allocation too large", "has only 30 pixels"),
        ("allocation of one point", "2 points at least"),
        ("code above 12", "code 41"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runner, scene, tmp_path, case, needle):
    d, m, _, truth = scene
    mp, out, extra = d / "map.tif", tmp_path / "s.gpkg", []
    if case == "float map":
        mp = write_raster(tmp_path / "f.tif", m.astype(np.float32))
    elif case == "out over the map":
        mp = out = write_raster(tmp_path / "m.gpkg", m)  # a GeoTIFF under a .gpkg name
    elif case == "out exists":
        out.write_text("labels")
    elif case == "not gpkg":
        out = tmp_path / "s.shp"
    elif case == "reference on another grid":
        extra = ["--reference", write_raster(tmp_path / "r.tif", truth[:-1].astype(np.uint8))]
    elif case == "reference code 13":
        extra = ["--reference", write_raster(tmp_path / "r.tif", np.full(m.shape, 13, np.uint8))]
    elif case == "allocation of an absent class":
        extra = ["--allocation", "5=10"]
    elif case == "allocation too large":
        extra = ["--allocation", "7=31"]
    elif case == "allocation of one point":
        extra = ["--allocation", "7=1"]
    elif case == "code above 12":
        bad = m.copy()
        bad[300, 300] = 41
        mp = write_raster(tmp_path / "bad.tif", bad)
    before = tree(tmp_path)
    res = runner.run("sample_map.py", "--map", mp, "--out", out, "--size", 100, *extra)
    assert_one_line_error(res, needle)
    assert tree(tmp_path) == before


def test_a_change_raster_is_sampled_on_its_own_codes_and_names(runner, tmp_path):
    """compare_maps.py's change raster (pair codes up to 144, named in its tags): one stratum per pair
    present, named as in the raster, and a from-to reference filled."""
    rng = np.random.default_rng(2)
    a = rng.choice([3, 4, 12], size=(200, 300)).astype(np.uint8)
    b = np.where(rng.random(a.shape) < 0.05, 5, a).astype(np.uint8)
    write_raster(tmp_path / "a.tif", a)
    write_raster(tmp_path / "b.tif", b)
    change = tmp_path / "c/change.tif"
    args = ["--before", tmp_path / "a.tif", "--after", tmp_path / "b.tif", "--out", change, "--stable"]
    assert runner.run("compare_maps.py", *args).returncode == 0
    out = tmp_path / "s.gpkg"
    res = runner.run("sample_map.py", "--map", change, "--out", out, "--size", 300, "--reference", change)
    assert res.returncode == 0, res.stderr
    strata, pts = read(out, "strata"), read(out, "sample")
    codes = (a.astype(int) - 1) * 12 + b
    assert strata["stratum"].tolist() == sorted(set(np.unique(codes).tolist()))  # 27, 29, 40, 41, 137, 138
    assert (
        dict(zip(strata["stratum"].tolist(), strata["name"].tolist(), strict=True))[29]
        == "Forest -> Bare soil"
    )
    assert np.all(pts["reference"] == pts["stratum"]) and pts["reference"].max() > 12
