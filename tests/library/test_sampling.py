"""landcover/sampling.py: the two block passes find exactly the drawn pixels (tiled and striped maps),
read the map at most twice, the draw is reproducible and never repeats a pixel, and the GeoPackage
round-trips (NULLs, and values as QGIS or another SQLite editor would leave them)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import edit_gpkg, write_raster

from landcover.common import InputError
from landcover.sampling import (
    count_classes,
    draw_ordinals,
    locate,
    map_info,
    open_class_map,
    read_points,
    values_at,
    windows,
    write_sample,
)


def class_map(shape=(300, 420), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.choice([1, 3, 4, 7, 12], p=[0.4, 0.3, 0.2, 0.02, 0.08], size=shape).astype(np.uint8)
    m[:7] = 0
    return m


@pytest.fixture(params=["tiled", "striped"])
def map_path(request, tmp_path):
    m = class_map()
    opts = dict(tiled=True, blockxsize=128, blockysize=64) if request.param == "tiled" else {}
    return write_raster(tmp_path / "map.tif", m, compress="deflate", **opts), m


class CountingReads:
    """A dataset whose reads are counted by window."""

    def __init__(self, ds):
        self.ds, self.reads = ds, []

    def read(self, *args, window=None, **kwargs):
        self.reads.append((window.row_off, window.col_off))
        return self.ds.read(*args, window=window, **kwargs)

    def __getattr__(self, name):
        return getattr(self.ds, name)


def in_block_order(m: np.ndarray, wins, code: int) -> np.ndarray:
    """(row, col) of every pixel of ``code`` in the order of the windows, row-major in each."""
    out = []
    for w in wins:
        r, c = np.nonzero(m[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] == code)
        out.append(np.stack([r + w.row_off, c + w.col_off], axis=1))
    return np.concatenate(out)


def test_the_two_passes_find_the_drawn_ordinals_and_read_each_block_at_most_twice(map_path):
    path, m = map_path
    with open_class_map(path) as ds:
        wins = windows(ds)
        counting = CountingReads(ds)
        totals, per = count_classes(counting, "map", wins)
        assert totals.tolist() == np.bincount(m.ravel(), minlength=13).tolist()
        pixels = {c: int(totals[c]) for c in range(1, 13) if totals[c]}
        sizes = {c: min(n, 40) for c, n in pixels.items()}
        ordinals = draw_ordinals(pixels, sizes, seed=3)
        pts = locate(counting, wins, per, ordinals)
    assert len(pts) == sum(sizes.values())
    for c, ords in ordinals.items():
        expected = {tuple(p) for p in in_block_order(m, wins, c)[ords]}
        got = {(r, q) for r, q, s in zip(pts.row, pts.col, pts.stratum, strict=True) if s == c}
        assert got == expected
    assert np.all(m[pts.row, pts.col] == pts.map_code)
    reads = np.unique(np.array(counting.reads), axis=0, return_counts=True)[1]
    assert reads.max() <= 2 and len(counting.reads) <= 2 * len(wins)
    # raster order, each pixel once
    flat = pts.row * m.shape[1] + pts.col
    assert np.all(np.diff(flat) > 0)


def test_draw_is_reproducible_without_repeats_and_depends_on_the_seed():
    pixels, sizes = {1: 10_000_000, 3: 500, 7: 30}, {1: 400, 3: 500, 7: 10}
    a, b, c = (draw_ordinals(pixels, sizes, s) for s in (0, 0, 1))
    for k in pixels:
        assert np.array_equal(a[k], b[k])
        assert len(np.unique(a[k])) == sizes[k] and a[k].min() >= 0 and a[k].max() < pixels[k]
    assert np.array_equal(a[3], np.arange(500))  # the whole class
    assert not np.array_equal(a[1], c[1])


def test_values_at_reads_the_pixels_asked(tmp_path):
    m = class_map((200, 300), seed=1)
    path = write_raster(tmp_path / "m.tif", m, tiled=True, blockxsize=64, blockysize=64)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 200, 500), rng.integers(0, 300, 500)
    with open_class_map(path) as ds:
        assert np.array_equal(values_at(ds, rows, cols, "map"), m[rows, cols])


@pytest.mark.parametrize(
    ("data", "kw", "needle"),
    [
        (np.ones((2, 8, 8), np.uint8), {}, "one uint8 band"),
        (np.ones((8, 8), np.float32), {}, "one uint8 band"),
        (np.ones((8, 8), np.uint8), {"crs": "EPSG:4326", "res": 0.001}, "projected CRS"),
        (np.ones((8, 8), np.uint8), {"nodata": 255}, "nodata 255"),
    ],
)
def test_not_a_class_map_is_one_line(tmp_path, data, kw, needle):
    path = write_raster(tmp_path / "x.tif", data, **kw)
    with pytest.raises(InputError, match=needle):
        open_class_map(path)


def test_a_code_above_12_is_refused(tmp_path):
    m = class_map((40, 40))
    m[20, 20] = 41
    with (
        open_class_map(write_raster(tmp_path / "m.tif", m)) as ds,
        pytest.raises(InputError, match="code 41"),
    ):
        count_classes(ds, "map", windows(ds))


@pytest.fixture
def gpkg(tmp_path):
    """A sample of 3 classes written to a GeoPackage: confidence NULL at one point, reference NULL at two."""
    m = class_map((100, 120))
    path = write_raster(tmp_path / "m.tif", m, tiled=True, blockxsize=32, blockysize=32)
    with open_class_map(path) as ds:
        info = map_info(ds, path, seed=0)
        wins = windows(ds)
        totals, per = count_classes(ds, "map", wins)
        pixels = {c: int(totals[c]) for c in range(1, 13) if totals[c]}
        pts = locate(ds, wins, per, draw_ordinals(pixels, {c: 5 for c in pixels}, 0))
    pts.confidence = np.arange(len(pts)) * 3
    pts.confidence[0] = -1
    pts.reference = pts.map_code.copy()
    pts.reference[[1, 2]] = -1
    strata = [dict(stratum=c, name=str(c), pixels=n, area_ha=n * 0.01, n=5) for c, n in pixels.items()]
    out = tmp_path / "s.gpkg"
    write_sample(out, pts, strata, info)
    return out, pts, info


def test_geopackage_round_trip_keeps_nulls_and_pixel_centres(gpkg):
    import pyogrio.raw

    out, pts, info = gpkg
    meta, _, geometry, fields = pyogrio.raw.read(out, layer="sample")
    data = dict(zip(meta["fields"], fields, strict=True))
    # NULL integers come back from pyogrio as NaN in a float column
    assert np.isnan(data["confidence"][0]) and data["confidence"][1] == 3
    assert np.isnan(data["reference"][[1, 2]]).all() and data["reference"][0] == pts.map_code[0]
    assert meta["crs"] == "EPSG:32631"
    import shapely

    xy = shapely.get_coordinates(shapely.from_wkb(geometry))
    t = info.grid.transform
    assert np.allclose(xy[:, 0], t.c + (pts.col + 0.5) * t.a)
    assert np.allclose(xy[:, 1], t.f + (pts.row + 0.5) * t.e)
    back = read_points(out, "reference")
    assert back.reference[1] == -1 and back.reference[2] == -1
    assert np.array_equal(back.reference[3:], pts.map_code[3:])
    assert np.array_equal(back.row, pts.row) and np.array_equal(back.id, np.arange(1, len(pts) + 1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7), ("4.0", 4), ("''", -1), ("NULL", -1), ("0", -1), ("' 12 '", 12)],
)
def test_values_as_an_editor_leaves_them_are_read_as_codes(gpkg, value, expected):
    out, _, _ = gpkg
    edit_gpkg(out, f"UPDATE sample SET reference = {value} WHERE id = 4")
    assert read_points(out, "reference").reference[3] == expected


@pytest.mark.parametrize("value", ["4.5", "'x'", "13", "-1", "'3a'"])
def test_values_gdal_would_read_as_another_code_are_refused(gpkg, value):
    # GDAL reads 4.5 as 4 and 'x' as 0 without a word: the stored SQLite type is checked first
    out, _, _ = gpkg
    edit_gpkg(out, f"UPDATE sample SET reference = {value} WHERE id = 4")
    with pytest.raises(InputError, match="point id 4"):
        read_points(out, "reference")


def test_a_missing_field_or_layer_is_one_line(gpkg, tmp_path):
    out, _, _ = gpkg
    with pytest.raises(InputError, match="field 'label' missing"):
        read_points(out, "label")
    other = tmp_path / "other.gpkg"
    import pyogrio.raw
    import shapely

    pyogrio.raw.write(
        other,
        shapely.to_wkb(shapely.points([0], [0])),
        [np.array([1])],
        ["id"],
        layer="pts",
        driver="GPKG",
        geometry_type="Point",
        crs="EPSG:32631",
    )
    with pytest.raises(InputError, match="no layer 'sample'"):
        read_points(other, "reference")
