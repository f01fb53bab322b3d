"""Benchmark of rescale_mask.py against gdalwarp: time and peak memory per method, and their growth.

Reads nothing of the repository's data. Writes only under bench/out/rescale/ (git-ignored): synthetic
1 m masks with Catalonia-like structure (Voronoi parcels grouped into farmland, hills and towns,
isolated houses, 3 to 8 m roads, a river, a coast with beaches (19) and sea (41), nodata in one
corner), uint8, DEFLATE, 512 x 512 tiles, generated once and cached, each with a one-band scene on
the 10 m grid; and the outputs of the runs. For each mask size and method it runs rescale_mask.py
and gdalwarp on the same work (same grid, same output settings: tiled 512, DEFLATE), interleaved,
``--repeat`` times, and reports the best time and the peak memory (ru_maxrss of the child) of each,
as ratios, then how both grow from the smaller mask to the larger (4x the pixels).

``--huge`` also runs ours once on a 300000 x 300000 mask (the real size; tiles outside a 10240 x 20000
patch of the 20000 mask left sparse, read as nodata) onto a 30000 x 30000 grid, for its peak memory.

gdalwarp runs twice per round: as is (single-threaded warping, GDAL 3.6 of Debian) and with
``-multi -wo NUM_THREADS=ALL_CPUS``; ratios are against the faster of the two. ``weighted`` has no
gdalwarp equivalent: it is set against ``gdalwarp -r mode``, for scale only.

    .venv/bin/python bench/rescale.py [--sizes 20000 40000] [--repeat 3] [--methods ...] [--huge]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from colormap import remap_lut  # noqa: E402
from landcover.common import ArgumentParser, atomic_path  # noqa: E402

OUT = ROOT / "bench" / "out" / "rescale"
X0, Y0 = 400000.0, 4600000.0
GENERATOR = 1  # bump when the synthetic mask changes, so that cached masks are regenerated


# ---------------------------------------------------------------------------------------------------
# A large, structured 1 m mask, written strip by strip (never held in memory)


def _hash(a, b, salt: int) -> np.ndarray:
    """Uniform [0, 1) floats from integer pairs: a stateless hash, so strips are independent."""
    h = np.asarray(a).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.asarray(b).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= np.uint64((salt * 0x165667B19E3779F9) & 0xFFFFFFFFFFFFFFFF)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def mask_strip(r0: int, nrows: int, size: int, seed: int = 0) -> np.ndarray:
    """Rows r0 .. r0 + nrows of the synthetic ``size`` x ``size`` mask."""
    f, cell = 4, 25  # parcels drawn at 4 m on a jittered 100 m grid (Voronoi), edges wobbling
    y = np.arange(r0 // f, (r0 + nrows - 1) // f + 1, dtype=np.float32)[:, None]
    x = np.arange(0, (size - 1) // f + 1, dtype=np.float32)[None, :]
    yw, xw = y + 3 * np.sin(x / 11.0), x + 3 * np.sin(y / 13.0)
    ci, cj = np.floor(yw / cell).astype(np.int32), np.floor(xw / cell).astype(np.int32)
    i0, j0 = int(ci.min()) - 1, int(cj.min()) - 1
    gi, gj = np.meshgrid(np.arange(i0, int(ci.max()) + 2), np.arange(j0, int(cj.max()) + 2), indexing="ij")
    sy, sx = (gi + _hash(gi, gj, seed)) * cell, (gj + _hash(gi, gj, seed + 1)) * cell
    best = np.full(np.broadcast_shapes(yw.shape, xw.shape), np.inf, np.float32)
    bi, bj = np.zeros(best.shape, np.int32), np.zeros(best.shape, np.int32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i, j = ci + di - i0, cj + dj - j0
            d = (yw - sy[i, j]) ** 2 + (xw - sx[i, j]) ** 2
            m = d < best
            best[m], bi[m], bj[m] = d[m], i[m], j[m]
    # landscape zones from a smooth km-scale field: hills (forest, scrub, bare, quarries),
    # farmland (herbaceous and woody crops), towns (urban, industry, green areas)
    u = _hash(gi, gj, seed + 2)
    z = np.sin(sx / 575 + np.sin(sy / 425) * 2) + np.cos(sy / 725 + np.sin(sx / 775) * 2)
    hills = np.select([u < 0.55, u < 0.85, u < 0.97], [3, 4, 5], 10)
    farms = np.select([u < 0.5, u < 0.8, u < 0.9], [1, 2, 4], 3)
    towns = np.select([u < 0.7, u < 0.85], [6, 9], 8)
    cls_cell = np.select([z > 0.9, z > -1.2], [hills, farms], towns).astype(np.uint8)
    off = r0 - (r0 // f) * f
    cls = np.ascontiguousarray(cls_cell[bi, bj].repeat(f, 0).repeat(f, 1)[off : off + nrows, :size])
    r1 = r0 + nrows
    # isolated houses in farmland: 12 m squares on a 200 m jittered grid
    for hi in range(r0 // 200, (r1 - 1) // 200 + 1):
        hj = np.arange(size // 200 + 1)
        u = _hash(np.full_like(hj, hi), hj, seed + 3)
        hy = hi * 200 + 20 + (u * 160).astype(int)
        hx = hj * 200 + 20 + (_hash(hj, np.full_like(hj, hi), seed + 4) * 160).astype(int)
        for yy, xx in zip(hy[u < 0.25], hx[u < 0.25], strict=True):
            a, b = max(yy - 6, r0), min(yy + 6, r1)
            if a < b:
                sub = cls[a - r0 : b - r0, max(xx - 6, 0) : xx + 6]
                sub[(sub == 1) | (sub == 2)] = 7
    rows, cols = np.arange(r0, r1, dtype=np.float32), np.arange(size, dtype=np.float32)
    # roads 3 to 8 m wide every ~1.5 km both ways, gently curving
    for k in range(size // 1500 + 1):
        w = 3 + (k * 7) % 6
        ry = k * 1500 + 700 + 200 * np.sin(cols / 3000 + k)
        if ry.min() - w < r1 and ry.max() + w > r0:
            cls[np.abs(rows[:, None] - ry[None, :]) < w / 2] = 11
        rx = k * 1700 + 800 + 150 * np.sin(rows / 2500 + k)
        for r, c in enumerate(rx):
            cls[r, max(int(np.ceil(c - w / 2)), 0) : max(int(np.ceil(c + w / 2)), 0)] = 11
    # a 14 m river; the coast: 40 m of beach (19) then sea (41); nodata beyond the region (north-west)
    river = size * 0.4 + 400 * np.sin(rows / 1800) + 120 * np.sin(rows / 330)
    coast = size * 0.85 + 300 * np.sin(rows / 2000)
    for r in range(nrows):
        cls[r, int(river[r]) - 7 : int(river[r]) + 7] = 12
        cls[r, int(coast[r]) :] = 19
        cls[r, int(coast[r]) + 40 :] = 41
        cls[r, : max(int(size * 0.08 - rows[r]), 0)] = 0
    return cls


def write_scene(path: Path, n: int) -> None:
    """A one-band n x n scene on the 10 m grid: only its grid is used (tiles left sparse)."""
    profile = dict(
        driver="GTiff", width=n, height=n, count=1, dtype="uint16", crs="EPSG:32631", nodata=0,
        transform=from_origin(X0, Y0, 10.0, 10.0), tiled=True, compress="DEFLATE", sparse_ok=True,
    )  # fmt: skip
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile):
        pass


def make_inputs(size: int) -> tuple[Path, Path]:
    """The cached mask of ``size`` x ``size`` 1 m pixels and its 10 m scene (generated if missing)."""
    OUT.mkdir(parents=True, exist_ok=True)
    mask, scene = OUT / f"mask_{size}_v{GENERATOR}.tif", OUT / f"scene_{size}.tif"
    if not mask.exists():
        t = time.perf_counter()
        profile = dict(
            driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:32631",
            transform=from_origin(X0, Y0, 1.0, 1.0), nodata=0, tiled=True, blockxsize=512,
            blockysize=512, compress="DEFLATE", bigtiff="IF_SAFER", num_threads="ALL_CPUS",
        )  # fmt: skip
        with atomic_path(mask) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, size, 512):
                n = min(512, size - r0)
                dst.write(mask_strip(r0, n, size), 1, window=Window(0, r0, size, n))
        mb = mask.stat().st_size / 2**20
        print(f"generated {mask.name} ({size} x {size}, {mb:.0f} MB) in {time.perf_counter() - t:.0f} s")
    if not scene.exists():
        write_scene(scene, size // 10)
    return mask, scene


def make_huge() -> tuple[Path, Path]:
    """A sparse 300000 x 300000 mask (one patch of real structure) and its 30000 x 30000 scene."""
    mask, scene = OUT / f"huge_mask_v{GENERATOR}.tif", OUT / "huge_scene.tif"
    n, small = 300_000, make_inputs(20000)[0]
    if not mask.exists():
        profile = dict(
            driver="GTiff", width=n, height=n, count=1, dtype="uint8", crs="EPSG:32631",
            transform=from_origin(X0, Y0, 1.0, 1.0), nodata=0, tiled=True, blockxsize=512, blockysize=512,
            compress="DEFLATE", bigtiff="YES", sparse_ok=True,
        )  # fmt: skip
        with atomic_path(mask) as tmp, rasterio.open(tmp, "w", **profile) as dst, rasterio.open(small) as src:
            for r in range(0, 10240, 512):
                dst.write(
                    src.read(1, window=Window(0, r, 20000, 512)),
                    1,
                    window=Window(140000, 140000 + r, 20000, 512),
                )
    if not scene.exists():
        write_scene(scene, n // 10)
    return mask, scene


# ---------------------------------------------------------------------------------------------------
# Timing a child process: wall time and its own peak memory


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall seconds, peak resident memory in MB, CPU seconds) of that child alone."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def commands(method: str, mask: Path, scene: Path, size: int) -> dict[str, list[str]]:
    """Our run and gdalwarp's two, on the same grid with the same output settings."""
    n = size // 10
    ours = [sys.executable, str(ROOT / "rescale_mask.py"), "--mask", str(mask), "--like", str(scene)]
    ours += ["--out", str(OUT / f"ours_{method}_{size}.tif"), "--method", method]
    ref = "mode" if method == "weighted" else method
    warp = [shutil.which("gdalwarp") or "gdalwarp", "-q", "-overwrite", "-r", ref]
    warp += ["-te", str(X0), str(Y0 - 10 * n), str(X0 + 10 * n), str(Y0), "-ts", str(n), str(n)]
    warp += ["-co", "TILED=YES", "-co", "BLOCKXSIZE=512", "-co", "BLOCKYSIZE=512", "-co", "COMPRESS=DEFLATE"]
    out = str(OUT / f"gdal_{ref}_{size}.tif")
    multi = ["-multi", "-wo", "NUM_THREADS=ALL_CPUS"]
    return {
        "ours": ours,
        "gdalwarp": [*warp, str(mask), out],
        "gdalwarp -multi": [*warp, *multi, str(mask), out],
    }


def near_check(size: int) -> str:
    """Near picks one pixel, so ours must equal gdalwarp's with the remap applied afterwards."""
    lut, _ = remap_lut()
    with rasterio.open(OUT / f"ours_near_{size}.tif") as a, rasterio.open(OUT / f"gdal_near_{size}.tif") as b:
        diff = sum(
            int(np.count_nonzero(a.read(1, window=w) != lut[b.read(1, window=w)]))
            for _, w in a.block_windows(1)
        )
    return f"near {size}: {diff} pixels differ from remap(gdalwarp -r near)"


def main() -> None:
    p = ArgumentParser.for_script(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 40000], help="mask sizes (pixels a side)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best time counts")
    p.add_argument("--methods", nargs="+", default=["near", "mode", "weighted"], help="methods to time")
    p.add_argument("--huge", action="store_true", help="also: peak memory on a 300000 x 300000 mask")
    args = p.parse_args()
    if shutil.which("gdalwarp") is None:
        raise SystemExit("gdalwarp not found (Debian gdal-bin): nothing to compare with")
    inputs = {size: make_inputs(size) for size in args.sizes}
    best: dict[tuple[int, str, str], tuple[float, float, float]] = {}  # best time, peak MB, best CPU
    for size in args.sizes:
        for method in args.methods:
            cmds = commands(method, *inputs[size], size)
            if method == "weighted" and (size, "mode", "gdalwarp") in best:
                cmds = {"ours": cmds["ours"]}  # set against the gdalwarp -r mode runs already made
                for who in ("gdalwarp", "gdalwarp -multi"):
                    best[(size, method, who)] = best[(size, "mode", who)]
            for _ in range(args.repeat):
                for who, cmd in cmds.items():
                    s, mb, cpu = measure(cmd)
                    old = best.get((size, method, who), (np.inf, 0.0, np.inf))
                    best[(size, method, who)] = (min(old[0], s), max(old[1], mb), min(old[2], cpu))
                    print(
                        f"  {size} {method:<8} {who:<16} {s:7.2f} s {cpu:7.2f} s CPU {mb:7.0f} MB", flush=True
                    )
    print(report(best, args.sizes, args.methods))
    if "near" in args.methods:
        for size in args.sizes:
            print(near_check(size))
    if args.huge:
        mask, scene = make_huge()
        out = OUT / "huge_out.tif"
        cmd = [sys.executable, str(ROOT / "rescale_mask.py"), "--mask", str(mask), "--like", str(scene)]
        s, mb, cpu = measure([*cmd, "--out", str(out), "--method", "mode"])
        out.unlink()
        print(f"300000 x 300000 mask -> 30000 x 30000 (mode): {s:.1f} s, {cpu:.1f} s CPU, peak {mb:.0f} MB")


def report(best: dict, sizes: list[int], methods: list[str]) -> str:
    """The markdown tables: per size and method, then growth from the smallest to the largest size.

    Times are the best of the rounds; the gdalwarp columns take the faster of its two runs. CPU
    seconds (user + system of the child) are less disturbed than wall time when other work shares
    the cores.
    """
    refs = ("gdalwarp", "gdalwarp -multi")
    lines = [
        "",
        "| mask | method | ours s | gdalwarp s | gdalwarp -multi s | time ratio | ours CPU s "
        "| gdalwarp CPU s | CPU ratio | ours MB | gdalwarp MB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for m in methods:
            to, mo, co = best[(size, m, "ours")]
            (tg, mg, cg), (tm, mm, cm) = (best[(size, m, w)] for w in refs)
            t_ref, c_ref, m_ref = min(tg, tm), min(cg, cm), max(mg, mm)
            name = f"{m} (vs mode)" if m == "weighted" else m
            lines.append(
                f"| {size}² | {name} | {to:.2f} | {tg:.2f} | {tm:.2f} | {to / t_ref:.2f} | {co:.2f} "
                f"| {c_ref:.2f} | {co / c_ref:.2f} | {mo:.0f} | {m_ref:.0f} | {mo / m_ref:.2f} |"
            )
    if len(sizes) > 1:
        a, b = min(sizes), max(sizes)
        lines += [
            "",
            f"Growth from {a}² to {b}² ({(b / a) ** 2:.0f}x the pixels):",
            "",
            "| method | ours time | gdalwarp time | ours memory | gdalwarp memory |",
            "|---|---|---|---|---|",
        ]
        for m in methods:
            o_a, o_b = best[(a, m, "ours")], best[(b, m, "ours")]
            g_t = [min(best[(size, m, w)][0] for w in refs) for size in (a, b)]
            g_m = [max(best[(size, m, w)][1] for w in refs) for size in (a, b)]
            growth = (o_b[0] / o_a[0], g_t[1] / g_t[0], o_b[1] / o_a[1], g_m[1] / g_m[0])
            lines.append(f"| {m} | " + " | ".join(f"{g:.2f}x" for g in growth) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
