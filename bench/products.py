"""Benchmark of the map products against GDAL: generalize_map.py against gdal_sieve.py, vectorize_map.py
against gdal_polygonize.py (GeoPackage on both sides), and the cost of writing a map as a COG.

Reads nothing of the repository's data. Writes only under bench/out/products/ (git-ignored): generated
class maps (uint8, nodata 0, 512 tiles, DEFLATE) of each ``--sizes`` side, written strip by strip: 40-pixel
parcels of random classes with ragged edges (a hashed jitter of up to 12 pixels, so borders shed
fragments of every size) and 2 % salt noise (single-pixel specks, as a 10 m classification has), nodata
in one corner. Each command runs as a child process, ``--repeat`` times, interleaved with the reference;
the best wall time, the CPU time and the peak memory (ru_maxrss) of each child are printed, with the
ratios. The sieve reference is ``gdal_sieve.py -st 50 -4`` (the MMU of 0.5 ha at 10 m) writing a plain
GeoTIFF (it cannot compress or add overviews: ours does both); the polygonize reference runs on our
generalised map (what one vectorizes) with ``gdal_polygonize.py -f GPKG``; both are checked equal to
ours (the same pixels; the same number of polygons). The COG cost: predict.py's raster writing
(``landcover.rasters``) of the same map as a tiled GeoTIFF with internal overviews, against the same
plus the COG layout.

    .venv/bin/python bench/products.py [--sizes 6000 12000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
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
from landcover.common import ArgumentParser, atomic_path  # noqa: E402

OUT = ROOT / "bench" / "out" / "products"
GDAL_PYTHON = "/usr/bin/python3"  # Debian's python3-gdal: gdal_sieve.py and gdal_polygonize.py
PY = sys.executable


def _hash(a, b, salt: int) -> np.ndarray:
    """Uniform [0, 1) floats from integer pairs: a stateless hash, so strips are independent."""
    h = np.asarray(a).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.asarray(b).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= np.uint64(salt * 0x165667B1)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def map_strip(r0: int, rows: int, size: int) -> np.ndarray:
    """Rows r0..r0+rows of the generated class map (see the module docstring)."""
    y, x = np.mgrid[r0 : r0 + rows, 0:size]
    jy = (_hash(y // 4, x // 4, 1) - 0.5) * 24
    jx = (_hash(y // 4, x // 4, 2) - 0.5) * 24
    cy, cx = ((y + jy) // 40).astype(np.int64), ((x + jx) // 40).astype(np.int64)
    codes = (1 + (_hash(cy, cx, 3) * 12).astype(np.int64)).astype(np.uint8)
    salt = _hash(y, x, 4) < 0.02
    codes[salt] = (1 + (_hash(y, x, 5)[salt] * 12)).astype(np.uint8)
    codes[(y < size // 10) & (x < size // 10)] = 0
    return codes


def make_map(size: int) -> Path:
    """The generated map of ``size`` x ``size`` (cached)."""
    path = OUT / f"map_{size}.tif"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=0,
                   crs="EPSG:32631", transform=from_origin(400000, 4600000, 10, 10), tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate")  # fmt: skip
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            dst.write(map_strip(r, h, size), 1, window=Window(0, r, size, h))
    return path


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall seconds, peak resident memory in MB, CPU seconds) of that child alone."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


COG_WRITE = """
import sys, numpy as np, rasterio, contextlib
sys.path.insert(0, {root!r})
from landcover.rasters import write_class_raster
with rasterio.open({src!r}) as src:
    write_class_raster(src, {dst!r}, cog={cog})
"""


def commands(size: int, m: Path) -> dict[str, list[str]]:
    """Each measured command on the map of ``size``."""
    d = OUT / str(size)
    d.mkdir(exist_ok=True)
    mmu = d / "ours_mmu.tif"
    sieve = ["-q", "-st", "50", "-4", m, d / "gdal_mmu.tif"]
    polygonize = ["-q", "-f", "GPKG", mmu, d / "gdal.gpkg", "patches", "code"]

    def write(name: str, cog: bool) -> list:
        return [PY, "-c", COG_WRITE.format(root=str(ROOT), src=str(m), dst=str(d / name), cog=cog)]

    return {
        "generalize_map.py": [
            PY,
            "generalize_map.py",
            "--map",
            m,
            "--mmu",
            "0.5",
            "--out",
            mmu,
            "--no-preview",
        ],
        "gdal_sieve.py": [GDAL_PYTHON, "/usr/bin/gdal_sieve.py", *sieve],
        "vectorize_map.py": [PY, "vectorize_map.py", "--map", mmu, "--out", d / "ours.gpkg"],
        "gdal_polygonize.py": [GDAL_PYTHON, "/usr/bin/gdal_polygonize.py", *polygonize],
        "GeoTIFF write": write("plain.tif", False),
        "COG write": write("cog.tif", True),
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 12000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--make", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_map(args.make)
        return
    best: dict[tuple[int, str], tuple[float, float, float]] = {}
    for size in args.sizes:  # the maps are made by a child: a child forked from a large parent counts
        # the parent's memory in its own peak (ru_maxrss)
        subprocess.run([PY, __file__, "--make", str(size)], check=True)
        m = make_map(size)
        for _ in range(args.repeat):
            for name, cmd in commands(size, m).items():
                if name == "gdal_polygonize.py":
                    (OUT / str(size) / "gdal.gpkg").unlink(missing_ok=True)
                if name == "vectorize_map.py":
                    (OUT / str(size) / "ours.gpkg").unlink(missing_ok=True)
                t, mb, cpu = measure([str(c) for c in cmd])
                key = (size, name)
                best[key] = min(best.get(key, (t, mb, cpu)), (t, mb, cpu))
                print(f"{size}² {name}: {t:.1f} s, {cpu:.1f} CPU s, {mb:.0f} MB", flush=True)
        print(verify(size), flush=True)
    print(report(best, args.sizes))


def verify(size: int) -> str:
    """The sieved maps equal; the polygon counts equal."""
    import pyogrio

    d = OUT / str(size)
    with rasterio.open(d / "ours_mmu.tif") as a, rasterio.open(d / "gdal_mmu.tif") as b:
        same = all(
            np.array_equal(a.read(1, window=Window(0, r, size, min(512, size - r))),
                           b.read(1, window=Window(0, r, size, min(512, size - r))))
            for r in range(0, size, 512)
        )  # fmt: skip
    ours = pyogrio.read_info(d / "ours.gpkg", layer="ours_mmu")["features"]
    theirs = pyogrio.read_info(d / "gdal.gpkg", layer="patches")["features"]
    polygons = f"polygons ours {ours:,}, gdal_polygonize {theirs:,}"
    return f"{size}²: sieved pixels equal to gdal_sieve.py: {same}; {polygons}"


def report(best: dict, sizes: list[int]) -> str:
    """The Markdown table of the README: ours, the reference, ratios; memory growth."""
    pairs = [("generalize_map.py", "gdal_sieve.py"), ("vectorize_map.py", "gdal_polygonize.py"),
             ("COG write", "GeoTIFF write")]  # fmt: skip
    lines = ["| map | ours | reference | ours s | ref s | time ratio | CPU ratio | ours MB | ref MB |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in sizes:
        for ours, ref in pairs:
            (t, mb, cpu), (rt, rmb, rcpu) = best[(size, ours)], best[(size, ref)]
            lines.append(f"| {size}² | {ours} | {ref} | {t:.1f} | {rt:.1f} | {t / rt:.2f} | {cpu / rcpu:.2f} "
                         f"| {mb:.0f} | {rmb:.0f} |")  # fmt: skip
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        for ours, ref in pairs:
            g = best[(b, ours)][1] / best[(a, ours)][1]
            rg = best[(b, ref)][1] / best[(a, ref)][1]
            lines.append(f"peak memory {b}² / {a}²: {ours} {g:.2f}x, {ref} {rg:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
