"""Cut scenes and their 10 m mask into GeoTIFF tile pairs, with a table of every tile's class counts.

Reads ``--images`` (Sentinel-2 scenes; default data/raw/s2_*.tif, expanded here and sorted) and
``--mask`` (the 10 m mask on their grid, from rescale_mask.py). Writes under ``--out`` (default
data/tiles) ``img<SIZE>/<name>.tif`` and ``mask<SIZE>/<name>.tif``, one pair per kept place
(``<scene stem>_<row offset>_<col offset>``; with ``--stack`` one ``stack_<row>_<col>`` image holding
every scene's bands), ``tiles.csv`` (one row per tile: offsets, bounds, nodata fraction, pixels of
codes 0..12) and ``divide_img.json`` (what each scene was tiled from and with: a re-run skips it). It
exists because the model trains on fixed-size tiles; which tiles are dropped, and why each scene is
judged on its own pixels, is in the README's "2. divide_img.py" section.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window, bounds, transform

from colormap import NUM_CLASSES, WATER
from landcover.common import (
    ArgumentParser,
    atomic_path,
    atomic_write_text,
    check_range,
    csv_rows,
    fail,
    first_line,
    open_raster,
    ordered_map,
    progress,
    remove_partials,
    run_main,
    whole_raster,
)
from landcover.geo import Grid, colour_table
from landcover.layout import MASK_10M, RAW, TILES, TILES_CSV, count_column, tile_folders, tile_name, tile_path

RECORD_NAME = "divide_img.json"
CSV_COLUMNS = [
    *("name", "scene", "row_off", "col_off", "height", "width", "left", "bottom", "right", "top"),
    "nodata_fraction",
    *(count_column(c) for c in range(NUM_CLASSES)),  # pixels of each code; n0 = nodata
]
# Tile compression, lossless. The tiles are read thousands of times in training: ZSTD level 1 with the
# horizontal predictor is as small as DEFLATE and decodes faster (README, Performance); "none" decodes
# fastest but makes the tiles much larger to read from disk.
COMPRESSION: dict[str, dict[str, object]] = {
    "zstd": {"compress": "zstd", "zstd_level": 1},
    "deflate": {"compress": "deflate", "zlevel": 6},
    "lzw": {"compress": "lzw"},
    "none": {},
}
CHUNK_BYTES = 64 << 20  # image bytes read at once: a strip is read in column chunks of at most this
DROP_REASONS = ("empty", "water", "nodata", "unlabelled")


def creation_options(compress: str, dtype: str, predictor: bool = True) -> dict[str, object]:
    """GeoTIFF creation options of a tile: the compression and, for images, its predictor."""
    opts = dict(COMPRESSION[compress])
    if opts and predictor:
        opts["predictor"] = 3 if np.dtype(dtype).kind == "f" else 2
    return opts


def tile_offsets(length: int, size: int, stride: int, drop_partial: bool = False) -> list[int]:
    """Start offsets of the tiles along one axis; the last one shifted back to end at the edge."""
    offs = list(range(0, length - size + 1, stride))
    if not drop_partial and offs and offs[-1] + size < length:
        offs.append(length - size)
    return offs


# ---------------------------------------------------------------------------------------------
# Inputs: every check happens before anything is written.


@dataclass
class Source:
    """What one kind of image tile is cut from: one scene, or (``--stack``) several on one grid."""

    name: str  # scene stem, or "stack"; the tile names start with it
    paths: list[Path]
    grid: Grid
    count: int  # bands of a tile
    dtype: str
    nodata: float | None
    descriptions: list[str | None]


def expand_images(patterns: Sequence[str]) -> list[Path]:
    """Scene paths: each argument is a file, or a glob pattern expanded here (sorted)."""
    paths: list[Path] = []
    for pat in patterns:
        if not Path(pat).exists() and glob.has_magic(pat):
            found = sorted(glob.glob(pat))
            if not found:
                fail(f"no scenes matched {pat}")
            paths += [Path(p) for p in found]
        else:
            paths.append(Path(pat))
    return paths


def read_scene_info(path: Path) -> tuple[Grid, int, str, float | None, list[str | None]]:
    """Grid, band count, dtype, nodata and band descriptions of a scene (one-line error if unreadable)."""
    with open_raster(path, "scene") as ds:
        if len(set(ds.dtypes)) != 1:
            fail(f"scene has bands of different types {sorted(set(ds.dtypes))}: {path}")
        return Grid.of(ds), ds.count, ds.dtypes[0], ds.nodata, list(ds.descriptions)


def make_sources(paths: list[Path], stack: bool) -> list[Source]:
    """One source per scene, or one stacked source; refuses what cannot be tiled together."""
    infos = [read_scene_info(p) for p in paths]
    for stem, n in Counter(p.stem for p in paths).items():
        if n > 1:
            fail(f"{n} scenes are named {stem} (their tiles would collide): {' '.join(map(str, paths))}")
    if not stack:
        return [
            Source(p.stem, [p], g, c, d, nd, desc)
            for p, (g, c, d, nd, desc) in zip(paths, infos, strict=True)
        ]
    g0, c0, d0, nd0, _ = infos[0]
    for p, (g, c, d, nd, _) in zip(paths[1:], infos[1:], strict=True):
        if not g.matches(g0):
            fail(f"--stack needs scenes on one grid: {p} is {g}, {paths[0]} is {g0}")
        if c != c0:
            fail(f"--stack needs scenes with the same band count: {p} has {c} bands, {paths[0]} has {c0}")
        if d != d0:
            fail(f"--stack needs scenes of one data type: {p} is {d}, {paths[0]} is {d0}")
        if nd != nd0:
            fail(f"--stack needs scenes with one nodata value: {p} has {nd}, {paths[0]} has {nd0}")
    descriptions = [
        f"{p.stem}:{d or f'band{i}'}"
        for p, info in zip(paths, infos, strict=True)
        for i, d in enumerate(info[4], 1)
    ]
    return [Source("stack", paths, g0, c0 * len(paths), d0, nd0, descriptions)]


def check_mask(mask_path: Path, sources: list[Source]) -> tuple[str, float | None]:
    """The mask's dtype and nodata; refuses a mask with several bands or off the scenes' grid."""
    with open_raster(mask_path, "mask") as m:
        if m.count != 1:
            fail(f"mask has {m.count} bands, expected 1: {mask_path}")
        if np.dtype(m.dtypes[0]).kind not in "ui":
            fail(f"mask holds {m.dtypes[0]} values, expected integer class codes: {mask_path}")
        grid = Grid.of(m)
        dtype, nodata = m.dtypes[0], m.nodata
    for src in sources:
        if not grid.matches(src.grid):
            fail(
                f"mask {mask_path} ({grid}) is not on the grid of scene {src.paths[0]} ({src.grid}); "
                f"run rescale_mask.py --mask <1 m mask> --like {src.paths[0]} --out {mask_path}"
            )
    return dtype, nodata


def read_csv_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of an existing tiles.csv keyed by (name, height), as text (rewritten unchanged)."""
    if not path.exists():
        return {}
    rows = csv_rows(path, "tiles.csv")
    header = rows[0] if rows else []
    if header[: len(CSV_COLUMNS)] != CSV_COLUMNS:
        fail(f"{path} is not a tiles.csv written by divide_img.py (columns {header})")
    table = {}
    for line, values in enumerate(rows[1:], start=2):
        row = dict(zip(header, values, strict=False))
        try:
            if len(values) != len(header):
                raise ValueError
            int(row["height"]), int(row["row_off"]), int(row["col_off"])  # what the rewrite sorts by
        except ValueError:
            fail(f"damaged row in {path} (line {line}): a field is missing or not an integer")
        table[(row["name"], row["height"])] = row
    return table


def write_csv_rows(path: Path, rows: dict[tuple[str, str], dict[str, str]]) -> None:
    """Write tiles.csv atomically, rows ordered by tile size, scene, row and column."""
    order = sorted(
        rows.values(), key=lambda r: (int(r["height"]), r["scene"], int(r["row_off"]), int(r["col_off"]))
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(order)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# One tile: counts, the filter decision, the write.


def tile_counts(img: np.ndarray, mask: np.ndarray, nodata: float | None) -> tuple[np.ndarray, int, int]:
    """Pixels of each code 0..12 in a tile, how many valid pixels hold a code outside 1..12, and how
    many pixels have image data.

    Code 0 counts nodata: mask 0, an unknown code, or no image data (every band == nodata).
    """
    nodata = img.dtype.type(0 if nodata is None else nodata)  # a float would make numpy compare floats
    imaged = np.any(img != nodata, axis=0)
    valid = imaged & (mask != 0)
    known = valid & (mask > 0) & (mask < NUM_CLASSES)
    counts = np.bincount(mask[known].astype(np.intp), minlength=NUM_CLASSES)
    n_known = int(counts[1:].sum())
    counts[0] = mask.size - n_known
    return counts, int(np.count_nonzero(valid)) - n_known, int(np.count_nonzero(imaged))


def drop_reason(counts: np.ndarray, imaged: int, max_nodata: float, keep_water_only: bool) -> str | None:
    """Why a tile is dropped ("empty", "water", "nodata", "unlabelled"), or None to keep it.

    Over ``max_nodata`` it is "unlabelled" when the image alone would pass (``imaged`` pixels have
    data): sparse labels (polygons drawn by hand) drop such tiles, and the run says what keeps them.
    """
    total = int(counts.sum())
    valid = total - int(counts[0])
    if valid == 0:
        return "empty"
    if not keep_water_only and int(counts[WATER]) == valid:
        return "water"
    if counts[0] / total > max_nodata:
        return "unlabelled" if (total - imaged) / total <= max_nodata else "nodata"
    return None


@dataclass
class Job:
    """What every tile of one source shares."""

    source: Source
    img_dir: Path
    mask_dir: Path
    img_profile: dict
    mask_profile: dict
    mask_colormap: dict | None
    max_nodata: float = 0.5
    keep_water_only: bool = False


@dataclass
class Result:
    name: str
    row: dict[str, str] | None  # None when dropped
    status: str  # "written", "existing", or a drop reason
    unknown: int = 0
    kept_despite_filter: bool = False


def write_tif(path: Path, data: np.ndarray, profile: dict, descriptions=None, colormap=None) -> None:
    """Write one GeoTIFF atomically (``<path>.partial`` renamed into place)."""
    with atomic_path(path) as tmp, whole_raster(tmp), rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], 1):
            if d:
                dst.set_band_description(i, d)
        if colormap:
            dst.write_colormap(1, colormap)


def process_tile(job: Job, row_off: int, col_off: int, img: np.ndarray, mask: np.ndarray) -> Result:
    """Count, filter and (unless it is already there) write one tile pair; return its csv row."""
    src = job.source
    name = tile_name(src.name, row_off, col_off)
    size = mask.shape[0]
    counts, unknown, imaged = tile_counts(img, mask, src.nodata)
    reason = drop_reason(counts, imaged, job.max_nodata, job.keep_water_only)
    img_path, mask_path = tile_path(job.img_dir, name), tile_path(job.mask_dir, name)
    existing = img_path.is_file() and mask_path.is_file()
    if reason is not None and not existing:
        return Result(name, None, reason)
    window = Window(col_off, row_off, size, size)
    if not existing:
        win_transform = transform(window, src.grid.transform)
        write_tif(img_path, img, {**job.img_profile, "transform": win_transform}, src.descriptions)
        write_tif(
            mask_path, mask[None], {**job.mask_profile, "transform": win_transform}, None, job.mask_colormap
        )
    left, bottom, right, top = bounds(window, src.grid.transform)
    row = dict(
        name=name,
        scene=src.name,
        row_off=row_off,
        col_off=col_off,
        height=size,
        width=size,
        left=left,
        bottom=bottom,
        right=right,
        top=top,
        nodata_fraction=round(float(counts[0]) / mask.size, 6),
        **{count_column(c): int(n) for c, n in enumerate(counts)},
    )
    row = {k: str(v) for k, v in row.items()}
    return Result(name, row, "existing" if existing else "written", unknown, reason is not None)


# ---------------------------------------------------------------------------------------------
# One source: read strip by strip, hand the tiles to the pool.


def strip_chunks(rows: list[int], cols: list[int], max_cols: int) -> list[tuple[int, list[int]]]:
    """(row offset, column offsets) groups: every tile row, cut in runs of at most ``max_cols`` tiles,
    as even as can be (so that no run is much shorter than the others)."""
    n = -(-len(cols) // max_cols)  # runs per row
    q, extra = divmod(len(cols), max(n, 1))
    starts = [i * q + min(i, extra) for i in range(n + 1)]
    return [(r, cols[a:b]) for r in rows for a, b in itertools.pairwise(starts)]


class ChunkReader:
    """Reads the image bands (all scenes, in order) and the mask of a window into reused buffers.

    Two buffers take turns: one is read while the tiles of the other are written (no fresh memory,
    and so no page faults, for every chunk). A read error is one line naming the files.
    """

    def __init__(
        self, paths: list[Path], mask_path: Path, count: int, dtype: str, max_shape: tuple[int, int]
    ):
        # NUM_THREADS: GDAL decompresses the blocks of one read in parallel
        self.datasets = [rasterio.open(p, NUM_THREADS=str(os.cpu_count() or 1)) for p in paths]
        self.mask_ds = rasterio.open(mask_path)
        self.names = " or ".join(map(str, [*paths, mask_path]))
        n = max_shape[0] * max_shape[1]
        self.img_bufs = [np.empty(count * n, dtype=dtype) for _ in range(2)]
        self.mask_bufs = [np.empty(n, dtype=self.mask_ds.dtypes[0]) for _ in range(2)]
        self.count, self.turn = count, 0

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        h, w = int(window.height), int(window.width)
        self.turn ^= 1
        img = self.img_bufs[self.turn][: self.count * h * w].reshape(self.count, h, w)
        mask = self.mask_bufs[self.turn][: h * w].reshape(h, w)
        b = 0
        try:
            for ds in self.datasets:
                ds.read(window=window, out=img[b : b + ds.count])
                b += ds.count
            self.mask_ds.read(1, window=window, out=mask)
        except rasterio.errors.RasterioIOError as e:
            fail(f"cannot read {self.names} at {window}: {first_line(e, limit=None)}")
        return img, mask

    def tiles(
        self, chunks: list[tuple[int, list[int]]], size: int
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """(row, col, image, mask) of every tile of the chunks, in order: each chunk is read once, when
        its first tile is asked for, and its tiles are views of it (valid until the chunk after next)."""
        for r, chunk in chunks:
            c0 = chunk[0]
            img, mask = self.read(Window(c0, r, chunk[-1] + size - c0, size))
            for c in chunk:
                yield r, c, img[:, :, c - c0 : c - c0 + size], mask[:, c - c0 : c - c0 + size]

    def close(self) -> None:
        for ds in [*self.datasets, self.mask_ds]:
            ds.close()


@dataclass
class Summary:
    places: int = 0
    written: int = 0
    existing: int = 0
    dropped: Counter = field(default_factory=Counter)
    unknown: int = 0
    kept_despite_filter: int = 0
    skipped: bool = False

    def add(self, res: Result) -> None:
        """Count one tile's outcome."""
        if res.row is None:
            self.dropped[res.status] += 1
            return
        setattr(self, res.status, getattr(self, res.status) + 1)
        self.unknown += res.unknown
        self.kept_despite_filter += res.kept_despite_filter

    def as_dict(self) -> dict:
        """What the run record keeps of a finished source."""
        return dict(
            places=self.places, tiles=self.written + self.existing, dropped=dict(sorted(self.dropped.items()))
        )

    @classmethod
    def of_record(cls, done: dict) -> Summary:
        """The summary of a source finished by an earlier run (``as_dict``): skipped this time."""
        return cls(done["places"], 0, done["tiles"], Counter(done["dropped"]), skipped=True)


def tile_source(
    job: Job, mask_path: Path, size: int, stride: int, drop_partial: bool, workers: int, rows_out: dict
) -> Summary:
    """Tile one source into ``job.img_dir``/``job.mask_dir``; add its csv rows to ``rows_out``.

    The main thread reads chunk after chunk while ``workers`` threads check and write the tiles of
    the chunk before: at most a chunk's worth of tiles in flight, so that reading a chunk into the
    buffer of the chunk before last never overwrites a tile still being written.
    """
    src = job.source
    rows = tile_offsets(src.grid.height, size, stride, drop_partial)
    cols = tile_offsets(src.grid.width, size, stride, drop_partial)
    tile_bytes = src.count * size * size * np.dtype(src.dtype).itemsize
    max_cols = max(1, CHUNK_BYTES // tile_bytes)
    chunks = strip_chunks(rows, cols, max_cols)
    ahead = min((len(c) for _, c in chunks), default=0) + 1
    summary = Summary(places=len(rows) * len(cols))
    reader = ChunkReader(src.paths, mask_path, src.count, src.dtype, (size, max_cols * size))
    results = ordered_map(lambda t: process_tile(job, *t), reader.tiles(chunks, size), workers, ahead)
    try:
        with progress(total=summary.places, desc=src.name, unit="tile") as bar, contextlib.closing(results):
            for res in results:  # interrupted or failed: tiles not started yet are not started
                summary.add(res)
                if res.row is not None:
                    rows_out[(res.name, str(size))] = res.row
                bar.update()
    finally:
        reader.close()
    return summary


# ---------------------------------------------------------------------------------------------
# The run record: lets a re-run skip finished scenes and refuse to mix tiles of other inputs.


def signature(src: Source) -> dict:
    """What the tiles of a source look like; tiles of another signature must not share a folder."""
    g = src.grid
    return dict(
        scenes=[p.stem for p in src.paths],
        bands=src.count,
        dtype=src.dtype,
        nodata=src.nodata,
        descriptions=src.descriptions,
        grid=[g.crs.to_string() if g.crs else None, list(g.transform)[:6], g.width, g.height],
    )


def identity(paths: Sequence[Path]) -> list:
    """Which files, of which size and modification time (a changed input is tiled again)."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def load_record(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        fail(f"{path} is damaged (not JSON); delete it and run again (finished tiles are kept)")


def save_record(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------


def summary_table(summaries: dict[str, Summary], max_nodata: float) -> str:
    """The end-of-run table: places, tiles written / already there, and drops by filter (over
    ``--max-nodata``: "nodata" where the image lacks data, "unlabelled" where only the labels do)."""
    head = [
        "source",
        "places",
        "written",
        "already there",
        "no valid pixel",
        "only water",
        f"nodata > {max_nodata:g}",
        f"unlabelled > {max_nodata:g}",
    ]
    lines = [head]
    for name, s in summaries.items():
        lines.append(
            [name, str(s.places), str(s.written), str(s.existing), *(str(s.dropped[r]) for r in DROP_REASONS)]
        )
    widths = [max(len(line[i]) for line in lines if len(line) > i) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )


def parse_args(argv: Sequence[str] | None):
    p = ArgumentParser.for_script(__doc__)
    p.add_argument(
        "--images", nargs="+", default=[str(RAW / "s2_*.tif")], help="scenes (files or glob patterns)"
    )
    p.add_argument("--mask", default=str(MASK_10M), help="10 m mask on the scenes' grid (rescale_mask.py)")
    p.add_argument("--out", default=str(TILES), help="output folder: img<SIZE>/, mask<SIZE>/, tiles.csv")
    p.add_argument("--size", type=int, default=300, help="tile side in pixels")
    p.add_argument(
        "--stride",
        type=int,
        help="pixels between tile starts (%(default)s: --size; less gives overlapping tiles)",
    )
    p.add_argument("--stack", action="store_true", help="one tile per place: every scene's bands, in order")
    p.add_argument(
        "--drop-partial", action="store_true", help="drop edge tiles instead of shifting them back"
    )
    p.add_argument(
        "--max-nodata",
        type=float,
        default=0.5,
        help="drop tiles with a larger share of nodata pixels (no image data, or mask 0: unlabelled); "
        "with sparse labels (polygons on a fraction of the scene) 0.99",
    )
    p.add_argument(
        "--keep-water-only", action="store_true", help="keep tiles whose valid pixels are all water"
    )
    p.add_argument(
        "--compress",
        choices=list(COMPRESSION),
        default="zstd",
        help="tile compression, lossless (zstd: as small as deflate, decodes twice as fast)",
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="threads checking and writing tiles"
    )
    args = p.parse_args(argv)
    check_range("--size", args.size, 0, low_open=True)
    args.stride = args.size if args.stride is None else args.stride
    check_range("--stride", args.stride, 0, args.size, low_open=True)
    check_range("--max-nodata", args.max_nodata, 0, 1)
    check_range("--workers", args.workers, 1)
    return args


def already_done(earlier: dict, options: dict, inputs: list, rows: dict, src: Source, size: int) -> bool:
    """Whether a source was tiled to the end from these very inputs with these options, and its rows
    are all in tiles.csv (then a re-run has nothing to do for it)."""
    if not earlier.get("finished") or (earlier["options"], earlier["inputs"]) != (options, inputs):
        return False
    in_csv = sum(1 for r in rows.values() if r["scene"] == src.name and r["height"] == str(size))
    return earlier["summary"]["tiles"] == in_csv


def cache_bytes(sources: list[Source], size: int, cap: int = 2 << 30) -> int:
    """A GDAL block cache that holds the blocks of a strip of tiles and of the block rows it shares
    with the strips before and after it, for all scenes read together, within a fixed cap."""

    def need(src: Source) -> int:
        total = 0
        for path in src.paths:
            with rasterio.open(path) as ds:
                rows = size + 2 * ds.block_shapes[0][0]
                total += rows * ds.width * ds.count * np.dtype(ds.dtypes[0]).itemsize
        return total

    return int(min(max(max(map(need, sources)) * 5 // 4, 256 << 20), cap))


def check_record(record: dict, img_dir: Path, src: Source) -> None:
    """Refuse to add tiles to a folder whose earlier tiles of this source came from other inputs, or
    whose tiles have another band count or type (training reads a folder of tiles of one shape)."""
    mine = signature(src)
    for key, other in record.items():
        folder, name = key.split("/", 1)
        theirs = other["signature"]
        if folder != img_dir.name:
            continue
        if name == src.name and theirs != mine:
            differs = ", ".join(k for k, v in mine.items() if theirs.get(k) != v)
            fail(f"{img_dir} holds {name} tiles cut from other inputs (other {differs}); use another --out")
        if (theirs["bands"], theirs["dtype"]) != (mine["bands"], mine["dtype"]):
            fail(
                f"{img_dir} holds {name} tiles of {theirs['bands']} bands {theirs['dtype']}; {src.name} "
                f"tiles ({mine['bands']} bands {mine['dtype']}) would be mixed with them: use another --out"
            )


def check_inputs(args) -> tuple[list[Source], Path, str, float | None]:
    """The sources to tile, the mask and the mask's dtype and nodata; refuses what cannot be tiled."""
    sources = make_sources(expand_images(args.images), args.stack)
    mask_path = Path(args.mask)
    mask_dtype, mask_nodata = check_mask(mask_path, sources)
    for src in sources:
        if min(src.grid.width, src.grid.height) < args.size:
            g = src.grid
            fail(f"scene {src.paths[0]} ({g.width} x {g.height} px) is smaller than one {args.size} px tile")
    return sources, mask_path, mask_dtype, mask_nodata


def tile_profile(size: int, count: int, dtype: str, nodata, crs, compress: str, image: bool) -> dict:
    """The GeoTIFF profile of a tile (without its transform): one strip per band, compressed."""
    profile = dict(driver="GTiff", width=size, height=size, blockysize=size, count=count, dtype=dtype)
    profile.update(nodata=nodata, crs=crs)
    if image:
        profile["interleave"] = "band"
    profile.update(creation_options(compress, dtype, predictor=image))
    return profile


def print_notes(summaries: dict[str, Summary], max_nodata: float) -> None:
    """A line for each source skipped, with unknown mask codes, with tiles dropped for want of labels,
    or with tiles kept despite the filters."""
    for name, s in summaries.items():
        if s.dropped["unlabelled"]:
            n = s.dropped["unlabelled"]
            print(f"note: {name}: {n} tiles dropped for being unlabelled (imagery there, labels on less "
                  f"than {1 - max_nodata:.0%} of the pixels); with sparse labels --max-nodata 0.99 keeps "
                  "every tile with 1 % labelled (the loss ignores unlabelled pixels)")  # fmt: skip
        if s.skipped:
            print(f"{name}: tiled earlier from the same inputs with the same options; nothing to do")
        if s.unknown:
            print(f"warning: {name}: {s.unknown} pixels hold mask codes outside 0..12, counted as nodata "
                  "(rescale_mask.py remaps or reports such codes)")  # fmt: skip
        if s.kept_despite_filter:
            print(f"note: {name}: {s.kept_despite_filter} tiles of an earlier run would be dropped by these "
                  "filters; they are kept (use another --out to start afresh)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    size = args.size
    sources, mask_path, mask_dtype, mask_nodata = check_inputs(args)
    out = Path(args.out)
    img_dir, mask_dir = tile_folders(out, size)
    csv_path, record_path = out / TILES_CSV, out / RECORD_NAME
    rows = read_csv_rows(csv_path)
    record = load_record(record_path)
    options = {
        k: getattr(args, k) for k in ("stride", "drop_partial", "max_nodata", "keep_water_only", "compress")
    }
    for src in sources:
        check_record(record, img_dir, src)

    remove_partials(out)
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    with rasterio.open(mask_path) as m:
        mask_colormap = colour_table(m)
    summaries: dict[str, Summary] = {}
    # GDAL's block cache keeps the blocks a strip shares with the next: each is decompressed once.
    # EMPTY_DIR: GDAL would list the tile folder (thousands of files) for side-car files at every
    # tile it creates; the scenes' nodata and descriptions were read above, outside this setting.
    env = rasterio.Env(GDAL_CACHEMAX=cache_bytes(sources, size), GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
    with env:
        for src in sources:
            key, inputs = f"{img_dir.name}/{src.name}", identity([*src.paths, mask_path])
            if already_done(record.get(key, {}), options, inputs, rows, src, size):
                summaries[src.name] = Summary.of_record(record[key]["summary"])
                continue
            record[key] = dict(signature=signature(src), inputs=inputs, options=options, finished=False)
            save_record(record_path, record)
            img_profile = tile_profile(
                size, src.count, src.dtype, src.nodata, src.grid.crs, args.compress, True
            )
            mask_profile = tile_profile(size, 1, mask_dtype, mask_nodata, src.grid.crs, args.compress, False)
            job = Job(src, img_dir, mask_dir, img_profile, mask_profile, mask_colormap)
            job.max_nodata, job.keep_water_only = args.max_nodata, args.keep_water_only
            summaries[src.name] = tile_source(
                job, mask_path, size, args.stride, args.drop_partial, args.workers, rows
            )
            write_csv_rows(csv_path, rows)
            record[key].update(finished=True, summary=summaries[src.name].as_dict())
            save_record(record_path, record)

    print(summary_table(summaries, args.max_nodata))
    print(f"tile pairs in {img_dir} and {mask_dir}; {csv_path}: {len(rows)} rows")
    print_notes(summaries, args.max_nodata)


if __name__ == "__main__":
    sys.exit(run_main(main))
