"""rescale_mask.py: the output sits on the scene's grid, agrees with gdalwarp, remaps before voting,
keeps thin rare features with ``weighted``, counts exactly, and fails cleanly on bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error, run_script, write_raster
from rasterio.warp import transform, transform_bounds

import rescale_mask as rm
from colormap import CLASSES, gdal_colour_table

X0, Y0 = 400000.0, 4600000.0  # top-left corner of the scene (EPSG:32631)
GDALWARP = shutil.which("gdalwarp")
needs_gdalwarp = pytest.mark.skipif(GDALWARP is None, reason="gdalwarp (Debian gdal-bin) is not installed")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 16 x 16 output pixels, so that small test rasters cross many block edges."""
    monkeypatch.setattr(rm, "BLOCK_SOURCE_PIXELS", 30_000)


def parcels(h: int, w: int, seed: int = 0, codes=tuple(range(1, 13)), n: int = 60) -> np.ndarray:
    """A 1 m class map of Voronoi parcels with a 3 m road and a nodata corner (no stray codes)."""
    rng = np.random.default_rng(seed)
    sy, sx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    yy, xx = np.mgrid[0:h, 0:w]
    nearest = np.argmin((yy[..., None] - sy) ** 2 + (xx[..., None] - sx) ** 2, axis=-1)
    mask = np.asarray(codes, np.uint8)[rng.integers(0, len(codes), n)][nearest]
    mask[:, w // 3 : w // 3 + 3] = 11
    mask[: h // 6, : w // 6] = 0
    return mask


def scene(
    path: Path, width: int = 30, height: int = 20, res: float = 10.0, origin=(X0, Y0), crs="EPSG:32631"
):
    """A one-band scene: only its grid matters."""
    return write_raster(path, np.ones((height, width), np.uint16), res=res, origin=origin, crs=crs)


def rescale(tmp_path: Path, mask: Path, like: Path, method: str, *extra: str, name: str = "out.tif") -> Path:
    out = tmp_path / name
    rm.main(["--mask", str(mask), "--like", str(like), "--out", str(out), "--method", method, *extra])
    return out


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def gdalwarp(src: Path, like: Path, method: str, out: Path) -> np.ndarray:
    """The reference: gdalwarp onto the scene's grid (bounds, size, CRS)."""
    with rasterio.open(like) as s:
        b, size, crs = s.bounds, (s.width, s.height), s.crs.to_string()
    grid = ["-te", b.left, b.bottom, b.right, b.top, "-ts", *size, "-t_srs", crs]
    subprocess.run(
        [GDALWARP, "-q", "-overwrite", "-r", method, *map(str, grid), str(src), str(out)], check=True
    )
    return read(out)


# --- agreement with gdalwarp ------------------------------------------------------------------------


@needs_gdalwarp
@pytest.mark.parametrize("method", ["near", "mode"])
@pytest.mark.parametrize(
    "res, origin",
    [(10.0, (X0, Y0)), (10.0, (X0 + 37, Y0 - 52)), (7.0, (X0 + 3.5, Y0 - 1.5))],
    ids=["aligned", "offset-by-whole-pixels", "7m-half-pixel-offset"],
)
def test_near_and_mode_agree_with_gdalwarp(tmp_path, method, res, origin):
    mask = write_raster(tmp_path / "mask.tif", parcels(300, 420, seed=1), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=40, height=28, res=res, origin=origin)
    ours = read(rescale(tmp_path, mask, like, method))
    ref = gdalwarp(mask, like, method, tmp_path / "ref.tif")
    assert ours.shape == ref.shape
    assert np.count_nonzero(ours != ref) == 0, f"{np.count_nonzero(ours != ref)} pixels differ"
    assert len(np.unique(ours)) > 8  # a real comparison, not two empty rasters


# --- the output grid is the scene's grid -----------------------------------------------------------


@pytest.mark.parametrize(
    "mask_origin, mask_size, mask_crs",
    [
        ((X0 - 100, Y0 + 100), (500, 600), "EPSG:32631"),  # larger than the scene
        ((X0 + 50, Y0 - 40), (120, 150), "EPSG:32631"),  # smaller, inside
        ((X0 + 173, Y0 - 91), (300, 400), "EPSG:32631"),  # offset, overlapping one corner
        ((X0 - 30, Y0 + 30), (300, 400), "EPSG:25831"),  # another CRS (ETRS89 / UTM 31N)
        (None, (300, 400), "EPSG:3857"),  # another CRS, really reprojected (Web Mercator)
    ],
    ids=["larger", "smaller", "offset", "epsg25831", "epsg3857"],
)
@pytest.mark.parametrize("method", ["near", "mode", "weighted"])
def test_output_grid_is_the_scene_grid(tmp_path, mask_origin, mask_size, mask_crs, method):
    like = scene(tmp_path / "scene.tif", width=30, height=20)
    if mask_origin is None:  # place the Web Mercator mask over the scene
        left, _, _, top = transform_bounds("EPSG:32631", mask_crs, X0, Y0 - 200, X0 + 300, Y0)
        mask_origin = (left - 20, top + 20)
        res = 1.4  # about 1 m on the ground at 41 degrees north
    else:
        res = 1.0
    h, w = mask_size
    mask = write_raster(
        tmp_path / "mask.tif", parcels(h, w, seed=2), res=res, origin=mask_origin, crs=mask_crs
    )
    out = rescale(tmp_path, mask, like, method)
    with rasterio.open(out) as o, rasterio.open(like) as s:
        assert o.crs == s.crs
        assert o.transform.almost_equals(s.transform, precision=1e-9)
        assert (o.width, o.height) == (s.width, s.height)
        assert o.dtypes[0] == "uint8" and o.nodata == 0
        data = o.read(1)
    assert set(np.unique(data)) <= set(range(13))
    # output pixels whose footprint misses the mask are nodata (for near: whose centre misses it),
    # and most pixels well inside the mask are not
    rows, cols = np.mgrid[0:21, 0:31] * 10.0
    xs, ys = X0 + cols, Y0 - rows
    if mask_crs != "EPSG:32631":
        xs, ys = (
            np.reshape(v, rows.shape) for v in transform("EPSG:32631", mask_crs, xs.ravel(), ys.ravel())
        )
    mc, mr = (xs - mask_origin[0]) / res, (mask_origin[1] - ys) / res  # mask pixel coordinates of corners
    c4 = np.stack([mc[:-1, :-1], mc[:-1, 1:], mc[1:, :-1], mc[1:, 1:]])
    r4 = np.stack([mr[:-1, :-1], mr[:-1, 1:], mr[1:, :-1], mr[1:, 1:]])
    missed = (c4.max(0) <= 0) | (c4.min(0) >= w) | (r4.max(0) <= 0) | (r4.min(0) >= h)
    assert not data[missed].any()
    cc, rc = c4.mean(0), r4.mean(0)  # centres
    if method == "near":
        assert not data[(cc < 0) | (cc > w) | (rc < 0) | (rc > h)].any()
    well_inside = (c4.min(0) > 1) & (c4.max(0) < w - 1) & (r4.min(0) > 1) & (r4.max(0) < h - 1)
    assert np.count_nonzero(data[well_inside]) > 0.7 * well_inside.sum()


def test_mask_entirely_outside_some_blocks_and_threads_agree(tmp_path):
    mask = write_raster(tmp_path / "mask.tif", parcels(150, 150, seed=3), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=64, height=48)  # most blocks see no mask at all
    one = read(rescale(tmp_path, mask, like, "mode", "--threads", "1", name="one.tif"))
    two = read(rescale(tmp_path, mask, like, "mode", "--threads", "3", name="two.tif"))
    assert np.array_equal(one, two)
    assert one[:15, :15].any() and not one[16:].any() and not one[:, 16:].any()


# --- weighted, remap, unknown codes ----------------------------------------------------------------


def road_mask(h: int = 200, w: int = 300) -> np.ndarray:
    """Forest with a 3 m wide road (rows 103..105, inside output row 10) and a field."""
    mask = np.full((h, w), 3, np.uint8)
    mask[:, 200:] = 1
    mask[103:106] = 11
    return mask


@pytest.mark.parametrize(
    "origin, mask_crs",
    [((X0, Y0), "EPSG:32631"), ((X0 + 4, Y0), "EPSG:32631"), ((X0, Y0), "EPSG:25831")],
    ids=["aligned", "offset", "other-crs"],  # other-crs: GDAL's average of each class, weighted
)
def test_weighted_keeps_a_3m_road_that_mode_loses(tmp_path, origin, mask_crs):
    mask = write_raster(tmp_path / "mask.tif", road_mask(), res=1.0, origin=(X0, Y0), crs=mask_crs)
    like = scene(tmp_path / "scene.tif", width=29, height=20, origin=origin)
    mode = read(rescale(tmp_path, mask, like, "mode", name="mode.tif"))
    weighted = read(rescale(tmp_path, mask, like, "weighted", name="weighted.tif"))
    assert not (mode == 11).any()
    assert (weighted[10] == 11).all()  # the road survives along its whole length ...
    assert (weighted[[9, 11]] != 11).all()  # ... one pixel wide, not smeared over its neighbours
    assert np.array_equal(np.delete(weighted, 10, 0), np.delete(mode, 10, 0))  # elsewhere a plain majority


def test_weighted_from_a_coarser_mask_leaves_no_holes(tmp_path):
    mask = write_raster(tmp_path / "mask.tif", parcels(20, 30, seed=9), res=20.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=60, height=40)
    weighted = read(rescale(tmp_path, mask, like, "weighted"))
    near = read(rescale(tmp_path, mask, like, "near", name="near.tif"))
    assert np.array_equal(weighted != 0, near != 0)  # every 10 m pixel of a 20 m one has its class
    assert np.mean(weighted == near) > 0.95


def test_weighted_weights_are_printed_and_can_be_given(tmp_path, capsys):
    mask = write_raster(tmp_path / "mask.tif", road_mask(), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=30, height=20)
    rescale(tmp_path, mask, like, "weighted")
    printed = capsys.readouterr().out
    assert "weights" in printed and CLASSES[11][0] in printed
    # road share 3 / 200 against forest's 197 * 200 / 60000: w = sqrt(f_max / f_road)
    with rasterio.open(tmp_path / "out.tif") as o:
        tags = dict(pair.split("=") for pair in o.tags(1)["weights"].split())
    f_forest, f_road = 197 * 200 / 60000, 3 * 300 / 60000
    assert float(tags["11"]) == pytest.approx((f_forest / f_road) ** 0.5, rel=1e-3)
    # by hand: a road weight of 2 is not enough for 30 % of a pixel
    out = read(rescale(tmp_path, mask, like, "weighted", "--weights", "11=2", name="w2.tif"))
    assert not (out == 11).any()


@pytest.mark.parametrize("regular", [True, False], ids=["10x10-cells", "uneven-cells"])
def test_vote_by_centre_is_a_weighted_majority(regular):
    rng = np.random.default_rng(1)
    codes = rng.choice(np.array([0, 3, 5, 11], np.uint8), size=(60, 90), p=[0.2, 0.5, 0.2, 0.1])
    codes[:6, :9] = 0  # a cell with no valid pixel
    if regular:
        rows, cols = np.arange(60) // 6, np.arange(90) // 9
    else:  # cells of 4 to 8 rows and 7 to 11 columns, as on a grid not aligned with the mask
        rows = np.repeat(np.arange(10), rng.integers(4, 9, 10))[:60]
        cols = np.repeat(np.arange(10), rng.integers(7, 12, 10))[:90]
        rows, cols = (
            np.pad(rows, (0, 60 - rows.size), mode="edge"),
            np.pad(cols, (0, 90 - cols.size), mode="edge"),
        )
    weights = np.ones(256)
    weights[5], weights[11] = 1.5, 2.5
    got = rm.vote_by_centre(codes, rows, cols, (10, 10), weights)
    for i, j in np.ndindex(got.shape):
        cell = codes[np.ix_(rows == i, cols == j)]
        scores = [weights[c] * np.count_nonzero(cell == c) for c in range(1, 13)]
        assert got[i, j] == (int(np.argmax(scores)) + 1 if max(scores) > 0 else 0), (i, j)
    assert {3, 5, 11} <= set(np.unique(got))


def test_remap_before_resampling_merges_votes(tmp_path, capsys):
    # each 10 x 10 output pixel of the first row: 40 px forest (3), 30 px bare soil (5) and 30 px
    # beach (19 -> 5); of the second row: 40 px forest, 30 px water (12) and 30 px sea (41 -> 12)
    block = np.zeros((20, 10), np.uint8)
    block[:10, :4], block[:10, 4:7], block[:10, 7:] = 3, 5, 19
    block[10:, :4], block[10:, 4:7], block[10:, 7:] = 3, 12, 41
    path = write_raster(tmp_path / "mask.tif", np.tile(block, (1, 10)), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=10, height=2)
    for method, extra in (("mode", []), ("weighted", ["--weights", "3=1"])):
        out = read(rescale(tmp_path, path, like, method, *extra, name=f"{method}.tif"))
        assert (out[0] == 5).all() and (out[1] == 12).all(), method
    # near takes the centre pixel (row 5 or 15, column 5: the 5 / 12 third) -> no stray code survives
    near = read(rescale(tmp_path, path, like, "near", name="near.tif"))
    assert set(np.unique(near)) <= {3, 5, 12}
    printed = capsys.readouterr().out
    assert "remapped code 19 -> 5" in printed and "remapped code 41 -> 12" in printed
    # without the remap the stray codes split the vote and forest wins
    plain = read(rescale(tmp_path, path, like, "mode", "--remap", name="plain.tif"))
    assert (plain == 3).all()


def test_unknown_code_is_reported_with_its_count_and_made_nodata(tmp_path, capsys):
    mask = np.full((100, 100), 4, np.uint8)
    mask[:20, :30] = 77  # 600 px = output pixels (0..1, 0..2)
    mask[50:53, 50:51] = 200  # 3 px, a speck
    path = write_raster(tmp_path / "mask.tif", mask, res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=10, height=10)
    out = read(rescale(tmp_path, path, like, "mode"))
    printed = capsys.readouterr().out
    assert "unknown code 77: 600 px" in printed and "unknown code 200: 3 px" in printed
    assert (out[:2, :3] == 0).all() and (out[2:] == 4).all() and (out[:, 3:] == 4).all()
    assert not np.isin(out, [77, 200]).any()


def test_wider_integer_mask_and_its_own_nodata_value(tmp_path, capsys):
    mask = np.full((100, 100), 6, np.uint16)
    mask[:30] = 300  # beyond uint8: unknown
    mask[:, :20] = 999  # the file's nodata value: nodata, not reported as unknown
    path = write_raster(tmp_path / "mask.tif", mask, res=1.0, origin=(X0, Y0), nodata=999)
    like = scene(tmp_path / "scene.tif", width=10, height=10)
    out = read(rescale(tmp_path, path, like, "near"))
    printed = capsys.readouterr().out
    assert "unknown code 300: 2400 px" in printed and "999" not in printed
    assert (out[3:, 2:] == 6).all() and not out[:3].any() and not out[:, :2].any()


# --- counts, the file itself, re-runs --------------------------------------------------------------


def test_count_codes_matches_bincount():
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (300, 301), dtype=np.uint8)  # short runs: the bincount fallback
    smooth = parcels(200, 333, seed=4)  # long runs
    for a in (noisy, smooth, smooth[:, 7:200], smooth.astype(np.int16) - 3):
        got = rm.count_codes(a)
        values, n = np.unique(a, return_counts=True)
        assert got == dict(zip(values.tolist(), n.tolist(), strict=True))


@pytest.mark.parametrize("mask_crs", ["EPSG:32631", "EPSG:25831"])
@pytest.mark.parametrize("method", ["mode", "weighted"])
def test_histogram_counts_each_mask_pixel_in_the_scene_once(tmp_path, mask_crs, method):
    data = parcels(250, 330, seed=5)
    mask_path = write_raster(
        tmp_path / "mask.tif", data, res=1.0, origin=(X0 - 13.5, Y0 + 21.25), crs=mask_crs
    )
    like = scene(tmp_path / "scene.tif", width=25, height=18)
    with rasterio.open(mask_path) as m, rasterio.open(like) as s:
        mask, grid = rm.Grid.of(m), rm.Grid.of(s)
    lut, _ = rm.remap_lut()
    counts, _ = rm.rescale(mask_path, mask, grid, tmp_path / "o.tif", method, lut, None, 0.5, 2)
    # mask pixels whose centres lie in the scene: columns 13..262, rows 21..200 (same CRS; close in 25831)
    expected = rm.count_codes(data[21:201, 13:263])
    if mask_crs == "EPSG:32631":
        assert counts.source == expected
    else:  # the two CRSs differ by a fraction of a metre: about the same pixels
        assert abs(sum(counts.source.values()) - 180 * 250) < 0.01 * 180 * 250
    assert counts.output.sum() == 25 * 18


def test_output_file_is_tiled_compressed_with_colour_table(tmp_path):
    mask = write_raster(tmp_path / "mask.tif", parcels(200, 300, seed=6), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif")
    out = rescale(tmp_path, mask, like, "near")
    with rasterio.open(out) as o:
        assert o.profile["tiled"] and o.profile["compress"].lower() == "deflate"
        assert o.block_shapes[0] == (512, 512)
        cmap = o.colormap(1)
    for code, rgba in gdal_colour_table().items():
        assert cmap[code] == rgba


def test_rerun_after_a_leftover_partial_and_rerun_changes_nothing(tmp_path):
    mask = write_raster(tmp_path / "mask.tif", parcels(200, 300, seed=7), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif")
    out = tmp_path / "out.tif"
    (tmp_path / "out.tif.partial").write_bytes(b"killed half way")
    rescale(tmp_path, mask, like, "mode")
    assert not (tmp_path / "out.tif.partial").exists()
    first = out.read_bytes()
    assert read(out).any()
    rescale(tmp_path, mask, like, "mode")
    assert out.read_bytes() == first


def test_cli_runs_end_to_end(tmp_path):
    mask = write_raster(tmp_path / "mask.tif", parcels(200, 300, seed=8), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif")
    out = tmp_path / "sub" / "mask_10m.tif"
    res = run_script("rescale_mask.py", "--mask", mask, "--like", like, "--out", out, "--method", "weighted")
    assert res.returncode == 0, res.stderr
    assert out.exists() and "weights" in res.stdout and "before %" in res.stdout
    assert "rescaling" in res.stderr  # the progress bar
    assert "inverse" in run_script("rescale_mask.py", "--help").stdout


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list, str]]:
    good_mask = write_raster(tmp_path / "mask.tif", parcels(100, 100), res=1.0, origin=(X0, Y0))
    like = scene(tmp_path / "scene.tif", width=10, height=10)
    two_bands = write_raster(tmp_path / "two.tif", np.ones((2, 100, 100), np.uint8), res=1.0, origin=(X0, Y0))
    floats = write_raster(tmp_path / "float.tif", np.ones((100, 100), np.float32), res=1.0, origin=(X0, Y0))
    far = write_raster(tmp_path / "far.tif", parcels(100, 100), res=1.0, origin=(X0 + 5000, Y0))
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00 not really a tiff")
    return {
        "mask missing": (["--mask", tmp_path / "nope.tif", "--like", like], "nope.tif"),
        "mask unreadable": (["--mask", garbage, "--like", like], "garbage.tif"),
        "scene missing": (["--mask", good_mask, "--like", tmp_path / "nope.tif"], "nope.tif"),
        "scene unreadable": (["--mask", good_mask, "--like", garbage], "garbage.tif"),
        "mask with two bands": (["--mask", two_bands, "--like", like], "one band"),
        "mask not integer": (["--mask", floats, "--like", like], "integer"),
        "no overlap": (["--mask", far, "--like", like], "overlap"),
        "unknown method": (["--mask", good_mask, "--like", like, "--method", "bilinear"], "bilinear"),
        "weights without weighted": (["--mask", good_mask, "--like", like, "--weights", "11=3"], "weights"),
        "bad weight": (
            ["--mask", good_mask, "--like", like, "--method", "weighted", "--weights", "11=-1"],
            "11",
        ),
        "bad threads": (["--mask", good_mask, "--like", like, "--threads", "0"], "--threads"),
    }


CASES = """mask missing|mask unreadable|scene missing|scene unreadable|mask with two bands|mask not integer|
no overlap|unknown method|weights without weighted|bad weight|bad threads""".replace("\n", "").split("|")


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    args, needle = bad_inputs(tmp_path)[case]
    out = tmp_path / "new" / "out.tif"
    res = run_script("rescale_mask.py", *args, "--out", out)
    assert_one_line_error(res, needle)
    assert not out.exists() and not out.parent.exists()
    assert not list(tmp_path.rglob("*.partial"))
