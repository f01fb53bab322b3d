"""Test helper: easy synthetic scenes and small trained checkpoints (resnet18, a few CPU seconds).

Each class has its own spectrum (band values, uint16 reflectance x10000), so a model trained for a few
steps predicts the class of a pixel from its bands: predictions are meaningful and checkable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from helpers import S2_BANDS

from landcover.checkpoint import make_checkpoint
from landcover.stats import Normalize
from model import build_model

# code -> 10 band values (B2 B3 B4 B5 B6 B7 B8 B8A B11 B12)
SPECTRA: dict[int, tuple[int, ...]] = {
    1: (900, 1300, 1100, 1800, 2800, 3100, 3300, 3400, 2400, 1500),
    3: (300, 500, 300, 800, 2000, 2500, 2700, 2800, 1300, 600),
    6: (1800, 1900, 2100, 2200, 2300, 2400, 2500, 2500, 2600, 2400),
    12: (700, 600, 400, 300, 250, 200, 150, 150, 100, 80),
}


def label_map(height: int, width: int, rng: np.random.Generator, block: int = 24) -> np.ndarray:
    """(H, W) uint8 codes of SPECTRA in random rectangular patches of about ``block`` pixels."""
    codes = np.array(sorted(SPECTRA), dtype=np.uint8)
    nb_h, nb_w = -(-height // block), -(-width // block)
    pick = rng.integers(0, len(codes), (nb_h, nb_w)).repeat(block, 0).repeat(block, 1)
    return codes[pick[:height, :width]]


def image_of(labels: np.ndarray, rng: np.random.Generator, noise: float = 40.0) -> np.ndarray:
    """(10, H, W) uint16 bands of a label map (0 stays nodata: all bands 0)."""
    lut = np.zeros((256, 10), dtype=np.float64)
    for c, v in SPECTRA.items():
        lut[c] = v
    img = lut[labels].transpose(2, 0, 1) + rng.normal(0, noise, (10, *labels.shape))
    img = np.clip(img, 1, 65535).astype(np.uint16)
    img[:, labels == 0] = 0
    return img


def stats_of(img: np.ndarray) -> dict:
    """Band mean and std over valid pixels, as stats.band_stats gives them."""
    valid = np.any(img != 0, axis=0)
    x = img[:, valid].astype(np.float64)
    return {"mean": x.mean(1).tolist(), "std": (x.std(1) + 1e-6).tolist()}


def trained_checkpoint(
    path: Path, bands=S2_BANDS, repeat: int = 1, steps: int = 40, seed: int = 0, size: int = 64
) -> Path:
    """Train a resnet18 U-Net for ``steps`` Adam steps on easy tiles; save a project checkpoint.

    ``repeat`` > 1 stacks that many copies of the spectra (for a stacked model, ``bands`` then names
    them all, e.g. ``s2_april:B2`` ... ``s2_august:B12``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 threads when other jobs share the cores
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sample = np.concatenate([image_of(label_map(256, 256, rng), rng)] * repeat)
    stats = stats_of(sample)
    net = build_model("resnet18", len(bands), 13)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    norm = Normalize(stats)
    try:
        for _ in range(steps):
            labels = np.stack([label_map(size, size, rng, block=size // 3) for _ in range(4)])
            imgs = [np.concatenate([image_of(lab, rng)] * repeat) for lab in labels]
            x = norm(torch.from_numpy(np.stack(imgs)))
            y = torch.from_numpy(labels.astype(np.int64))
            loss = torch.nn.functional.cross_entropy(net(x), y, ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    torch.save(make_checkpoint(net, list(bands), stats, epoch=1, best_miou=None), path)
    return path


# The test scene of predict.py's and the mapping engine's tests, and the window they map it with
H, W = 300, 370  # not a multiple of the window
WINDOW, OVERLAP = 128, 32


def scene_data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(labels, image) of a scene with nodata outside an irregular region and a nodata hole."""
    rng = np.random.default_rng(seed)
    labels = label_map(H, W, rng, block=37)
    yy, xx = np.mgrid[:H, :W]
    labels[(yy < 60) & (xx < 90)] = 0  # a nodata corner
    labels[(yy - 200) ** 2 + (xx - 250) ** 2 < 25**2] = 0  # a nodata hole across window edges
    labels[:, -3:] = 0
    return labels, image_of(labels, rng)
