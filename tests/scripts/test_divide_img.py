"""divide_img.py: tiles equal the scene windows they name, edges, overlap, filters, tiles.csv, --stack,
re-runs and killed runs, bad inputs."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import ROOT, S2_BANDS, assert_one_line_error, run_script, write_raster
from rasterio.transform import from_origin

import divide_img

ORIGIN = (400000.0, 4600000.0)
TRANSFORM = from_origin(*ORIGIN, 10.0, 10.0)


def scene_data(h: int, w: int, bands: int = 10, seed: int = 0) -> np.ndarray:
    """uint16 bands that differ by band, row and column (a misplaced window cannot go unnoticed)."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 60000, (bands, h, w), dtype=np.uint16)


def write_scene(path: Path, data: np.ndarray, transform=TRANSFORM, **kw) -> Path:
    kw.setdefault("descriptions", S2_BANDS[: data.shape[0]])
    return write_raster(path, data, transform=transform, tiled=True, blockxsize=32, blockysize=32, **kw)


def write_mask(path: Path, codes: np.ndarray, **kw) -> Path:
    return write_raster(path, codes.astype(np.uint8), transform=kw.pop("transform", TRANSFORM), **kw)


def run(tmp_path: Path, *args: str) -> Path:
    """Run divide_img.main in-process with --out tmp/tiles; returns the out folder."""
    out = tmp_path / "tiles"
    divide_img.main([*args, "--out", str(out)])
    return out


def names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.tif")}


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "tiles.csv", newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def scene(tmp_path):
    """A 70 x 100 scene (not a multiple of 32) and a mask of varied valid codes."""
    data = scene_data(70, 100)
    codes = np.random.default_rng(1).integers(1, 13, (70, 100))
    return write_scene(tmp_path / "s2_april.tif", data), write_mask(tmp_path / "mask.tif", codes), data, codes


def test_tiles_equal_the_scene_windows_they_name_with_their_own_georeferencing(tmp_path, scene):
    img_path, mask_path, data, codes = scene
    out = run(tmp_path, "--images", str(img_path), "--mask", str(mask_path), "--size", "32")
    tiles = names(out / "img32")
    assert tiles == names(out / "mask32") and len(tiles) == 3 * 4
    for name in tiles:
        stem, r, c = name.rsplit("_", 2)
        r, c = int(r), int(c)
        assert stem == "s2_april"
        with rasterio.open(out / "img32" / f"{name}.tif") as t:
            assert t.count == 10 and t.dtypes[0] == "uint16" and t.shape == (32, 32)
            np.testing.assert_array_equal(t.read(), data[:, r : r + 32, c : c + 32])
            assert t.descriptions == S2_BANDS
            assert t.crs == rasterio.crs.CRS.from_epsg(32631) and t.nodata == 0
            assert t.transform == from_origin(ORIGIN[0] + 10 * c, ORIGIN[1] - 10 * r, 10, 10)
        with rasterio.open(out / "mask32" / f"{name}.tif") as m:
            np.testing.assert_array_equal(m.read(1), codes[r : r + 32, c : c + 32])
            assert m.transform == from_origin(ORIGIN[0] + 10 * c, ORIGIN[1] - 10 * r, 10, 10)
            assert m.crs == rasterio.crs.CRS.from_epsg(32631)


def test_tiles_stay_right_when_chunks_are_short_and_writers_slow(tmp_path, scene, monkeypatch):
    """A chunk's buffer is reused two chunks later: never while a tile cut from it is still being written."""
    import random
    import time

    img_path, mask_path, data, codes = scene
    monkeypatch.setattr(divide_img, "CHUNK_BYTES", 10 * 16 * 16 * 2 * 3)  # at most 3 tiles a chunk
    process_tile = divide_img.process_tile

    def slow(*args):
        time.sleep(random.random() * 0.005)
        return process_tile(*args)

    monkeypatch.setattr(divide_img, "process_tile", slow)
    args = ["--images", str(img_path), "--mask", str(mask_path), "--size", "16", "--stride", "10"]
    out = run(tmp_path, *args, "--workers", "3", "--max-nodata", "1")
    tiles = names(out / "img16")
    assert len(tiles) == 7 * 10  # chunks of 3, 3, 2 and 2 tiles in each row of 10
    for name in tiles:
        r, c = map(int, name.rsplit("_", 2)[1:])
        with (
            rasterio.open(out / "img16" / f"{name}.tif") as t,
            rasterio.open(out / "mask16" / f"{name}.tif") as m,
        ):
            np.testing.assert_array_equal(t.read(), data[:, r : r + 16, c : c + 16])
            np.testing.assert_array_equal(m.read(1), codes[r : r + 16, c : c + 16])


def test_edge_tiles_are_shifted_back_to_cover_the_scene_or_dropped(tmp_path, scene):
    img_path, mask_path, *_ = scene
    out = run(tmp_path, "--images", str(img_path), "--mask", str(mask_path), "--size", "32")
    offsets = {tuple(map(int, n.rsplit("_", 2)[1:])) for n in names(out / "img32")}
    assert offsets == {(r, c) for r in (0, 32, 38) for c in (0, 32, 64, 68)}
    covered = np.zeros((70, 100), bool)
    for r, c in offsets:
        covered[r : r + 32, c : c + 32] = True
    assert covered.all()

    out2 = tmp_path / "dropped"
    divide_img.main(
        [
            "--images",
            str(img_path),
            "--mask",
            str(mask_path),
            "--size",
            "32",
            "--drop-partial",
            "--out",
            str(out2),
        ]
    )
    offsets = {tuple(map(int, n.rsplit("_", 2)[1:])) for n in names(out2 / "img32")}
    assert offsets == {(r, c) for r in (0, 32) for c in (0, 32, 64)}


def test_stride_gives_overlapping_tiles(tmp_path, scene):
    img_path, mask_path, data, _ = scene
    out = run(tmp_path, "--images", str(img_path), "--mask", str(mask_path), "--size", "32", "--stride", "16")
    offsets = {tuple(map(int, n.rsplit("_", 2)[1:])) for n in names(out / "img32")}
    assert offsets == {(r, c) for r in (0, 16, 32, 38) for c in (0, 16, 32, 48, 64, 68)}
    with rasterio.open(out / "img32" / "s2_april_16_48.tif") as t:
        np.testing.assert_array_equal(t.read(), data[:, 16:48, 48:80])


def test_tile_offsets():
    assert divide_img.tile_offsets(100, 32, 32) == [0, 32, 64, 68]
    assert divide_img.tile_offsets(96, 32, 32) == [0, 32, 64]
    assert divide_img.tile_offsets(100, 32, 32, drop_partial=True) == [0, 32, 64]
    assert divide_img.tile_offsets(32, 32, 8) == [0]


def filter_case(tmp_path):
    """A 16 x 96 scene, six 16 x 16 places, each built to meet one filter (or none)."""
    data = scene_data(16, 96, bands=3)
    codes = np.full((16, 96), 3)
    codes[:, 0:16] = 0  # 0: mask all nodata
    codes[:, 16:32] = 12  # 1: only water
    codes[:8, 32:48], codes[8:, 32:48] = 12, 0  # 2: only water among its valid pixels (half nodata)
    data[:, :10, 48:64] = 0  # 3: 10/16 rows without image data -> nodata 0.625
    data[:, 64:80, 64:80] = 65000  # 4: a cloud: kept
    codes[:4, 80:96] = 12  # 5: some water, mostly land: kept
    return write_scene(tmp_path / "s2_april.tif", data, descriptions=None), write_mask(
        tmp_path / "m.tif", codes
    )


def test_each_filter_drops_what_it_should_and_only_that(tmp_path, capsys):
    img_path, mask_path = filter_case(tmp_path)
    args = ["--images", str(img_path), "--mask", str(mask_path), "--size", "16"]
    out = run(tmp_path, *args)
    assert names(out / "img16") == {"s2_april_0_64", "s2_april_0_80"} == names(out / "mask16")
    table = capsys.readouterr().out
    assert table.splitlines()[1].split() == ["s2_april", "6", "2", "0", "1", "2", "1", "0"]

    divide_img.main([*args, "--out", str(tmp_path / "w"), "--keep-water-only"])
    assert names(tmp_path / "w" / "img16") == {f"s2_april_0_{c}" for c in (16, 32, 64, 80)}
    divide_img.main([*args, "--out", str(tmp_path / "n"), "--max-nodata", "0.7"])
    assert names(tmp_path / "n" / "img16") == {f"s2_april_0_{c}" for c in (48, 64, 80)}
    divide_img.main([*args, "--out", str(tmp_path / "a"), "--max-nodata", "1", "--keep-water-only"])
    assert names(tmp_path / "a" / "img16") == {f"s2_april_0_{c}" for c in (16, 32, 48, 64, 80)}


def test_sparse_labels_drop_says_how_many_were_unlabelled_and_what_keeps_them(tmp_path, capsys):
    """Imagery everywhere, labels on small polygons: the tiles dropped for want of labels are counted
    apart from those without imagery, and one line names the option that keeps them."""
    data = scene_data(16, 64, bands=3)
    codes = np.zeros((16, 64), dtype=np.uint8)
    codes[2:6, 2:6] = 3  # 0: 16 of 256 pixels labelled: unlabelled
    codes[:, 16:32] = 4  # 1: fully labelled: kept
    codes[:4, 32:48] = 6  # 2: a quarter labelled: unlabelled
    data[:, :12, 48:64] = 0  # 3: labelled, but 12 of 16 rows without imagery: nodata
    codes[:, 48:64] = 3
    img_path = write_scene(tmp_path / "s2_april.tif", data, descriptions=None)
    mask_path = write_mask(tmp_path / "m.tif", codes)
    args = ["--images", str(img_path), "--mask", str(mask_path), "--size", "16"]
    out = run(tmp_path, *args)
    assert names(out / "img16") == {"s2_april_0_16"}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("nodata > 0.5  unlabelled > 0.5")
    assert lines[1].split() == ["s2_april", "4", "1", "0", "0", "0", "1", "2"]
    note = [line for line in lines if "unlabelled" in line and line.startswith("note:")]
    assert note == [
        "note: s2_april: 2 tiles dropped for being unlabelled (imagery there, labels on less than 50% of the "
        "pixels); with sparse labels --max-nodata 0.99 keeps every tile with 1 % labelled (the loss ignores "
        "unlabelled pixels)"
    ]
    divide_img.main([*args, "--out", str(tmp_path / "sparse"), "--max-nodata", "0.99"])
    assert names(tmp_path / "sparse" / "img16") == {f"s2_april_0_{c}" for c in (0, 16, 32, 48)}
    assert "dropped for being unlabelled" not in capsys.readouterr().out


def test_tiles_csv_counts_equal_the_tiles(tmp_path):
    data = scene_data(64, 64, bands=4)
    data[:, :20, :20] = 0  # image nodata where the mask has codes
    codes = np.random.default_rng(2).integers(0, 13, (64, 64))
    codes[40:, 40:] = 41  # an unknown code: counted as nodata
    img_path, mask_path = write_scene(tmp_path / "s.tif", data), write_mask(tmp_path / "m.tif", codes)
    out = run(
        tmp_path, "--images", str(img_path), "--mask", str(mask_path), "--size", "32", "--max-nodata", "1"
    )
    rows = read_rows(out)
    assert list(rows[0])[:24] == divide_img.CSV_COLUMNS
    assert {r["name"] for r in rows} == names(out / "img32") and len(rows) == 4
    for row in rows:
        with (
            rasterio.open(out / "img32" / f"{row['name']}.tif") as t,
            rasterio.open(out / "mask32" / f"{row['name']}.tif") as m,
        ):
            img, mask = t.read(), m.read(1)
            assert tuple(float(row[k]) for k in ("left", "bottom", "right", "top")) == tuple(t.bounds)
        valid = img.any(axis=0) & (mask > 0) & (mask <= 12)
        expected = np.bincount(mask[valid], minlength=13)[:13]
        expected[0] = valid.size - valid.sum()
        assert [int(row[f"n{k}"]) for k in range(13)] == expected.tolist()
        assert float(row["nodata_fraction"]) == pytest.approx(expected[0] / valid.size, abs=1e-6)
        assert (row["scene"], row["height"], row["width"]) == ("s", "32", "32")
        assert (int(row["row_off"]), int(row["col_off"])) == tuple(map(int, row["name"].split("_")[1:]))


def test_stack_holds_every_scene_in_order_nodata_only_where_all_are(tmp_path):
    april, august = scene_data(40, 40, seed=1), scene_data(40, 40, seed=2)
    april[:, :, :10] = 0  # april has no data in columns 0..9, august in rows 0..9
    august[:, :10, :] = 0
    codes = np.full((40, 40), 4)
    a = write_scene(tmp_path / "s2_april.tif", april)
    b = write_scene(tmp_path / "s2_august.tif", august)
    m = write_mask(tmp_path / "m.tif", codes)
    out = run(tmp_path, "--images", str(b), str(a), "--mask", str(m), "--size", "20", "--stack")
    assert (
        names(out / "img20") == {f"stack_{r}_{c}" for r in (0, 20) for c in (0, 20)} == names(out / "mask20")
    )
    for r in (0, 20):
        for c in (0, 20):
            with rasterio.open(out / "img20" / f"stack_{r}_{c}.tif") as t:
                np.testing.assert_array_equal(t.read()[:10], august[:, r : r + 20, c : c + 20])
                np.testing.assert_array_equal(t.read()[10:], april[:, r : r + 20, c : c + 20])
                assert t.descriptions == tuple(f"s2_august:{d}" for d in S2_BANDS) + tuple(
                    f"s2_april:{d}" for d in S2_BANDS
                )
    n0 = {r["name"]: int(r["n0"]) for r in read_rows(out)}
    assert n0 == {"stack_0_0": 100, "stack_0_20": 0, "stack_20_0": 0, "stack_20_20": 0}
    assert {r["scene"] for r in read_rows(out)} == {"stack"}
    # single-date tiles (10 bands) are not mixed into a folder of stacked tiles (20 bands)
    before = snapshot(out)
    res = run_script("divide_img.py", "--images", a, "--mask", m, "--size", "20", "--out", out)
    assert_one_line_error(res, "20 bands", "10 bands", "another --out")
    assert snapshot(out) == before


def test_rerun_skips_finished_tiles_and_csv_describes_old_and_new_once(tmp_path, scene, capsys):
    img_path, mask_path, *_ = scene
    out = run(tmp_path, "--images", str(img_path), "--mask", str(mask_path), "--size", "32")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "img32").iterdir()}
    second = write_scene(tmp_path / "s2_august.tif", scene_data(70, 100, seed=5))
    capsys.readouterr()
    run(tmp_path, "--images", str(img_path), str(second), "--mask", str(mask_path), "--size", "32")
    assert "s2_april: tiled earlier" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "img32").glob("s2_april*")} == before
    rows = read_rows(out)
    assert len(rows) == len({r["name"] for r in rows}) == 24
    assert {r["name"] for r in rows} == names(out / "img32")
    # a second size in the same folder: both described, each tile once
    run(tmp_path, "--images", str(img_path), "--mask", str(mask_path), "--size", "35")
    rows = read_rows(out)
    assert len(rows) == 24 + 6 and len({(r["name"], r["height"]) for r in rows}) == 30


def test_leftovers_of_a_killed_run_are_repaired_to_the_same_folder(tmp_path, scene):
    img_path, mask_path, *_ = scene
    args = ["--images", str(img_path), "--mask", str(mask_path), "--size", "16"]
    clean = tmp_path / "clean"
    divide_img.main([*args, "--out", str(clean)])
    expected = snapshot(clean)

    out = run(tmp_path, *args)  # then take it apart as a kill would have left it
    (out / "tiles.csv").unlink()
    record = out / "divide_img.json"
    record.write_text(record.read_text().replace('"finished": true', '"finished": false'))
    tiles = sorted((out / "img16").glob("*.tif"))
    for t in tiles[::3]:
        t.unlink()
    (out / "mask16" / tiles[1].name).unlink()  # an image whose mask was not written yet
    (out / "img16" / (tiles[2].name + ".partial")).write_bytes(b"half a tile")  # of a finished tile
    (out / "mask16" / "s2_april_99_99.tif.partial").write_bytes(b"")
    untouched = tiles[2].stat().st_mtime_ns
    run(tmp_path, *args)
    assert snapshot(out) == expected
    assert tiles[2].stat().st_mtime_ns == untouched  # a finished tile is not written again


def test_sigkill_part_way_then_rerun_gives_the_uninterrupted_result(tmp_path):
    data, codes = scene_data(160, 160, bands=10), np.random.default_rng(3).integers(1, 13, (160, 160))
    img_path, mask_path = write_scene(tmp_path / "s.tif", data), write_mask(tmp_path / "m.tif", codes)
    args = ["--images", str(img_path), "--mask", str(mask_path), "--size", "8", "--workers", "1"]
    clean, out = tmp_path / "clean", tmp_path / "killed"
    divide_img.main([*args, "--out", str(clean)])
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "divide_img.py"), *args, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "mask8").is_dir() and len(os.listdir(out / "mask8")) >= 60:
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:  # the run was cut part-way: no finished csv for the scene, some tiles missing
        assert not (out / "tiles.csv").exists()
        assert len(os.listdir(out / "mask8")) < 20 * 20
    run_script("divide_img.py", *args, "--out", out, check=True)
    assert snapshot(out) == snapshot(clean)
    assert killed, "the run finished before it could be killed; the test proved nothing"


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written.


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    ok = write_scene(tmp_path / "s2_april.tif", scene_data(40, 40, bands=3))
    mask = write_mask(tmp_path / "m.tif", np.ones((40, 40)))
    shifted = from_origin(ORIGIN[0] + 100, ORIGIN[1], 10, 10)
    other_grid = write_scene(tmp_path / "s2_shifted.tif", scene_data(40, 40, bands=3), transform=shifted)
    four = write_scene(tmp_path / "s2_four.tif", scene_data(40, 40, bands=4))
    small = write_scene(tmp_path / "s2_small.tif", scene_data(20, 20, bands=3))
    small_mask = write_mask(tmp_path / "m_small.tif", np.ones((20, 20)))
    small_mask = write_mask(tmp_path / "m_small.tif", np.ones((20, 20)))
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    two_bands = write_raster(tmp_path / "m2.tif", np.ones((2, 40, 40), np.uint8), transform=TRANSFORM)
    off_grid = write_mask(tmp_path / "m_off.tif", np.ones((40, 40)), transform=from_origin(0, 0, 10, 10))
    base = ["--mask", str(mask)]
    return {
        "missing scene": (["--images", str(tmp_path / "nope.tif"), *base], ["nope.tif", "not found"]),
        "no scenes matched": (["--images", str(tmp_path / "x_*.tif"), *base], ["no scenes matched"]),
        "not a raster": (["--images", str(text), *base], ["notes.tif", "not a readable raster"]),
        "missing mask": (
            ["--images", str(ok), "--mask", str(tmp_path / "none.tif")],
            ["none.tif", "not found"],
        ),
        "mask with two bands": (["--images", str(ok), "--mask", str(two_bands)], ["m2.tif", "2 bands"]),
        "mask off the grid": (
            ["--images", str(ok), "--mask", str(off_grid)],
            ["m_off.tif", "s2_april.tif", "rescale_mask.py"],
        ),
        "size 0": (["--images", str(ok), *base, "--size", "0"], ["--size"]),
        "negative size": (["--images", str(ok), *base, "--size", "-4"], ["--size"]),
        "stride > size": (["--images", str(ok), *base, "--size", "8", "--stride", "9"], ["--stride"]),
        "stride 0": (["--images", str(ok), *base, "--size", "8", "--stride", "0"], ["--stride"]),
        "scene smaller than a tile": (
            ["--images", str(small), "--mask", str(small_mask), "--size", "32"],
            ["s2_small.tif", "smaller"],
        ),
        "stack of other grids": (
            ["--images", str(ok), str(other_grid), *base, "--stack"],
            ["s2_shifted.tif", "grid"],
        ),
        "stack of band counts": (["--images", str(ok), str(four), *base, "--stack"], ["s2_four.tif", "band"]),
    }


CASES = [
    "missing scene", "no scenes matched", "not a raster", "missing mask", "mask with two bands",
    "mask off the grid", "size 0", "negative size", "stride > size", "stride 0",
    "scene smaller than a tile", "stack of other grids", "stack of band counts",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    args, needles = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    res = run_script("divide_img.py", "--size", "16", *args, "--out", out)  # a later --size wins
    assert_one_line_error(res, *needles)
    assert not out.exists()
