"""generalize_map.py: the minimum mapping unit as GDAL's whole-raster sieve on a map whose patches cross
the 512-row strips; nodata untouched; the confidence carried along (merged pixels 0, or the probability
of their new class when the probabilities are beside the map); colour table, names, overviews and
previews; the area table; bad input refused with one line and nothing written; killed and re-run gives
the files of an uninterrupted run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import rasterio
import rasterio.features
from helpers import run_script, run_script_killed, tree_snapshot, validate_stac_item, write_raster
from scipy import ndimage

from colormap import gdal_colour_table

TILED = dict(tiled=True, blockxsize=512, blockysize=512, compress="deflate")


def class_map(n: int = 1100, m: int = 700, seed: int = 0) -> np.ndarray:
    """Patches of every size (smooth fields plus noise), nodata in a corner and a hole."""
    rng = np.random.default_rng(seed)
    f = ndimage.zoom(rng.random((5, n // 25 + 1, m // 25 + 1)), (1, 25, 25), order=1)[:, :n, :m]
    f += rng.random(f.shape) * 0.12
    codes = (np.array([1, 3, 4, 6, 12])[f.argmax(0)]).astype(np.uint8)
    codes[:40, :60] = 0
    codes[500:530, 300:340] = 0
    return codes


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmu")
    codes = class_map()
    rng = np.random.default_rng(1)
    write_raster(folder / "map.tif", codes, **TILED)
    confidence = np.where(codes == 0, 255, rng.integers(30, 101, codes.shape)).astype(np.uint8)
    write_raster(folder / "map_confidence.tif", confidence, nodata=255, **TILED)
    res = run_script("generalize_map.py", "--map", folder / "map.tif", "--mmu", 0.5)
    assert res.returncode == 0, res.stderr
    return folder, codes, confidence, res


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_map_equals_the_whole_raster_sieve_with_nodata_untouched(made):
    folder, codes, _, res = made
    got = read(folder / "map_mmu.tif")
    assert np.array_equal(got, rasterio.features.sieve(codes, 50, mask=codes != 0, connectivity=4))
    assert np.array_equal(got == 0, codes == 0)
    assert (got != codes).any(), "the map has patches below 0.5 ha"
    assert "50 pixels" in res.stdout and "Forest" in res.stdout and "pixels changed" in res.stdout


def test_outputs_are_described_like_predicts(made):
    folder = made[0]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["map.tif", "map_confidence.tif", "map_mmu.json", "map_mmu.png", "map_mmu.tif",
                     "map_mmu.tif.aux.xml", "map_mmu_confidence.png", "map_mmu_confidence.tif"]  # fmt: skip
    validate_stac_item(folder / "map_mmu.json")
    item = json.loads((folder / "map_mmu.json").read_text())
    assert set(item["assets"]) == {"map", "confidence", "preview", "confidence_preview"}
    assert item["properties"]["landcover:mmu_ha"] == 0.5
    assert item["properties"]["proj:shape"] == [1100, 700]
    with rasterio.open(folder / "map_mmu.tif") as m:
        assert m.nodata == 0 and m.overviews(1) and m.block_shapes[0] == (512, 512)
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", "a Cloud-Optimized GeoTIFF"
        assert all(m.colormap(1)[c] == rgba for c, rgba in gdal_colour_table().items())
        assert m.tags()["mmu_ha"] == "0.5" and m.tags(1)["CLASS_3"] == "Forest"
    with rasterio.open(folder / "map_mmu_confidence.tif") as c:
        assert c.nodata == 255 and c.overviews(1) and "MERGED_PIXELS" in c.tags(1)
        assert c.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_confidence_is_carried_and_merged_pixels_are_marked(made):
    folder, codes, confidence, _ = made
    got, conf = read(folder / "map_mmu.tif"), read(folder / "map_mmu_confidence.tif")
    changed = got != codes
    assert (conf[changed] == 0).all(), "merged pixels: 0, not the model's choice"
    assert np.array_equal(conf[~changed], confidence[~changed])


def test_probabilities_beside_the_map_give_merged_pixels_their_new_class(tmp_path):
    codes = class_map(300, 300, seed=3)
    rng = np.random.default_rng(4)
    probs = rng.integers(0, 100, (12, *codes.shape)).astype(np.uint8)
    write_raster(tmp_path / "m.tif", codes, **TILED)
    write_raster(tmp_path / "m_confidence.tif", np.where(codes == 0, 255, 50).astype(np.uint8), nodata=255)
    write_raster(tmp_path / "m_probabilities.tif", probs, nodata=255)
    res = run_script("generalize_map.py", "--map", tmp_path / "m.tif", "--mmu", 0.3, "--connectivity", 8,
                     "--out", tmp_path / "out" / "g.tif", "--no-preview")  # fmt: skip
    assert res.returncode == 0, res.stderr
    got, conf = read(tmp_path / "out" / "g.tif"), read(tmp_path / "out" / "g_confidence.tif")
    assert np.array_equal(got, rasterio.features.sieve(codes, 30, mask=codes != 0, connectivity=8))
    rows, cols = np.nonzero(got != codes)
    assert len(rows) and (conf[rows, cols] == probs[got[rows, cols].astype(int) - 1, rows, cols]).all()


@pytest.mark.parametrize(
    "case",
    ["not a class map", "multi-band", "mmu zero", "mmu negative", "out over map", "out over confidence",
     "code 40"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    codes = class_map(200, 200)
    write_raster(tmp_path / "map.tif", codes)
    write_raster(tmp_path / "map_confidence.tif", np.full(codes.shape, 80, np.uint8), nodata=255)
    write_raster(tmp_path / "float.tif", codes.astype(np.float32))
    write_raster(tmp_path / "two.tif", np.stack([codes, codes]))
    bad = codes.copy()
    bad[150, 150] = 40
    write_raster(tmp_path / "bad.tif", bad)
    args = {
        "not a class map": (["--map", tmp_path / "float.tif", "--mmu", 1], "not a class map"),
        "multi-band": (["--map", tmp_path / "two.tif", "--mmu", 1], "not a class map"),
        "mmu zero": (["--map", tmp_path / "map.tif", "--mmu", 0], "--mmu"),
        "mmu negative": (["--map", tmp_path / "map.tif", "--mmu", -1], "--mmu"),
        "out over map": (
            ["--map", tmp_path / "map.tif", "--mmu", 1, "--out", tmp_path / "map.tif"],
            "overwrite",
        ),
        "out over confidence": (
            ["--map", tmp_path / "map.tif", "--mmu", 1, "--out", tmp_path / "map_confidence.tif"],
            "overwrite",
        ),
        "code 40": (["--map", tmp_path / "bad.tif", "--mmu", 1], "code 40"),
    }[case]
    before = tree_snapshot(tmp_path)
    assert_one_line_error(run_script("generalize_map.py", *args[0]), args[1])
    assert tree_snapshot(tmp_path) == before


def assert_one_line_error(res, needle: str) -> None:
    """Exit status 2 and one line as a terminal shows it: a progress bar drawn before the error is erased
    (carriage returns), so what stays is the text after the last one on each line."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    shown = [ln.split("\r")[-1] for ln in res.stderr.split("\n")]
    shown = [ln for ln in shown if ln.strip()]
    assert len(shown) == 1 and needle in shown[0] and "Traceback" not in res.stderr, res.stderr


def digests(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("n", [1, 3, 5])
def test_killed_then_rerun_gives_the_uninterrupted_files(tmp_path, made, n):
    """SIGKILL at the n-th rename (confidence, previews, names, map), then a re-run: the same bytes as an
    uninterrupted run of the same command (the map's tags name its input)."""
    folder = made[0]
    for name in ("map.tif", "map_confidence.tif"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    args = ("--map", tmp_path / "map.tif", "--mmu", 0.5)
    run_script("generalize_map.py", *args, check=True)
    reference = digests(tmp_path)
    for p in tmp_path.glob("map_mmu*"):
        p.unlink()
    res = run_script_killed("generalize_map.py", "replace", n, "before", *args)
    assert res.returncode == -9, res.stderr
    assert not (tmp_path / "map_mmu.tif").exists(), "the map is renamed last"
    run_script("generalize_map.py", *args, check=True)
    assert digests(tmp_path) == reference
