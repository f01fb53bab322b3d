"""Tiles for the model: pairing, band statistics, normalisation, the Dataset, checkpoints.

Middle floor: shared by train.py, test_model.py and predict.py. A split folder holds ``img/`` and
``mask/`` with one GeoTIFF per tile; an image and its mask have the same file name (never matched by
sort order). Each band is normalised with the mean and std of the valid pixels of the train split,
computed once, cached beside the data (``band_stats.json``) and carried inside every checkpoint, so
evaluation and prediction reuse them and never recompute them on other data. Nodata (0) pixels are
0 in the input and ignored in the loss and the metrics. Tiles travel as stored (uint16) from the
loader to the device, where ``Normalize`` standardises them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from colormap import CLASSES, NODATA, NUM_CLASSES
from common import (
    atomic_path,
    atomic_write_text,
    fail,
    open_raster,
    progress,
    read_pixels,
    require_dir,
    require_file,
)
from model import UNet, model_from_config

STATS_FILE = "band_stats.json"
CHECKPOINT_VERSION = 1


def tile_pairs(split: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a split folder, paired by file name, sorted by name.

    An image without its mask (or a mask without its image) is an error naming it; so is a split
    with no tiles.
    """
    split = require_dir(split, "split folder")
    img_dir, mask_dir = split / "img", split / "mask"
    for d in (img_dir, mask_dir):
        require_dir(d, "tile folder")
    imgs = {p.name: p for p in img_dir.glob("*.tif")}
    masks = {p.name: p for p in mask_dir.glob("*.tif")}
    for name in sorted(imgs.keys() - masks.keys()):
        fail(f"image tile without its mask: {img_dir / name} (expected {mask_dir / name})")
    for name in sorted(masks.keys() - imgs.keys()):
        fail(f"mask tile without its image: {mask_dir / name} (expected {img_dir / name})")
    if not imgs:
        fail(f"no tiles in {split} (expected GeoTIFFs in {img_dir} and {mask_dir})")
    return [(imgs[n], masks[n]) for n in sorted(imgs)]


@dataclass(frozen=True)
class TileInfo:
    """What every tile of a split shares."""

    bands: int
    height: int
    width: int
    dtype: str
    descriptions: tuple[str, ...]


def scan_tiles(pairs: list[tuple[Path, Path]]) -> TileInfo:
    """Check that every tile opens and all share size, band count and dtype; masks have one band."""
    first: TileInfo | None = None
    for img_path, mask_path in progress(pairs, desc="checking tiles", unit="tile", leave=False):
        with open_raster(img_path, "image tile", sidecars=False) as src:
            descriptions = tuple(d or f"band{i + 1}" for i, d in enumerate(src.descriptions))
            info = TileInfo(src.count, src.height, src.width, src.dtypes[0], descriptions)
        with open_raster(mask_path, "mask tile", sidecars=False) as m:
            if np.dtype(m.dtypes[0]).kind not in "ui":
                fail(f"mask tile holds {m.dtypes[0]} values, expected integer class codes: {mask_path}")
            if m.count != 1 or (m.height, m.width) != (info.height, info.width):
                fail(
                    f"mask tile does not fit its image ({m.count} band(s), {m.height} x {m.width}; "
                    f"image {info.height} x {info.width}): {mask_path}"
                )
        if first is None:
            first = info
        elif (info.bands, info.height, info.width, info.dtype) != (
            first.bands,
            first.height,
            first.width,
            first.dtype,
        ):
            fail(
                f"tile differs from the others ({info.bands} bands {info.height} x {info.width} "
                f"{info.dtype}, expected {first.bands} bands {first.height} x {first.width} "
                f"{first.dtype}): {img_path}"
            )
    assert first is not None
    return first


def read_tile(img_path: Path, mask_path: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """An image tile (C, H, W) as stored and its mask (H, W) uint8, or None without a mask.

    A tile that cannot be opened or decoded (damaged blocks) is an error naming it.
    """
    with open_raster(img_path, "image tile", sidecars=False) as src:
        img = read_pixels(src, "image tile")
    mask = None
    if mask_path is not None:
        with open_raster(mask_path, "mask tile", sidecars=False) as m:
            mask = read_pixels(m, "mask tile", 1)
    return img, mask


def _each_in_threads(fn, items: Sequence, threads: int, desc: str, leave: bool = True) -> None:
    """``fn(item)`` for every item on ``threads`` threads (GDAL decodes without holding the GIL), with a
    progress bar; the first error is raised. ``fn`` returns nothing, so no result piles up."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in progress(pool.map(fn, items), total=len(items), desc=desc, unit="tile", leave=leave):
            pass


def check_tiles(pairs: list[tuple[Path, Path]], threads: int = 4, desc: str = "checking tiles") -> None:
    """Decode every tile pair once (``threads`` GDAL readers): a tile damaged inside opens fine and fails
    only when its pixels are read; found now, it is a one-line error instead of a stop hours later."""
    _each_in_threads(lambda p: read_tile(*p) and None, pairs, threads, desc, leave=False)


def valid_pixels(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels where the image has data (nodata is 0 in every band)."""
    return np.any(img != NODATA, axis=0)


def target(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 training target: the mask's code, 0 (nodata) where the mask is nodata or holds a code
    outside 0..12 (it would index past the model's outputs: a crash on CUDA) or the image has no data."""
    known = (mask >= 0) & (mask < NUM_CLASSES)  # signed masks may hold negative codes
    return np.where(valid_pixels(img) & known, mask, NODATA).astype(np.uint8)


def _fingerprint(pairs: list[tuple[Path, Path]], ctime: bool = False) -> str:
    """Names, sizes and modification times of the tiles (and inode change times with ``ctime``): changes
    when any tile is rewritten."""
    h = hashlib.sha256()
    for img, mask in pairs:
        for p in (img, mask):
            st = p.stat()
            h.update(
                f"{p.name}:{st.st_size}:{st.st_mtime_ns}{f':{st.st_ctime_ns}' if ctime else ''};".encode()
            )
    return h.hexdigest()[:16]


def compute_band_stats(pairs: list[tuple[Path, Path]]) -> dict:
    """Mean and std of every band over the valid pixels (mask and image both valid) of ``pairs``.

    Also ``class_pixels``: the pixel count of every code 0..12 over those pixels (the training
    targets, for class weights); codes outside 0..12 are nodata for the model and not counted.
    """
    s = s2 = None
    n = 0
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for img_path, mask_path in progress(pairs, desc="band statistics", unit="tile"):
        img, mask = read_tile(img_path, mask_path)
        valid = valid_pixels(img) & (mask != NODATA)
        x = img[:, valid].astype(np.float64)
        if s is None:
            s, s2 = np.zeros(img.shape[0]), np.zeros(img.shape[0])
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
        codes = mask[valid]
        counts += np.bincount(codes[codes < NUM_CLASSES], minlength=NUM_CLASSES)
    if n == 0:
        fail(f"no valid pixels in the tiles of {pairs[0][0].parent.parent}")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0)) + 1e-6
    class_pixels = [int(c) for c in counts]
    return {"mean": mean.tolist(), "std": std.tolist(), "pixels": int(n), "class_pixels": class_pixels}


def band_stats(train: str | Path, pairs: list[tuple[Path, Path]] | None = None) -> dict:
    """Band statistics of the train split, cached in ``<train>/../band_stats.json``.

    The cache is reused only while the train split holds the same tiles (names, sizes and modification
    times of images and masks: an uncompressed tile rewritten with other values keeps its size).
    """
    train = Path(train)
    pairs = pairs if pairs is not None else tile_pairs(train)
    cache = train.parent / STATS_FILE
    key = _fingerprint(pairs)
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if (
                cached.get("fingerprint") == key
                and cached.get("split") == train.name
                and "class_pixels" in cached  # caches written before class counts existed
            ):
                return cached
        except (json.JSONDecodeError, OSError):
            pass
    stats = compute_band_stats(pairs)
    stats.update(fingerprint=key, split=train.name, tiles=len(pairs))
    atomic_write_text(cache, json.dumps(stats, indent=1))
    return stats


class Normalize:
    """Tiles as stored -> the model's input: each band standardised with the train split's mean and std
    (float32), and 0 in every band where the tile has no data (0 in every band).

    Called where the batch is used, on its device: the loader ships tiles as stored (uint16 is half the
    bytes of float32) and the GPU standardises a batch in microseconds. Takes (C, H, W) or (N, C, H, W)
    tensors of any dtype; the result is float32 on the input's device. The same float32 arithmetic
    runs through numpy on the CPU, where it is 3-4x faster than torch's kernels (measured on a batch
    of 12 300 x 300 x 10 tiles), so the CPU and the GPU give the same values.
    """

    def __init__(self, stats: dict, device: str | torch.device = "cpu"):
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(stats["std"], dtype=torch.float32, device=device)[:, None, None]

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return self.with_numpy(raw) if raw.device.type == "cpu" else self.with_torch(raw)

    def with_numpy(self, raw: torch.Tensor) -> torch.Tensor:
        img = raw.numpy()
        x = img.astype(np.float32)
        x -= self.mean.cpu().numpy()
        x /= self.std.cpu().numpy()
        x *= np.any(img != NODATA, axis=-3, keepdims=True)
        return torch.from_numpy(x)

    def with_torch(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float()  # a cast only: every dtype casts on CUDA, uint16 has few other kernels there
        valid = (x != NODATA).any(dim=-3, keepdim=True)
        return ((x - self.mean.to(x.device)) / self.std.to(x.device)).masked_fill_(~valid, 0.0)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 dihedral transforms of the last two dims: k in 0..7 (rotate k%4, flip if k>=4).

    A view; ``np.ascontiguousarray`` copies it (numpy: 2-4x faster than torch on uint16 tiles)."""
    if k >= 4:
        x = x[..., ::-1]
    return np.rot90(x, k % 4, axes=(-2, -1))


class TileDataset(Dataset):
    """Image tiles as stored and their targets; random dihedral transforms when ``augment``.

    Returns ``(raw, y)``: raw (C, H, W) in the tiles' own dtype (uint16 for Sentinel-2), to be
    standardised by ``Normalize`` on the device; y uint8 (H, W), ``target``. Randomness comes from
    torch's RNG, so a seeded DataLoader gives the same transforms every run. An index may also be a
    pair ``(i, k)``: tile i with dihedral transform k (0..7) chosen by the caller (train.py draws k in
    its sampler, so the transforms do not depend on the number of workers); no randomness is used then.
    With ``cache`` (from ``build_tile_cache``) the tiles come from its memory-mapped arrays instead of
    being decoded: the same values, a copy instead of GDAL decoding.
    """

    def __init__(
        self, pairs: list[tuple[Path, Path]], bands: int, augment: bool = False, cache: Path | None = None
    ):
        self.pairs = pairs
        self.bands = bands
        self.augment = augment
        self.cache = cache
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # memory maps, opened in each process

    def __getstate__(self) -> dict:  # worker processes open their own memory maps
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile i as stored and its target, from the cache or the files."""
        if self.cache is None:
            img, mask = read_tile(*self.pairs[i])
            if img.shape[0] != self.bands:
                fail(f"image tile has {img.shape[0]} bands, expected {self.bands}: {self.pairs[i][0]}")
            return img, target(img, mask)
        if self._arrays is None:
            self._arrays = open_tile_cache(self.cache)
        return self._arrays[0][i], self._arrays[1][i]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, k = (int(item[0]), int(item[1])) if isinstance(item, tuple | list) else (int(item), None)
        img, y = self.read(i)
        if k is None and self.augment:
            k = int(torch.randint(8, ()).item())
        if k:
            img, y = dihedral(img, k), dihedral(y, k)
        # C-contiguous and writable: copies a transformed view or a read-only memory map, not a fresh read
        img, y = (np.require(a, requirements=("C", "W")) for a in (img, y))
        return torch.from_numpy(img), torch.from_numpy(y)


# ---------------------------------------------------------------------------------------------
# Decoded-tile cache (train.py --cache-tiles): for a GPU whose step outruns the decoding of tiles


CACHE_VERSION = 1  # part of every cache's name: raise it when ``target`` or the layout changes
_CACHES_IN_USE: list = []  # shared locks on the caches this process uses, released when it exits


def cache_stem(folder: Path, split: str, pairs: list[tuple[Path, Path]]) -> Path:
    """``<folder>/<split>-v<version>-<fingerprint>``: a new name whenever a tile of the split changes
    (also its inode change time, which ``cp -p`` or ``touch -r`` cannot set back)."""
    return Path(folder) / f"{split}-v{CACHE_VERSION}-{_fingerprint(pairs, ctime=True)}"


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
                f"the tile cache of {split} needs {need / 1e9:.1f} GB, {folder} has {free / 1e9:.1f} GB free"
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

    _each_in_threads(decode, range(len(pairs)), threads, desc)
    imgs.flush()
    ys.flush()


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    torch seeds each worker from the loader's generator; this makes numpy and ``random`` follow it.
    """
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------
# Checkpoints: plain tensors and Python containers only, so torch.load(weights_only=True) reads them
# and a file holding a pickled object is refused without running it.

CHECKPOINT_KEYS = ("model", "model_config", "bands", "stats", "classes")


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (weights_only); a broken, unsafe or foreign file is one line."""
    path = require_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: the error says enough
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "GLOBAL" in m or "Unsupported" in m), msg[0] if msg else "")
        if "GLOBAL" not in detail:  # no object to run: garbage, a text file, a foreign pickle
            fail(f"checkpoint is truncated or not a checkpoint: {path} ({detail.strip()[:160]})")
        fail(
            f"checkpoint holds pickled objects and was refused without running them: {path} "
            f"({detail.strip()[:160]})"
        )
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        fail(f"checkpoint is truncated or not a checkpoint: {path} ({first})")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        fail(f"not a checkpoint of this project (needs {', '.join(CHECKPOINT_KEYS)}): {path}")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """The model a checkpoint describes, with its weights, in eval mode on ``device``; and the dict."""
    ckpt = read_checkpoint(path)
    try:
        net = model_from_config(ckpt["model_config"])
        net.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:160]
        fail(f"checkpoint weights do not fit its architecture {ckpt.get('model_config')}: {path} ({first})")
    return net.to(device).eval(), ckpt


def make_checkpoint(net: UNet, bands: list[str], stats: dict, **extra) -> dict:
    """The checkpoint dict every script reads: weights, architecture, bands, statistics, classes.

    ``extra`` adds training state (optimizer, scheduler, epoch, RNG states, options, metrics); all
    values must be tensors or plain Python containers so that ``weights_only`` loading works.
    """
    return {
        "version": CHECKPOINT_VERSION,
        "model": net.state_dict(),
        "model_config": dict(net.config),
        "bands": list(bands),
        "stats": {"mean": list(map(float, stats["mean"])), "std": list(map(float, stats["std"]))},
        "classes": {str(c): n for c, (n, _) in CLASSES.items()},
        **extra,
    }
