"""Map a whole scene with a trained checkpoint: a land-cover GeoTIFF on the scene's grid, the confidence of
every pixel beside it, and PNG previews.

Reads: a checkpoint (train.py's best.pt) and one scene; for a model trained on stacked scenes, every
scene it was trained on, in the training order. Scenes are matched to the checkpoint by position and
bands, not by file name: their number, each scene's band count and, where the file names its bands, the
band names in order (the checkpoint's ``s2_april:B4`` against the file's ``B4``), so that another
year's or region's mosaics map as well; a file named otherwise than the checkpoint's scene is one line
on stdout. The checkpoint's own scene names given in another order are refused.
Writes: ``--out MAP.tif``: uint8 codes 1..12 on the scene's exact grid (CRS, transform, size), nodata 0
where the input has no data (every band 0, in every scene), tiled 512 x 512, DEFLATE, the class colour
table, the class names (band metadata, and ``MAP.tif.aux.xml`` category names, which QGIS and GDAL show
as labels), internal overviews made with mode resampling; ``MAP_confidence.tif``: uint8 on the same grid
and in the same layout, the probability of the mapped class in percent (0-100, rounded), nodata 255
exactly where the map is nodata, internal overviews made with average resampling (a zoomed-out pixel
shows the mean confidence of the pixels it covers, which for a calibrated checkpoint is the share of
them expected right; mode or nearest would show one pixel's value); with ``--review-below P``,
``MAP_review.tif``: 1 where the confidence is below P % (pixels for a human to review), 0 elsewhere,
255 nodata, same grid. Previews (unless --no-preview): ``MAP.png`` with a legend of the classes present
and ``MAP_confidence.png`` with a colour bar. The probabilities are a softmax of the logits divided by
the checkpoint's temperature (train.py fits it on the validation split, so that a confidence of 80 % is
right about 80 % of the time); a checkpoint without one uses 1 and says so on stdout. Every file is
written under a ``.partial`` name first and the rasters are renamed only once all are complete, the map
last: a MAP.tif that exists is complete, confidence, review mask, overviews and previews included.

The scene is never read whole. It is read in chunks of one row of windows by 4096 columns (one thread,
in order; GDAL decodes a chunk's blocks in parallel), cut into windows of --window pixels at least
--overlap pixels apart (--workers threads find their valid pixels), normalised like the training tiles
on the model's device and predicted in batches. The class probabilities of the windows are blended with
a weight that ramps linearly to zero over the --overlap pixels at each window edge, so no seam shows.
The code of a pixel is the best class of the blended probabilities at T = 1, so a temperature never
changes the map (an average of probabilities at another T may rank classes differently where windows,
or flips, disagree); its confidence is that class's weighted mean probability at the checkpoint's
temperature, blended beside them when it is not 1. Blending runs on the model's device; each finished
row of windows is copied to host memory without waiting for the device and written, in whole rows of
output blocks, while the device computes the next batch. Memory: a chunk per scene (42 MB for 10
bands), a few batches of windows, the model, the blended sums of the overlap rows across the scene's
width (13 float16 values per pixel of those rows, 26 with a temperature: 50 or 100 MB for 30000 px and
--overlap 64), a row of output blocks per raster (uint8) and a fixed 256 MB GDAL cache. Only the
overlap sums and the output rows depend on the scene, and only on its width.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from colormap import CLASSES, CODES, NODATA, NUM_CLASSES, PALETTE, gdal_colour_table, legend_handles
from landcover import distributed, inference
from landcover.checkpoint import load_checkpoint, temperature_of
from landcover.common import (
    ArgumentParser,
    atomic_path,
    atomic_write_text,
    check_range,
    fail,
    open_raster,
    ordered_map,
    progress,
    read_pixels,
    run_main,
    whole_raster,
)
from landcover.geo import MAP_BLOCK, Grid, map_profile
from landcover.layout import RAW
from landcover.stats import Normalize
from landcover.tiles import valid_pixels

OVERVIEW_MIN = 256  # overviews are added until the smallest fits in this many pixels
GDAL_CACHE_MB = 256  # a fixed GDAL block cache: reading and writing never hold more than this
CHUNK = 4096  # columns read at once (see SceneReader)
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
CONFIDENCE_NODATA = 255  # nodata of the confidence and review rasters (0 is a confidence and a flag)
REVIEW_COLOURS = {0: (0, 0, 0, 0), 1: (230, 0, 77, 255), CONFIDENCE_NODATA: (0, 0, 0, 0)}
CONFIDENCE_CMAP = "viridis"  # perceptually uniform, readable in grey and by colour-blind readers


# ---------------------------------------------------------------------------------------------
# Checking the input


def scene_prefixes(bands: Sequence[str]) -> list[str]:
    """The scene names of a stacked checkpoint's bands (``s2_april:B4`` -> ``s2_april``), in order.

    Empty for a single-scene checkpoint (band names without a ``scene:`` part).
    """
    if not bands or not all(":" in b for b in bands):
        return []
    return list(dict.fromkeys(b.split(":", 1)[0] for b in bands))


def check_scenes(bands: Sequence[str], scenes: Sequence[tuple[Path, Sequence[str | None]]]) -> str | None:
    """Fail unless the scenes (path, band descriptions) match the checkpoint's ``bands`` by position and
    bands; the line to show when a file is not named as the checkpoint's scene, else None.

    A single-scene checkpoint takes one scene with its bands; a stacked one takes as many scenes as it
    names, scene k with the band part of the checkpoint's bands of scene k (``s2_april:B4`` -> ``B4``:
    a scene file names its bands without a scene). File names do not decide (another year's mosaics
    carry other names), except that the checkpoint's own scene names in another order are refused.
    """
    prefixes = scene_prefixes(bands)
    if not prefixes:
        if len(scenes) != 1:
            fail(
                f"the checkpoint takes one scene ({len(bands)} bands), got {len(scenes)}: "
                f"{' '.join(str(p) for p, _ in scenes)}"
            )
        inference.check_bands(bands, scenes[0][1], f"scene {scenes[0][0]}")
        return None
    order = " ".join(f"{p}.tif" for p in prefixes)
    if len(scenes) != len(prefixes):
        fail(
            f"the checkpoint stacks {len(prefixes)} scenes ({order}, in that order), got {len(scenes)}: "
            f"{' '.join(str(p) for p, _ in scenes)}"
        )
    stems = [p.stem for p, _ in scenes]
    if stems != prefixes and sorted(stems) == sorted(prefixes):
        fail(
            f"scenes given in the wrong order: {' '.join(stems)}; the checkpoint stacks {order} in that order"
        )
    for (path, descriptions), prefix in zip(scenes, prefixes, strict=True):
        expected = [b.split(":", 1)[1] for b in bands if b.split(":", 1)[0] == prefix]
        inference.check_bands(expected, descriptions, f"scene {path}")
    renamed = [
        f"scene {k} is {path.name}, the checkpoint was trained on {prefix}.tif"
        for k, ((path, _), prefix) in enumerate(zip(scenes, prefixes, strict=True), start=1)
        if path.stem != prefix
    ]
    return "; ".join(renamed) + ": matched by position and bands" if renamed else None


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


@torch.inference_mode()
def window_probabilities(
    net: torch.nn.Module, x: torch.Tensor, tta: bool = False, temperature: float = 1.0
) -> torch.Tensor:
    """(B, C, H, W) normalised input -> (B, 13, H, W) probabilities at T = 1, channel k = code k; when
    ``temperature`` is not 1, followed by the probabilities at that temperature: (B, 26, H, W).

    The map's codes come from the first 13 blended channels, the confidence from the last 13. Both come
    from one forward pass (``inference.class_probabilities`` gives one temperature's); with ``tta``,
    each is the mean over the four flips.
    """
    temperatures = (1.0,) if temperature == 1 else (1.0, temperature)
    total, n = None, 0
    for z in inference.flipped_logits(net, x, tta):  # the forward passes, on all threads
        with one_cpu_thread(z.device):
            p = code_probabilities(z, temperatures)
            total, n = (p if total is None else total.add_(p)), n + 1
    return total.div_(n) if n > 1 else total


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Torch's CPU work in one thread (the model's forward keeps all): probabilities and blending are
    short passes over memory, and a pass split over threads waits for each to be scheduled, which on
    cores shared with other work costs more than the pass itself (bench/predict.py shows it); in one
    thread, too, no CPU time goes to threads spinning at the end of each pass."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def code_probabilities(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """(B, 13, H, W) logits -> (B, 13 * len(temperatures), H, W): ``calibration.probabilities`` at each
    temperature in turn (a softmax over codes 1..12 of the logits / T; code 0 gets 0).

    The same numbers to float rounding, computed in place in one buffer (exp(z - max) / sum): on the CPU
    torch's softmax across channels and the copies into one buffer cost more.
    """
    z = logits[:, 1:].float()
    top = z.amax(dim=1, keepdim=True)
    out = z.new_empty((z.shape[0], NUM_CLASSES * len(temperatures), *z.shape[2:]))
    for k, t in enumerate(temperatures):
        out[:, k * NUM_CLASSES].zero_()
        p = out[:, k * NUM_CLASSES + 1 : (k + 1) * NUM_CLASSES]
        torch.sub(z, top, out=p)
        if t != 1:
            p.div_(t)
        p.exp_()
        p.div_(p.sum(dim=1, keepdim=True))
    return out


def codes_and_confidence(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blended sums (13 or 26, H, W) -> codes (H, W) uint8 1..12 and confidence (H, W) uint8 percent.

    The code is the best of codes 1..12 in the first 13 channels, the first on ties (as
    ``model.predict_classes``; found with amax, which is far faster on the CPU than max with indices);
    its confidence is its share of the last 13 (the same channels without a temperature). Each window's
    probabilities sum to 1, so the blended ones sum to the sum of the weights, and the share is the
    weighted mean of the windows' probabilities of that code.
    """
    scores = sums[1:NUM_CLASSES]
    best = scores.amax(dim=0)
    rank = torch.arange(NUM_CLASSES - 1, 0, -1, dtype=torch.uint8, device=sums.device)[:, None, None]
    codes = (NUM_CLASSES - ((scores == best) * rank).amax(dim=0)).clamp_(1, NUM_CLASSES - 1)  # NaN: 12
    calibrated = sums[-NUM_CLASSES:]
    if sums.shape[0] > NUM_CLASSES:
        best = calibrated.gather(0, codes[None].long())[0]
    share = best / calibrated.sum(dim=0)
    confidence = share.mul_(100).round_().nan_to_num_(0.0).clamp_(0, 100).to(torch.uint8)
    return codes, confidence


class PendingRows:
    """Finished rows on their way from the model's device: codes and confidence are copied to host
    memory without waiting (on CUDA into pinned memory, an event marking the end of the copy), so that
    the device goes on with the next batch; ``wait`` sets nodata where the input has none."""

    def __init__(self, row0: int, codes: torch.Tensor, confidence: torch.Tensor, valid: np.ndarray):
        self.row0, self.valid = row0, valid
        cuda = codes.device.type == "cuda"
        self.host = [t.to("cpu", non_blocking=cuda) for t in (codes, confidence)]
        self.copied = None
        if cuda:
            self.copied = torch.cuda.Event()
            self.copied.record()  # on the stream that computed the rows and queued the copies

    def wait(self) -> tuple[int, np.ndarray, np.ndarray]:
        """``(row0, codes, confidence)``: (n, width) uint8, nodata 0 and 255 where the input has no data."""
        if self.copied is not None:
            self.copied.synchronize()
        codes, confidence = (t.numpy() for t in self.host)
        return (
            self.row0,
            np.where(self.valid, codes, NODATA).astype(np.uint8, copy=False),
            np.where(self.valid, confidence, CONFIDENCE_NODATA).astype(np.uint8, copy=False),
        )


class Blender:
    """Blends window probabilities, given in raster order, into finished rows of codes and confidence.

    Holds the weighted sums of the columns a window shares with the next one (``left``) and of the rows
    a row of windows shares with the next row (``carry``, across the scene's width), on the device of
    the probabilities, with the codes and confidence of the row of windows being finished; the valid
    pixels of that row stay on the host. Pixels are finished once no later window covers them
    (``codes_and_confidence``).
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
        self.left: torch.Tensor | None = None

    def start_row(self, i: int, probs: torch.Tensor) -> None:
        """Empty sums and strips for row ``i`` of windows."""
        r0, r1, device = self.rows[i], self.row_ends[i], probs.device
        self.left = None
        self.codes = torch.empty((r1 - r0, self.width), dtype=torch.uint8, device=device)
        self.confidence = torch.empty_like(self.codes)
        self.valid = np.zeros((r1 - r0, self.width), dtype=bool)
        shape = (probs.shape[0], r0 + self.win[0] - r1, self.width)
        last = i == len(self.rows) - 1
        self.next_carry = None if last else torch.zeros(shape, dtype=torch.float16, device=device)

    def add(self, i: int, j: int, probs: torch.Tensor, valid: np.ndarray) -> PendingRows | None:
        """Add window (i, j): probs (13 or 26, h, w) on the model's device (weighted in place: it is
        used up), valid (h, w) bool.

        Returns the finished rows when the window ends a row of windows.
        """
        h, w = self.win
        if self.weight is None or self.weight.device != probs.device:
            self.weight = ramp(h, self.overlap).to(probs.device)[:, None] * ramp(w, self.overlap).to(
                probs.device
            )
        r0, r1 = self.rows[i], self.row_ends[i]
        c0, c1 = self.cols[j], self.col_ends[j]
        if j == 0:
            self.start_row(i, probs)
        acc = probs.mul_(self.weight)
        if self.left is not None:  # the sums the previous window left on the columns shared with this one
            acc[:, :, : self.left.shape[2]] += self.left
        # columns [c0, c1) of this row of windows are finished: no later window of the row covers them
        chunk = acc[:, :, : c1 - c0]
        if self.carry is not None:  # the sums the row of windows above left on the rows shared with it
            chunk[:, : self.carry.shape[1]] += self.carry[:, :, c0:c1].float()
        self.codes[:, c0:c1], self.confidence[:, c0:c1] = codes_and_confidence(chunk[:, : r1 - r0])
        self.valid[:, c0:c1] = valid[: r1 - r0, : c1 - c0]
        if self.next_carry is not None:
            self.next_carry[:, :, c0:c1] = chunk[:, r1 - r0 :].half()
        self.left = acc[:, :, c1 - c0 :]
        if j < len(self.cols) - 1:
            return None
        self.carry = self.next_carry
        return PendingRows(r0, self.codes, self.confidence, self.valid)


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
    write: Callable[[int, np.ndarray, np.ndarray], None],
    *,
    window: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    tta: bool = False,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
    workers: int = 2,
    show_progress: bool = True,
) -> np.ndarray:
    """Predict a ``height`` x ``width`` scene window by window; ``write(row0, codes, confidence)`` gets
    finished rows in order ((n, width) uint8, see ``PendingRows.wait``).

    ``read(r, c, h, w)`` returns a window's bands as stored, called in raster order from one thread;
    ``workers`` threads find each window's valid pixels, and each batch crosses to ``device`` as stored
    and is normalised there with the checkpoint's ``stats`` (mean, std), as in training. The rows a
    batch finishes are written after the next batch is queued, so that on a GPU writing overlaps the
    model. Returns the pixel count of every code 0..12 in the map.
    """
    device = torch.device(device)
    win = (min(window, height), min(window, width))
    rows, cols = window_starts(height, win[0], overlap), window_starts(width, win[1], overlap)
    windows = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    blender = Blender(height, width, rows, cols, win, overlap)
    norm = Normalize(stats, device)
    items = [(rows[i], cols[j], *win) for i, j in windows]
    loads = prefetch(items, read, workers, 2 * batch_size + workers)
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)

    def flush(finished: list[PendingRows]) -> None:
        for pending in finished:
            row0, codes, confidence = pending.wait()
            counts[:] += np.bincount(codes.ravel(), minlength=NUM_CLASSES)
            write(row0, codes, confidence)

    bar = progress(total=len(windows), desc="predicting", unit="window", disable=not show_progress)
    # on an error: the threads stop, then the bar ends
    with bar, contextlib.closing(loads), torch.inference_mode():
        finished: list[PendingRows] = []
        for b in range(0, len(windows), batch_size):
            batch = windows[b : b + batch_size]
            raws, valids = zip(*(next(loads) for _ in batch), strict=True)
            x = norm(distributed.upload(torch.from_numpy(np.stack(raws)), device))
            probs = window_probabilities(net, x, tta, temperature)
            with one_cpu_thread(device):
                done = [blender.add(i, j, p, v) for (i, j), p, v in zip(batch, probs, valids, strict=True)]
                flush(finished)  # the previous batch's rows, while the device works on this batch
            finished = [d for d in done if d is not None]
            bar.update(len(batch))
        flush(finished)
    return counts


class BlockWriter:
    """Writes finished rows to a GeoTIFF in whole rows of blocks (a compressed block is written once)."""

    def __init__(self, dst: rasterio.io.DatasetWriter, block: int = MAP_BLOCK):
        self.dst, self.block = dst, block
        self.row0, self.buf = 0, np.zeros((0, dst.width), dtype=np.uint8)

    def __call__(self, row0: int, values: np.ndarray) -> None:
        assert row0 == self.row0 + len(self.buf), "rows must come in order"
        self.buf = np.concatenate([self.buf, values]) if len(self.buf) else values.copy()
        end = self.row0 + len(self.buf)
        upto = end if end == self.dst.height else (end // self.block) * self.block
        if upto > self.row0:
            n = upto - self.row0
            try:
                self.dst.write(self.buf[:n], 1, window=Window(0, self.row0, self.dst.width, n))
            except OSError as e:  # a full disk: name this raster (several are written at once)
                e.filename = e.filename or self.dst.name
                raise
            self.row0, self.buf = upto, self.buf[n:]


class MapWriters:
    """Writes finished rows to the map, its confidence and (with ``review_below``) its review mask, each
    through its own ``BlockWriter``; sums what the summary reports."""

    def __init__(self, dsts: Sequence[rasterio.io.DatasetWriter], review_below: float | None):
        self.writers = [BlockWriter(d) for d in dsts]
        self.review_below = review_below
        self.valid = 0  # mapped pixels
        self.confidence_sum = 0  # their confidence, percent
        self.flagged = 0  # those below review_below

    def __call__(self, row0: int, codes: np.ndarray, confidence: np.ndarray) -> None:
        valid = codes != NODATA
        layers = [codes, confidence]
        if self.review_below is not None:
            flag = (confidence < self.review_below) & valid
            layers.append(np.where(valid, flag, CONFIDENCE_NODATA).astype(np.uint8))
            self.flagged += int(np.count_nonzero(flag))
        self.valid += int(np.count_nonzero(valid))
        self.confidence_sum += int(confidence.sum(where=valid, dtype=np.int64))
        for writer, layer in zip(self.writers, layers, strict=True):
            writer(row0, layer)


# ---------------------------------------------------------------------------------------------
# The map's files, their metadata and previews


@dataclass(frozen=True)
class MapFiles:
    """The files of one map, named after ``--out MAP.tif``."""

    map: Path

    def beside(self, suffix: str, ext: str | None = None) -> Path:
        return self.map.with_name(f"{self.map.stem}{suffix}{ext or self.map.suffix}")

    @property
    def confidence(self) -> Path:
        return self.beside("_confidence")

    @property
    def review(self) -> Path:
        return self.beside("_review")

    @property
    def preview(self) -> Path:
        return self.map.with_suffix(".png")

    @property
    def confidence_preview(self) -> Path:
        return self.beside("_confidence", ".png")

    @property
    def categories(self) -> Path:
        return self.map.with_name(self.map.name + ".aux.xml")

    def rasters(self, review: bool) -> list[Path]:
        """The GeoTIFFs written, the map first (it is renamed into place last)."""
        return [self.map, self.confidence, *([self.review] if review else [])]

    def all(self, review: bool, preview: bool) -> list[Path]:
        pictures = [self.preview, self.confidence_preview] if preview else []
        return [*self.rasters(review), *pictures, self.categories]


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


def describe_rasters(
    dsts: Sequence[rasterio.io.DatasetWriter], tags: dict, temperature: float, review_below: float | None
) -> None:
    """Colour tables, band descriptions and tags of the map, its confidence and its review mask."""
    for dst in dsts:
        dst.update_tags(**tags)
    dsts[0].write_colormap(1, gdal_colour_table())
    dsts[0].set_band_description(1, "land-cover class code")
    dsts[0].update_tags(1, **{f"CLASS_{c}": CLASSES[c][0] for c in range(NUM_CLASSES)})
    what = f"confidence of the mapped class, percent (temperature {temperature:.3g})"
    dsts[1].set_band_description(1, what)
    dsts[1].set_band_unit(1, "%")
    if review_below is not None:
        dsts[2].write_colormap(1, REVIEW_COLOURS)
        dsts[2].set_band_description(1, f"1: confidence below {review_below:g} %, for review; 0: not")
        dsts[2].update_tags(1, REVIEW_BELOW=f"{review_below:g}")


def decimated(path: Path, size: int, resampling: Resampling, masked: bool = False) -> np.ndarray:
    """Band 1 of a raster read at most ``size`` pixels wide or high (from its overviews)."""
    with rasterio.open(path) as src:
        scale = max(src.height, src.width) / size
        shape = (
            (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 else src.shape
        )
        return src.read(1, out_shape=shape, resampling=resampling, masked=masked)


def save_figure(fig, out_png: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def figure_for(shape: tuple[int, int]):
    """A figure and axes for a picture of ``shape``, 7 inches wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (7.0, min(10.0, max(2.0, 7.0 * shape[0] / shape[1])))
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set_axis_off()
    return fig, ax


def write_preview(map_path: Path, out_png: Path, counts: np.ndarray, title: str, size: int = 1024) -> None:
    """A PNG of the map (read decimated from its overviews) in the class colours, legend with areas."""
    codes = decimated(map_path, size, Resampling.nearest)
    rgba = np.concatenate(
        [PALETTE[codes], np.where(codes == NODATA, 0, 255).astype(np.uint8)[..., None]], axis=2
    )
    total = max(int(counts[1:].sum()), 1)
    present = [c for c in CODES if counts[c] > 0]
    handles = legend_handles(present)
    for hd, c in zip(handles, present, strict=True):
        hd.set_label(f"{hd.get_label()} ({100 * counts[c] / total:.1f}%)")
    fig, ax = figure_for(codes.shape)
    ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    save_figure(fig, out_png)


def write_confidence_preview(path: Path, out_png: Path, title: str, size: int = 1024) -> None:
    """A PNG of the confidence raster (decimated from its average overviews), nodata transparent, with a
    colour bar of 0-100 %."""
    import matplotlib

    confidence = decimated(path, size, Resampling.average, masked=True)
    fig, ax = figure_for(confidence.shape)
    cmap = matplotlib.colormaps[CONFIDENCE_CMAP].with_extremes(bad=(0, 0, 0, 0))
    image = ax.imshow(confidence, cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="confidence of the mapped class (%)")
    save_figure(fig, out_png)


OVERVIEW_RESAMPLING = (Resampling.mode, Resampling.average, Resampling.mode)  # map, confidence, review


def gdal_env(workers: int) -> rasterio.Env:
    """GDAL's settings for reading the scenes and writing the rasters: a fixed block cache, a chunk's
    blocks decoded in parallel, overviews compressed and tiled like the rasters."""
    return rasterio.Env(
        GDAL_CACHEMAX=GDAL_CACHE_MB,
        GDAL_NUM_THREADS=max(workers, 1),
        COMPRESS_OVERVIEW="DEFLATE",
        GDAL_TIFF_OVR_BLOCKSIZE=MAP_BLOCK,
    )


def write_map(
    net: torch.nn.Module,
    scene_paths: Sequence[Path],
    stats: dict,
    files: MapFiles,
    *,
    scene_options: dict,
    review_below: float | None,
    preview: bool,
    tags: dict,
) -> tuple[np.ndarray, MapWriters]:
    """Predict the scenes (``scene_options``: ``predict_scene``'s) into the map, its confidence and its
    review mask, with previews and category names; the rasters are renamed into place once all are
    complete, the map last. Returns the class counts and the writers' sums."""
    reader = SceneReader(scene_paths)
    with rasterio.open(scene_paths[0]) as src:
        grid = Grid.of(src)
    temperature = scene_options["temperature"]
    with gdal_env(scene_options["workers"]), contextlib.ExitStack() as placed:
        tmps = [placed.enter_context(atomic_path(p)) for p in files.rasters(review_below is not None)]
        nodata = (NODATA, CONFIDENCE_NODATA, CONFIDENCE_NODATA)
        try:
            with whole_raster(*tmps), contextlib.ExitStack() as opened:
                dsts = [
                    opened.enter_context(rasterio.open(tmp, "w", **map_profile(grid, nd)))
                    for tmp, nd in zip(tmps, nodata, strict=False)
                ]
                describe_rasters(dsts, tags, temperature, review_below)
                writers = MapWriters(dsts, review_below)
                counts = predict_scene(net, reader, stats, grid.height, grid.width, writers, **scene_options)
                for dst, how in zip(dsts, OVERVIEW_RESAMPLING, strict=False):
                    dst.build_overviews(overview_factors(grid.height, grid.width), how)
                    dst.update_tags(ns="rio_overview", resampling=how.name)
        finally:
            reader.close()
        if preview:
            title = f"{files.map.name}: {' + '.join(p.name for p in scene_paths)}"
            write_preview(tmps[0], files.preview, counts, title)
            title = f"{files.confidence.name}: confidence of the mapped class, temperature {temperature:.3g}"
            write_confidence_preview(tmps[1], files.confidence_preview, title)
        atomic_write_text(files.categories, category_names_xml())
    return counts, writers


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


def confidence_summary(sums: MapWriters, temperature: float, review_below: float | None) -> str:
    """The mean confidence of the mapped pixels and, with ``review_below``, the share flagged."""
    valid = max(sums.valid, 1)
    mean = sums.confidence_sum / valid
    lines = [f"confidence of the mapped class: mean {mean:.1f}% (temperature {temperature:.3g})"]
    if review_below is not None:
        lines.append(
            f"for review (confidence below {review_below:g}%): {sums.flagged:,} pixels, "
            f"{100 * sums.flagged / valid:.2f}% of the mapped pixels"
        )
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
        help="the scene(s) to map; for a stacked model as many as it was trained on, in that order, matched "
        "by position and bands, whatever their names (default: data/raw/<scene>.tif for each scene the "
        "checkpoint names, else data/raw/s2_april.tif)",
    )
    parser.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        type=Path,
        help="the map to write (.tif); beside it MAP_confidence.tif (uint8: the mapped class's probability "
        "in percent, calibrated with the checkpoint's temperature; 255 nodata), the previews MAP.png and "
        "MAP_confidence.png, and with --review-below MAP_review.tif "
        "(default: results/<run folder of the checkpoint>/landcover_<scene(s)>.tif)",
    )
    parser.add_argument("--window", type=int, default=512, help="window size in pixels (square)")
    parser.add_argument(
        "--overlap", type=int, default=64, help="pixels shared by neighbouring windows (blended)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per model call")
    parser.add_argument("--tta", action="store_true", help="average predictions over 4 flips (4x slower)")
    parser.add_argument("--device", choices=distributed.DEVICES, default="auto", help="where the model runs")
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="threads preparing windows (their valid pixels; 0: all in the main thread)",
    )
    parser.add_argument(
        "--review-below",
        type=float,
        default=None,
        metavar="P",
        help="also write MAP_review.tif: 1 where the confidence is below P %% (1-100; pixels for a human "
        "to review), 0 elsewhere, 255 nodata; and print the share of mapped pixels flagged",
    )
    parser.add_argument(
        "--no-preview", action="store_true", help="write neither PNG preview (map, confidence)"
    )
    args = parser.parse_args(argv)
    check_range("--window", args.window, 32)
    check_range("--overlap", args.overlap, 0)
    if args.overlap >= args.window:
        fail(f"--overlap must be smaller than --window ({args.window}), got {args.overlap}")
    check_range("--batch-size", args.batch_size, 1)
    check_range("--workers", args.workers, 0)
    if args.review_below is not None:
        check_range("--review-below", args.review_below, 1, 100)
    return args


def check_inputs(bands: Sequence[str], images: Sequence[Path]) -> tuple[int, int, float, str | None]:
    """Fail unless the scenes match the checkpoint and share one grid; their height, width, pixel area
    (m²) and the line saying which scenes are named otherwise than the checkpoint's (or None)."""
    scenes = [open_raster(p, "scene") for p in images]
    try:
        renamed = check_scenes(bands, [(Path(s.name), s.descriptions) for s in scenes])
        check_grids(scenes)
        t = scenes[0].transform
        return scenes[0].height, scenes[0].width, abs(t.a * t.e), renamed
    finally:
        for s in scenes:
            s.close()


def output_files(args: argparse.Namespace, images: Sequence[Path]) -> MapFiles:
    """``--out``, or the default beside the checkpoint's run: a .tif whose files overwrite no input scene
    and no folder."""
    stem = "+".join(p.stem for p in images)
    out = getattr(args, "out", None) or inference.results_folder(args.checkpoint) / f"landcover_{stem}.tif"
    if out.suffix.lower() not in (".tif", ".tiff"):
        fail(f"--out must end with .tif or .tiff (the preview goes beside it as .png): {out}")
    files = MapFiles(out)
    inputs = {Path(p).resolve() for p in images}
    for path in files.all(args.review_below is not None, not args.no_preview):
        if path.resolve() in inputs:
            fail(f"--out would overwrite an input scene: {path}")
        if path.is_dir():
            fail(f"--out: {path} is a folder, where the map's file would go")
    return files


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = distributed.pick_device(args.device)
    distributed.configure_torch(device)
    net, ckpt = load_checkpoint(args.checkpoint, device)  # a broken checkpoint fails first
    temperature, note = temperature_of(ckpt, args.checkpoint)
    images = getattr(args, "image", None) or default_images(ckpt["bands"])
    height, width, pixel_area, renamed = check_inputs(ckpt["bands"], images)
    files = output_files(args, images)
    for line in (renamed, note):
        if line:
            print(line, flush=True)

    files.map.parent.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    tags = {
        "checkpoint": str(args.checkpoint),
        "scenes": " ".join(str(p) for p in images),
        "window": str(args.window),
        "overlap": str(args.overlap),
        "tta": str(args.tta),
        "temperature": f"{temperature:g}",
    }
    scene_options = dict(
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        tta=args.tta,
        temperature=temperature,
        device=device,
        workers=args.workers,
    )
    review, preview = args.review_below is not None, not args.no_preview
    counts, sums = write_map(
        net, images, ckpt["stats"], files, scene_options=scene_options, review_below=args.review_below,
        preview=preview, tags=tags,
    )  # fmt: skip
    print(area_table(counts, pixel_area))
    print(confidence_summary(sums, temperature, args.review_below))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"wrote {files.map} ({width} x {height} px, {wall:.1f} s, {cpu:.1f} CPU s)")
    for path in files.all(review, preview)[1:-1]:  # the category names go without saying
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
