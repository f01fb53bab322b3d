"""layout.py: the folder contract (tile folders, split folders, tile names, pairing by name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from landcover import layout
from landcover.common import InputError


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_tile_folders_sizes_and_names(tmp_path):
    img, mask = layout.tile_folders(tmp_path, 300)
    assert (img.name, mask.name) == ("img300", "mask300")
    assert layout.tile_sizes(tmp_path) == []
    for d in (img, mask, tmp_path / "img64", tmp_path / "images", tmp_path / "mask_old"):
        d.mkdir()
    (tmp_path / "img128").write_text("a file, not a folder")
    assert layout.tile_sizes(tmp_path) == [64, 300]
    assert layout.split_folders(tmp_path / "train") == (
        tmp_path / "train" / "img",
        tmp_path / "train" / "mask",
    )
    name = layout.tile_name("s2_april", 300, 600)
    assert name == "s2_april_300_600" and layout.parse_place(name) == (300, 600)
    assert layout.parse_place("scene_2024_08_40_200") == (40, 200)
    for bad in ("s2_april_x_300", "300_600", "_1_2", "stack"):
        with pytest.raises(ValueError):
            layout.parse_place(bad)
    assert layout.tile_path(img, name) == img / "s2_april_300_600.tif"
    assert [layout.count_column(c) for c in (0, 12)] == ["n0", "n12"]


def test_pairs_by_name_and_unpaired_tiles_named(tmp_path):
    img, mask = layout.split_folders(tmp_path / "val")
    for n in ("b", "a"):
        touch(layout.tile_path(img, n))
        touch(layout.tile_path(mask, n))
    assert layout.tile_pairs(tmp_path / "val") == [
        (img / "a.tif", mask / "a.tif"),
        (img / "b.tif", mask / "b.tif"),
    ]
    touch(layout.tile_path(mask, "c"))
    with pytest.raises(InputError, match=r"mask tile without its image: .*c\.tif \(expected .*img/c\.tif\)"):
        layout.pair_names(img, mask)
    msg = layout.unpaired("c", img, mask, image_present=True, partner="its partner")
    assert msg.startswith("image tile without its partner: ") and msg.endswith(f"(expected {mask / 'c.tif'})")
    for d in layout.split_folders(tmp_path / "empty"):
        d.mkdir(parents=True)
    with pytest.raises(InputError, match="no tiles in"):
        layout.tile_pairs(tmp_path / "empty")
