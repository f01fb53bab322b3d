"""Benchmark predict.py: whole-scene maps (with their confidence) of generated scenes against reading
the scene's windows once plus the bare model forward over them.

For each --sizes scene (default 3000 x 3000 and 6000 x 6000, 10 bands uint16, DEFLATE + predictor 2,
512 x 512 blocks, a Catalonia-like mix of classes with texture and noise, nodata outside a ragged
coast; generated once, in a child), three child processes run in turn: predict.py (writing the map,
its confidence raster, their overviews and, unless --no-preview, both previews; the checkpoint holds a
fitted --temperature, so the calibrated confidence is blended beside the map's probabilities as for a
checkpoint of train.py); a reader that reads the scene's windows once as predict.py does
(``mapping.SceneReader`` in raster order, under predict.py's GDAL settings, nothing else); and the
bare model forward over the same number of windows of the same size and batch (same encoder, device
and threads, inputs already on the device: nothing but ``net(x)``). Each child times its own work,
wall and CPU seconds (all its threads), imports and model loading excluded. Reported: the three
times, predict.py's wall and CPU-time ratios to read + bare forward (the CPU-time one is steadier when
other jobs share the cores; target <= 1.15 on CPU), and the peak RSS of every child (os.wait4, which
counts from the parent's size at the fork: this process stays small; target: predict.py's on the
larger scene within 1.1x of the smaller). The encoder is random-init (speed does not depend on the
weights). With --repeat N the three run N times, alternated, and the fastest of each counts.
predict.py's time includes its one-time costs (first batch, CUDA start-up), the bare forward's not.

Writes only under bench/out/predict/ (git-ignored): the scenes (cached), the checkpoint, the maps.
Runs unchanged on CUDA (--device auto picks it). Usage:
  .venv/bin/python bench/predict.py [--encoder resnet50] [--sizes 3000 6000] [--batch-size 4] ...
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from landcover.common import ArgumentParser  # noqa: E402

OUT = ROOT / "bench" / "out" / "predict"
BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# reflectance x10000 of the classes 1..12 (rough Sentinel-2 spectra)
SPECTRA = np.array(
    [
        (700, 1000, 1000, 1500, 2300, 2600, 2800, 2900, 2600, 1800),  # 1 herbaceous crops
        (600, 850, 900, 1300, 2000, 2300, 2500, 2600, 2500, 1700),  # 2 woody crops
        (300, 500, 350, 800, 2000, 2500, 2700, 2800, 1400, 700),  # 3 forest
        (500, 750, 700, 1200, 2100, 2400, 2600, 2700, 2300, 1400),  # 4 scrub
        (1300, 1600, 1900, 2100, 2300, 2400, 2500, 2600, 3200, 2700),  # 5 bare soil
        (1200, 1300, 1400, 1500, 1700, 1800, 1900, 1950, 2100, 1900),  # 6 urban
        (1100, 1250, 1300, 1500, 1900, 2100, 2200, 2300, 2200, 1800),  # 7 isolated urban
        (500, 800, 600, 1200, 2600, 3000, 3200, 3300, 2000, 1100),  # 8 green areas
        (1500, 1600, 1700, 1800, 1900, 2000, 2050, 2100, 2300, 2200),  # 9 industrial
        (1700, 1900, 2100, 2300, 2400, 2500, 2550, 2600, 3000, 2800),  # 10 mining
        (1000, 1100, 1200, 1300, 1400, 1450, 1500, 1500, 1700, 1600),  # 11 transport
        (600, 550, 400, 350, 300, 250, 200, 180, 120, 90),  # 12 water
    ],
    dtype=np.float32,
)


def smooth_field(shape: tuple[int, int], cell: int, rng: np.random.Generator, rows: slice) -> np.ndarray:
    """Rows ``rows`` of a smooth random field over ``shape``: a coarse grid, bilinearly interpolated.

    The coarse grid is drawn from ``rng`` in the same way for every call, so block rows fit together.
    """
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    y = (np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5) / cell
    x = (np.arange(shape[1], dtype=np.float32) + 0.5) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g = grid[y0][:, x0], grid[y0][:, x0 + 1], grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g[0] * (1 - fx) + g[1] * fx) * (1 - fy) + (g[2] * (1 - fx) + g[3] * fx) * fy


def make_scene(path: Path, size: int, seed: int = 0) -> None:
    """Write a size x size 10-band scene block row by block row (memory: one block row)."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=10,
        dtype="uint16",
        crs="EPSG:32631",
        transform=from_origin(300000.0, 4750000.0, 10.0, 10.0),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        predictor=2,
        bigtiff="if_safer",
    )
    tmp = path.with_name(path.name + ".partial")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, b in enumerate(BANDS, start=1):
            dst.set_band_description(i, b)
        for r0 in range(0, size, 512):
            rows = slice(r0, min(r0 + 512, size))
            fields = [
                smooth_field((size, size), cell, np.random.default_rng(seed + k), rows)
                for k, cell in enumerate((400, 120, 40, 900))
            ]
            land, veg, urban, coast = fields
            cls = np.where(veg > 0.3, 3, np.where(veg > -0.2, 4, 1))  # forest, scrub, crops
            cls = np.where((land > 0.8) & (veg < 0.2), 2, cls)  # woody crops
            cls = np.where(urban > 1.3, 6, np.where(urban > 1.1, 7, cls))
            cls = np.where((urban > 1.0) & (land < -0.8), 9, cls)
            cls = np.where(np.abs(urban - 0.5) < 0.01, 11, cls)  # thin roads
            cls = np.where((veg < -1.4), 5, np.where((veg > 1.6) & (urban > 0.6), 8, cls))
            cls = np.where(land < -1.6, 10, cls)
            cls = np.where(np.abs(land - 0.2) < 0.015, 12, cls)  # rivers
            rng = np.random.default_rng(seed * 1000 + r0)
            img = SPECTRA[cls - 1].transpose(2, 0, 1) * (1 + 0.08 * veg)[None]
            img += rng.normal(0, 60, img.shape).astype(np.float32)
            img = np.clip(img, 1, 10000).astype(np.uint16)
            sea = coast + 0.3 * fields[2] > 0.9  # the sea and ragged coast: nodata
            x = np.arange(size)[None, :] + np.zeros((rows.stop - r0, 1), int)
            img[:, sea | (x > size - 200 + 60 * fields[1])] = 0
            dst.write(img, window=((r0, rows.stop), (0, size)))
    os.replace(tmp, path)


def make_checkpoint_file(path: Path, encoder: str, temperature: float) -> None:
    """A random-init checkpoint; with a temperature other than 1, one as train.py writes now."""
    import torch

    from landcover.checkpoint import make_checkpoint
    from model import build_model
    from train import RECIPE

    torch.manual_seed(0)  # the model train.py builds at its defaults
    net = build_model(encoder, 10, 13, full_res=RECIPE["full_res"], spectral=RECIPE["spectral"])
    stats = {"mean": SPECTRA.mean(0).tolist(), "std": (SPECTRA.std(0) + 300).tolist()}
    extra = {} if temperature == 1 else {"temperature": temperature}
    torch.save(make_checkpoint(net, list(BANDS), stats, **extra), path)


def spawn(cmd: list[str], env: dict) -> tuple[float, float, str, float]:
    """Run a child, wait for it with os.wait4: wall s, its own peak RSS (MB), its stdout, its CPU s."""
    t0 = time.perf_counter()
    with open(OUT / "child.out", "w") as fo, open(OUT / "child.err", "w") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=ROOT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"child failed ({p.returncode}): {' '.join(cmd)}\n{(OUT / 'child.err').read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, (OUT / "child.out").read_text(), usage.ru_utime + usage.ru_stime


def checkpoint_path(args: argparse.Namespace) -> Path:
    return OUT / f"ckpt_{args.encoder}_T{args.temperature:g}.pt"


def workers_of(args: argparse.Namespace) -> int:
    import predict

    return predict.DEFAULT_WORKERS if args.workers is None else args.workers


def bare_forward(args: argparse.Namespace) -> None:
    """Child mode: load the checkpoint as predict.py does, time net(x) over --bare windows."""
    import torch

    from landcover.checkpoint import load_checkpoint
    from landcover.distributed import configure_torch, pick_device

    device = pick_device(args.device)
    configure_torch(device)
    net, _ = load_checkpoint(checkpoint_path(args), device)
    x = torch.randn(args.batch_size, 10, args.window, args.window, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        if device.type == "cuda":
            net(x)  # warm-up (CUDA start-up, cudnn autotuning), excluded from the time
            sync()
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < args.bare:
            n = min(args.batch_size, args.bare - done)
            net(x[:n])
            done += n
        sync()
    print(f"forward {time.perf_counter() - t0:.3f} s, {time.process_time() - c0:.3f} CPU s")


def read_windows(args: argparse.Namespace) -> None:
    """Child mode: read every window of the scene --read once, as predict.py reads them, and nothing more."""
    import rasterio

    from landcover import mapping, rasters

    scene = Path(args.read)
    with rasterio.open(scene) as src:
        height, width = src.height, src.width
    win = (min(args.window, height), min(args.window, width))
    rows = mapping.window_starts(height, win[0], args.overlap)
    cols = mapping.window_starts(width, win[1], args.overlap)
    reader = mapping.SceneReader([scene])
    t0, c0 = time.perf_counter(), time.process_time()
    with rasters.gdal_env(workers_of(args)):
        nbytes = sum(reader(r, c, *win).nbytes for r in rows for c in cols)
    reader.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"read {wall:.3f} s, {cpu:.3f} CPU s ({len(rows) * len(cols)} windows, {nbytes / 1e9:.2f} GB)")


def parse_args() -> argparse.Namespace:
    from landcover.distributed import DEVICES

    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--encoder", default="resnet50", choices=("resnet18", "resnet34", "resnet50"))
    p.add_argument("--sizes", type=int, nargs="+", default=[3000, 6000], help="scene sizes (square)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--workers", type=int, default=None, help="predict.py reader threads (default: its own)%(default).0s"
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--temperature",
        type=float,
        default=1.5,
        help="the checkpoint's fitted temperature (1: a checkpoint written before calibration)",
    )
    p.add_argument("--no-preview", action="store_true", help="predict.py without its PNG previews")
    p.add_argument("--repeat", type=int, default=1, help="runs of each (alternated); the fastest counts")
    p.add_argument("--bare", type=int, default=0, help=argparse.SUPPRESS)  # child mode: the forward
    p.add_argument("--read", default=None, help=argparse.SUPPRESS)  # child mode: reading the scene
    p.add_argument("--make-scene", type=int, default=0, help=argparse.SUPPRESS)  # child mode: a scene
    return p.parse_args()


TIMES = r"([\d.]+) s, ([\d.]+) CPU s"  # what each child prints of its work: wall and CPU seconds


def child_commands(args: argparse.Namespace, scene: Path, size: int, n: int) -> dict[str, list[str]]:
    """The three children's command lines: predict.py, the reader, the bare forward (``n`` windows)."""
    w = min(args.window, size)
    workers = ["--workers", args.workers] if args.workers is not None else []
    me = [sys.executable, "bench/predict.py", "--encoder", args.encoder, "--window", w, *workers]
    me += ["--overlap", args.overlap, "--batch-size", args.batch_size, "--device", args.device]
    me += ["--temperature", args.temperature]
    cmd = [sys.executable, "predict.py", "--checkpoint", checkpoint_path(args), "--image", scene]
    cmd += ["--out", OUT / f"map_{scene.stem}.tif", "--window", args.window, "--overlap", args.overlap]
    cmd += ["--batch-size", args.batch_size, "--device", args.device, *workers]
    cmd += ["--no-preview"] if args.no_preview else []
    commands = {"predict": cmd, "read": [*me, "--read", scene], "bare": [*me, "--bare", n]}
    return {k: [str(c) for c in v] for k, v in commands.items()}


def bench_size(args: argparse.Namespace, size: int) -> dict:
    """predict.py, the reader and the bare forward on the scene of ``size``, ``--repeat`` times each,
    alternated: the best wall and CPU seconds of each, and the largest peak RSS of each."""
    from landcover import mapping  # for the window count only

    scene = OUT / f"scene_{size}.tif"
    if not scene.exists():  # in a child: a child's peak RSS starts at its parent's (fork, then exec)
        wall, *_ = spawn([sys.executable, "bench/predict.py", "--make-scene", str(size)], dict(os.environ))
        print(f"generated {scene} ({scene.stat().st_size / 1e6:.0f} MB) in {wall:.0f} s")
    n = len(mapping.window_starts(size, min(args.window, size), args.overlap)) ** 2
    commands = child_commands(args, scene, size, n)
    runs = {k: [] for k in commands}
    for k in range(args.repeat):  # alternated, so that all see the same load on shared cores
        for name, cmd in commands.items():
            _, rss, text, _ = spawn(cmd, dict(os.environ))
            wall, cpu = map(float, re.search(TIMES, text).groups())
            runs[name].append((wall, cpu, rss))
        print(
            f"{size} run {k + 1}: {n} windows; "
            + ", ".join(f"{name} {r[-1][0]:.1f} s ({r[-1][1]:.1f} CPU s)" for name, r in runs.items()),
            flush=True,
        )
    best = {
        name: (min(r[0] for r in rs), min(r[1] for r in rs), max(r[2] for r in rs))
        for name, rs in runs.items()
    }
    return {"size": size, "windows": n, **best}


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    import torch

    cuda = args.device != "cpu" and torch.cuda.is_available()
    dev = f"cuda ({torch.cuda.get_device_name()})" if cuda else "cpu"
    print(
        f"\nencoder {args.encoder}, window {args.window}, overlap {args.overlap}, batch {args.batch_size}, "
        f"device {dev}, temperature {args.temperature:g}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'scene':>11} {'windows':>7} {'read s':>7} {'bare s':>7} {'predict s':>9} {'wall ratio':>10} "
        f"{'read CPU s':>10} {'bare CPU s':>10} {'predict CPU s':>13} {'CPU ratio':>9} "
        f"{'peak MB predict / read / bare':>29}"
    )
    for r in rows:
        (rw, rc, rm), (bw, bc, bm), (pw, pc, pm) = r["read"], r["bare"], r["predict"]
        print(
            f"{r['size']:>5}x{r['size']:<5} {r['windows']:>7} {rw:>7.1f} {bw:>7.1f} {pw:>9.1f} "
            f"{pw / (rw + bw):>10.2f} {rc:>10.1f} {bc:>10.1f} {pc:>13.1f} {pc / (rc + bc):>9.2f} "
            f"{f'{pm:.0f} / {rm:.0f} / {bm:.0f}':>29}"
        )
    cpu = max(r["predict"][1] / (r["read"][1] + r["bare"][1]) for r in rows)
    wall = max(r["predict"][0] / (r["read"][0] + r["bare"][0]) for r in rows)
    line = f"worst CPU-time ratio {cpu:.2f} (target <= 1.15 on CPU), worst wall ratio {wall:.2f}"
    if len(rows) > 1:
        memory = rows[-1]["predict"][2] / rows[0]["predict"][2]
        line = f"peak RSS of predict.py, largest / smallest scene: {memory:.3f} (target <= 1.1); {line}"
    print(line)


def main() -> None:
    args = parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.bare:
        return bare_forward(args)
    if args.read:
        return read_windows(args)
    if args.make_scene:
        return make_scene(OUT / f"scene_{args.make_scene}.tif", args.make_scene)
    if not checkpoint_path(args).exists():
        make_checkpoint_file(checkpoint_path(args), args.encoder, args.temperature)
    print_table(args, [bench_size(args, size) for size in args.sizes])


if __name__ == "__main__":
    main()
