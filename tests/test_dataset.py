"""dataset.py: pairing tiles by name, the split checks, band statistics and their cache, normalisation,
the Dataset's targets and dihedral transforms, and safe checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_raster, write_tile_split

import dataset
from common import InputError
from dataset import (
    Normalize,
    TileDataset,
    band_stats,
    build_tile_cache,
    dihedral,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    scan_tiles,
    tile_pairs,
)
from model import build_model


def write_pair(split: Path, name: str, img: np.ndarray, mask: np.ndarray, **kw) -> None:
    write_raster(split / "img" / name, img, **kw)
    write_raster(split / "mask" / name, mask)


# ---------------------------------------------------------------------------------------------------
# Pairing and checks


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
        img, mask = dataset.read_tile(img_path, mask_path)
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


# ---------------------------------------------------------------------------------------------------
# Band statistics


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
    cache = tmp_path / dataset.STATS_FILE
    assert json.loads(cache.read_text())["mean"] == first["mean"]

    calls = []
    real = dataset.compute_band_stats
    monkeypatch.setattr(dataset, "compute_band_stats", lambda pairs: calls.append(1) or real(pairs))
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


def test_dataset_targets_ignore_nodata_and_unknown_codes(tmp_path):
    split = tmp_path / "train"
    img = np.full((2, 4, 4), 500, np.uint16)
    img[:, 0, 0] = 0  # image nodata
    mask = np.full((4, 4), 3, np.uint8)
    mask[1, 1], mask[2, 2] = 0, 41  # mask nodata, an unknown code
    write_pair(split, "a.tif", img, mask)
    ds = TileDataset(tile_pairs(split), 2)
    x, y = ds[0]  # as stored: uint16 bands (half the bytes of float32 to move), uint8 targets
    assert x.dtype == torch.uint16 and x.shape == (2, 4, 4) and y.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(img))
    assert y[0, 0] == 0 and y[1, 1] == 0 and y[2, 2] == 0 and (y == 3).sum() == 13


def test_dataset_refuses_a_tile_with_other_bands(tmp_path):
    split = tmp_path / "train"
    write_pair(split, "a.tif", np.ones((3, 4, 4), np.uint16), np.ones((4, 4), np.uint8))
    with pytest.raises(InputError, match="3 bands, expected 2"):
        TileDataset(tile_pairs(split), 2)[0]


def aligned(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Band 0 of the image holds 100 x the class code: recover it and compare with the target."""
    return torch.equal(x[0].long() // 100, y.long())


def test_dihedral_transforms_keep_image_and_mask_aligned(tmp_path):
    split = tmp_path / "train"
    rng = np.random.default_rng(3)
    mask = rng.integers(1, 13, (6, 5)).astype(np.uint8)  # not square: rotations change the shape
    img = np.stack([mask.astype(np.uint16) * 100, rng.integers(1, 9, (6, 5)).astype(np.uint16)])
    write_pair(split, "a.tif", img, mask)
    ds = TileDataset(tile_pairs(split), 2, augment=True)
    seen = set()
    for k in range(8):
        x, y = ds[(0, k)]  # the transform chosen by the caller (train.py's sampler)
        assert x.is_contiguous() and y.is_contiguous()
        assert aligned(x, y), k
        assert np.array_equal(y.numpy(), dihedral(mask, k))
        seen.add(y.numpy().tobytes())
    assert len(seen) == 8  # eight different transforms
    torch.manual_seed(0)
    for _ in range(10):  # random transforms (augment=True, plain index)
        x, y = ds[0]
        assert aligned(x, y)
    x, y = TileDataset(tile_pairs(split), 2)[0]  # no augmentation: as stored
    assert torch.equal(y, torch.from_numpy(mask)) and torch.equal(x, torch.from_numpy(img))


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    net = build_model("resnet18", 4, 13)
    stats = {"mean": np.array([1.0, 2, 3, 4]), "std": [1.0, 1, 1, 1]}
    ckpt = make_checkpoint(net, ["B2", "B3", "B4", "B8"], stats, epoch=3, metrics={"miou": 0.5, "x": None})
    torch.save(ckpt, tmp_path / "c.pt")
    loaded, raw = load_checkpoint(tmp_path / "c.pt")
    assert raw["epoch"] == 3 and raw["bands"] == ["B2", "B3", "B4", "B8"] and raw["stats"]["mean"][3] == 4
    assert not loaded.training and loaded.config == net.config
    a, b = loaded.state_dict(), net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("object", "pickled objects"),
        ("truncated", "truncated or not a checkpoint"),
        ("text", "truncated or not a checkpoint"),
        ("foreign", "not a checkpoint of this project"),
    ],
)
def test_unsafe_or_broken_checkpoints_are_refused(tmp_path, kind, needle):
    path = tmp_path / "c.pt"
    if kind == "object":
        torch.save({"model": {}, "model_config": {}, "bands": [], "stats": {}, "classes": Path("/")}, path)
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(5000)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    with pytest.raises(InputError, match=needle):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------------
# The decoded-tile cache (train.py --cache-tiles)


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
    dataset.release_tile_caches()  # as train.py does when its run ends


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
    dataset.release_tile_caches()
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
    dataset.release_tile_caches()
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
        dataset.release_tile_caches()  # its lock files are open on the tmpfs
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
    with pytest.raises(InputError, match=r"tile cache of train needs .* GB free"):
        build_tile_cache(tile_pairs(cache_split(tmp_path)), tmp_path / "cache", "train")
