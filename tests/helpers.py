"""Small helpers shared by the tests: writing GeoTIFFs and running a script as a user would."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")


def write_raster(
    path,
    data: np.ndarray,
    *,
    crs="EPSG:32631",
    transform=None,
    res: float = 10.0,
    origin=(400000.0, 4600000.0),
    nodata=0,
    descriptions=None,
    **profile,
) -> Path:
    """Write (bands, H, W) or (H, W) ``data`` as a GeoTIFF; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if transform is None:
        transform = from_origin(origin[0], origin[1], res, res)
    prof = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
    return path


def run_script(script: str, *args, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repository root, capturing text output."""
    cmd = [sys.executable, str(ROOT / script), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{script} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, one line on stderr (no traceback) containing every needle."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# Band values (uint16 reflectances x10000) of the easy synthetic classes of ``write_tile_split``.
EASY_CLASSES = {
    1: (900, 1400, 1100, 3000),
    3: (300, 600, 400, 3800),
    6: (2000, 2100, 2300, 2500),
    12: (600, 500, 300, 100),
}


def write_tile_split(
    split,
    n: int = 4,
    size: int = 64,
    seed: int = 0,
    classes: dict[int, tuple[int, ...]] | None = None,
    nodata_rows: int = 4,
    descriptions=("B2", "B3", "B4", "B8"),
    block: int = 16,
) -> list[str]:
    """Write ``n`` tile pairs (``<split>/img/t<i>.tif``, ``<split>/mask/t<i>.tif``) in divide_img's format.

    Blocks of ``block`` x ``block`` pixels take a random class of ``classes`` (code: band values), the
    image gets those values plus a little noise; the first ``nodata_rows`` rows are nodata in image and
    mask. Returns the tile names.
    """
    classes = classes or EASY_CLASSES
    rng = np.random.default_rng(seed)
    codes = np.array(sorted(classes))
    values = np.array([classes[c] for c in codes], dtype=np.float64)  # (classes, bands)
    names = []
    for i in range(n):
        nb = -(-size // block)
        pick = rng.integers(0, len(codes), (nb, nb)).repeat(block, 0).repeat(block, 1)[:size, :size]
        mask = codes[pick].astype(np.uint8)
        img = values[pick].transpose(2, 0, 1) + rng.normal(0, 30, (values.shape[1], size, size))
        img = np.clip(img, 1, 65535).astype(np.uint16)
        mask[:nodata_rows] = 0
        img[:, :nodata_rows] = 0
        name = f"t{i:03d}.tif"
        write_raster(
            Path(split) / "img" / name, img, descriptions=descriptions[: img.shape[0]], compress="deflate"
        )
        write_raster(Path(split) / "mask" / name, mask, compress="deflate")
        names.append(name)
    return names


# Runs a script under prefork.call_at's wrapper: a crash at an exact moment, e.g. between the two renames
# of a pair, or right after a plan file was written.
_RUN_SCRIPT = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script_killed(script: str, fn: str, n: int, when: str, *args, timeout: float = 600):
    """Run ``python <script> args...`` and SIGKILL it at the n-th call of ``os.<fn>``.

    ``fn`` is e.g. "replace" (what ``common.atomic_path`` renames with) or "rename"; ``when`` is
    "before" or "after" that call. Returns the CompletedProcess (returncode -9 when it was killed).
    """
    from prefork import call_at

    code = call_at(f"os.{fn}", n, when) + _RUN_SCRIPT
    cmd = [sys.executable, "-c", code, str(ROOT / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def tree_snapshot(root) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its size and mtime: to prove that nothing changed."""
    root = Path(root)
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def write_pair(split: Path, name: str, img: np.ndarray, mask: np.ndarray, **kw) -> None:
    """One tile pair of a split folder: ``img/<name>`` and ``mask/<name>``."""
    write_raster(split / "img" / name, img, **kw)
    write_raster(split / "mask" / name, mask)


def edit_gpkg(path, sql: str) -> None:
    """Change the GeoPackage as an SQLite editor would (GDAL's triggers call these functions)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        for f in ("ST_IsEmpty", "ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY"):
            db.create_function(f, 1, lambda g: 0)
        db.execute(sql)
        db.commit()


STAC_SCHEMAS = Path(__file__).parent / "data" / "stac"


def validate_stac_item(path) -> list[str]:
    """Validate a STAC item against the STAC schemas, offline: pystac's bundled core schemas and the
    extension schemas in tests/data/stac; any other schema it would download fails the test. Returns the
    schema URIs it was validated against."""
    import pystac
    from pystac.validation import JsonSchemaSTACValidator, set_validator

    validator = JsonSchemaSTACValidator()
    for f in STAC_SCHEMAS.glob("*.json"):
        schema = json.loads(f.read_text())
        validator.schema_cache[schema["$id"].rstrip("#")] = schema

    def no_download(uri: str):
        raise AssertionError(f"validation wanted a schema not in tests/data/stac: {uri}")

    validator._get_schema = lambda uri, get=validator._get_schema: (
        get(uri) if uri in validator.schema_cache else no_download(uri)
    )
    set_validator(validator)
    try:
        return pystac.Item.from_file(str(path)).validate()
    finally:
        set_validator(JsonSchemaSTACValidator())
