"""The stratified random sample of a class map's pixels, and the GeoPackage that carries it to the
interpreters and back (sample_map.py writes it, assess_map.py reads it).

Middle floor: imports landcover.common, landcover.geo and colormap. A class map (one uint8 band, codes
1..12, nodata 0; or a change raster of compare_maps.py, whose from-to pair codes up to 144 and their
names the raster carries: ``class_names``, ``largest_code``) is read by its own blocks, in the same
order, at most twice: ``count_classes`` counts each class's pixels per block; ``draw_ordinals`` draws,
for each class c, n_c distinct ordinals from range(N_c) with a seeded numpy Generator (the k-th pixel
of class c in block order is ordinal k); and ``locate`` reads again only the blocks holding a drawn
ordinal and picks those pixels. Memory: a block and a few counters per block (13 integers; 145 for a
change raster), whatever the map's size. Other rasters on the grid (the confidence, a reference map)
are read only at the sampled pixels (``values_at``).

The GeoPackage (written with pyogrio, read back with it):
  sample  points at the sampled pixels' centres, in the map's CRS: id, row, col, stratum, map_code,
          map_name, confidence (percent; NULL without a confidence raster), reference (NULL: the field
          the interpreters fill; 0 reads as NULL too)
  strata  a table: stratum, name, pixels (of the class in the whole map), area_ha, n (sample size)
  map     a table of one row, the map the sample was drawn from, so that assess_map.py can refuse a
          sample of another map: file, path, width, height, crs (WKT), transform (the six affine
          coefficients a, b, c, d, e, f), pixel_width_m, pixel_height_m, pixel_area_ha, seed
Tables rather than layer metadata: QGIS shows them, and edits of the sample layer never touch them.
GDAL reads an integer field silently (a text '7' as 7, but 4.5 as 4 and 'x' as 0), so the reference
field's stored values are also checked with SQLite's own types (read only) before they are trusted.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from colormap import CODES, NODATA, name
from landcover.common import fail, first_line, open_raster, progress, read_pixels
from landcover.geo import Grid

SAMPLE, STRATA, MAP = "sample", "strata", "map"
SAMPLE_FIELDS = ("id", "row", "col", "stratum", "map_code", "map_name", "confidence", "reference")
CHUNK_PIXELS = 1 << 22  # pixels per window when a raster is stored in strips (about 4 MB of uint8)
MAX_CODE = max(CODES)
GDAL_CACHE_MB = (
    64  # GDAL's block cache: each block is read once per pass, a larger cache only grows with the map
)


@dataclass(frozen=True)
class MapInfo:
    """The map a sample was drawn from: enough to recognise it again, and its pixels' size."""

    file: str
    path: str
    grid: Grid
    pixel_width_m: float
    pixel_height_m: float
    pixel_area_ha: float
    seed: int | None = None


@dataclass
class Points:
    """Sampled pixels, in the map's pixel order; ``confidence`` and ``reference`` are -1 where NULL."""

    row: np.ndarray
    col: np.ndarray
    stratum: np.ndarray
    map_code: np.ndarray
    confidence: np.ndarray
    reference: np.ndarray
    id: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.row)


# ---------------------------------------------------------------------------------------------------
# Reading a class map by blocks


def reading():
    """The GDAL settings of the block passes: a fixed block cache (GDAL's default, a share of the
    machine's memory, would fill with blocks never read again and grow with the map)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def open_class_map(path: str | Path, what: str = "map"):
    """Open a class map: one uint8 band on a projected grid in metres; anything else is one line."""
    ds = open_raster(path, what)
    problem = None
    if ds.count != 1 or ds.dtypes[0] != "uint8":
        problem = f"is not a class map (one uint8 band; it has {ds.count} band(s) of {ds.dtypes[0]})"
    elif ds.crs is None or not ds.crs.is_projected:
        problem = "has no projected CRS (areas need a grid in metres)"
    elif ds.nodata is not None and ds.nodata != NODATA:
        problem = f"has nodata {ds.nodata:g}; class maps have nodata {NODATA}"
    if problem:
        ds.close()
        fail(f"{what} {problem}: {path}")
    return ds


def map_info(ds, path: str | Path, seed: int | None = None) -> MapInfo:
    """The MapInfo of an open class map."""
    t = ds.transform
    metres = ds.crs.linear_units_factor[1]
    width_m = float(np.hypot(t.a, t.d) * metres)
    height_m = float(np.hypot(t.b, t.e) * metres)
    area = abs(t.a * t.e - t.b * t.d) * metres**2 / 1e4
    p = Path(path)
    return MapInfo(p.name, str(p.resolve()), Grid.of(ds), width_m, height_m, float(area), seed)


def windows(ds) -> list:
    """The windows a raster is read by, in raster order: its blocks, or groups of whole strips."""
    from rasterio.windows import Window

    bh, bw = ds.block_shapes[0]
    if bw < ds.width:
        return [w for _, w in ds.block_windows(1)]
    rows = max(bh, (CHUNK_PIXELS // max(1, ds.width)) // bh * bh)
    return [Window(0, r, ds.width, min(rows, ds.height - r)) for r in range(0, ds.height, rows)]


def largest_code(ds) -> int:
    """The largest code a class map may hold: a change raster's (named CHANGE_<code>) from-to pair
    codes reach 12 * 12; other maps 12."""
    return MAX_CODE * MAX_CODE if any(k.startswith("CHANGE_") for k in ds.tags(1)) else MAX_CODE


def class_names(ds) -> dict[int, str]:
    """The codes of a class map and their names, from the raster itself: a change raster names its
    from-to pairs in band tags CHANGE_<code> (compare_maps.py); any other map has colormap.py's 1..12."""
    tags = ds.tags(1)
    pairs = {int(k[7:]): v for k, v in tags.items() if k.startswith("CHANGE_") and k[7:].isdigit()}
    pairs.pop(NODATA, None)
    return dict(sorted(pairs.items())) if pairs else {c: name(c) for c in CODES}


def count_classes(
    ds, what: str, wins: Sequence, within=None, max_code: int = MAX_CODE
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each code 0..max_code in the whole map and in each window ((windows, max_code + 1)
    uint32); a code above is one line. ``within``: another open map on the grid, counting only where it
    is valid."""
    per = np.zeros((len(wins), max_code + 1), np.uint32)
    for i, w in enumerate(progress(wins, desc=f"counting {what}", unit="block", leave=False, delay=1.0)):
        data = read_pixels(ds, what, 1, window=w)
        if within is not None:
            data = data[read_pixels(within, "map", 1, window=w) != NODATA]
        counts = np.bincount(data.ravel(), minlength=256)
        if counts[max_code + 1 :].any():
            bad = int(np.flatnonzero(counts[max_code + 1 :])[0]) + max_code + 1
            fail(f"{what} is not a class map: code {bad} (classes are 1..{max_code}, nodata 0): {ds.name}")
        per[i] = counts[: max_code + 1]
    return per.sum(axis=0, dtype=np.int64), per


def draw_ordinals(pixels: dict[int, int], sizes: dict[int, int], seed: int) -> dict[int, np.ndarray]:
    """For each class (in code order), ``sizes[c]`` distinct ordinals of range(pixels[c]), sorted:
    the same seed gives the same sample (numpy's Generator, without replacement)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in sorted(sizes):
        n = int(sizes[c])
        out[c] = np.sort(rng.choice(int(pixels[c]), size=n, replace=False)) if n else np.zeros(0, np.int64)
    return out


def locate(ds, wins: Sequence, per: np.ndarray, ordinals: dict[int, np.ndarray]) -> Points:
    """Second pass: the pixels whose class-ordinal was drawn, in raster order. Only the windows
    holding a drawn ordinal are read again."""
    start = np.cumsum(per, axis=0, dtype=np.int64) - per  # ordinal of each class's first pixel in a window
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    picked: dict[int, dict[int, np.ndarray]] = {}
    for c, ords in ordinals.items():
        lo = np.searchsorted(ords, start[:, c])
        hi = np.searchsorted(ords, start[:, c] + per[:, c])
        for i in np.flatnonzero(hi > lo):
            picked.setdefault(int(i), {})[c] = ords[lo[i] : hi[i]] - start[i, c]
    need = sorted(picked.items())
    for i, picks in progress(need, desc="locating the sample", unit="block", leave=False, delay=1.0):
        w = wins[i]
        flat = read_pixels(ds, "map", 1, window=w).ravel()
        for c, local in picks.items():
            pos = np.flatnonzero(flat == c)[local]
            r, q = np.divmod(pos, int(w.width))
            found.append((r + int(w.row_off), q + int(w.col_off), np.full(len(pos), c, np.uint8)))
    if not found:
        empty = np.zeros(0, np.int64)
        return Points(empty, empty, empty, empty, empty, empty)
    rows, cols, codes = (np.concatenate(a) for a in zip(*found, strict=True))
    order = np.lexsort((cols, rows))
    none = np.full(len(order), -1, np.int64)
    rows, cols, codes = rows[order], cols[order], codes[order]
    return Points(rows, cols, codes.astype(np.int64), codes.astype(np.int64), none, none.copy())


def values_at(ds, rows: np.ndarray, cols: np.ndarray, what: str) -> np.ndarray:
    """The first band's values at pixels (row, col), reading each block that holds one once."""
    from rasterio.windows import Window

    bh, bw = ds.block_shapes[0]
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    out = np.zeros(len(rows), np.float64)
    block = (rows // bh) * (ds.width // bw + 2) + cols // bw
    order = np.argsort(block, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(block[order])) + 1):
        if not len(idx):
            continue
        r0, c0 = int(rows[idx[0]]) // bh * bh, int(cols[idx[0]]) // bw * bw
        w = Window(c0, r0, min(bw, ds.width - c0), min(bh, ds.height - r0))
        data = read_pixels(ds, what, 1, window=w)
        out[idx] = data[rows[idx] - r0, cols[idx] - c0]
    return out


# ---------------------------------------------------------------------------------------------------
# The GeoPackage


@contextlib.contextmanager
def _gpkg_errors(path: Path, writing: bool) -> Iterator[None]:
    """pyogrio's errors as one line (reading) or an OSError naming the file (writing); GDAL's warning
    about the temporary name's extension (a GeoPackage is written as NAME.gpkg.partial) silenced."""
    import pyogrio.errors

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(extension|file extension).*", category=RuntimeWarning)
        try:
            yield
        except (
            pyogrio.errors.DataSourceError,
            pyogrio.errors.DataLayerError,
            pyogrio.errors.FieldError,
        ) as e:
            if writing:
                raise OSError(errno.EIO, f"cannot write the GeoPackage: {first_line(e)}", str(path)) from e
            fail(f"cannot read the sample {path}: {first_line(e)}")


def write_sample(path: Path, pts: Points, strata: list[dict], info: MapInfo) -> None:
    """Write the sample layer and the strata and map tables to ``path`` (a new file)."""
    import pyogrio.raw
    import shapely

    t = info.grid.transform
    x = t.a * (pts.col + 0.5) + t.b * (pts.row + 0.5) + t.c
    y = t.d * (pts.col + 0.5) + t.e * (pts.row + 0.5) + t.f
    geometry = shapely.to_wkb(shapely.points(x, y))
    ids = np.arange(1, len(pts) + 1, dtype=np.int32)
    named = {int(s["stratum"]): s["name"] for s in strata}
    names = np.array(
        [named.get(int(c), name(c) if c in CODES else str(c)) for c in pts.map_code], dtype=object
    )
    ints = [ids, pts.row, pts.col, pts.stratum, pts.map_code, None, pts.confidence, pts.reference]
    data = [names if a is None else np.asarray(a, np.int32) for a in ints]
    masks = [None] * 6 + [pts.confidence < 0, pts.reference < 0]
    table = [np.array([s[k] for s in strata], dtype=d) for k, d in STRATA_COLUMNS]
    g = info.grid
    row = dict(
        file=info.file, path=info.path, width=g.width, height=g.height, crs=g.crs.to_wkt(),
        transform=",".join(repr(float(v)) for v in tuple(t)[:6]), pixel_width_m=info.pixel_width_m,
        pixel_height_m=info.pixel_height_m, pixel_area_ha=info.pixel_area_ha, seed=info.seed,
    )  # fmt: skip
    one = [np.array([v], dtype=object if isinstance(v, str) else None) for v in row.values()]
    with _gpkg_errors(path, writing=True):
        pyogrio.raw.write(
            path, geometry, data, list(SAMPLE_FIELDS), field_mask=masks, layer=SAMPLE, driver="GPKG",
            geometry_type="Point", crs=g.crs.to_wkt(),
        )  # fmt: skip
        pyogrio.raw.write(
            path, None, table, [k for k, _ in STRATA_COLUMNS], layer=STRATA, driver="GPKG", append=True
        )
        pyogrio.raw.write(path, None, one, list(row), layer=MAP, driver="GPKG", append=True)


STRATA_COLUMNS = (
    ("stratum", np.int32),
    ("name", object),
    ("pixels", np.int64),
    ("area_ha", np.float64),
    ("n", np.int32),
)


def read_table(path: Path, layer: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Columns of a layer of the sample's GeoPackage; a missing layer or field is one line."""
    import pyogrio
    import pyogrio.raw

    with _gpkg_errors(path, writing=False):
        layers = {str(n) for n, _ in pyogrio.list_layers(path)}
        if layer not in layers:
            fail(f"{path} is not a sample of sample_map.py: it has no layer '{layer}'")
        fields = [str(f) for f in pyogrio.read_info(path, layer=layer)["fields"]]
        missing = [c for c in columns if c not in fields]
        if missing:
            fail(f"field '{missing[0]}' missing in layer '{layer}' of {path}")
        meta, _, _, data = pyogrio.raw.read(path, layer=layer, columns=list(columns), read_geometry=False)
    return dict(zip([str(f) for f in meta["fields"]], data, strict=True))


def read_map_info(path: Path) -> MapInfo:
    """The map a sample was drawn from, from its ``map`` table."""
    from affine import Affine
    from rasterio.crs import CRS

    cols = ("file", "path", "width", "height", "crs", "transform", "pixel_width_m", "pixel_height_m")
    t = read_table(path, MAP, (*cols, "pixel_area_ha", "seed"))
    try:
        coeffs = [float(v) for v in str(t["transform"][0]).split(",")]
        grid = Grid(CRS.from_wkt(str(t["crs"][0])), Affine(*coeffs), int(t["width"][0]), int(t["height"][0]))
        seed = t["seed"][0]
        return MapInfo(
            str(t["file"][0]), str(t["path"][0]), grid, float(t["pixel_width_m"][0]),
            float(t["pixel_height_m"][0]), float(t["pixel_area_ha"][0]),
            None if seed is None or seed != seed else int(seed),
        )  # fmt: skip
    except (ValueError, TypeError, IndexError) as e:
        fail(f"the map table of {path} is damaged: {first_line(e)}")


def stored_types(path: Path, layer: str, field: str) -> dict[int, str]:
    """Point id -> the value stored in ``field`` where SQLite holds something GDAL would read silently
    as another integer (a real with a fraction, text that is no integer): read only."""
    quoted = '"' + field.replace('"', '""') + '"'
    bad = {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)) as db:
            rows = db.execute(f'SELECT id, typeof({quoted}), {quoted} FROM "{layer}"').fetchall()
    except sqlite3.Error as e:
        fail(f"cannot read the sample {path}: {first_line(e)}")
    for pid, kind, value in rows:
        if kind == "real" and float(value).is_integer():
            continue
        if kind == "text" and str(value).strip().lstrip("+-").isdigit():
            continue
        if kind in ("real", "text", "blob") and not (kind == "text" and str(value).strip() == ""):
            bad[int(pid)] = repr(value)
    return bad


def read_points(path: Path, field: str, max_code: int = MAX_CODE) -> Points:
    """The sample's points with their reference codes (-1 where NULL or 0: not labelled). A reference
    that is no class code, a missing field or a damaged row/col is one line naming the point."""
    t = read_table(path, SAMPLE, ("id", "row", "col", "stratum", "map_code", field))
    for pid, value in list(stored_types(path, SAMPLE, field).items())[:1]:
        fail(f"point id {pid} of {path}: {field} holds {value}, not a class code (1..{max_code})")
    ints = {}
    for k in ("id", "row", "col", "stratum", "map_code"):
        v = np.asarray(t[k], np.float64)
        if np.any(~np.isfinite(v)) or np.any(v != np.round(v)):
            fail(f"field '{k}' of {path} has empty or non-integer values: the layer was edited")
        ints[k] = v.astype(np.int64)
    ref = _codes(np.asarray(t[field], dtype=object), ints["id"], field, path, max_code)
    return Points(
        ints["row"], ints["col"], ints["stratum"], ints["map_code"], np.full(len(ref), -1), ref, ints["id"]
    )


def _codes(values: np.ndarray, ids: np.ndarray, field: str, path: Path, max_code: int) -> np.ndarray:
    """Reference values as codes, -1 for NULL, NaN, empty or 0."""
    out = np.full(len(values), -1, np.int64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if not f.is_integer() or not 0 <= f <= max_code:
            fail(
                f"point id {ids[i]} of {path}: {field} {v!r} is not a class code "
                f"(1..{max_code}; empty or 0: not labelled)"
            )
        out[i] = int(f) if f else -1
    return out
