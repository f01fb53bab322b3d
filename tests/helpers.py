"""Small helpers shared by the tests: writing GeoTIFFs and running a script as a user would."""

from __future__ import annotations

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
