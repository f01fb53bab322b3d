"""vectorize_map.py: one polygon per 4-connected patch, equal to GDAL's polygonize of the whole map
(rasterio.features.shapes) even for patches crossing the 512-row strips; valid polygons, holes as
interior rings, areas exact, no gaps and no overlaps; fields code, name, area_ha, confidence; the QGIS
style in layer_styles; bad input one line and nothing written; killed and re-run gives the same file."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
from helpers import run_script, run_script_killed, tree_snapshot, validate_stac_item, write_raster
from scipy import ndimage

from colormap import CLASSES
from landcover.stac import write_item

TILED = dict(tiled=True, blockxsize=512, blockysize=512, compress="deflate")


def class_map(n: int = 1100, m: int = 600, seed: int = 0) -> np.ndarray:
    """Patches of many sizes, rings with holes, nodata in a corner and a hole; tall patches cross the
    strips at rows 512 and 1024."""
    rng = np.random.default_rng(seed)
    f = ndimage.zoom(rng.random((4, n // 30 + 1, m // 30 + 1)), (1, 30, 30), order=1)[:, :n, :m]
    f += rng.random(f.shape) * 0.05
    codes = np.array([1, 3, 6, 12])[f.argmax(0)].astype(np.uint8)
    codes[:, 100:104] = 11  # a road crossing every strip: one polygon
    codes[300:700, 400:500] = 8
    codes[450:560, 430:470] = 12  # a lake inside the park, across the strip edge: a hole
    codes[:30, :50] = 0
    codes[800:820, 200:260] = 0
    return codes


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vector")
    codes = class_map()
    confidence = np.where(codes == 0, 255, (codes.astype(int) * 7) % 101).astype(np.uint8)
    write_raster(folder / "map.tif", codes, **TILED)
    write_raster(folder / "map_confidence.tif", confidence, nodata=255, **TILED)
    res = run_script("vectorize_map.py", "--map", folder / "map.tif")
    assert res.returncode == 0, res.stderr
    meta, _, geometry, fields = pyogrio.raw.read(folder / "map.gpkg", layer="map")
    table = dict(zip(meta["fields"], fields, strict=True))
    return folder, codes, shapely.from_wkb(geometry), table, res


def test_one_polygon_per_patch_equal_to_gdal_polygonize(made):
    folder, codes, geoms, table, _ = made
    with rasterio.open(folder / "map.tif") as src:
        transform = src.transform
    ref = [(int(v), shapely.geometry.shape(g)) for g, v in rasterio.features.shapes(
        codes, mask=codes != 0, connectivity=4, transform=transform)]  # fmt: skip
    for c in np.unique(codes[codes > 0]):
        assert int((table["code"] == c).sum()) == ndimage.label(codes == c)[1], f"class {c}"
    assert len(geoms) == len(ref)

    def key(code, g):
        return (code, round(g.area), tuple(np.round(g.bounds, 3)))

    ours = sorted(zip(table["code"].tolist(), geoms, strict=True), key=lambda t: key(*t))
    for (c1, g1), (c2, g2) in zip(ours, sorted(ref, key=lambda t: key(*t)), strict=True):
        assert c1 == c2 and g1.equals(g2), "pixel edges exactly as GDAL's polygonize"
    assert ((table["code"] == 11).sum(), (table["code"] == 8).sum()) == (1, 1), "crossing strips: one"
    park = geoms[table["code"] == 8][0]
    assert len(park.interiors) >= 1, "the lake is a hole of the park"


def test_topology_areas_and_fields(made):
    _, codes, geoms, table, res = made
    assert shapely.is_valid(geoms).all() and set(shapely.get_type_id(geoms)) == {3}, "valid Polygons"
    pixel_ha = 100 / 1e4
    valid = int((codes > 0).sum())
    union = shapely.union_all(geoms)
    assert np.isclose(sum(g.area for g in geoms), valid * 100), "sum of areas = valid pixels"
    assert np.isclose(union.area, valid * 100), "union = sum: no overlaps, no gaps"
    assert np.allclose(table["area_ha"], shapely.area(geoms) / 1e4)
    for c in np.unique(codes[codes > 0]):
        mine = table["code"] == c
        assert np.isclose(table["area_ha"][mine].sum(), (codes == c).sum() * pixel_ha)
        assert set(table["name"][mine]) == {CLASSES[int(c)][0]}
        assert np.allclose(table["confidence"][mine], (int(c) * 7) % 101), "the patch's mean confidence"
    assert "polygons" in res.stdout and "wrote" in res.stdout


def test_geopackage_carries_the_qgis_style(made):
    folder = made[0]
    layers = dict(pyogrio.list_layers(folder / "map.gpkg").tolist())
    assert set(layers) == {"map", "layer_styles"}
    meta, _, _, fields = pyogrio.raw.read(folder / "map.gpkg", layer="layer_styles")
    row = {k: v[0] for k, v in zip(meta["fields"], fields, strict=True)}
    assert row["f_table_name"] == "map" and row["f_geometry_column"] == "geom" and row["useAsDefault"]
    qml = row["styleQML"]
    assert 'type="categorizedSymbol" attr="code"' in qml and 'fieldName="name"' in qml
    assert "Herbaceous crops" in qml and "255,255,168,255" in qml  # code 1's name and colour


@pytest.mark.parametrize("case", ["float map", "out over map", "out not gpkg", "missing map"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    codes = class_map(100, 100)
    write_raster(tmp_path / "map.tif", codes)
    write_raster(tmp_path / "float.tif", codes.astype(np.float32))
    args = {
        "float map": (["--map", tmp_path / "float.tif"], "not a class map"),
        "out over map": (["--map", tmp_path / "map.tif", "--out", tmp_path / "map.tif"], "--out"),
        "out not gpkg": (["--map", tmp_path / "map.tif", "--out", tmp_path / "map.shp"], ".gpkg"),
        "missing map": (["--map", tmp_path / "none.tif"], "not found"),
    }[case]
    before = tree_snapshot(tmp_path)
    res = run_script("vectorize_map.py", *args[0])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and args[1] in lines[0], res.stderr
    assert tree_snapshot(tmp_path) == before


def test_killed_then_rerun_gives_the_same_file(tmp_path, made):
    folder = made[0]
    (tmp_path / "map.tif").write_bytes((folder / "map.tif").read_bytes())
    run_script("vectorize_map.py", "--map", tmp_path / "map.tif", check=True)
    reference = hashlib.sha1((tmp_path / "map.gpkg").read_bytes()).hexdigest()
    (tmp_path / "map.gpkg").unlink()
    res = run_script_killed("vectorize_map.py", "replace", 1, "before", "--map", tmp_path / "map.tif")
    assert res.returncode == -9 and not (tmp_path / "map.gpkg").exists()
    run_script("vectorize_map.py", "--map", tmp_path / "map.tif", check=True)
    assert hashlib.sha1((tmp_path / "map.gpkg").read_bytes()).hexdigest() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.gpkg", "map.tif"]


def test_the_maps_stac_item_then_lists_the_vector_map(tmp_path, made):
    (tmp_path / "map.tif").write_bytes((made[0] / "map.tif").read_bytes())
    write_item(tmp_path / "map.tif")  # as predict.py or generalize_map.py leaves it
    res = run_script("vectorize_map.py", "--map", tmp_path / "map.tif", "--out", tmp_path / "v/map.gpkg")
    assert res.returncode == 0, res.stderr
    assets = json.loads((tmp_path / "map.json").read_text())["assets"]
    assert assets["vector"]["href"] == "./v/map.gpkg"
    assert assets["vector"]["type"] == "application/geopackage+sqlite3"
    validate_stac_item(tmp_path / "map.json")
