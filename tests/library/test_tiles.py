"""layout.py's pairing of tiles by name and tiles.py's split checks: every tile opens, and all share
size, band count and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_pair, write_raster, write_tile_split

from landcover.common import InputError
from landcover.layout import tile_pairs
from landcover.tiles import read_tile, scan_tiles


def test_pairs_by_name_not_by_order(tmp_path):
    split = tmp_path / "train"
    # written in an order unlike the sorted one; each mask holds its tile's number
    for i, name in [(3, "b_10.tif"), (1, "a_2.tif"), (2, "b_9.tif")]:
        write_raster(split / "mask" / name, np.full((4, 4), i, np.uint8))
    for i, name in [(2, "b_9.tif"), (3, "b_10.tif"), (1, "a_2.tif")]:
        write_raster(split / "img" / name, np.full((2, 4, 4), i * 100, np.uint16))
    pairs = tile_pairs(split)
    assert [p[0].name for p in pairs] == ["a_2.tif", "b_10.tif", "b_9.tif"]
    for img_path, mask_path in pairs:
        assert img_path.name == mask_path.name and img_path.parent.name == "img"
        img, mask = read_tile(img_path, mask_path)
        assert int(img[0, 0, 0]) == 100 * int(mask[0, 0])


@pytest.mark.parametrize("missing", ["mask", "img"])
def test_unpaired_tile_is_an_error_naming_it(tmp_path, missing):
    split = tmp_path / "train"
    write_tile_split(split, n=3, size=8, block=4)
    (split / missing / "t001.tif").unlink()
    other = "img" if missing == "mask" else "mask"
    with pytest.raises(InputError, match=f"{other}.*t001.tif.*expected.*{missing}/t001.tif"):
        tile_pairs(split)


def test_empty_or_missing_split_is_an_error(tmp_path):
    with pytest.raises(InputError, match="split folder not found"):
        tile_pairs(tmp_path / "nothing")
    (tmp_path / "val" / "img").mkdir(parents=True)
    with pytest.raises(InputError, match=r"tile folder not found.*mask"):
        tile_pairs(tmp_path / "val")
    (tmp_path / "val" / "mask").mkdir()
    with pytest.raises(InputError, match="no tiles"):
        tile_pairs(tmp_path / "val")


def test_scan_tiles_reads_bands_and_refuses_mixed_tiles(tmp_path):
    split = tmp_path / "train"
    write_tile_split(split, n=2, size=16, block=4, descriptions=("B2", "B3", "B4", "B8"))
    info = scan_tiles(tile_pairs(split))
    assert (info.bands, info.height, info.width, info.dtype) == (4, 16, 16, "uint16")
    assert info.descriptions == ("B2", "B3", "B4", "B8")
    write_pair(split, "t009.tif", np.ones((3, 16, 16), np.uint16), np.ones((16, 16), np.uint8))
    with pytest.raises(InputError, match=r"tile differs.*3 bands.*t009\.tif"):
        scan_tiles(tile_pairs(split))
    write_pair(split, "t009.tif", np.ones((4, 16, 16), np.uint16), np.ones((8, 8), np.uint8))
    with pytest.raises(InputError, match=r"mask tile does not fit its image.*t009\.tif"):
        scan_tiles(tile_pairs(split))


def test_each_in_threads_stops_at_the_first_error():
    """A damaged tile early in a split of thousands is reported at once: the tiles after it are not all
    decoded first."""
    import threading

    from landcover.tiles import each_in_threads

    started, lock = [], threading.Lock()

    def check(i: int) -> None:
        with lock:
            started.append(i)
        if i == 3:
            raise ValueError("tile 3 is damaged")

    with pytest.raises(ValueError, match="tile 3"):
        each_in_threads(check, range(1000), threads=2, desc="checking")
    assert len(started) <= 3 + 1 + 2 * 2  # the tiles before it and those in flight, not the split
