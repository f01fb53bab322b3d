"""The sliding-window engine that maps a whole scene, and the map's files written from it.

Middle floor: rests on inference.py (the model's probabilities), rasters.py and figures.py. The scene is
never read whole: ``SceneReader`` reads it in chunks of one row of windows; ``prefetch`` finds each
window's valid pixels on threads; ``predict_scene`` predicts batches of windows on the model's device and
``Blender`` blends their probabilities, with weights ramping to zero over the overlap, into finished rows
that go to the writers while the device computes the next batch. The code of a pixel is the best class of
the blended probabilities at T = 1, so a temperature never changes the map; its confidence is that class's
weighted mean probability at the checkpoint's temperature. The README's "7. predict.py" section explains
the memory this takes (it grows with the scene's width only).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from colormap import NODATA, NUM_CLASSES
from landcover import distributed
from landcover.common import (
    atomic_path,
    atomic_write_text,
    fail,
    ordered_map,
    progress,
    read_pixels,
    whole_raster,
)
from landcover.distributed import one_cpu_thread
from landcover.figures import write_confidence_preview, write_preview
from landcover.geo import Grid, map_profile
from landcover.inference import class_probabilities
from landcover.probabilities import class_percent, codes_and_confidence
from landcover.rasters import (
    CONFIDENCE_NODATA,
    OVERVIEW_RESAMPLING,
    MapFiles,
    MapWriters,
    category_names_xml,
    describe_probabilities,
    describe_rasters,
    gdal_env,
    overview_factors,
    staged,
    to_cog,
)
from landcover.stats import Normalize
from landcover.tiles import valid_pixels

CHUNK = 4096  # columns read at once (see SceneReader)


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


class PendingRows:
    """Finished rows on their way from the model's device: codes and confidence are copied to host
    memory without waiting (on CUDA into pinned memory, an event marking the end of the copy), so that
    the device goes on with the next batch; ``wait`` sets nodata where the input has none."""

    def __init__(
        self,
        row0: int,
        codes: torch.Tensor,
        confidence: torch.Tensor,
        valid: np.ndarray,
        percent: torch.Tensor | None = None,
    ):
        self.row0, self.valid = row0, valid
        cuda = codes.device.type == "cuda"
        self.host = [t.to("cpu", non_blocking=cuda) for t in (codes, confidence)]
        self.percent = None if percent is None else percent.to("cpu", non_blocking=cuda)
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

    def class_percent(self) -> np.ndarray | None:
        """(12, n, width) uint8 class probabilities in percent, 255 where the input has no data (after
        ``wait``); None unless asked for."""
        if self.percent is None:
            return None
        return np.where(self.valid, self.percent.numpy(), CONFIDENCE_NODATA).astype(np.uint8, copy=False)


class Blender:
    """Blends window probabilities, given in raster order, into finished rows of codes and confidence.

    Holds the weighted sums of the columns a window shares with the next one (``left``) and of the rows
    a row of windows shares with the next row (``carry``, across the scene's width), on the device of
    the probabilities, with the codes and confidence of the row of windows being finished; the valid
    pixels of that row stay on the host. Pixels are finished once no later window covers them
    (``codes_and_confidence``).
    """

    def __init__(
        self,
        height: int,
        width: int,
        rows: list[int],
        cols: list[int],
        win: tuple[int, int],
        overlap: int,
        percent: bool = False,
    ):
        self.width = width
        self.percent = percent  # also each class's probability (predict.py --probabilities)
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
        self.class_percent = None
        if self.percent:
            self.class_percent = torch.empty(
                (NUM_CLASSES - 1, *self.codes.shape), dtype=torch.uint8, device=device
            )
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
        if self.class_percent is not None:
            self.class_percent[:, :, c0:c1] = class_percent(chunk[:, : r1 - r0])
        self.valid[:, c0:c1] = valid[: r1 - r0, : c1 - c0]
        if self.next_carry is not None:
            self.next_carry[:, :, c0:c1] = chunk[:, r1 - r0 :].half()
        self.left = acc[:, :, c1 - c0 :]
        if j < len(self.cols) - 1:
            return None
        self.carry = self.next_carry
        return PendingRows(r0, self.codes, self.confidence, self.valid, self.class_percent)


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
    probabilities: bool = False,
) -> np.ndarray:
    """Predict a ``height`` x ``width`` scene window by window; ``write(row0, codes, confidence)`` gets
    finished rows in order ((n, width) uint8, see ``PendingRows.wait``); with ``probabilities`` a fourth
    argument, (12, n, width) uint8 percent of each class.

    ``read(r, c, h, w)``: a window's bands as stored, called in raster order from one thread; batches
    are normalised on ``device`` with ``stats``; a batch's rows are written once the next is queued
    (writing overlaps the GPU). Returns the pixel count of every code 0..12 in the map.
    """
    device = torch.device(device)
    temperatures = (1.0,) if temperature == 1 else (1.0, temperature)  # codes at T = 1, see above
    win = (min(window, height), min(window, width))
    rows, cols = window_starts(height, win[0], overlap), window_starts(width, win[1], overlap)
    windows = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    blender = Blender(height, width, rows, cols, win, overlap, percent=probabilities)
    norm = Normalize(stats, device)
    items = [(rows[i], cols[j], *win) for i, j in windows]
    loads = prefetch(items, read, workers, 2 * batch_size + workers)
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)

    def flush(finished: list[PendingRows]) -> None:
        for pending in finished:
            row0, codes, confidence = pending.wait()
            counts[:] += np.bincount(codes.ravel(), minlength=NUM_CLASSES)
            percent = pending.class_percent()
            write(row0, codes, confidence, *([] if percent is None else [percent]))

    bar = progress(total=len(windows), desc="predicting", unit="window", disable=not show_progress)
    with bar, contextlib.closing(loads), torch.inference_mode():
        finished: list[PendingRows] = []
        for b in range(0, len(windows), batch_size):
            batch = windows[b : b + batch_size]
            raws, valids = zip(*(next(loads) for _ in batch), strict=True)
            x = norm(distributed.upload(torch.from_numpy(np.stack(raws)), device))
            probs = class_probabilities(net, x, tta, temperatures)
            with one_cpu_thread(device):
                done = [blender.add(i, j, p, v) for (i, j), p, v in zip(batch, probs, valids, strict=True)]
                flush(finished)  # the previous batch's rows, while the device works on this batch
            finished = [d for d in done if d is not None]
            bar.update(len(batch))
        flush(finished)
    return counts


def open_rasters(stagings: Sequence[Path], grid: Grid, percent: bool, opened: contextlib.ExitStack) -> list:
    """The map, confidence, (review) and (class probability) rasters opened for writing, in that order,
    each with its overview resampling."""
    nodata = [NODATA, *[CONFIDENCE_NODATA] * (len(stagings) - 1)]
    how = list(OVERVIEW_RESAMPLING[: len(stagings) - percent]) + [Resampling.average] * percent
    dsts = []
    for i, (path, nd) in enumerate(zip(stagings, nodata, strict=True)):
        profile = map_profile(grid, nd)
        if percent and i == len(stagings) - 1:
            profile.update(count=NUM_CLASSES - 1, interleave="pixel")
        dsts.append(opened.enter_context(rasterio.open(path, "w", **profile)))
    return list(zip(dsts, how, strict=True))


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
    """Predict the scenes (``scene_options``: ``predict_scene``'s) into the map, its confidence, its
    review mask and (``probabilities`` in the options) the class probabilities (Cloud-Optimized
    GeoTIFFs: written tiled, then copied into the COG layout), with previews and category names; the
    rasters are renamed into place once all are complete, the map last. Returns the class counts and
    the writers' sums."""
    reader = SceneReader(scene_paths)
    with rasterio.open(scene_paths[0]) as src:
        grid = Grid.of(src)
    temperature, percent = scene_options["temperature"], bool(scene_options.get("probabilities"))
    with gdal_env(scene_options["workers"]), contextlib.ExitStack() as placed:
        paths = files.rasters(review_below is not None, percent)
        tmps = [placed.enter_context(atomic_path(p)) for p in paths]
        stagings = [placed.enter_context(staged(t)) for t in tmps]  # tiled GeoTIFFs, then COGs
        try:
            with whole_raster(*stagings), contextlib.ExitStack() as opened:
                rasters = open_rasters(stagings, grid, percent, opened)
                dsts = [d for d, _ in rasters]
                describe_rasters(dsts[: len(dsts) - percent], tags, temperature, review_below)
                if percent:
                    describe_probabilities(dsts[-1], tags, temperature)
                for dst, how in rasters:
                    dst.update_tags(OVERVIEW_RESAMPLING=how.name)  # the COG copy keeps this domain only
                writers = MapWriters(dsts, review_below)
                counts = predict_scene(net, reader, stats, grid.height, grid.width, writers, **scene_options)
        finally:
            reader.close()
        # closed and checked whole first: GDAL can crash building overviews of a file a full disk cut short
        with whole_raster(*stagings):
            for staging, (_, how) in zip(stagings, rasters, strict=True):
                with rasterio.open(staging, "r+") as dst:
                    dst.build_overviews(overview_factors(grid.height, grid.width), how)
        with whole_raster(*tmps):
            for staging, tmp in zip(stagings, tmps, strict=True):
                to_cog(staging, tmp)
                staging.unlink()
        if preview:
            title = f"{files.map.name}: {' + '.join(p.name for p in scene_paths)}"
            write_preview(tmps[0], files.preview, counts, title)
            title = f"{files.confidence.name}: confidence of the mapped class, temperature {temperature:.3g}"
            write_confidence_preview(tmps[1], files.confidence_preview, title)
        atomic_write_text(files.categories, category_names_xml())
    return counts, writers
