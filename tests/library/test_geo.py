"""geo.py: grids (read, compared, described) and the GeoTIFF profile of a class map."""

from __future__ import annotations

import numpy as np
import rasterio
from helpers import write_raster
from rasterio.crs import CRS
from rasterio.transform import from_origin

from landcover.geo import MAP_BLOCK, Grid, colour_table, map_profile


def test_grid_of_a_dataset_and_matches(tmp_path):
    path = write_raster(tmp_path / "a.tif", np.zeros((1, 30, 40), np.uint8))
    with rasterio.open(path) as ds:
        g = Grid.of(ds)
    assert (g.width, g.height, g.crs) == (40, 30, CRS.from_epsg(32631))
    assert g.matches(Grid(g.crs, g.transform, 40, 30))
    nudged = from_origin(400000.0 + 1e-7, 4600000.0, 10.0, 10.0)  # well within a millionth of a pixel
    assert g.matches(Grid(g.crs, nudged, 40, 30))
    assert not g.matches(Grid(g.crs, from_origin(400001.0, 4600000.0, 10.0, 10.0), 40, 30))
    assert not g.matches(Grid(g.crs, g.transform, 41, 30))
    assert not g.matches(Grid(CRS.from_epsg(32630), g.transform, 40, 30))
    assert str(g) == "40 x 30 px, EPSG:32631, origin (400000, 4600000), pixel 10 x 10"
    assert "no CRS" in str(Grid(None, g.transform, 40, 30))


def test_map_profile_writes_a_tiled_compressed_class_map(tmp_path):
    grid = Grid(CRS.from_epsg(32631), from_origin(400000.0, 4600000.0, 10.0, 10.0), 700, 600)
    profile = map_profile(grid, nodata=0)
    with rasterio.open(tmp_path / "m.tif", "w", **profile) as dst:
        dst.write(np.ones((1, 600, 700), np.uint8))
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert Grid.of(ds).matches(grid)
        assert (ds.count, ds.dtypes[0], ds.nodata) == (1, "uint8", 0)
        assert ds.block_shapes[0] == (MAP_BLOCK, MAP_BLOCK)
        assert ds.compression.name == "deflate"


def test_colour_table(tmp_path):
    path = tmp_path / "m.tif"
    write_raster(path, np.ones((1, 4, 4), np.uint8))
    with rasterio.open(path) as ds:
        assert colour_table(ds) is None
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 0, 0), 1: (255, 0, 0, 255)})
    with rasterio.open(path) as ds:
        assert colour_table(ds)[1] == (255, 0, 0, 255)
