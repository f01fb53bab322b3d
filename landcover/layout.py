"""The folder contract every script shares: the default folders, where tiles live, what they are named
and how an image finds its mask.

Bottom floor (rests on common.py's one-line failures only). A tile folder holds ``img<SIZE>/``,
``mask<SIZE>/`` and ``tiles.csv`` (divide_img.py); a split folder (``train/``, ``val/``, ``test/``,
move_images.py) holds ``img/`` and ``mask/``. An image and its mask have the same file name, paired
by name, never by sort order: ``<scene stem or "stack">_<row offset>_<col offset>``. Each script's
default output folder is the next one's default input.
"""

from __future__ import annotations

import re
from pathlib import Path

from landcover.common import fail, require_dir

IMG, MASK = "img", "mask"  # the two kinds of tile, and the folder names of a split
KINDS = (IMG, MASK)
TRAIN, VAL, TEST = SPLITS = ("train", "val", "test")
TILES_CSV = "tiles.csv"  # divide_img.py's table of tiles, in the tile folder
SUFFIX = ".tif"

DATA = Path("data")  # the default home of everything below, and of the split folders
RAW = DATA / "raw"  # the scenes and the 1 m mask (make_demo_data.py's, or the real ones)
MASK_10M = DATA / "mask_10m.tif"  # the mask on the scenes' grid: rescale_mask.py's output
TILES = DATA / "tiles"  # divide_img.py's tile folder, split by move_images.py


def tile_folders(tiles: str | Path, size: int) -> tuple[Path, Path]:
    """The image and mask folders of divide_img.py's tiles of one size: ``img<SIZE>``, ``mask<SIZE>``."""
    return Path(tiles) / f"{IMG}{size}", Path(tiles) / f"{MASK}{size}"


def tile_sizes(tiles: str | Path) -> list[int]:
    """The tile sizes in a tile folder (every SIZE of an ``img<SIZE>`` or ``mask<SIZE>`` in it), sorted."""
    pattern = re.compile(rf"(?:{IMG}|{MASK})(\d+)")
    found = (pattern.fullmatch(p.name) for p in Path(tiles).iterdir() if p.is_dir())
    return sorted({int(m.group(1)) for m in found if m})


def split_folders(split: str | Path) -> tuple[Path, Path]:
    """The image and mask folders of a split folder: ``<split>/img``, ``<split>/mask``."""
    return Path(split) / IMG, Path(split) / MASK


def tile_name(prefix: str, row_off: int, col_off: int) -> str:
    """The name of a tile cut at a place of a scene (``prefix``: its stem, or "stack")."""
    return f"{prefix}_{row_off}_{col_off}"


def parse_place(name: str) -> tuple[int, int]:
    """(row offset, col offset) of a tile name (``<prefix>_<row>_<col>``; a prefix may hold ``_``).

    Raises ValueError for a name that does not end with two offsets.
    """
    parts = name.rsplit("_", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(name)
    return int(parts[1]), int(parts[2])


def count_column(code: int) -> str:
    """The tiles.csv column of the pixel count of class ``code`` in a tile (``n0``: nodata pixels)."""
    return f"n{code}"


def tile_path(folder: str | Path, name: str) -> Path:
    """The file of tile ``name`` (no suffix) in ``folder``."""
    return Path(folder) / f"{name}{SUFFIX}"


def tile_names(folder: str | Path | None) -> set[str]:
    """Names (without .tif) of the GeoTIFFs in a folder; empty when there is no such folder."""
    if folder is None or not Path(folder).is_dir():
        return set()
    return {p.stem for p in Path(folder).glob(f"*{SUFFIX}")}


def unpaired(name: str, img_dir: Path, mask_dir: Path, image_present: bool, partner: str = "its mask") -> str:
    """The one-line message for a tile whose partner is missing."""
    if image_present:
        return (
            f"image tile without {partner}: {tile_path(img_dir, name)} (expected {tile_path(mask_dir, name)})"
        )
    partner = "its image" if partner == "its mask" else partner
    return f"mask tile without {partner}: {tile_path(mask_dir, name)} (expected {tile_path(img_dir, name)})"


def pair_names(img_dir: Path, mask_dir: Path) -> list[str]:
    """Names of the tile pairs in two folders, sorted; a tile without its partner is an error naming it."""
    imgs, masks = tile_names(img_dir), tile_names(mask_dir)
    for n in sorted(imgs - masks):
        fail(unpaired(n, img_dir, mask_dir, True))
    for n in sorted(masks - imgs):
        fail(unpaired(n, img_dir, mask_dir, False))
    return sorted(imgs)


def tile_pairs(split: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a split folder, paired by file name, sorted by name.

    An image without its mask (or a mask without its image) is an error naming it; so is a split
    with no tiles.
    """
    split = require_dir(split, "split folder")
    img_dir, mask_dir = split_folders(split)
    for d in (img_dir, mask_dir):
        require_dir(d, "tile folder")
    names = pair_names(img_dir, mask_dir)
    if not names:
        fail(f"no tiles in {split} (expected GeoTIFFs in {img_dir} and {mask_dir})")
    return [(tile_path(img_dir, n), tile_path(mask_dir, n)) for n in names]
