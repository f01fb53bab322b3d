"""The decoded-tile cache (train.py --cache-tiles): a split's tiles decoded once into two arrays.

Middle floor: rests on tiles.py and common.py. Owns the cache's layout under ``DATA/tile_cache/``:
``<split>-v<version>-<fingerprint>.img.npy`` (N, C, H, W, the stored dtype) and ``.target.npy``
(N, H, W uint8), read by memory map: the same values bit for bit, a copy instead of a decode, for a
GPU whose step outruns the decoding of compressed tiles. A new name whenever a tile changes,
locked while a training uses it, allocated before it is filled, renamed into place only when whole
(``build_tile_cache`` says how).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import numpy as np

from landcover.common import atomic_path, fail
from landcover.tiles import each_in_threads, fingerprint, read_tile, target

CACHE_DIR = "tile_cache"  # under the data folder (train.py --data)
CACHE_VERSION = 1  # part of every cache's name: raise it when ``target`` or the layout changes
_CACHES_IN_USE: list = []  # shared locks on the caches this process uses, released when it exits


def cache_stem(folder: Path, split: str, pairs: list[tuple[Path, Path]]) -> Path:
    """``<folder>/<split>-v<version>-<fingerprint>``: a new name whenever a tile of the split changes
    (also its inode change time, which ``cp -p`` or ``touch -r`` cannot set back)."""
    return Path(folder) / f"{split}-v{CACHE_VERSION}-{fingerprint(pairs, ctime=True)}"


def open_tile_cache(stem: Path) -> tuple[np.ndarray, np.ndarray]:
    """The cache's (N, C, H, W) images and (N, H, W) uint8 targets, memory-mapped read-only."""
    return (
        np.load(f"{stem}.img.npy", mmap_mode="r"),
        np.load(f"{stem}.target.npy", mmap_mode="r"),
    )


def build_tile_cache(
    pairs: list[tuple[Path, Path]], folder: str | Path, split: str, threads: int = 4
) -> Path:
    """Decode a split's tiles once into two uncompressed ``.npy`` arrays under ``folder``; return their stem.

    Images keep their dtype ((N, C, H, W): 1.8 MB per 300 x 300 x 10 uint16 tile), targets are
    ``target``'s ((N, H, W) uint8). A cache whose name matches the tiles' fingerprint is reused. The
    calling process holds a shared lock on the cache until it exits; caches of the split with another
    fingerprint are deleted only when no process holds theirs (another run may be training on a
    sample, --max-tiles, or an earlier version of the split). One builder at a time (an exclusive lock
    per split; a second run waits, then reuses the cache). The files are allocated on disk before they
    are filled (a full disk is an ENOSPC error, not a crash on a memory-mapped page) and written under
    ``.partial`` names, renamed targets first, images last: a crash leaves no cache that looks whole.
    Every tile must have the first one's shape and dtype (train.py checks it before).
    """
    folder = Path(folder)
    stem = cache_stem(folder, split, pairs)
    img_path, y_path = Path(f"{stem}.img.npy"), Path(f"{stem}.target.npy")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{split}.lock", "w") as build_lock:
        if not _try_lock(build_lock, fcntl.LOCK_EX):
            print(f"waiting for another process building the {split} tile cache in {folder}", flush=True)
            fcntl.flock(build_lock, fcntl.LOCK_EX)
        use_lock = open(f"{stem}.lock", "w")  # noqa: SIM115 (held until the process exits)
        fcntl.flock(use_lock, fcntl.LOCK_SH)
        _CACHES_IN_USE.append(use_lock)
        _prune_caches(folder, split, keep=stem)
        if img_path.is_file() and y_path.is_file():
            return stem
        first, _ = read_tile(*pairs[0])
        need = len(pairs) * (first.nbytes + first[0].size)
        free = shutil.disk_usage(folder).free
        if free < need * 1.05:
            fail(
                f"the tile cache of {split} needs {need / 1e9:.1f} GB, {folder} has {free / 1e9:.1f} GB free "
                "(free some, or train with --no-cache-tiles: worker processes read the tile files)"
            )
        with atomic_path(img_path) as img_tmp, atomic_path(y_path) as y_tmp:  # renamed: targets, images
            _decode_into(pairs, first, img_tmp, y_tmp, threads, f"caching {split} tiles")
    return stem


def release_tile_caches() -> None:
    """Release this process's locks on the caches it used (train.py, when its run ends); until then no
    other process deletes them."""
    while _CACHES_IN_USE:
        _CACHES_IN_USE.pop().close()


def _try_lock(f, kind: int) -> bool:
    """Take a flock without waiting; False when another process holds a conflicting one."""
    try:
        fcntl.flock(f, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _prune_caches(folder: Path, split: str, keep: Path) -> None:
    """Delete the split's other caches that no process uses, and leftovers of interrupted builds."""
    for lock_path in folder.glob(f"{split}-*.lock"):
        other = lock_path.with_suffix("")
        if other == keep:
            continue
        with open(lock_path, "a") as lock:
            if not _try_lock(lock, fcntl.LOCK_EX):
                continue  # a running training uses it
            for f in folder.glob(f"{other.name}.*"):
                if f != lock_path:
                    f.unlink()
            lock_path.unlink()
    for f in folder.glob(f"{keep.name}.*.partial"):  # an interrupted build of this very cache
        f.unlink()


def _decode_into(
    pairs: list[tuple[Path, Path]], first: np.ndarray, img_file: Path, y_file: Path, threads: int, desc: str
) -> None:
    """Decode every pair into new ``.npy`` files of images and targets (``threads`` GDAL readers)."""
    layout = {img_file: (first.shape, first.dtype), y_file: (first.shape[1:], np.uint8)}
    for f, (shape, dtype) in layout.items():
        # open_memmap makes a sparse file, and a page written into a full disk would be a SIGBUS:
        # allocated now, before any mapping is kept, a full disk is an ENOSPC error here
        np.lib.format.open_memmap(f, mode="w+", dtype=dtype, shape=(len(pairs), *shape))  # header only
        with open(f, "r+b") as fd:
            os.posix_fallocate(fd.fileno(), 0, os.path.getsize(f))
    imgs, ys = np.load(img_file, mmap_mode="r+"), np.load(y_file, mmap_mode="r+")

    def decode(i: int) -> None:
        img, mask = read_tile(*pairs[i])
        if img.shape != first.shape or img.dtype != first.dtype:
            fail(
                f"image tile is {img.shape} {img.dtype}, expected {first.shape} {first.dtype}: {pairs[i][0]}"
            )
        imgs[i], ys[i] = img, target(img, mask)

    each_in_threads(decode, range(len(pairs)), threads, desc)
    imgs.flush()
    ys.flush()
