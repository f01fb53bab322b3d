"""Band statistics of the train split and the normalisation they define.

Middle floor: rests on tiles.py, layout.py and common.py. Each band's mean and std over the train
split's valid pixels are computed once, cached beside the data (``band_stats.json``) and carried in
every checkpoint, so evaluation and prediction never recompute them on other data. ``Normalize``
standardises a whole batch on its device (nodata pixels are 0 in the model's input).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from colormap import NODATA, NUM_CLASSES
from landcover.common import atomic_write_text, fail, progress
from landcover.layout import tile_pairs
from landcover.tiles import fingerprint, read_tile, valid_pixels

STATS_FILE = "band_stats.json"
STATS_KEYS = ("mean", "std", "pixels", "class_pixels", "tile_class_pixels")  # what compute_band_stats gives


def compute_band_stats(pairs: list[tuple[Path, Path]]) -> dict:
    """Mean and std of every band over the valid pixels (mask and image both valid) of ``pairs``.

    Also ``class_pixels``: the pixel count of every code 0..12 over those pixels (the training
    targets, for class weights), and ``tile_class_pixels``: the same per tile, in the order of
    ``pairs`` (for the rare-class sampler); codes outside 0..12 are nodata for the model, not counted.
    """
    s = s2 = None
    n = 0
    per_tile = []
    for img_path, mask_path in progress(pairs, desc="band statistics", unit="tile", leave=False):
        img, mask = read_tile(img_path, mask_path)
        valid = valid_pixels(img) & (mask != NODATA)
        x = img[:, valid].astype(np.float64)
        if s is None:
            s, s2 = np.zeros(img.shape[0]), np.zeros(img.shape[0])
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
        codes = mask[valid]
        per_tile.append(np.bincount(codes[codes < NUM_CLASSES], minlength=NUM_CLASSES))
    if n == 0:
        fail(f"no valid pixels in the tiles of {pairs[0][0].parent.parent}")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0)) + 1e-6
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "pixels": int(n),
        "class_pixels": np.sum(per_tile, axis=0).tolist(),
        "tile_class_pixels": [t.tolist() for t in per_tile],
    }


def band_stats(train: str | Path, pairs: list[tuple[Path, Path]] | None = None) -> dict:
    """Band statistics of the train split, cached in ``<train>/../band_stats.json``.

    The cache is reused only while the train split holds the same tiles (names, sizes and modification
    times of images and masks: an uncompressed tile rewritten with other values keeps its size) and its
    content matches its checksum (``read_cache``).
    """
    train = Path(train)
    pairs = pairs if pairs is not None else tile_pairs(train)
    cache = train.parent / STATS_FILE
    key = fingerprint(pairs)
    cached = read_cache(cache)
    if cached is not None and cached.get("fingerprint") == key and cached.get("split") == train.name:
        return cached
    stats = compute_band_stats(pairs)
    stats.update(fingerprint=key, split=train.name, tiles=len(pairs))
    stats["checksum"] = checksum(stats)
    atomic_write_text(cache, json.dumps(stats, indent=1))
    return stats


def read_cache(cache: Path) -> dict | None:
    """The statistics ``band_stats.json`` holds, or None (then recomputed) when it is missing, damaged
    or not ours: not JSON (bytes that are not UTF-8 included), not a dict, a key missing, or a content
    that does not match its checksum. A damaged digit is valid JSON and would change the normalisation
    of every tile without a word; a cache written before checksums is recomputed once."""
    try:
        cached = json.loads(cache.read_bytes())
    except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(cached, dict) or any(k not in cached for k in STATS_KEYS):
        return None
    return cached if cached.get("checksum") == checksum(cached) else None


def checksum(stats: dict) -> str:
    """sha256 of the statistics' content (all but the checksum), independent of the file's layout."""
    body = {k: v for k, v in stats.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Normalize:
    """Tiles as stored -> the model's input: each band standardised with the train split's mean and std
    (float32), and 0 in every band where the tile has no data (0 in every band).

    Called where the batch is used, on its device: the loader ships tiles as stored (uint16 is half the
    bytes of float32) and the GPU standardises a whole batch at once. Takes (C, H, W) or (N, C, H, W)
    tensors of any dtype; the result is float32 on the input's device. The same float32 arithmetic
    runs through numpy on the CPU, where it is faster than torch's kernels (see the README's
    Performance section), so the CPU and the GPU give the same values.
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
