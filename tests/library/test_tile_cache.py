"""tile_cache.py (train.py --cache-tiles): the cache is the tiles or nothing, and a cache in use is
never deleted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_pair

from landcover import dataset, tile_cache
from landcover.common import InputError
from landcover.dataset import TileDataset
from landcover.layout import tile_pairs
from landcover.tile_cache import build_tile_cache


def cache_split(tmp_path: Path, n: int = 5) -> Path:
    split = tmp_path / "train"
    rng = np.random.default_rng(7)
    for i in range(n):
        img = rng.integers(0, 4000, (3, 6, 5)).astype(np.uint16)
        img[:, 0, :2] = 0  # nodata pixels
        mask = rng.integers(0, 15, (6, 5)).astype(np.uint8)  # nodata and unknown codes too
        write_pair(split, f"t{i}.tif", img, mask)
    return split


@pytest.fixture(autouse=True)
def release_caches():
    yield
    tile_cache.release_tile_caches()  # as train.py does when its run ends


def test_cached_tiles_equal_the_files_under_every_transform(tmp_path, monkeypatch):
    pairs = tile_pairs(cache_split(tmp_path))
    stem = build_tile_cache(pairs, tmp_path / "cache", "train", threads=2)
    files = TileDataset(pairs, 3)
    want = {(i, k): files[(i, k)] for i in range(len(pairs)) for k in range(8)}

    def no_files(*args):
        raise AssertionError("a tile was read from its file, not from the cache")

    monkeypatch.setattr(dataset, "read_tile", no_files)
    cached = TileDataset(pairs, 3, cache=stem)
    for (i, k), (xa, ya) in want.items():
        xb, yb = cached[(i, k)]
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.is_contiguous(), (i, k)
    x, _ = cached[0]
    x.numpy()[...] = 0  # a writable copy: the cache itself is never changed
    assert torch.equal(cached[0][0], want[(0, 0)][0])


def test_a_cache_in_use_by_another_process_is_never_deleted(tmp_path):
    """A run training on an older version (or a sample) of the split keeps its cache; once it ends,
    the next build removes it."""
    import subprocess
    import sys

    split = cache_split(tmp_path)
    folder = tmp_path / "cache"
    old = build_tile_cache(tile_pairs(split), folder, "train")
    tile_cache.release_tile_caches()
    holder = subprocess.Popen(  # another training using the old cache: a shared lock on it
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_SH); "
         "print('locked', flush=True); sys.stdin.read()", f"{old}.lock"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        write_pair(split, "t9.tif", np.ones((3, 6, 5), np.uint16), np.ones((6, 5), np.uint8))
        new = build_tile_cache(tile_pairs(split), folder, "train")
        assert new != old and Path(f"{old}.img.npy").is_file() and Path(f"{new}.img.npy").is_file()
    finally:
        holder.communicate("", timeout=30)
    tile_cache.release_tile_caches()
    build_tile_cache(tile_pairs(split), folder, "train")  # the old one is unused now
    assert not Path(f"{old}.img.npy").exists() and not Path(f"{old}.lock").exists()
    assert Path(f"{new}.img.npy").is_file()


def test_a_full_disk_during_the_build_is_an_error_not_a_crash(tmp_path, monkeypatch):
    """The arrays are allocated before they are filled: a disk smaller than the cache (which the
    free-space check cannot always see, e.g. quotas) is ENOSPC and leaves no files, not a SIGBUS."""
    import errno
    import shutil
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", disk], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip() or res.returncode}")
    try:
        split = tmp_path / "train"
        for i in range(12):  # 12 x 40 KB of image: more than the 64 KB disk
            write_pair(split, f"t{i}.tif", np.ones((10, 40, 50), np.uint16), np.ones((40, 50), np.uint8))
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 0, 10**12))
        with pytest.raises(OSError) as e:
            build_tile_cache(tile_pairs(split), disk / "cache", "train")
        assert e.value.errno == errno.ENOSPC
        assert not [p.name for p in (disk / "cache").iterdir() if p.suffix in (".npy", ".partial")]
    finally:
        tile_cache.release_tile_caches()  # its lock files are open on the tmpfs
        subprocess.run(["umount", disk], check=True)


def test_a_damaged_tile_leaves_no_cache(tmp_path):
    split = cache_split(tmp_path)
    tile = split / "img/t3.tif"
    tile.write_bytes(tile.read_bytes()[:-200])  # cut short
    with pytest.raises(InputError, match=r"t3\.tif"):
        build_tile_cache(tile_pairs(split), tmp_path / "cache", "train")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_the_cache_refuses_to_fill_the_disk(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 100, 100))
    with pytest.raises(InputError, match=r"tile cache of train needs .* GB free .*--no-cache-tiles"):
        build_tile_cache(tile_pairs(cache_split(tmp_path)), tmp_path / "cache", "train")
