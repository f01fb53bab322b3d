"""compare_maps.py: the change raster and the from-to matrix are a count of the pixel pairs; unchanged
and nodata are 0; the confidence of a change and --min-confidence; grids and inputs refused in one
line with nothing written; a killed run leaves nothing that looks finished and a re-run gives the same
files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error, run_script_killed, write_raster

from landcover.change import pair_code, pair_of


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """Two 300 x 700 maps (tiled 128, so blocks cut the map unevenly) differing on ~15 %, nodata in
    both at different places, with confidences."""
    d = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(1)
    a = rng.choice([1, 2, 3, 4, 12], p=[0.4, 0.2, 0.2, 0.15, 0.05], size=(300, 700)).astype(np.uint8)
    b = np.where(rng.random(a.shape) < 0.15, rng.integers(1, 13, a.shape), a).astype(np.uint8)
    a[:20], b[:, :15] = 0, 0
    ca = np.where(a > 0, rng.integers(30, 101, a.shape), 255).astype(np.uint8)
    cb = np.where(b > 0, rng.integers(30, 101, b.shape), 255).astype(np.uint8)
    kw = dict(tiled=True, blockxsize=128, blockysize=128)
    write_raster(d / "a.tif", a, **kw)
    write_raster(d / "b.tif", b, **kw)
    write_raster(d / "a_confidence.tif", ca, nodata=255, **kw)
    write_raster(d / "b_confidence.tif", cb, nodata=255, **kw)
    return d, a, b, ca, cb


def read_matrix(path) -> tuple[list[str], np.ndarray, list[str]]:
    rows = list(csv.reader(path.open()))
    return rows[0], np.array([[float(v) for v in r[1:]] for r in rows[1:]]), [r[0] for r in rows[1:]]


def test_change_raster_and_matrix_are_a_count_of_the_pixel_pairs(runner, maps, tmp_path):
    d, a, b, *_ = maps
    out = tmp_path / "c" / "change.tif"
    res = runner.run("compare_maps.py", "--before", d / "a.tif", "--after", d / "b.tif", "--out", out)
    assert res.returncode == 0, res.stderr
    with rasterio.open(out) as ds:
        codes, tags, table = ds.read(1), ds.tags(1), ds.colormap(1)
    valid = (a > 0) & (b > 0)
    want = np.where(valid & (a != b), (a.astype(int) - 1) * 12 + b, 0)
    assert np.array_equal(codes, want)  # 0 where unchanged or either map has no data
    present = sorted(set(np.unique(want)) - {0})
    assert (
        sorted(int(k.split("_")[1]) for k in tags if k.startswith("CHANGE_") and k != "CHANGE_0") == present
    )
    assert tags[f"CHANGE_{pair_code(3, 5)}"] == "Forest -> Bare soil"
    assert table[pair_code(1, 12)][:3] == (0, 204, 242)  # the after class's colour
    header, m, first = read_matrix(out.with_name("change_matrix.csv"))
    assert header[1:] == [str(c) for c in range(1, 13)] and first == [str(c) for c in range(1, 13)]
    count = np.zeros((12, 12))
    np.add.at(count, (a[valid].astype(int) - 1, b[valid].astype(int) - 1), 1)
    assert m == pytest.approx(count * 0.01, abs=1e-4)  # hectares of 10 m pixels, rows before
    md = out.with_name("change.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| ") and line[2].isdigit()]
    areas = [float(r.split("|")[4].replace(",", "")) for r in rows]
    assert areas == sorted(areas, reverse=True) and len(rows) == len(present)
    largest = np.unravel_index(np.argmax(count - np.diag(np.diag(count))), count.shape)
    assert pair_of(int(rows[0].split("|")[1])) == (largest[0] + 1, largest[1] + 1)
    assert out.with_suffix(".png").stat().st_size > 0


def test_confidence_of_a_change_and_min_confidence(runner, maps, tmp_path):
    d, a, b, ca, cb = maps
    out = tmp_path / "sure.tif"
    args = ["--before", d / "a.tif", "--after", d / "b.tif", "--out", out, "--min-confidence", 60]
    assert runner.run("compare_maps.py", *args).returncode == 0
    with rasterio.open(out) as ds, rasterio.open(tmp_path / "sure_confidence.tif") as cf:
        codes, conf = ds.read(1), cf.read(1)
    changed = (a > 0) & (b > 0) & (a != b)
    low = np.minimum(ca, cb)
    assert np.array_equal(codes > 0, changed & (low >= 60))  # kept: both maps at least 60 % sure
    assert np.array_equal(conf, np.where(codes > 0, low, 255))
    _, m, _ = read_matrix(tmp_path / "change_matrix.csv")
    assert m.sum() == pytest.approx(((a > 0) & (b > 0)).sum() * 0.01)  # dropped changes count as unchanged
    off = m - np.diag(np.diag(m))
    assert off.sum() == pytest.approx((codes > 0).sum() * 0.01)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("grid", "not on --before's grid"),
        ("scene", "not a class map"),
        ("over", "would overwrite an input"),
        ("code", "code 40"),
        ("noconf", "needs both maps' confidence"),
    ],
)
def test_bad_input_one_line_nothing_written(runner, maps, tmp_path, case, needle):
    d, a, *_ = maps
    before, after, out, extra = d / "a.tif", d / "b.tif", tmp_path / "out" / "change.tif", []
    if case == "grid":
        after = write_raster(tmp_path / "shifted.tif", a, origin=(400010.0, 4600000.0))
    elif case == "scene":
        after = write_raster(tmp_path / "scene.tif", np.stack([a, a]).astype(np.uint16))
    elif case == "over":
        out = d / "b_confidence.tif"
    elif case == "code":
        after = write_raster(tmp_path / "code.tif", np.where(a == 4, 40, a).astype(np.uint8))
    elif case == "noconf":
        after = write_raster(tmp_path / "noconf.tif", a)
        extra = ["--min-confidence", 50]
    before_files = sorted(p.name for p in d.iterdir())
    res = runner.run("compare_maps.py", "--before", before, "--after", after, "--out", out, *extra)
    assert_one_line_error(res, needle)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert sorted(p.name for p in d.iterdir()) == before_files


def test_killed_run_leaves_nothing_finished_and_a_rerun_gives_the_same_files(runner, maps, tmp_path):
    d, *_ = maps
    args = ["--before", d / "a.tif", "--after", d / "b.tif"]
    first = tmp_path / "first"
    assert runner.run("compare_maps.py", *args, "--out", first / "change.tif").returncode == 0
    out = tmp_path / "again" / "change.tif"
    killed = run_script_killed("compare_maps.py", "replace", 2, "before", *args, "--out", out)
    assert killed.returncode == -9
    finished = {p.name for p in out.parent.iterdir() if not p.name.endswith(".partial")}
    assert len(finished) == 1  # killed between two renames: the rest is still .partial
    assert runner.run("compare_maps.py", *args, "--out", out).returncode == 0
    for p in first.iterdir():
        if p.suffix != ".png":  # the PNG's title names the files, the same here
            assert (out.parent / p.name).read_bytes() == p.read_bytes(), p.name
    assert not list(out.parent.glob("*.partial"))


def test_stable_codes_the_unchanged_as_their_own_pair_and_zero_is_only_nodata(runner, maps, tmp_path):
    d, a, b, *_ = maps
    out = tmp_path / "stable.tif"
    args = ["--before", d / "a.tif", "--after", d / "b.tif", "--out", out, "--stable"]
    assert runner.run("compare_maps.py", *args).returncode == 0
    with rasterio.open(out) as ds:
        codes, tags = ds.read(1), ds.tags(1)
    valid = (a > 0) & (b > 0)
    assert np.array_equal(codes, np.where(valid, (a.astype(int) - 1) * 12 + b, 0))  # a -> a where unchanged
    assert tags[f"CHANGE_{pair_code(3, 3)}"] == "Forest (unchanged)" and tags["CHANGE_0"] == "No data"
