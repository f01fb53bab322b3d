"""make_demo_data.py: grids, classes, nodata, seasons, clouds, thin features, seeds, the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from helpers import ROOT, assert_one_line_error, run_script
from scipy import ndimage
from sklearn.neighbors import KNeighborsClassifier

import make_demo_data as demo
from colormap import CODES, gdal_colour_table

SIZE = 300  # 3 km: every class is there, a few seconds to make


def read_all(folder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """April (10, n, n), August (10, n, n) as float, and the 1 m mask (10n, 10n)."""
    paths = demo.outputs(folder)
    with (
        rasterio.open(paths["april"]) as a,
        rasterio.open(paths["august"]) as b,
        rasterio.open(paths["mask"]) as m,
    ):
        return a.read().astype(np.float32), b.read().astype(np.float32), m.read(1)


def blocks(mask: np.ndarray) -> np.ndarray:
    """(10n, 10n) 1 m mask -> (n, n, 100): the 1 m pixels under each 10 m pixel."""
    n = mask.shape[0] // demo.FINE
    return mask.reshape(n, 10, n, 10).transpose(0, 2, 1, 3).reshape(n, n, 100)


def ndvi(img: np.ndarray) -> np.ndarray:
    red, nir = img[demo.BANDS.index("B4")], img[demo.BANDS.index("B8")]
    return (nir - red) / np.maximum(nir + red, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, SIZE, seed=0, show_progress=False)
    april, august, mask = read_all(out)
    return out, april, august, mask


def test_grids_bands_and_nodata_of_the_three_files(data):
    out, *_ = data
    paths = demo.outputs(out)
    assert sorted(p.name for p in out.iterdir()) == ["landcover_1m.tif", "s2_april.tif", "s2_august.tif"]
    with (
        rasterio.open(paths["april"]) as a,
        rasterio.open(paths["august"]) as b,
        rasterio.open(paths["mask"]) as m,
    ):
        for s in (a, b):
            assert (s.count, s.width, s.height, s.dtypes[0]) == (10, SIZE, SIZE, "uint16")
            assert s.descriptions == demo.BANDS
            assert s.crs.to_epsg() == 32631 and s.res == (10.0, 10.0) and s.nodata == 0
            assert s.profile["tiled"] and s.compression.name.lower() == "deflate"
            assert s.tags()["REFLECTANCE_SCALE"] == "10000"
        assert a.transform == b.transform
        assert (m.count, m.dtypes[0], m.nodata) == (1, "uint8", 0)
        assert m.crs == a.crs and m.bounds == a.bounds
        assert m.res == (1.0, 1.0) and (m.width, m.height) == (10 * SIZE, 10 * SIZE)
        assert m.profile["tiled"] and m.compression.name.lower() == "deflate"
        table = m.colormap(1)
        for code, rgba in gdal_colour_table().items():
            assert table[code] == rgba


def test_every_class_beach_and_sea_are_in_the_mask_and_nothing_else(data):
    *_, mask = data
    codes, counts = np.unique(mask, return_counts=True)
    assert set(codes.tolist()) == {0, *CODES, demo.BEACH, demo.SEA}
    share = dict(zip(codes.tolist(), counts / mask.size, strict=True))
    for rare in (5, 7, 8, 10, 11):  # rare, yet enough to learn from
        assert share[rare] > 0.0005, (rare, share[rare])


def test_nodata_outside_the_region_in_mask_and_scenes_alike(data):
    _, april, august, mask = data
    outside = (blocks(mask) == 0).mean(axis=2)
    for img in (april, august):
        nodata = np.all(img == 0, axis=0)
        assert nodata.any() and not nodata.all()
        assert np.array_equal(np.any(img == 0, axis=0), nodata)  # a pixel is nodata in all bands or none
        assert np.array_equal(nodata, outside > 0.5)  # the scene follows the 1 m region boundary
    assert 0.01 < (mask == 0).mean() < 0.4


def test_the_scene_is_the_mean_of_its_1m_pixels(data):
    """A 10 m pixel half water is darker in NIR than one a tenth water: mixed pixels are mixed."""
    _, _, august, mask = data
    b = blocks(mask)
    water = np.isin(b, (12, demo.SEA)).mean(axis=2)
    land = ((b != 0) & ~np.isin(b, (12, demo.SEA))).mean(axis=2)
    shore = (water > 0) & (land > 0) & (water + land == 1)
    assert shore.sum() > 100
    nir = august[demo.BANDS.index("B8")][shore]
    assert np.corrcoef(water[shore], nir)[0, 1] < -0.7


def test_seasons_herbaceous_crops_harvested_woody_crops_and_forest_stable(data):
    _, april, august, mask = data
    b = blocks(mask)
    clear = april[0] < 2500  # no cloud over the pixel
    change = {}
    for code in (1, 2, 3, 4):
        pure = np.all(b == code, axis=2) & clear
        assert pure.sum() > 200, code
        change[code] = ndvi(august)[pure].mean() - ndvi(april)[pure].mean()
    assert change[1] < -0.15  # green in April, stubble in August
    assert abs(change[2]) < 0.1 and abs(change[2]) < abs(change[1]) / 3  # orchards, vineyards, olives
    assert abs(change[3]) < 0.05  # forest
    assert change[4] < -0.1  # scrub and grassland dry up


def test_two_dates_separate_classes_that_one_date_confuses(data):
    """Crops, scrub and bare soil from pure pixels, by k nearest neighbours: April + August together
    make far fewer errors than either date alone (a later stage trains on the stacked seasons)."""
    _, april, august, mask = data
    b = blocks(mask)
    pure = np.all(b == b[:, :, :1], axis=2) & (april[0] < 2500)
    y = b[:, :, 0][pure]
    keep = np.isin(y, (1, 2, 4, 5))
    y = y[keep]
    feats = {"april": april[:, pure].T[keep], "august": august[:, pure].T[keep]}
    feats["both"] = np.hstack([feats["april"], feats["august"]])
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:5000], order[5000:15000]
    error = {}
    for name, x in feats.items():
        x = (x - x.mean(0)) / x.std(0)
        pred = KNeighborsClassifier(15).fit(x[train], y[train]).predict(x[test])
        error[name] = (pred != y[test]).mean()
    assert error["april"] > 0.05 and error["august"] > 0.03, error  # one date is not enough
    assert error["both"] < 0.5 * min(error["april"], error["august"]), error


def test_clouds_in_april_only(data):
    _, april, august, _ = data
    valid = april[0] > 0
    blue_a, blue_b = april[0][valid], august[0][valid]
    assert ((blue_a > 3500) & (blue_b < 2500)).mean() > 0.002  # bright cloud over a dark August pixel
    assert ((blue_b > blue_a + 1500) & (blue_b > 3500)).mean() < 1e-4  # nothing like it in August


def test_roads_are_thinner_than_10m_and_mixed_at_10m(data):
    *_, mask = data
    road = mask == 11
    assert road.mean() > 0.003
    # Hardly any road pixel lies inside a full 10 x 10 m square of road, most inside a 3 x 3 m one.
    assert ndimage.binary_erosion(road, np.ones((10, 10), bool)).sum() < 0.02 * road.sum()
    assert ndimage.binary_opening(road, np.ones((3, 3), bool)).sum() > 0.7 * road.sum()
    share = (blocks(mask) == 11).mean(axis=2)
    assert (share == 1).sum() < 0.02 * (share > 0).sum()  # roads are mixed pixels at 10 m


def test_same_seed_same_pixels_other_seed_other_layout(tmp_path):
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        demo.generate(tmp_path / folder, 200, seed, show_progress=False)
    a, b, c = (read_all(tmp_path / f) for f in "abc")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert (a[2] != c[2]).mean() > 0.3
    assert not np.array_equal(a[0], c[0])


def test_cell_counts_counts_each_code_per_block():
    codes = np.zeros((20, 30), np.uint8)
    codes[:10, :10] = 3  # a pure block
    codes[10:, 10:13] = 5  # 30 pixels of 5 in block (1, 1)
    codes[19, 29] = 2
    counts = demo.cell_counts(codes, k=6)
    assert counts.shape == (2, 3, 6)
    assert counts[0, 0, 3] == 100 and counts[0, 0].sum() == 100
    assert counts[1, 1, 5] == 30 and counts[1, 1, 0] == 70
    assert counts[1, 2, 2] == 1 and counts[1, 2, 0] == 99
    assert np.all(counts.sum(axis=2) == 100)


def test_cli_writes_skips_a_finished_set_and_remakes_with_force(tmp_path):
    out = tmp_path / "raw"
    res = run_script("make_demo_data.py", "--out", out, "--size", 100, "--seed", 1, check=True)
    assert "Transport network" in res.stdout  # the class shares
    files = demo.outputs(out)
    assert all(p.is_file() for p in files.values())
    assert not list(out.glob("*.partial"))
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items()}
    res = run_script("make_demo_data.py", "--out", out, "--size", 100, "--seed", 1, check=True)
    assert "already there" in res.stdout
    assert stamps == {k: p.stat().st_mtime_ns for k, p in files.items()}
    res = run_script("make_demo_data.py", "--out", out, "--size", 100, "--seed", 1, "--force", check=True)
    assert stamps != {k: p.stat().st_mtime_ns for k, p in files.items()}


def test_a_killed_run_leaves_nothing_that_looks_finished_and_the_next_run_completes(tmp_path):
    out = tmp_path / "raw"
    cmd = [sys.executable, str(ROOT / "make_demo_data.py"), "--out", str(out), "--size", "1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob("*.partial")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob("*.partial"))  # killed while writing
    assert not any(p.exists() for p in demo.outputs(out).values())
    run_script("make_demo_data.py", "--out", out, "--size", 200, check=True)
    assert all(p.is_file() for p in demo.outputs(out).values())
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--size", "0"], "--size"),
        (["--size", "-5"], "--size"),
        (["--size", "50"], "--size must be >= 100"),
        (["--size", "20000"], "--size must be <= 10000"),
        (["--seed", "-1"], "--seed"),
        (["--size", "abc"], "--size"),
    ],
)
def test_cli_bad_options_fail_in_one_line_and_write_nothing(tmp_path, args, needle):
    out = tmp_path / "raw"
    res = run_script("make_demo_data.py", "--out", out, *args)
    assert_one_line_error(res, needle)
    assert not out.exists()


def test_cli_out_is_a_file(tmp_path):
    out = tmp_path / "raw"
    out.write_text("not a folder")
    res = run_script("make_demo_data.py", "--out", out, "--size", 100)
    assert_one_line_error(res, "not a folder", str(out))
    assert out.read_text() == "not a folder"


def test_cli_help_explains_every_option():
    res = run_script("make_demo_data.py", "--help", check=True)
    for option in ("--out", "--size", "--seed", "--force"):
        assert option in res.stdout
    assert "landcover_1m.tif" in res.stdout
