"""Shared conventions of every script: the one-line error exit, atomic writes, progress bars, raster
opening, and the bounded in-order thread pool (``ordered_map``).

Bottom floor: imports nothing of ours. Every script builds its parser with ``ArgumentParser`` and
runs its ``main`` through ``run_main``, so that bad input always ends the same way: one line on
stderr naming the file and the problem, exit status 2, no traceback, no partial output.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import math
import os
import shutil
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")

PARTIAL = ".partial"  # suffix of files being written; never a finished output


# OSErrors that mean an output cannot be written (a full disk, a quota, a read-only or failing disk, a file
# where a folder should be): one line and exit status 2 like bad input, not a traceback
WRITE_ERRORS = (
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.ENOTDIR, errno.EEXIST
)  # fmt: skip


class InputError(Exception):
    """Bad input or an impossible request: reported as one line, exit status 2."""


def fail(message: str) -> NoReturn:
    """Stop the script with one clear line (see ``run_main``)."""
    raise InputError(message)


def first_line(e: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message (at most ``limit`` characters; None: all of it), or its
    type's name: the part of a library's multi-line error that fits in one line of ours."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse's default prints the usage block first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    @classmethod
    def for_script(cls, doc: str | None, **kwargs) -> ArgumentParser:
        """The parser of a script: its description is the first paragraph of the script's docstring."""
        return cls(description=(doc or "").split("\n\n")[0], **kwargs)

    def parse_args_none_unshown(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """``parse_args`` without "(default: None)" in --help: an option with no default shows none
        and is None when not given."""
        for action in self._actions:
            if action.default is None:
                action.default = argparse.SUPPRESS
        args = self.parse_args(argv)
        for action in self._actions:
            if action.dest != "help" and not hasattr(args, action.dest):
                setattr(args, action.dest, None)
        return args

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main``; turn bad input and a full disk into one line and exit status 2."""
    prog = Path(sys.argv[0]).name
    try:
        main(argv)
    except InputError as e:
        clear_progress_bars()
        sys.stderr.write(f"{prog}: error: {input_error_message(e)}\n")
        return 2
    except OSError as e:
        if e.errno in WRITE_ERRORS:
            clear_progress_bars()
            where = f" ({e.filename})" if e.filename else ""
            what = "input/output error" if e.errno == errno.EIO else "cannot write"
            sys.stderr.write(f"{prog}: error: {what}{where}: {e.strerror}\n")
            return 2
        raise
    except KeyboardInterrupt:
        clear_progress_bars()
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    return 0


def input_error_message(e: InputError) -> str:
    """The one line of an InputError. One raised in a torch DataLoader worker comes back with the worker's
    traceback in its message ("Caught InputError in DataLoader worker process 0. Original Traceback ...
    common.InputError: <message>"): its own message is the last line."""
    text = str(e).strip()
    if "\n" in text and "Traceback" in text:
        return text.splitlines()[-1].split("InputError: ", 1)[-1]
    return text


def clear_progress_bars() -> None:
    """Erase the progress bars still drawn (a run stopped part-way), so that the error message that
    follows stands on its own line instead of after a bar that is redrawn below it at exit."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


def partial_path(final: Path) -> Path:
    """The temporary name a file is written under before it is renamed into place."""
    final = Path(final)
    return final.with_name(final.name + PARTIAL)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds.

    The temporary file is in the same folder (so the rename is atomic) and is removed on any error,
    so an interrupted or failed write never leaves a file that looks finished.
    """
    final = Path(final)
    tmp = partial_path(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):  # name the file the user knows
            e.filename = str(final)
        raise


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def remove_partials(folder: str | os.PathLike) -> int:
    """Delete leftovers of an interrupted run (``*.partial``) under ``folder``; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.rglob(f"*{PARTIAL}"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int) -> Iterator[R]:
    """``fn(item)`` for every item on ``threads`` threads, yielded in the items' order, at most ``ahead``
    items in flight: memory stays bounded however many items there are.

    Items are pulled from ``items`` lazily, in the caller's thread: item ``n + ahead`` only after the
    result of item ``n`` was yielded, so a producer may reuse a buffer that items ``ahead`` or more
    places back refer to. An error (of ``fn``, in the items' order, or of ``items`` itself) is raised
    where its result would be yielded; items not started by then never start, and the running ones are
    waited for. With ``threads`` 0, ``fn`` runs in the caller's thread, one item at a time.
    """
    if threads == 0:
        yield from map(fn, items)
        return
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    pool = ThreadPoolExecutor(threads)
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr, the same look in every script."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def csv_rows(path: str | os.PathLike, what: str) -> list[list[str]]:
    """Every row of a CSV table one of our scripts wrote (the header first); a file that is not UTF-8
    text or not CSV (a damaged copy, a file of another kind) is one line naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        fail(f"{what} is damaged, not a CSV table ({first_line(e, 80)}): {path}")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it is an existing file, else stop with one line naming it."""
    p = Path(path)
    if not p.exists():
        fail(f"{what} not found: {p}")
    if not p.is_file():
        fail(f"{what} is not a file: {p}")
    return p


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it is an existing folder, else stop with one line naming it."""
    p = Path(path)
    if not p.is_dir():
        fail(f"{what} not found (no such folder): {p}")
    return p


def check_range(
    name: str, value: float, low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> None:
    """Stop with one line when an option is out of range, or is NaN or infinite (NaN passes every
    comparison, and would surface later as a library's traceback, after the work began)."""
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        fail(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        fail(f"{name} must be <= {high}, got {value}")


def open_raster(path: str | os.PathLike, what: str = "raster", *, sidecars: bool = True):
    """Open a raster for reading with rasterio; a missing, non-raster or broken file is one line.

    ``sidecars=False`` (tiles, which never have any) skips GDAL's listing of the file's folder in
    search of .aux.xml, .ovr or .msk files, which costs more the more files the folder holds.
    """
    import rasterio  # imported here so that scripts without rasters start fast

    p = require_file(path, what)
    env = {} if sidecars else {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    try:
        with warnings.catch_warnings(), rasterio.Env(**env):
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # checked by callers
            ds = rasterio.open(p)
    except rasterio.errors.RasterioError as e:
        fail(f"{what} is not a readable raster: {p} ({first_line(e, limit=None)})")
    if ds.count < 1:
        ds.close()
        fail(f"{what} has no bands: {p}")
    cut = blocks_past_end(ds)
    if cut:
        ds.close()
        fail(
            f"{what} is truncated ({cut} data blocks lie past the end of the file: copied or written only "
            f"in part?): {p}"
        )
    return ds


def read_pixels(ds, what: str, *args, **kwargs):
    """``ds.read(*args, **kwargs)`` of a dataset from ``open_raster``; a block GDAL cannot decode (a file
    damaged inside, which opens fine) is one line naming the file."""
    import rasterio

    try:
        return ds.read(*args, **kwargs)
    except rasterio.errors.RasterioError as e:
        fail(f"cannot read {what} {ds.name}: {first_line(e.__cause__ or e)}")  # rasterio chains GDAL's own


def blocks_past_end(ds) -> int:
    """How many data blocks of an open GeoTIFF lie (partly) past the end of its file; 0 for other formats.

    A GeoTIFF cut short (an interrupted copy or download) still opens, as its header comes first, and
    fails only part-way through reading it; comparing the blocks' offsets and sizes with the file size
    finds it at once, without reading any pixels.
    """
    if ds.driver != "GTiff" or not os.path.isfile(ds.name):
        return 0
    size = os.path.getsize(ds.name)
    bh, bw = ds.block_shapes[0]
    pixel_interleaved = ds.count == 1 or (ds.interleaving is not None and ds.interleaving.value == "PIXEL")
    bands = [1] if pixel_interleaved else range(1, ds.count + 1)  # pixel interleaving: blocks hold all bands
    cut = 0
    for b in bands:
        for i in range(-(-ds.height // bh)):
            for j in range(-(-ds.width // bw)):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=b)
                nbytes = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=b)
                if offset is not None and nbytes is not None:  # None: a sparse block, or not said
                    cut += int(offset) + int(nbytes) > size
    return cut


@contextlib.contextmanager
def whole_raster(*paths: str | os.PathLike) -> Iterator[None]:
    """Around writing rasters at ``paths`` with GDAL (inside ``atomic_path``, around ``rasterio.open``):
    a write GDAL could not finish, e.g. on a full disk, becomes an OSError naming the raster it left
    short, before anything is renamed into place. GDAL raises only "Write failed" for what it cannot
    write at once, a bare CPLE error for an overview or header that does not fit, and for what it writes
    when the file is closed it prints its errors and leaves a short file without raising: so each
    closed file is opened again and checked (its header only: no pixel is read).

        with atomic_path(out) as tmp, whole_raster(tmp), rasterio.open(tmp, "w", **profile) as dst:
    """
    import rasterio
    from rasterio._err import CPLE_BaseError

    try:
        yield
    except (rasterio.errors.RasterioIOError, CPLE_BaseError) as e:
        about_writing = isinstance(e, CPLE_BaseError) or str(e).startswith("Write failed")
        if not (about_writing or any(str(p) in str(e) for p in paths)):  # reading an input failed
            raise
        raise unwritten(paths) from e
    for path in paths:
        check_written(path)


def check_written(path: str | os.PathLike) -> None:
    """Re-open a raster just written (before it is renamed into place): on a full disk GDAL only prints
    its errors when the file is closed and leaves a short or empty file behind, without raising."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            whole = blocks_past_end(ds) == 0
    except rasterio.errors.RasterioError:
        whole = False
    if not whole:
        raise _write_error(path)


def unwritten(paths: Sequence[str | os.PathLike]) -> OSError:
    """The OSError for a GDAL error raised while writing ``paths``: the first raster that is not whole
    is named, else the first. On a full disk it is ENOSPC, so run_main reports one line."""
    for path in paths:
        try:
            check_written(path)
        except OSError as e:
            return e
    return _write_error(paths[0])


def _write_error(path: str | os.PathLike) -> OSError:
    """The OSError of a raster GDAL could not write: ENOSPC when the disk is (nearly) full, else EIO."""
    code = errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < 1 << 20 else errno.EIO
    return OSError(code, f"{os.strerror(code)}: the raster could not be written completely", str(path))
