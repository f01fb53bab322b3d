"""landcover.stac: the STAC item beside a map validates offline against the STAC schemas (core 1.1.0,
projection and classification 2.0.0); it lists the files that exist beside the map with paths relative to
it, each class's code, name, colour and pixel count, the grid, the scenes and the checkpoint from the
map's tags; products added later stay listed while their files exist."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
from helpers import validate_stac_item, write_raster

from colormap import CLASSES
from landcover import stac


@pytest.fixture
def described(tmp_path):
    """A map with tags as predict.py writes them, its confidence and preview, and its item."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 13, (300, 200)).astype(np.uint8)
    tags = {
        "scenes": "raw/s2_april.tif raw/s2_august.tif", "checkpoint": "runs/x/best.pt", "arch": "segformer",
        "encoder": "mit_b0", "training_data": "data/stacked", "temperature": "0.62",
        "datetime": "2023-04-01T00:00:00+00:00/2023-08-31T00:00:00+00:00",
    }  # fmt: skip
    path = write_raster(tmp_path / "map.tif", codes)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(**tags)
    write_raster(tmp_path / "map_confidence.tif", np.full(codes.shape, 90, np.uint8), nodata=255)
    (tmp_path / "map.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return path, codes, stac.write_item(path)


def test_item_validates_offline_with_both_extensions(described):
    schemas = validate_stac_item(described[2])
    assert any("projection/v2.0.0" in s for s in schemas) and any(
        "classification/v2.0.0" in s for s in schemas
    )


def test_item_lists_the_files_beside_the_map_relative_to_it(described):
    path, _, item = described
    d = json.loads(item.read_text())
    assert item == path.with_suffix(".json") and d["id"] == "map"
    assert {k: a["href"] for k, a in d["assets"].items()} == {
        "map": "./map.tif", "confidence": "./map_confidence.tif", "preview": "./map.png"
    }  # fmt: skip
    assert d["assets"]["map"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert "overview" in d["assets"]["preview"]["roles"]


def test_classes_grid_time_scenes_and_checkpoint(described):
    path, codes, item = described
    d = json.loads(item.read_text())
    classes = {c["value"]: c for c in d["assets"]["map"]["classification:classes"]}
    counts = np.bincount(codes.ravel(), minlength=13)
    assert classes[0]["nodata"] and classes[0]["count"] == counts[0]
    for code in range(1, 13):
        assert classes[code]["title"] == CLASSES[code][0]
        assert "#" + classes[code]["color_hint"] == CLASSES[code][1].upper()
        assert classes[code]["count"] == counts[code]
    assert sum(classes[c]["percentage"] for c in range(1, 13)) == pytest.approx(100, abs=0.01)
    p = d["properties"]
    with rasterio.open(path) as ds:
        assert p["proj:code"] == "EPSG:32631" and p["proj:shape"] == [ds.height, ds.width]
        assert p["proj:transform"] == list(ds.transform)[:6] and p["proj:bbox"] == list(ds.bounds)
    lon, lat = np.array(d["geometry"]["coordinates"][0]).T
    assert 1 < lon.min() < lon.max() < 3 and 41 < lat.min() < lat.max() < 42  # UTM 31N near Barcelona
    assert p["datetime"] is None and p["start_datetime"].startswith("2023-04-01")
    assert p["end_datetime"].startswith("2023-08-31")
    assert p["landcover:scenes"] == ["raw/s2_april.tif", "raw/s2_august.tif"]
    assert p["landcover:checkpoint"]["arch"] == "segformer" and p["landcover:temperature"] == 0.62


def test_added_products_stay_listed_while_their_files_exist(described, tmp_path):
    path, _, item = described
    (tmp_path / "map.gpkg").write_bytes(b"")
    (tmp_path / "assessment").mkdir()
    (tmp_path / "assessment/assessment.json").write_text("{}")
    stac.add_to_item(path, {"vector": tmp_path / "map.gpkg"})
    stac.add_to_item(path, {"assessment": tmp_path / "assessment/assessment.json"})
    assets = json.loads(item.read_text())["assets"]
    assert assets["vector"]["href"] == "./map.gpkg"
    assert assets["assessment"]["href"] == "./assessment/assessment.json"
    (tmp_path / "map.gpkg").unlink()
    (tmp_path / "map.png").unlink()
    stac.write_item(path)  # predict.py again: the item lists what exists
    assets = json.loads(item.read_text())["assets"]
    assert "vector" not in assets and "preview" not in assets and "assessment" in assets
    validate_stac_item(item)


def test_a_map_without_an_item_gets_none_from_add(tmp_path):
    path = write_raster(tmp_path / "change.tif", np.ones((10, 10), np.uint8))
    assert stac.add_to_item(path, {"vector": path}) is None
    assert not (tmp_path / "change.json").exists()


def test_a_generalised_map_links_the_item_of_its_source(described, tmp_path):
    path = described[0]
    mmu = write_raster(tmp_path / "map_mmu.tif", np.ones((10, 10), np.uint8))
    with rasterio.open(mmu, "r+") as ds:
        ds.update_tags(mmu_ha="0.5", generalized_from=str(path))
    d = json.loads(stac.write_item(mmu).read_text())
    assert d["links"] == [
        {"rel": "derived_from", "href": "map.json", "type": "application/json",
         "title": "the map before the minimum mapping unit"}
    ]  # fmt: skip
    assert d["properties"]["landcover:mmu_ha"] == 0.5
    assert d["properties"]["datetime"]  # no datetime tag: the map file's time
    validate_stac_item(tmp_path / "map_mmu.json")


@pytest.mark.parametrize(
    "text, want",
    [
        ("2023-04-15", "2023-04-15T00:00:00+00:00"),
        ("2023-04-01/2023-08-31", "2023-04-01T00:00:00+00:00/2023-08-31T00:00:00+00:00"),
        ("2023-04-15T10:00:00+02:00", "2023-04-15T08:00:00+00:00"),
    ],
)
def test_datetime_option_is_normalised_to_utc(text, want):
    assert stac.parse_datetime(text) == want
    assert stac.time_of(want, None)[0 if "/" not in want else 1].tzinfo == dt.UTC


@pytest.mark.parametrize("text", ["April", "2023-08-31/2023-04-01", "2023/2024/2025", ""])
def test_datetime_option_refuses_what_is_not_a_date_or_a_range(text):
    with pytest.raises(ValueError):
        stac.parse_datetime(text)
