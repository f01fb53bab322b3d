"""Training throughput: the bare training step, each data path alone, and how many times over each
data path feeds each step.

Reads nothing. Writes GeoTIFF tiles in divide_img's format (300 x 300, 10 bands uint16, predictor 2,
DEFLATE or ZSTD, one strip per tile, band interleaved, with a mask beside each) and their decoded-tile
cache into a temporary folder that is removed at the end; prints tables.

The step is train.py's (``train.train_step``): forward of train.py's default U-Net (full-size path and
per-pixel branch), loss, backward and Adam step on a random batch already on the device (resnet50,
300 x 300, 10 bands, 13 outputs by default). On the CPU: fp32 at --batch-size. On CUDA: fp32 (TF32)
at --batch-size, bf16 autocast + channels_last (train.py's --amp) at each of --amp-batches, and the
last of those through torch.compile where it compiles. Also the model's FLOPs per tile (one forward
+ backward under torch.utils.flop_counter) and, on a GPU whose bf16 peak is in ``BF16_PEAK_TFLOPS``,
the share of that peak each step reaches.

A data path delivers batches as train.py uses them: each on the device and normalised there
(``dataset.to_device``), with random dihedral transforms, over --passes epochs back to back, timed
from the second batch on (workers started, first copy done). The paths: the worker DataLoader
decoding the tiles (0 and --workers workers, per --compress), the same loader on the decoded-tile
cache (train.py --cache-tiles), and the resident tiles (resident.py): held in host memory and, on
CUDA, on the GPU. ``bench_data_path`` times one of them for other scripts. The ratio data path /
step says how many times over a path feeds a step: below 1 the step waits for its data. The tile
folders hold --folder-size entries (hard links to the written tiles, which the loader does not read):
GDAL's open lists a file's folder, and a real split's folders hold thousands of tiles.

End to end: train.py itself, at its default settings for the device, on --e2e-tiles train tiles (at
most --tiles of them written, the rest hard links) and a quarter as many val tiles; its train tiles
per second over whole epochs (validation included) against the bare step at the same settings.

    .venv/bin/python bench/train_speed.py [--encoder resnet50] [--batch-size 12] [--steps 3]
    bench/gpu.sh                                       # on a GPU machine: this and the other GPU figures
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landcover.common import ArgumentParser, fail, first_line, run_main
from landcover.dataset import EpochSampler, TileDataset, make_loader, to_device
from landcover.distributed import Precision, Proc, configure_torch, default_workers
from landcover.layout import tile_pairs
from landcover.losses import class_weights, make_criterion
from landcover.resident import DEVICE, HOST, ResidentLoader, ResidentTiles
from landcover.stats import STATS_FILE, Normalize, band_stats
from landcover.tile_cache import CACHE_DIR, build_tile_cache, release_tile_caches
from model import ENCODERS, build_model
from train import RECIPE, train_step

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


def fill_folders(split: Path, size: int) -> None:
    """Hard links to the tiles until ``img/`` and ``mask/`` hold ``size`` entries each (no data copied):
    the data paths read only the pairs they are given; train.py reads each link as a tile of its own."""
    for d in ("img", "mask"):
        tiles = sorted((split / d).glob("t*.tif"))
        for j in range(size - len(tiles)):
            os.link(tiles[j % len(tiles)], split / d / f"link{j:05d}.tif")


# Dense bf16 tensor-core peak (TFLOPS) by a part of the CUDA device name; the first match counts.
BF16_PEAK_TFLOPS = (
    ("GH200", 989),
    ("H200", 989),
    ("H100 PCIe", 756),
    ("H100 NVL", 835),
    ("H100", 989),  # SXM
    ("A100", 312),
    ("L40S", 362),
)
DATA_PATHS = ("files", "cache", "host", "device")  # what bench_data_path times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak(device_name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, None when the table does not know it."""
    return next((tf * 1e12 for part, tf in BF16_PEAK_TFLOPS if part in device_name), None)


# ---------------------------------------------------------------------------------------------------
# The bare step


@dataclass(frozen=True)
class StepSetting:
    """How a step is timed: where, at which batch, fp32 or bf16 + channels_last, compiled or not."""

    device: torch.device
    batch: int
    amp: bool = False
    compiled: bool = False

    @property
    def short(self) -> str:
        return f"{self.device.type} {'bf16' if self.amp else 'fp32'} b{self.batch}" + (
            " compiled" if self.compiled else ""
        )

    def describe(self) -> str:
        what = "bf16 + channels_last" if self.amp else "fp32"
        return f"train step, {self.device.type}, {what}, batch {self.batch}" + (
            ", torch.compile" if self.compiled else ""
        )


def recipe_model(encoder: str, bands: int) -> torch.nn.Module:
    """The U-Net train.py builds at its defaults (full-size path and per-pixel branch included)."""
    return build_model(encoder, bands, 13, full_res=RECIPE["full_res"], spectral=RECIPE["spectral"])


def step_speed(encoder: str, size: int, bands: int, steps: int, setting: StepSetting) -> float | None:
    """Tiles per second of train.py's training step on a random batch already on the device (after
    warm-up steps: cuDNN picks its kernels, torch.compile compiles); None where it does not compile."""
    device = setting.device
    torch.manual_seed(0)
    configure_torch(device)
    precision = Precision.for_device(setting.amp, device)
    net = recipe_model(encoder, bands).to(device, memory_format=precision.memory_format).train()
    model = torch.compile(net) if setting.compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = make_criterion("ce", class_weights([0] + [1] * 12, "none").to(device))
    shape = (setting.batch, bands, size, size)
    x = torch.randn(shape, device=device).contiguous(memory_format=precision.memory_format)
    y = torch.randint(1, 13, (setting.batch, size, size), device=device)
    try:
        for _ in range(1 if device.type == "cpu" else 5):
            train_step(model, x, y, criterion, optimizer, precision)
        sync(device)
    except Exception as e:  # a compiler that is missing or fails on this model or device
        if not setting.compiled:
            raise
        print(f"  torch.compile failed here: {first_line(e)}", flush=True)
        return None
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, criterion, optimizer, precision)
    sync(device)
    return steps * setting.batch / (time.perf_counter() - start)


def flops_per_tile(encoder: str, size: int, bands: int, device: torch.device) -> float:
    """FLOPs of one forward and backward pass of the model on one tile (convolutions and matrix
    products, as torch.utils.flop_counter counts them: 2 per multiply-add)."""
    net = recipe_model(encoder, bands).to(device).train()
    x = torch.randn(1, bands, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x).float().sum().backward()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------
# The data paths


class Passes(torch.utils.data.Sampler):
    """``passes`` epochs of train.py's sampler back to back: one long epoch, the workers never idle."""

    def __init__(self, n: int, passes: int):
        self.samplers = [EpochSampler(n, 0, Proc()) for _ in range(passes)]
        for e, s in enumerate(self.samplers):
            s.set_epoch(e)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for s in self.samplers:
            yield from s


def bench_data_path(
    pairs: list[tuple[Path, Path]],
    kind: str,
    batch: int,
    device: torch.device,
    passes: int = 5,
    workers: int = 0,
    cache_folder: Path | None = None,
) -> tuple[float, float]:
    """(tiles per second, set-up seconds) of one data path delivering train batches to ``device``.

    ``kind``: ``files`` (the worker DataLoader decoding the tiles), ``cache`` (the same loader on the
    decoded-tile cache), ``host`` or ``device`` (the resident tiles held in host memory or on the
    device; on a CPU device both are host memory). ``workers`` applies to the DataLoader. The set-up
    is what comes before the first batch: the band statistics, building (or finding) the cache in
    ``cache_folder`` (default: DATA/tile_cache beside the split) and loading the resident tiles.
    """
    if kind not in DATA_PATHS:
        fail(f"data path {kind!r}: choose one of {', '.join(DATA_PATHS)}")
    start = time.perf_counter()
    split = pairs[0][0].parent.parent
    norm = Normalize(band_stats(split, pairs), device)
    stem = None
    if kind != "files":
        stem = build_tile_cache(pairs, cache_folder or split.parent / CACHE_DIR, split.name)
    sampler = Passes(len(pairs), passes)
    if kind in ("host", "device"):
        where = DEVICE if kind == "device" or device.type == "cpu" else HOST
        loader = ResidentLoader(ResidentTiles.load(stem, device, where), sampler, batch, device)
    else:
        ds = TileDataset(pairs, len(norm.mean), cache=stem)  # the sampler draws k
        loader = make_loader(ds, sampler, batch, workers, device, 0)
    sync(device)
    setup = time.perf_counter() - start
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # as train.py on CUDA
    start, n = 0.0, 0
    for i, (raw, y) in enumerate(loader):
        x, y = to_device(raw, y, norm, device, fmt)
        if i == 0:
            sync(device)
            start = time.perf_counter()
        else:
            n += len(x)
    sync(device)
    return n / (time.perf_counter() - start), setup


def data_paths(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, float]:
    """Tiles per second of every data path on ``device``, printed as they come."""
    speeds: dict[str, float] = {}
    for compress in args.compress:
        split = tmp / compress / "train"
        write_tiles(split, args.tiles, args.size, args.bands, compress)
        fill_folders(split, args.folder_size)
        pairs = [p for p in tile_pairs(split) if p[0].name.startswith("t")]  # the tiles, not the links
        runs = [(f"loader, {compress} tiles, {w} workers", "files", w) for w in sorted({0, args.workers})]
        if compress == args.compress[0]:  # the cache and resident tiles are the same whatever the compression
            runs += [(f"loader, tile cache, {w} workers", "cache", w) for w in sorted({0, args.workers})]
            runs.append(("resident, host memory", "host", 0))
            if device.type == "cuda":
                runs.append(("resident, GPU memory", "device", 0))
        for what, kind, workers in runs:
            s, setup = bench_data_path(pairs, kind, args.batch_size, device, args.passes, workers)
            speeds[what] = s
            print(f"  {what}: {s:.1f} tiles/s (set-up {setup:.1f} s)", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        release_tile_caches()
    return speeds


# ---------------------------------------------------------------------------------------------------


def end_to_end(args: argparse.Namespace, device: torch.device, tmp: Path) -> tuple[float, StepSetting]:
    """Train tiles per second of train.py itself, one epoch with its validation, at train.py's default
    settings for ``device`` (bf16 + channels_last and resident tiles on CUDA; fp32 and the worker loader
    on the CPU), at --e2e-batch, with --compile where --e2e-compile asks: the wall time of a 3-epoch run
    minus that of a 1-epoch run, so start-up, statistics, the tile cache and the compilation cancel
    out. Each run starts from nothing: the statistics file, the tile cache and the compilers' caches
    the other run made are not there to be reused. The step setting it compares with."""
    data, n = tmp / "e2e", args.e2e_tiles or args.tiles
    for split, count, seed in (("train", n, 0), ("val", max(1, n // 4), 1)):
        write_tiles(data / split, min(count, args.tiles), args.size, args.bands, args.compress[0], seed=seed)
        fill_folders(data / split, count)
    root = Path(__file__).resolve().parents[1]
    seconds = {}
    for epochs in (1, 3):
        cmd = [
            sys.executable,
            str(root / "train.py"),
            "--data",
            str(data),
            "--out",
            str(tmp / f"run{epochs}"),
        ]
        cmd += ["--encoder", args.encoder, "--batch-size", str(args.e2e_batch), "--epochs", str(epochs)]
        cmd += ["--device", device.type, "--workers", str(args.workers), "--log-images-every", "0"]
        cmd += ["--compile"] if args.e2e_compile else []
        (data / STATS_FILE).unlink(missing_ok=True)
        shutil.rmtree(data / CACHE_DIR, ignore_errors=True)
        caches = {
            v: str(tmp / f"{v.lower()}{epochs}") for v in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
        }
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, **caches})
        if res.returncode != 0:
            last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
            fail(f"train.py failed: {last}")
        seconds[epochs] = time.perf_counter() - t0
    speed = 2 * n / (seconds[3] - seconds[1])
    amp = Precision.fast_on(device)  # train.py's default
    return speed, StepSetting(device, args.e2e_batch, amp=amp, compiled=args.e2e_compile)


def step_settings(args: argparse.Namespace) -> list[StepSetting]:
    """The CPU's fp32 step (unless --no-cpu-step with CUDA); on CUDA fp32, bf16 at each of
    --amp-batches, and the last of those compiled (unless --no-compile)."""
    settings = []
    cuda = torch.cuda.is_available()
    if not (cuda and args.no_cpu_step):
        settings.append(StepSetting(torch.device("cpu"), args.batch_size))
    if cuda:
        gpu = torch.device("cuda")
        settings.append(StepSetting(gpu, args.batch_size))
        settings += [StepSetting(gpu, b, amp=True) for b in args.amp_batches]
        if not args.no_compile:
            settings.append(StepSetting(gpu, args.amp_batches[-1], amp=True, compiled=True))
    return settings


def report(
    steps: dict[StepSetting, float], data: dict[str, float], device: torch.device, flops: float
) -> None:
    """The step table (with the share of the GPU's bf16 peak) and the data path / step ratios."""
    peak = bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    print(f"\n| {'what':<58} | {'tiles/s':>8} | {'TFLOPS':>7} | {'of bf16 peak':>12} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 9}|{'-' * 14}|")
    for st, s in steps.items():
        share = f"{s * flops / peak:.1%}" if peak and st.amp else ""  # a bf16 peak: of bf16 steps only
        print(f"| {st.describe():<58} | {s:>8.2f} | {s * flops / 1e12:>7.2f} | {share:>12} |")
    for what, s in data.items():
        print(f"| {'data path, ' + what:<58} | {s:>8.1f} | {'':>7} | {'':>12} |")
    if device.type == "cuda" and peak is None:
        print(f"unknown GPU ({torch.cuda.get_device_name(device)}): no bf16 peak in BF16_PEAK_TFLOPS")
    same = [st for st in steps if st.device.type == device.type]
    if not same or not data:
        return
    print(f"\ndata path / step on {device.type} (below 1: the step waits for its data)")
    print(f"| {'data path':<34} | " + " | ".join(f"{st.short:>18}" for st in same) + " |")
    print(f"|{'-' * 36}|" + "|".join("-" * 20 for _ in same) + "|")
    for what, s in data.items():
        print(f"| {what:<34} | " + " | ".join(f"{s / steps[st]:>17.2f}x" for st in same) + " |")


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--encoder", default="resnet50", choices=ENCODERS)
    p.add_argument("--batch-size", type=int, default=12, help="batch of the fp32 steps and the data paths")
    p.add_argument("--amp-batches", type=int, nargs="+", default=[12, 48], help="batches of the bf16 steps")
    p.add_argument("--size", type=int, default=300, help="tile size")
    p.add_argument("--bands", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="timed steps on the CPU (10x that on CUDA)")
    p.add_argument("--tiles", type=int, default=96, help="tiles written for the data paths")
    p.add_argument("--workers", type=int, default=default_workers(), help="loader workers")
    p.add_argument("--passes", type=int, default=5, help="times each data path delivers every tile")
    p.add_argument("--folder-size", type=int, default=4000, help="entries in each tile folder (links)")
    p.add_argument("--compress", nargs="+", default=["zstd", "deflate"], choices=list(COMPRESSION))
    p.add_argument("--no-cpu-step", action="store_true", help="skip the (slow) CPU step when CUDA is present")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile step")
    p.add_argument(
        "--e2e-batch", type=int, default=12, help="batch of train.py's end-to-end run (48 on a GPU)"
    )
    p.add_argument(
        "--e2e-tiles",
        type=int,
        help="train tiles of the end-to-end run (and a quarter as many val tiles): beyond --tiles, hard "
        "links to them (default: --tiles); on a GPU thousands, so that an epoch outlasts its fixed costs",
    )
    p.add_argument(
        "--e2e-compile",
        action="store_true",
        help="train.py --compile in the end-to-end run, against the compiled step (the fastest settings)",
    )
    p.add_argument("--no-e2e", action="store_true", help="skip train.py's end-to-end epoch throughput")
    args = p.parse_args(argv)
    for name in ("batch_size", "size", "bands", "steps", "tiles", "passes"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.e2e_tiles is not None and args.e2e_tiles < 1:
        fail("--e2e-tiles must be at least 1")
    if min(args.amp_batches) < 1 or args.workers < 0:
        fail("--amp-batches must be at least 1 and --workers at least 0")

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"{args.encoder} U-Net, {args.size} x {args.size}, {args.bands} bands, 13 outputs; torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores{gpu}",
        flush=True,
    )
    flops = flops_per_tile(args.encoder, args.size, args.bands, device)
    print(f"  {flops / 1e9:.1f} GFLOP per tile (forward + backward)", flush=True)
    steps: dict[StepSetting, float] = {}
    for st in step_settings(args):
        n = args.steps * (10 if st.device.type == "cuda" else 1)
        s = step_speed(args.encoder, args.size, args.bands, n, st)
        if s is not None:
            steps[st] = s
            print(f"  {st.describe()}: {s:.2f} tiles/s", flush=True)
        if st.device.type == "cuda":
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        data = data_paths(args, device, Path(tmp))
        e2e = None if args.no_e2e else end_to_end(args, device, Path(tmp))
    report(steps, data, device, flops)
    if e2e is not None:
        speed, st = e2e
        n = args.steps * (10 if st.device.type == "cuda" else 1)
        bare = steps.get(st) or step_speed(args.encoder, args.size, args.bands, n, st)
        against = f"{speed / bare:.0%} of the bare step ({bare:.2f} tiles/s)" if bare else "no bare step"
        print(
            f"\ntrain.py end to end ({st.describe()}, validation included): {speed:.2f} train tiles/s,",
            against,
        )


if __name__ == "__main__":
    sys.exit(run_main(main))
