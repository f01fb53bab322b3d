"""Training throughput: tiles per second of a training step, and of the data loader alone.

Reads nothing. Writes GeoTIFF tiles in divide_img's format (300 x 300, 10 bands uint16, predictor 2,
DEFLATE or ZSTD, one strip per tile, band interleaved, with a mask beside each) into a temporary folder
that is removed at the end; prints a table.

The step is train.py's: U-Net forward, loss, backward and Adam step on a random batch (resnet50,
batch 12, 300 x 300, 10 bands, 13 outputs by default), fp32 on the CPU and, when CUDA is present,
fp32 and bf16 autocast + channels_last (``--amp``) on the GPU. The loader is train.py's too: TileDataset
(read, dihedral transform; tiles as stored, uint16) through its DataLoader with 0 and --workers
workers, timed from the second batch on (workers already started), each batch copied to the device
and normalised there (``train.to_device``). The target: the loader delivers at least 5x the tiles per
second that the step consumes. The tile folders hold --folder-size entries (hard links to the written
tiles, which the loader does not read): GDAL's open lists a file's folder, and a real split's folders
hold thousands of tiles. The loader is also timed on train.py --cache-tiles's decoded arrays.

    .venv/bin/python bench/train_speed.py [--encoder resnet50] [--batch-size 12] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train
from dataset import Normalize, TileDataset, band_stats, build_tile_cache, tile_pairs
from model import build_model

S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
COMPRESSION = {  # divide_img.py --compress deflate | zstd (its default) | none
    "deflate": {"compress": "deflate", "zlevel": 6, "predictor": 2},
    "zstd": {"compress": "zstd", "zstd_level": 1, "predictor": 2},
    "none": {},
}


def write_tiles(folder: Path, n: int, size: int, bands: int, compress: str, seed: int = 0) -> None:
    """``n`` image/mask pairs looking like imagery: fields of a few classes, band values, sensor noise."""
    rng = np.random.default_rng(seed)
    common = dict(driver="GTiff", width=size, height=size, blockysize=size, crs="EPSG:32631")
    img_prof = dict(common, count=bands, dtype="uint16", nodata=0, interleave="band", **COMPRESSION[compress])
    mask_opts = {k: v for k, v in COMPRESSION[compress].items() if k != "predictor"}
    mask_prof = dict(common, count=1, dtype="uint8", nodata=0, **mask_opts)
    values = rng.integers(200, 4000, (13, bands)).astype(np.float32)
    for d in ("img", "mask"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cells = rng.integers(1, 13, (size // 30 + 1, size // 30 + 1))
        mask = np.kron(cells, np.ones((30, 30), dtype=np.int64))[:size, :size].astype(np.uint8)
        img = values[mask].transpose(2, 0, 1) + rng.normal(0, 40, (bands, size, size)).astype(np.float32)
        img = np.clip(img, 1, 10000).astype(np.uint16)
        transform = from_origin(400000 + i * size * 10, 4600000, 10, 10)
        with rasterio.open(folder / "img" / f"t{i:04d}.tif", "w", transform=transform, **img_prof) as dst:
            dst.write(img)
            for b in range(bands):
                dst.set_band_description(b + 1, S2_BANDS[b % len(S2_BANDS)])
        with rasterio.open(folder / "mask" / f"t{i:04d}.tif", "w", transform=transform, **mask_prof) as dst:
            dst.write(mask[None])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_speed(
    encoder: str,
    batch: int,
    size: int,
    bands: int,
    steps: int,
    device: torch.device,
    amp: bool,
    channels_last: bool | None = None,
) -> float:
    """Tiles per second of train.py's training step on a random batch (after warm-up steps)."""
    torch.manual_seed(0)
    train.configure_torch(device)
    net = build_model(encoder, bands, 13).to(device)
    fmt = (
        torch.channels_last if (amp if channels_last is None else channels_last) else torch.contiguous_format
    )
    net = net.to(memory_format=fmt).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = train.make_criterion("ce", train.class_weights([0] + [1] * 12, "none").to(device))
    x = torch.randn(batch, bands, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(1, 13, (batch, size, size), device=device)

    def step() -> None:
        train.train_step(net, x, y, criterion, optimizer, amp)

    for _ in range(1 if device.type == "cpu" else 5):  # warm-up (cuDNN picks its kernels)
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


class Passes(torch.utils.data.Sampler):
    """``passes`` epochs of train.py's sampler back to back: one long epoch, the workers never idle."""

    def __init__(self, n: int, passes: int):
        self.samplers = [train.EpochSampler(n, 0, train.Proc()) for _ in range(passes)]
        for e, s in enumerate(self.samplers):
            s.set_epoch(e)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def __iter__(self):
        for s in self.samplers:
            yield from s


def fill_folders(split: Path, size: int) -> None:
    """Hard links to the tiles until ``img/`` and ``mask/`` hold ``size`` entries each (no data copied)."""
    for d in ("img", "mask"):
        tiles = sorted((split / d).glob("t*.tif"))
        for j in range(size - len(tiles)):
            os.link(tiles[j % len(tiles)], split / d / f"link{j:05d}.tif")


def loader_speed(
    split: Path, batch: int, workers: int, device: torch.device, passes: int, cache: bool = False
) -> float:
    """Tiles per second of train.py's DataLoader (read, transform, collate, pin, copy to the device and
    normalise there), counted from the second batch on, once the workers are running. ``cache``: the
    tiles come from train.py --cache-tiles's arrays (built before the timing)."""
    pairs = [p for p in tile_pairs(split) if p[0].name.startswith("t")]  # the tiles, not the links
    norm = Normalize(band_stats(split, pairs), device)
    stem = build_tile_cache(pairs, split.parent / train.CACHE_DIR, "train") if cache else None
    ds = TileDataset(pairs, len(norm.mean), augment=True, cache=stem)
    loader = train.make_loader(ds, Passes(len(ds), passes), batch, workers, device, 0)
    start, n = 0.0, 0
    for i, (raw, y) in enumerate(loader):
        x, y = train.to_device(raw, y, norm, device, torch.contiguous_format)
        if i == 0:
            sync(device)
            start = time.perf_counter()
        else:
            n += len(x)
    sync(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="resnet50", choices=("resnet18", "resnet34", "resnet50"))
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--size", type=int, default=300, help="tile size")
    p.add_argument("--bands", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="timed steps on the CPU (10x that on CUDA)")
    p.add_argument("--tiles", type=int, default=96, help="tiles written for the loader")
    p.add_argument("--workers", type=int, default=train.default_workers(), help="loader workers")
    p.add_argument("--passes", type=int, default=5, help="times the loader reads every tile")
    p.add_argument("--folder-size", type=int, default=4000, help="entries in each tile folder (links)")
    p.add_argument("--compress", nargs="+", default=["deflate", "zstd"], choices=list(COMPRESSION))
    p.add_argument("--no-cpu-step", action="store_true", help="skip the (slow) CPU step when CUDA is present")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    devices = [torch.device("cuda")] if cuda else []
    if not (cuda and args.no_cpu_step):
        devices.insert(0, torch.device("cpu"))
    gpu = f", {torch.cuda.get_device_name(0)}" if cuda else ""
    print(
        f"{args.encoder} U-Net, {args.size} x {args.size}, batch {args.batch_size}, {args.bands} bands, "
        f"13 outputs; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{os.cpu_count()} cores{gpu}",
        flush=True,
    )
    rows: list[tuple[str, str, float]] = []
    steps: dict[str, float] = {}
    for device in devices:
        # (amp, channels_last): train.py's fp32, and --amp (bf16 + channels_last); on CUDA also the
        # two halves of --amp alone, to show what each brings
        variants = (
            [(False, False), (True, True), (True, False), (False, True)]
            if device.type == "cuda"
            else [(False, False)]
        )
        for amp, cl in variants:
            n = args.steps * (10 if device.type == "cuda" else 1)
            s = step_speed(args.encoder, args.batch_size, args.size, args.bands, n, device, amp, cl)
            what = (
                f"train step, {device.type}, "
                + ("bf16" if amp else "fp32")
                + (" + channels_last" if cl else "")
            )
            rows.append((what, f"{n} steps", s))
            steps[what] = s
            print(f"  {what}: {s:.2f} tiles/s", flush=True)

    loader_device = torch.device("cuda") if cuda else torch.device("cpu")
    loaders: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        for compress in args.compress:
            split = Path(tmp) / compress / "train"
            write_tiles(split, args.tiles, args.size, args.bands, compress)
            fill_folders(split, args.folder_size)
            # the cache is the same whatever the compression: measured once, on the first
            for cache in (False, True) if compress == args.compress[0] else (False,):
                for workers in sorted({0, args.workers}):
                    s = loader_speed(split, args.batch_size, workers, loader_device, args.passes, cache)
                    source = "--cache-tiles" if cache else compress
                    what = f"loader, {source}, {workers} workers" + (" (to GPU)" if cuda else "")
                    rows.append((what, f"{args.tiles} x {args.passes} tiles", s))
                    loaders[what] = s
                    print(f"  {what}: {s:.1f} tiles/s", flush=True)

    print()
    print(f"| {'what':<48} | {'measured over':<13} | {'tiles/s':>8} |")
    print(f"|{'-' * 50}|{'-' * 15}|{'-' * 10}|")
    for what, over, s in rows:
        print(f"| {what:<48} | {over:<13} | {s:>8.2f} |")
    print()
    for lw, ls in loaders.items():
        if f"{args.workers} workers" not in lw:
            continue
        for sw, ss in steps.items():
            if sw.split(", ")[1] != loader_device.type or not sw.endswith(("fp32", "bf16 + channels_last")):
                continue  # train.py trains in fp32, or with --amp in bf16 + channels_last
            verdict = "meets" if ls >= 5 * ss else "MISSES"
            print(f"{lw} / {sw}: {ls / ss:.1f}x ({verdict} the 5x target)")


if __name__ == "__main__":
    main()
