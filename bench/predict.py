"""Benchmark predict.py: whole-scene maps of generated scenes against the bare model forward.

For each --sizes scene (default 3000 x 3000 and 6000 x 6000, 10 bands uint16, DEFLATE + predictor 2,
512 x 512 blocks, a Catalonia-like mix of classes with texture and noise, nodata outside a ragged
coast): predict.py runs in a child process, then the bare model forward over the same number of
windows of the same size and batch in another child (same encoder, device and threads, inputs already
on the device: nothing but ``net(x)``). Reported: windows/s of both, the ratio of predict.py's own time
(reading, normalising, blending, writing, overviews, preview) to the bare forward (target <= 1.25),
the CPU seconds of both processes (imports included; steadier than wall time when other jobs share
the cores), and the peak RSS of every child (os.wait4; target: the larger scene within
1.1x of the smaller). The encoder is random-init (speed does not depend on the weights). With
--repeat N both run N times, alternated, and the fastest of each counts (cores shared with other jobs).
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
from common import ArgumentParser  # noqa: E402

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


def make_checkpoint_file(path: Path, encoder: str) -> None:
    import torch

    from checkpoint import make_checkpoint
    from model import build_model

    torch.manual_seed(0)
    net = build_model(encoder, 10, 13)
    stats = {"mean": SPECTRA.mean(0).tolist(), "std": (SPECTRA.std(0) + 300).tolist()}
    torch.save(make_checkpoint(net, list(BANDS), stats), path)


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


def bare_forward(args: argparse.Namespace) -> None:
    """Child mode: load the checkpoint as predict.py does, time net(x) over --bare windows."""
    import torch

    from checkpoint import load_checkpoint
    from distributed import configure_torch, pick_device

    device = pick_device(args.device)
    configure_torch(device)
    net, _ = load_checkpoint(OUT / f"ckpt_{args.encoder}.pt", device)
    x = torch.randn(args.batch_size, 10, args.window, args.window, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        if device.type == "cuda":
            net(x)  # warm-up (CUDA start-up, cudnn autotuning), excluded from the time
            sync()
        t0 = time.perf_counter()
        done = 0
        while done < args.bare:
            n = min(args.batch_size, args.bare - done)
            net(x[:n])
            done += n
        sync()
    print(f"forward {time.perf_counter() - t0:.3f}")


def parse_args() -> argparse.Namespace:
    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--encoder", default="resnet50", choices=("resnet18", "resnet34", "resnet50"))
    p.add_argument("--sizes", type=int, nargs="+", default=[3000, 6000], help="scene sizes (square)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--workers", type=int, default=None, help="predict.py reader threads (default: its own)%(default).0s"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-preview", action="store_true", help="predict.py without its PNG preview")
    p.add_argument("--repeat", type=int, default=1, help="runs of each (alternated); the fastest counts")
    p.add_argument("--bare", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    return p.parse_args()


def bench_size(args: argparse.Namespace, ckpt: Path, size: int) -> tuple:
    """predict.py and the bare forward on the scene of ``size``, ``--repeat`` times each, alternated:
    (size, windows, best times, best CPU s, peak RSS of each)."""
    import predict  # for the window count only

    scene = OUT / f"scene_{size}.tif"
    if not scene.exists():
        t = time.perf_counter()
        make_scene(scene, size)
        print(f"generated {scene} ({scene.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")
    w = min(args.window, size)
    n = len(predict.window_starts(size, w, args.overlap)) ** 2
    out = OUT / f"map_{size}.tif"
    cmd = [sys.executable, "predict.py", "--checkpoint", ckpt, "--image", scene, "--out", out]
    cmd += ["--window", args.window, "--overlap", args.overlap, "--batch-size", args.batch_size]
    cmd += ["--device", args.device, "--no-preview"] if args.no_preview else ["--device", args.device]
    cmd += ["--workers", args.workers] if args.workers is not None else []
    bare = [sys.executable, "bench/predict.py", "--bare", n, "--encoder", args.encoder, "--window", w]
    bare += ["--batch-size", args.batch_size, "--device", args.device]
    env = dict(os.environ)
    runs = []
    for k in range(args.repeat):  # alternated, so that both see the same load on shared cores
        wall_p, rss_p, text, cpu_p = spawn([str(c) for c in cmd], env)
        work_p = float(re.search(r"px, ([\d.]+) s\)", text).group(1))
        _, rss_b, text, cpu_b = spawn([str(c) for c in bare], env)
        work_b = float(re.search(r"forward ([\d.]+)", text).group(1))
        runs.append((work_p, work_b, wall_p, cpu_p, cpu_b, rss_p, rss_b))
        print(
            f"{size} run {k + 1}: {n} windows, predict.py {work_p:.1f} s ({cpu_p:.0f} CPU s), "
            f"bare forward {work_b:.1f} s ({cpu_b:.0f} CPU s)",
            flush=True,
        )
    work_p, work_b, wall_p, cpu_p, cpu_b = (min(r[i] for r in runs) for i in range(5))  # least disturbed
    rss_p, rss_b = (max(r[i] for r in runs) for i in (5, 6))
    return size, n, work_p, work_b, wall_p, cpu_p, cpu_b, rss_p, rss_b


def print_table(args: argparse.Namespace, rows: list[tuple]) -> None:
    import torch

    cuda = args.device != "cpu" and torch.cuda.is_available()
    dev = f"cuda ({torch.cuda.get_device_name()})" if cuda else "cpu"
    print(
        f"\nencoder {args.encoder}, window {args.window}, overlap {args.overlap}, batch {args.batch_size}, "
        f"device {dev}, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores"
    )
    print(
        f"{'scene':>11} {'windows':>7} {'predict s':>9} {'bare s':>7} {'win/s':>6} {'bare win/s':>10} "
        f"{'ratio':>6} {'CPU s':>6} {'bare CPU s':>10} {'CPU ratio':>9} "
        f"{'RSS predict MB':>14} {'RSS bare MB':>11}"
    )
    for size, n, wp, wb, _, cp, cb, rp, rb in rows:
        print(
            f"{size:>5}x{size:<5} {n:>7} {wp:>9.1f} {wb:>7.1f} {n / wp:>6.2f} {n / wb:>10.2f} "
            f"{wp / wb:>6.2f} {cp:>6.0f} {cb:>10.0f} {cp / cb:>9.2f} {rp:>14.0f} {rb:>11.0f}"
        )
    if len(rows) > 1:
        print(
            f"peak RSS of predict.py, largest / smallest scene: {rows[-1][7] / rows[0][7]:.3f} "
            f"(target <= 1.1); worst time ratio {max(r[2] / r[3] for r in rows):.2f} (target <= 1.25)"
        )


def main() -> None:
    args = parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.bare:
        return bare_forward(args)
    ckpt = OUT / f"ckpt_{args.encoder}.pt"
    if not ckpt.exists():
        make_checkpoint_file(ckpt, args.encoder)
    print_table(args, [bench_size(args, ckpt, size) for size in args.sizes])


if __name__ == "__main__":
    main()
