"""stats.py: band statistics over valid pixels and their cache, and the normalisation they define
(the same values on the CPU and the GPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_pair, write_raster

from landcover import stats
from landcover.stats import Normalize, band_stats


def stats_split(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Two tiles with known values; nodata in the image (all bands 0) and in the mask."""
    rng = np.random.default_rng(0)
    split = tmp_path / "train"
    imgs, masks = [], []
    for i in range(2):
        img = rng.integers(100, 5000, (3, 10, 10)).astype(np.uint16)
        mask = rng.integers(1, 13, (10, 10)).astype(np.uint8)
        img[:, :2] = 0  # image nodata
        mask[:, -3:] = 0  # mask nodata
        mask[0, 5] = 200  # an unknown code where the image is nodata anyway
        mask[5, 5] = 41  # an unknown code on a valid pixel
        write_pair(split, f"t{i}.tif", img, mask)
        imgs.append(img)
        masks.append(mask)
    return split, np.stack(imgs), np.stack(masks)


def test_band_stats_over_valid_pixels_only(tmp_path):
    split, imgs, masks = stats_split(tmp_path)
    stats = band_stats(split)
    valid = np.any(imgs != 0, axis=1) & (masks != 0)  # (tiles, H, W)
    values = imgs.transpose(1, 0, 2, 3)[:, valid]  # (bands, pixels)
    assert stats["pixels"] == valid.sum()
    assert np.allclose(stats["mean"], values.mean(1))
    assert np.allclose(stats["std"], values.std(1), rtol=1e-6)
    counts = np.bincount(masks[valid & (masks < 13)], minlength=13)
    assert stats["class_pixels"] == counts.tolist() and stats["class_pixels"][0] == 0
    assert sum(stats["class_pixels"]) == valid.sum() - 2  # the code 41 pixels are nobody's


def test_band_stats_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    split, imgs, masks = stats_split(tmp_path)
    first = band_stats(split)
    cache = tmp_path / stats.STATS_FILE
    assert json.loads(cache.read_text())["mean"] == first["mean"]

    calls = []
    real = stats.compute_band_stats
    monkeypatch.setattr(stats, "compute_band_stats", lambda pairs: calls.append(1) or real(pairs))
    assert band_stats(split) == first and calls == []  # same tiles: read from the cache

    # a tile rewritten with other values (uncompressed: same file size), later mtime -> recomputed
    path = split / "img" / "t0.tif"
    size = path.stat().st_size
    write_raster(path, (imgs[0] // 2).astype(np.uint16))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert path.stat().st_size == size
    second = band_stats(split)
    assert calls == [1] and second["mean"] != first["mean"]

    write_pair(split, "t9.tif", imgs[1], masks[1])  # a tile added (create_new_images) -> recomputed
    band_stats(split)
    assert calls == [1, 1]
    cache.write_text("{ not json")  # a broken cache is recomputed, never trusted
    assert band_stats(split)["mean"] == band_stats(split)["mean"] and calls == [1, 1, 1]


# ---------------------------------------------------------------------------------------------------
# Normalisation and the Dataset


def test_normalize_standardises_and_zeroes_nodata():
    img = np.array([[[0, 10], [30, 50]], [[0, 20], [40, 0]]], dtype=np.uint16)  # pixel (0, 0) nodata
    norm = Normalize({"mean": [30, 20], "std": [10, 5]})
    x = norm(torch.from_numpy(img))
    assert x.dtype == torch.float32
    assert torch.all(x[:, 0, 0] == 0)
    assert x[0, 0, 1] == -2 and x[0, 1, 0] == 0 and x[0, 1, 1] == 2
    assert x[1, 0, 1] == 0 and x[1, 1, 0] == 4 and x[1, 1, 1] == -4  # a single zero band is a value
    # a batch (N, C, H, W) of any stored dtype gives the same values, tile by tile
    batch = torch.from_numpy(np.stack([img, img[:, ::-1].copy()]))
    assert torch.equal(norm(batch)[0], x) and torch.equal(norm(batch.to(torch.int32))[1], x.flip(1))


def test_normalize_matches_float64_arithmetic_on_sentinel2_values():
    """Every uint16 value (saturated 65535 included) standardised as in float64, to float32 rounding."""
    rng = np.random.default_rng(0)
    img = rng.integers(1, 65536, (3, 64, 64)).astype(np.uint16)
    img[:, 0, 0] = 65535
    mean, std = [1200.5, 900.0, 3000.25], [400.0, 350.5, 1500.0]
    x = Normalize({"mean": mean, "std": std})(torch.from_numpy(img)).numpy()
    want = (img.astype(np.float64) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.allclose(x, want, rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks Normalize on the GPU itself")
def test_normalize_on_cuda_equals_the_cpu():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 65536, (3, 10, 64, 64)).astype(np.uint16)
    img[:, :, :5, :5] = 0
    stats = {"mean": list(rng.uniform(500, 3000, 10)), "std": list(rng.uniform(100, 900, 10))}
    raw = torch.from_numpy(img)
    on_gpu = Normalize(stats, "cuda")(raw.pin_memory().to("cuda", non_blocking=True)).cpu()
    assert torch.equal(on_gpu, Normalize(stats)(raw))


def test_normalize_gives_the_same_values_on_the_gpu_path():
    """The torch arithmetic (what CUDA runs) equals the numpy one (what the CPU runs), bit for bit."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 12000, (4, 5, 32, 32)).astype(np.uint16)
    img[:, :, :3, :3] = 0  # nodata pixels
    norm = Normalize({"mean": [1200.5, 900.0, 3000.25, 77.0, 5.5], "std": [400.0, 350.5, 1500.0, 3.0, 1.0]})
    raw = torch.from_numpy(img)
    a, b = norm.with_numpy(raw), norm.with_torch(raw)
    assert torch.equal(a, b) and torch.all(b[:, :, :3, :3] == 0)
