"""Benchmark divide_img.py against gdal_translate (Debian GDAL, the reference).

Reads nothing of the project's data. Generates (once, cached in bench/out/, git-ignored) a
Sentinel-2-like 10-band uint16 scene of --pixels x --pixels (DEFLATE + predictor 2, 512 x 512
blocks; fields, forest, towns, sea, clouds and a nodata margin, not random noise) and a matching
mask, then times, best of --repeat, for each --compress:
  ours     divide_img.py tiling the whole scene into 300 x 300 tiles (filters relaxed so that every
           tile is written: the same bytes as the copy);
  (a)      gdal_translate copying the whole scene once with the same compression options;
  (b)      gdal_translate -srcwin, one process per tile, timed on a sample of tiles and extrapolated.
Prints a table of seconds, tiles/s, peak memory and ratios. Writes only under bench/out/.
Targets (../shared/BENCHMARKS.md): ours within 1.5x of (a); well ahead of (b).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from divide_img import creation_options, tile_offsets  # noqa: E402
from landcover.common import ArgumentParser  # noqa: E402
from landcover.layout import tile_folders  # noqa: E402

OUT = ROOT / "bench" / "out"
BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# Typical reflectances (x10000) of each class in each band: crops, orchards, forest, scrub, soil,
# towns, water (codes 1..12; the urban and transport codes share "towns").
SIGNATURES = {
    1: (500, 800, 700, 1300, 2600, 3000, 3200, 3300, 2500, 1500),
    2: (600, 850, 950, 1300, 1900, 2200, 2400, 2500, 2800, 1900),
    3: (250, 450, 300, 750, 2000, 2500, 2700, 2800, 1400, 650),
    4: (450, 700, 750, 1150, 1900, 2200, 2400, 2500, 2300, 1500),
    5: (1100, 1400, 1700, 1900, 2100, 2200, 2300, 2400, 3200, 2700),
    6: (900, 1050, 1150, 1300, 1500, 1600, 1700, 1750, 1900, 1700),
    12: (600, 500, 300, 250, 200, 180, 160, 150, 80, 60),
}
for code, like in {7: 6, 8: 1, 9: 6, 10: 5, 11: 6}.items():
    SIGNATURES[code] = tuple(int(v * (0.9 + 0.02 * code)) for v in SIGNATURES[like])


def smooth_field(rng: np.random.Generator, n: int, scale: int) -> np.ndarray:
    """A (n/scale + 2)^2 grid of noise, to be zoomed by ``scale`` (smooth, float32)."""
    return rng.standard_normal((n // scale + 2, n // scale + 2)).astype(np.float32)


def zoom_rows(lo: np.ndarray, scale: int, r0: int, r1: int, n: int) -> np.ndarray:
    """Rows r0..r1 (full width n) of a low-resolution field zoomed bilinearly by ``scale``."""
    a, b = r0 // scale, r1 // scale + 2
    up = ndimage.zoom(lo[a:b], scale, order=1, prefilter=False)
    return up[r0 - a * scale : r1 - a * scale, :n]


def make_scene(scene: Path, mask: Path, n: int, seed: int = 0) -> None:
    """Write the synthetic scene and its mask, 512 rows at a time."""
    rng = np.random.default_rng(seed)
    fields = [smooth_field(rng, n, 64) for _ in range(7)]  # one per land-cover family
    texture, coast, cloud = smooth_field(rng, n, 8), smooth_field(rng, n, 512), smooth_field(rng, n, 96)
    families = np.array([1, 2, 3, 4, 5, 6, 9])  # argmax over the fields picks one of these
    sig = np.zeros((256, len(BANDS)), np.float32)
    for code, values in SIGNATURES.items():
        sig[code] = values
    profile = dict(
        driver="GTiff", width=n, height=n, crs="EPSG:32631", transform=from_origin(300000, 4700000, 10, 10),
        nodata=0, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
    )  # fmt: skip
    scene_tmp, mask_tmp = scene.with_suffix(".partial.tif"), mask.with_suffix(".partial.tif")
    with (
        rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"),
        rasterio.open(scene_tmp, "w", count=len(BANDS), dtype="uint16", predictor=2, **profile) as img,
        rasterio.open(mask_tmp, "w", count=1, dtype="uint8", **profile) as msk,
    ):
        img.descriptions = BANDS
        for r0 in range(0, n, 512):
            r1 = min(r0 + 512, n)
            up = np.stack([zoom_rows(f, 64, r0, r1, n) for f in fields])
            code = families[np.argmax(up, axis=0)]
            code[(code == 6) & (zoom_rows(texture, 8, r0, r1, n) > 1.3)] = 11  # roads through towns
            code[(code == 1) & (up[0] > 2.2)] = 8
            code[(code == 5) & (up[4] > 2.4)] = 10
            cols = np.arange(n)[None, :]
            sea = cols > 0.8 * n + 0.05 * n * zoom_rows(coast, 512, r0, r1, n)
            code[sea] = 12
            tex = zoom_rows(texture, 8, r0, r1, n)
            base = sig[code].transpose(2, 0, 1) * (1 + 0.12 * tex)
            noise = rng.standard_normal(base.shape, dtype=np.float32) * (0.08 * base + 60)
            bands = base + noise
            clouds = np.clip(zoom_rows(cloud, 96, r0, r1, n) - 1.6, 0, None) * 6000
            bands += clouds
            data = np.clip(bands, 1, 65535).astype(np.uint16)
            margin = np.arange(r0, r1)[:, None] < 150 + 100 * np.sin(cols / 700)  # outside the region
            data[:, margin] = 0
            code = np.where(margin, 0, code).astype(np.uint8)
            window = Window(0, r0, n, r1 - r0)
            img.write(data, window=window)
            msk.write(code[None], window=window)
            print(f"\rgenerating {scene.name}: {r1}/{n} rows", end="", file=sys.stderr)
    print(file=sys.stderr)
    os.replace(mask_tmp, mask)
    os.replace(scene_tmp, scene)


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds, all threads
    peak_mb: float  # maximum resident set


def timed(cmd: list[str]) -> Run:
    """Run a command under /usr/bin/time (the rusage of a child of this big Python process would
    include the parent's memory)."""
    t = time.perf_counter()
    res = subprocess.run(
        ["/usr/bin/time", "-f", "%U %S %M", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    user, system, peak = res.stderr.strip().splitlines()[-1].split()
    return Run(wall, float(user) + float(system), int(peak) / 1024)


def co_args(compress: str) -> list[str]:
    """gdal_translate -co arguments for the same compression as our image tiles."""
    out = []
    for k, v in creation_options(compress, "uint16").items():
        out += ["-co", f"{k.upper()}={str(v).upper()}"]
    return out


def parse_args() -> argparse.Namespace:
    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--pixels", type=int, default=10000, help="scene side in pixels")
    p.add_argument("--compress", nargs="+", default=["zstd", "deflate"], help="compressions to compare")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    p.add_argument("--sample", type=int, default=40, help="tiles timed in the per-tile gdal_translate loop")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="divide_img.py --workers to time")
    return p.parse_args()


def commands(scene: Path, mask: Path, compress: str, workers: list[int]) -> dict[str, list[str]]:
    """(a) the whole-scene copy and ours (once per --workers), run in the work folder."""
    cmds = {
        "(a) gdal_translate whole scene": [
            "gdal_translate",
            "-q",
            *co_args(compress),
            str(scene),
            "whole.tif",
        ]
    }
    for w in workers:
        cmds[f"divide_img.py --workers {w}"] = [
            sys.executable, str(ROOT / "divide_img.py"), "--images", str(scene), "--mask", str(mask),
            "--out", "tiles", "--compress", compress, "--max-nodata", "1", "--keep-water-only",
            "--workers", str(w),
        ]  # fmt: skip
    return cmds


def time_commands(
    cmds: dict[str, list[str]], work: Path, repeat: int
) -> tuple[dict[str, Run], dict[str, int], int]:
    """The best run of each command, the bytes each wrote, and the tiles ours wrote."""
    best: dict[str, Run] = {}
    out_bytes: dict[str, int] = {}
    written = 0
    for _ in range(repeat):  # interleaved, so that other work on the machine hits all alike
        for what, cmd in cmds.items():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            os.chdir(work)
            run = timed(cmd)
            if what not in best or run.wall < best[what].wall:
                best[what] = run
            files = list(work.rglob("*.tif"))
            out_bytes[what] = sum(f.stat().st_size for f in files)
            if what.startswith("divide"):
                written = len(list(tile_folders(work / "tiles", 300)[0].glob("*.tif")))
    return best, out_bytes, written


def time_per_tile(
    scene: Path, work: Path, compress: str, sample: list[tuple[int, int]], repeat: int
) -> float:
    """(b): seconds of one gdal_translate -srcwin process per tile, best of ``repeat`` over the sample."""
    per_tile = 1e9
    for _ in range(repeat):
        t = time.perf_counter()
        for r, c in sample:
            cmd = ["gdal_translate", "-q", *co_args(compress), "-srcwin", str(c), str(r), "300", "300"]
            subprocess.run([*cmd, str(scene), str(work / "one.tif")], check=True)
        per_tile = min(per_tile, (time.perf_counter() - t) / len(sample))
    return per_tile


def table_rows(
    compress: str, best: dict[str, Run], out_bytes: dict[str, int], written: int, per_tile: float
) -> list[str]:
    """The rows of one compression in the markdown table."""
    ref = best["(a) gdal_translate whole scene"]
    loop = per_tile * written
    rows = [f"| **{compress}** | | | | | | | |"]
    for what, run in best.items():
        cells = [
            what,
            f"{run.wall:.1f}",
            f"{run.cpu:.1f}",
            f"{run.peak_mb:.0f}",
            f"{out_bytes[what] / 1e9:.2f}",
        ]
        if what.startswith("divide"):
            cells += [f"{written / run.wall:.0f}", f"{run.wall / ref.wall:.2f}x", f"{loop / run.wall:.1f}x"]
        rows.append("| " + " | ".join(cells + [""] * (8 - len(cells))) + " |")
    rows.append(f"| (b) gdal_translate -srcwin per tile | {loop:.0f} (est.) | | | | {1 / per_tile:.1f} | | |")
    return rows


def main() -> None:
    args = parse_args()
    if not shutil.which("gdal_translate"):
        raise SystemExit("gdal_translate not found (apt-get install gdal-bin)")
    OUT.mkdir(parents=True, exist_ok=True)
    scene, mask = OUT / f"scene_{args.pixels}.tif", OUT / f"mask_{args.pixels}.tif"
    if not (scene.exists() and mask.exists()):
        make_scene(scene, mask, args.pixels)
    work = OUT / "tiling_run"
    offs = tile_offsets(args.pixels, 300, 300)
    places = [(r, c) for r in offs for c in offs]
    sample = places[:: max(1, len(places) // args.sample)][: args.sample]  # spread over the scene
    mb, n = scene.stat().st_size / 1e6, args.pixels
    print(f"scene: {mb:.0f} MB on disk, {n} x {n} x 10 uint16, {len(places)} tiles of 300 x 300; "
          f"best of {args.repeat}; {os.cpu_count()} cores, shared")  # fmt: skip

    table = []
    for compress in args.compress:
        cmds = commands(scene, mask, compress, args.workers)
        best, out_bytes, written = time_commands(cmds, work, args.repeat)
        per_tile = time_per_tile(scene, work, compress, sample, args.repeat)
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)
        table += table_rows(compress, best, out_bytes, written, per_tile)

    print()
    print("| what | wall s | cpu s | peak MB | GB written | tiles/s | wall vs (a) | (b) loop / ours |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print(
        f"\n{written} tiles written (filters relaxed so that every place is written: the same pixels as (a))."
    )
    print(f"(b): {per_tile:.3f} s per tile, timed on {len(sample)} tiles spread over the scene (best of "
          f"{args.repeat}), times {written} tiles; the full loop is too slow to run.")  # fmt: skip
    print("cpu s: user + system of all threads. peak MB: maximum resident set (ours includes Python).")
    print(
        "Targets (BENCHMARKS.md): wall vs (a) <= 1.5x; (b) loop / ours well above 1x (4x or more expected)."
    )


if __name__ == "__main__":
    main()
