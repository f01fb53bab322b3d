"""Map a whole scene with a trained checkpoint: a land-cover GeoTIFF on the scene's grid and a PNG preview.

Reads: a checkpoint (train.py's best.pt) and one scene; for a model trained on stacked scenes, every
scene it was trained on, in the training order (checked against the checkpoint's band descriptions,
``s2_april:B4`` ...; the file names without .tif must be the scene names the checkpoint lists).
Writes: ``--out MAP.tif``: uint8 codes 1..12 on the scene's exact grid (CRS, transform, size), nodata 0
where the input has no data (every band 0, in every scene), tiled 512 x 512, DEFLATE, the class colour
table, the class names (band metadata, and ``MAP.tif.aux.xml`` category names, which QGIS and GDAL show
as labels), internal overviews made with mode resampling; and ``MAP.png``, a preview with a legend of
the classes present (unless --no-preview). Everything is written under a ``.partial`` name first: a
MAP.tif that exists is complete, overviews and preview included.

The scene is never read whole. It is read in chunks of one row of windows by 4096 columns (one thread,
in order; GDAL decodes a chunk's blocks in parallel), cut into windows of --window pixels at least
--overlap pixels apart (--workers threads find their valid pixels), normalised like the training tiles
on the model's device and predicted in batches. The class probabilities of the windows are blended with
a weight that ramps linearly to zero over the --overlap pixels at each window edge, so no seam shows,
and each finished row of windows is written as it comes, in whole rows of output blocks. Memory: a chunk
per scene (42 MB for 10 bands), a few batches of windows, the model, the blended sums of the overlap
rows across the scene's width (13 float16 values per pixel of those rows: 50 MB for 30000 px and
--overlap 64), a row of output blocks (uint8) and a fixed 256 MB GDAL cache. Only the overlap sums and
the output row depend on the scene, and only on its width.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

import inference
from colormap import CLASSES, CODES, NODATA, NUM_CLASSES, PALETTE, gdal_colour_table, legend_handles
from common import (
    ArgumentParser,
    atomic_path,
    atomic_write_text,
    check_range,
    check_written,
    fail,
    open_raster,
    ordered_map,
    progress,
    read_pixels,
    run_main,
)
from geo import MAP_BLOCK, Grid, map_profile
from layout import RAW
from stats import Normalize
from tiles import valid_pixels

OVERVIEW_MIN = 256  # overviews are added until the smallest fits in this many pixels
GDAL_CACHE_MB = 256  # a fixed GDAL block cache: reading and writing never hold more than this
CHUNK = 4096  # columns read at once (see SceneReader)


# ---------------------------------------------------------------------------------------------
# Checking the input


def scene_prefixes(bands: Sequence[str]) -> list[str]:
    """The scene names of a stacked checkpoint's bands (``s2_april:B4`` -> ``s2_april``), in order.

    Empty for a single-scene checkpoint (band names without a ``scene:`` part).
    """
    if not bands or not all(":" in b for b in bands):
        return []
    return list(dict.fromkeys(b.split(":", 1)[0] for b in bands))


def check_scenes(bands: Sequence[str], scenes: Sequence[tuple[Path, Sequence[str | None]]]) -> None:
    """Fail unless the scenes (path, band descriptions) are the ones the checkpoint's ``bands`` describe.

    A single-scene checkpoint takes one scene with its bands; a stacked one takes its scenes, named as in
    the checkpoint (file name without .tif), in the same order, each with its bands.
    """
    prefixes = scene_prefixes(bands)
    stems = [p.stem for p, _ in scenes]
    if not prefixes:
        if len(scenes) != 1:
            fail(
                f"the checkpoint takes one scene ({len(bands)} bands), got {len(scenes)}: "
                f"{' '.join(str(p) for p, _ in scenes)}"
            )
        inference.check_bands(bands, scenes[0][1], f"scene {scenes[0][0]}")
        return
    order = " ".join(f"{p}.tif" for p in prefixes)
    if len(scenes) != len(prefixes):
        fail(
            f"the checkpoint stacks {len(prefixes)} scenes ({order}, in that order), got {len(scenes)}: "
            f"{' '.join(str(p) for p, _ in scenes)}"
        )
    if stems != prefixes:
        if sorted(stems) == sorted(prefixes):
            fail(
                f"scenes given in the wrong order: {' '.join(stems)}; "
                f"the checkpoint stacks {order} in that order"
            )
        k = next(i for i, (s, p) in enumerate(zip(stems, prefixes, strict=True)) if s != p)
        fail(
            f"scene {scenes[k][0]} is not the checkpoint's scene {k + 1} ({prefixes[k]}.tif); it stacks "
            f"{order}, in that order"
        )
    for (path, descriptions), prefix in zip(scenes, prefixes, strict=True):
        expected = [b.split(":", 1)[1] for b in bands if b.split(":", 1)[0] == prefix]
        inference.check_bands(expected, descriptions, f"scene {path}")


def check_grids(scenes: Sequence[rasterio.io.DatasetReader]) -> None:
    """Fail unless every scene has the first scene's CRS, transform and size, and nodata 0 (or none)."""
    first, grid = scenes[0], Grid.of(scenes[0])
    for src in scenes:
        if src.nodata not in (None, 0):
            fail(f"scene nodata is {src.nodata:g}, this pipeline expects 0 (all bands 0): {src.name}")
        if not Grid.of(src).matches(grid):
            fail(f"scene is not on the grid of {first.name} ({Grid.of(src)} vs {grid}): {src.name}")


# ---------------------------------------------------------------------------------------------
# Sliding windows and blending


def window_starts(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels covering ``size`` pixels, overlapping >= ``overlap``.

    The windows are spread evenly from 0 to ``size - window`` (a window never leaves the scene, so every
    window has the same size); a scene smaller than a window gets one window of the scene's size.
    """
    if size <= window:
        return [0]
    n = math.ceil((size - window) / (window - overlap)) + 1
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def ramp(n: int, overlap: int) -> torch.Tensor:
    """(n,) weights rising linearly from the window edge to 1 at ``overlap`` pixels in, then 1."""
    k = torch.arange(n, dtype=torch.float32)
    edge = torch.minimum(k + 0.5, n - k - 0.5)
    return (edge / max(overlap, 1)).clamp(max=1.0)


class Blender:
    """Blends window probabilities, given in raster order, into finished rows of class codes.

    Holds the weighted sums of the columns a window shares with the next one (``left``) and of the rows
    a row of windows shares with the next row (``carry``, across the scene's width).
    Pixels are finished once no later window covers them; their code is the argmax of the summed
    weighted probabilities (the sum of weights is the same for every class, so it need not be divided).
    """

    def __init__(
        self, height: int, width: int, rows: list[int], cols: list[int], win: tuple[int, int], overlap: int
    ):
        self.width = width
        self.rows, self.cols = rows, cols
        self.row_ends = [*rows[1:], height]  # row i of windows finishes the scene rows [rows[i], row_ends[i])
        self.col_ends = [*cols[1:], width]
        self.win = win
        self.overlap = overlap
        self.weight: torch.Tensor | None = None
        self.carry: torch.Tensor | None = None
        self.counts = np.zeros(NUM_CLASSES, dtype=np.int64)  # pixels of each code in the map

    def add(self, i: int, j: int, probs: torch.Tensor, valid: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Add window (i, j): probs (13, h, w) on the model's device, valid (h, w) bool.

        Returns ``(row0, codes)`` when the window ends a row of windows: the finished rows from ``row0``,
        (n, width) uint8 with nodata 0.
        """
        h, w = self.win
        if self.weight is None or self.weight.device != probs.device:
            self.weight = ramp(h, self.overlap).to(probs.device)[:, None] * ramp(w, self.overlap).to(
                probs.device
            )
        r0, r1 = self.rows[i], self.row_ends[i]
        c0, c1 = self.cols[j], self.col_ends[j]
        last_row = i == len(self.rows) - 1
        if j == 0:  # a new row of windows
            self.left = None
            self.strip = np.zeros((r1 - r0, self.width), dtype=np.uint8)
            self.next_carry = (
                None
                if last_row
                else torch.zeros(
                    (probs.shape[0], r0 + h - r1, self.width), dtype=torch.float16, device=probs.device
                )
            )
        acc = probs * self.weight
        if self.left is not None:  # the sums the previous window left on the columns shared with this one
            acc[:, :, : self.left.shape[2]] += self.left
        # columns [c0, c1) of this row of windows are finished: no later window of the row covers them
        chunk = acc[:, :, : c1 - c0]
        if self.carry is not None:  # the sums the row of windows above left on the rows shared with it
            chunk[:, : self.carry.shape[1]] += self.carry[:, :, c0:c1].float()
        codes = inference.codes_from_probabilities(chunk[None, :, : r1 - r0])[0].cpu().numpy()
        self.strip[:, c0:c1] = np.where(valid[: r1 - r0, : c1 - c0], codes, NODATA)
        if self.next_carry is not None:
            self.next_carry[:, :, c0:c1] = chunk[:, r1 - r0 :].half()
        self.left = acc[:, :, c1 - c0 :]
        if j < len(self.cols) - 1:
            return None
        self.carry = self.next_carry
        self.counts += np.bincount(self.strip.ravel(), minlength=NUM_CLASSES)
        return r0, self.strip


class SceneReader:
    """Reads windows of every scene, bands stacked in the given order, in raster order.

    GDAL decodes a compressed block whole, and a window is rarely aligned with the blocks, so each call
    reads a chunk of CHUNK columns of the window's rows once and serves the windows inside it from
    memory: a block is decoded about twice (once per row of windows that crosses it), not four times.
    Memory: one chunk per scene (10 bands x 512 rows x 4096 columns uint16: 42 MB). Not thread-safe:
    one thread reads (``prefetch``); GDAL_NUM_THREADS lets GDAL decode a chunk's blocks in parallel.
    """

    def __init__(self, paths: Sequence[Path], chunk: int = CHUNK):
        self.paths, self.chunk = list(paths), chunk
        self.handles: list[rasterio.io.DatasetReader] | None = None
        self.buf: np.ndarray | None = None
        self.at = (-1, -1, -1, -1)  # rows and columns of the chunk in ``buf``: r0, r1, c0, c1

    def __call__(self, r: int, c: int, h: int, w: int) -> np.ndarray:
        """(C, h, w) bands of the window at row r, column c, as stored (uint16)."""
        r0, r1, c0, c1 = self.at
        if not (r0 == r and r1 == r + h and c0 <= c and c + w <= c1):
            if self.handles is None:
                self.handles = [rasterio.open(p) for p in self.paths]
            width = self.handles[0].width
            c0, c1 = c, max(c + w, min(width, c + self.chunk))
            what = f"rows {r}..{r + h - 1}, columns {c0}..{c1 - 1} of scene"  # a damaged block: one line
            window = Window(c0, r, c1 - c0, h)
            self.buf = np.concatenate([read_pixels(src, what, window=window) for src in self.handles])
            self.at = (r, r + h, c0, c1)
        return self.buf[:, :, c - c0 : c - c0 + w]

    def close(self) -> None:
        for src in self.handles or []:
            src.close()


def prefetch(items: Sequence, read: Callable, workers: int, depth: int) -> Iterator:
    """``(bands, valid pixels)`` of every window ``read(*item)``, in order, read at most ``depth`` ahead.

    ``read`` runs in one thread, in the order of the items (it keeps state); ``valid_pixels`` on
    ``workers`` threads. With ``workers`` 0 everything runs in the caller's thread.
    """
    raws = ordered_map(lambda item: read(*item), items, min(workers, 1), depth)
    try:
        yield from ordered_map(lambda raw: (raw, valid_pixels(raw)), raws, workers, workers + 1)
    finally:
        raws.close()  # the prepare threads stopped first, then the reader


def predict_scene(
    net: torch.nn.Module,
    read: Callable[[int, int, int, int], np.ndarray],
    stats: dict,
    height: int,
    width: int,
    write: Callable[[int, np.ndarray], None],
    *,
    window: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    tta: bool = False,
    device: torch.device | str = "cpu",
    workers: int = 2,
    show_progress: bool = True,
) -> np.ndarray:
    """Predict a ``height`` x ``width`` scene window by window; ``write(row0, codes)`` gets finished rows.

    ``read(r, c, h, w)`` returns a window's bands as stored, called in raster order from one thread;
    ``workers`` threads find each window's valid pixels, and each batch crosses to ``device`` as stored
    and is normalised there with the checkpoint's ``stats`` (mean, std), as in training. Returns the
    pixel count of every code 0..12 in the map.
    """
    device = torch.device(device)
    win = (min(window, height), min(window, width))
    rows, cols = window_starts(height, win[0], overlap), window_starts(width, win[1], overlap)
    windows = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    blender = Blender(height, width, rows, cols, win, overlap)
    norm = Normalize(stats, device)
    items = [(rows[i], cols[j], *win) for i, j in windows]
    loads = prefetch(items, read, workers, 2 * batch_size + workers)
    bar = progress(total=len(windows), desc="predicting", unit="window", disable=not show_progress)
    with bar, contextlib.closing(loads):  # on an error: the threads stop, then the bar ends
        for b in range(0, len(windows), batch_size):
            batch = windows[b : b + batch_size]
            raws, valids = zip(*(next(loads) for _ in batch), strict=True)
            x = norm(torch.from_numpy(np.stack(raws)).to(device, non_blocking=True))
            probs = inference.class_probabilities(net, x, tta)
            for (i, j), p, valid in zip(batch, probs, valids, strict=True):
                done = blender.add(i, j, p, valid)
                if done is not None:
                    write(*done)
            bar.update(len(batch))
    return blender.counts


class BlockWriter:
    """Writes finished rows to a GeoTIFF in whole rows of blocks (a compressed block is written once)."""

    def __init__(self, dst: rasterio.io.DatasetWriter, block: int = MAP_BLOCK):
        self.dst, self.block = dst, block
        self.row0, self.buf = 0, np.zeros((0, dst.width), dtype=np.uint8)

    def __call__(self, row0: int, codes: np.ndarray) -> None:
        assert row0 == self.row0 + len(self.buf), "rows must come in order"
        self.buf = np.concatenate([self.buf, codes]) if len(self.buf) else codes.copy()
        end = self.row0 + len(self.buf)
        upto = end if end == self.dst.height else (end // self.block) * self.block
        if upto > self.row0:
            n = upto - self.row0
            self.dst.write(self.buf[:n], 1, window=Window(0, self.row0, self.dst.width, n))
            self.row0, self.buf = upto, self.buf[n:]


# ---------------------------------------------------------------------------------------------
# The map file, its class names and its preview


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels 2, 4, 8 ... until the smallest fits in OVERVIEW_MIN pixels (at least one level)."""
    factors = [2]
    while max(height, width) / factors[-1] > OVERVIEW_MIN:
        factors.append(factors[-1] * 2)
    return factors


def category_names_xml() -> str:
    """GDAL's PAM side-car (MAP.tif.aux.xml) naming the classes: QGIS labels the colour table with it."""
    cats = "\n".join(f"      <Category>{escape(CLASSES[c][0])}</Category>" for c in range(NUM_CLASSES))
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n'
        f"{cats}\n    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )


def write_preview(map_path: Path, out_png: Path, counts: np.ndarray, title: str, size: int = 1024) -> None:
    """A PNG of the map (read decimated from its overviews) in the class colours, legend with areas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with rasterio.open(map_path) as src:
        scale = max(src.height, src.width) / size
        shape = (
            (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 else src.shape
        )
        codes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    rgba = np.concatenate(
        [PALETTE[codes], np.where(codes == NODATA, 0, 255).astype(np.uint8)[..., None]], axis=2
    )
    total = max(int(counts[1:].sum()), 1)
    present = [c for c in CODES if counts[c] > 0]
    handles = legend_handles(present)
    for hd, c in zip(handles, present, strict=True):
        hd.set_label(f"{hd.get_label()} ({100 * counts[c] / total:.1f}%)")
    fig, ax = plt.subplots(
        figsize=(7.0, min(10.0, max(2.0, 7.0 * shape[0] / shape[1]))), layout="constrained"
    )
    ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def write_map(
    net: torch.nn.Module,
    scene_paths: Sequence[Path],
    stats: dict,
    out: Path,
    *,
    window: int,
    overlap: int,
    batch_size: int,
    tta: bool,
    device: torch.device,
    workers: int,
    preview: bool,
    tags: dict,
) -> np.ndarray:
    """Predict the scenes into ``out`` (and its preview and category names), atomically; class counts."""
    reader = SceneReader(scene_paths)
    with rasterio.open(scene_paths[0]) as src:
        profile = map_profile(Grid.of(src), NODATA)
    env = rasterio.Env(
        GDAL_CACHEMAX=GDAL_CACHE_MB,
        GDAL_NUM_THREADS=max(workers, 1),  # decoding a chunk's blocks in parallel
        COMPRESS_OVERVIEW="DEFLATE",
        GDAL_TIFF_OVR_BLOCKSIZE=MAP_BLOCK,
    )
    with env, atomic_path(out) as tmp:
        try:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write_colormap(1, gdal_colour_table())
                dst.set_band_description(1, "land-cover class code")
                dst.update_tags(**tags)
                dst.update_tags(1, **{f"CLASS_{c}": CLASSES[c][0] for c in range(NUM_CLASSES)})
                counts = predict_scene(
                    net,
                    reader,
                    stats,
                    profile["height"],
                    profile["width"],
                    BlockWriter(dst),
                    window=window,
                    overlap=overlap,
                    batch_size=batch_size,
                    tta=tta,
                    device=device,
                    workers=workers,
                )
                dst.build_overviews(overview_factors(dst.height, dst.width), Resampling.mode)
                dst.update_tags(ns="rio_overview", resampling="mode")
        finally:
            reader.close()
        check_written(tmp)  # a full disk leaves a short file without an error from GDAL
        if preview:
            title = f"{out.name}: {' + '.join(p.name for p in scene_paths)}"
            write_preview(tmp, out.with_suffix(".png"), counts, title)
        atomic_write_text(out.with_name(out.name + ".aux.xml"), category_names_xml())
    return counts


def area_table(counts: np.ndarray, pixel_area_m2: float) -> str:
    """Area of every class present, in hectares and percent of the mapped pixels."""
    total = max(int(counts[1:].sum()), 1)
    lines = [f"{'code':>4}  {'class':<42} {'hectares':>14} {'%':>6}"]
    for c in CODES:
        if counts[c]:
            ha = counts[c] * pixel_area_m2 / 1e4
            lines.append(f"{c:>4}  {CLASSES[c][0][:42]:<42} {ha:>14,.1f} {100 * counts[c] / total:>6.2f}")
    lines.append(f"nodata pixels: {int(counts[NODATA]):,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def default_images(bands: Sequence[str]) -> list[Path]:
    """The scenes of make_demo_data.py the checkpoint takes: data/raw/<scene>.tif (April if single)."""
    return [RAW / f"{p}.tif" for p in scene_prefixes(bands)] or [RAW / "s2_april.tif"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser.for_script(__doc__)
    parser.add_argument(
        "--checkpoint", default=inference.DEFAULT_CHECKPOINT, help="checkpoint written by train.py"
    )
    parser.add_argument(
        "--image",
        default=argparse.SUPPRESS,
        nargs="+",
        type=Path,
        help="the scene(s) to map; for a stacked model every scene it was trained on, in that order "
        "(default: data/raw/<scene>.tif for each scene the checkpoint names, else data/raw/s2_april.tif)",
    )
    parser.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        type=Path,
        help="the map to write (.tif); the preview goes beside it as .png "
        "(default: results/<run folder of the checkpoint>/landcover_<scene(s)>.tif)",
    )
    parser.add_argument("--window", type=int, default=512, help="window size in pixels (square)")
    parser.add_argument(
        "--overlap", type=int, default=64, help="pixels shared by neighbouring windows (blended)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per model call")
    parser.add_argument("--tta", action="store_true", help="average predictions over 4 flips (4x slower)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads preparing windows (their valid pixels; 0: all in the main thread)",
    )
    parser.add_argument("--no-preview", action="store_true", help="do not write the PNG preview")
    args = parser.parse_args(argv)
    check_range("--window", args.window, 32)
    check_range("--overlap", args.overlap, 0)
    if args.overlap >= args.window:
        fail(f"--overlap must be smaller than --window ({args.window}), got {args.overlap}")
    check_range("--batch-size", args.batch_size, 1)
    check_range("--workers", args.workers, 0)
    return args


def check_inputs(bands: Sequence[str], images: Sequence[Path]) -> tuple[int, int, float]:
    """Fail unless the scenes are the checkpoint's, on one grid; their height, width and pixel area (m²)."""
    scenes = [open_raster(p, "scene") for p in images]
    try:
        check_scenes(bands, [(Path(s.name), s.descriptions) for s in scenes])
        check_grids(scenes)
        return scenes[0].height, scenes[0].width, abs(scenes[0].transform.a * scenes[0].transform.e)
    finally:
        for s in scenes:
            s.close()


def output_path(args: argparse.Namespace, images: Sequence[Path]) -> Path:
    """``--out``, or the default beside the checkpoint's run; it must be a .tif that is not an input."""
    stem = "+".join(p.stem for p in images)
    out = getattr(args, "out", None) or inference.results_folder(args.checkpoint) / f"landcover_{stem}.tif"
    if out.suffix.lower() not in (".tif", ".tiff"):
        fail(f"--out must end with .tif or .tiff (the preview goes beside it as .png): {out}")
    if any(out.resolve() == Path(p).resolve() for p in images):
        fail(f"--out would overwrite an input scene: {out}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = inference.pick_device(args.device)
    net, ckpt = inference.load_model(args.checkpoint, device)  # a broken checkpoint fails first
    images = getattr(args, "image", None) or default_images(ckpt["bands"])
    height, width, pixel_area = check_inputs(ckpt["bands"], images)
    out = output_path(args, images)

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tags = {
        "checkpoint": str(args.checkpoint),
        "scenes": " ".join(str(p) for p in images),
        "window": str(args.window),
        "overlap": str(args.overlap),
        "tta": str(args.tta),
    }
    counts = write_map(
        net,
        images,
        ckpt["stats"],
        out,
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        tta=args.tta,
        device=device,
        workers=args.workers,
        preview=not args.no_preview,
        tags=tags,
    )
    print(area_table(counts, pixel_area))
    print(f"wrote {out} ({width} x {height} px, {time.perf_counter() - t0:.1f} s)")
    if not args.no_preview:
        print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(run_main(main))
