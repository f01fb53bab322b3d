"""The STAC Item beside a land-cover map (``MAP.json``): what the map is, where its files are, and
what it came from, so a catalogue (or a colleague) can find and use it without asking.

The item is rebuilt from what is on disk each time a script touches the map (predict.py and
generalize_map.py write it, vectorize_map.py and assess_map.py add their products to it), so it never
lists a file that is gone. It carries the projection extension (the grid) and the classification
extension (codes, names, colours and pixel counts of the classes); the scenes and the checkpoint come
from the map's own tags, which predict.py writes and generalize_map.py carries along.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping

from colormap import CLASSES, NODATA, NUM_CLASSES
from landcover.common import atomic_write_text
from landcover.rasters import MapFiles

GPKG, COG, PNG, JSON = "application/geopackage+sqlite3", pystac.MediaType.COG, "image/png", "application/json"
# asset key -> title, roles, media type; the map's own files first (found beside it by name), then the
# products other scripts add
ASSETS: dict[str, tuple[str, list[str], str]] = {
    "map": ("Land-cover map (class codes, colour table)", ["data"], COG),
    "confidence": ("Probability of the mapped class, percent (nodata 255)", ["data", "quality"], COG),
    "review": ("Review mask: 1 where the confidence is below the threshold", ["quality"], COG),
    "probabilities": ("Calibrated probability of each class, percent (band k: code k)", ["data"], COG),
    "preview": ("Preview of the map", ["overview"], PNG),
    "confidence_preview": ("Preview of the confidence", ["overview"], PNG),
    "vector": ("Vector map: one polygon per patch, with a QGIS style", ["data"], GPKG),
    "assessment": ("Accuracy and class areas with 95 % intervals (assess_map.py)", ["metadata"], JSON),
    "assessment_report": ("The assessment as a report", ["metadata"], "text/markdown"),
}
SIBLINGS = ("map", "confidence", "review", "probabilities", "preview", "confidence_preview")
CHECKPOINT_TAGS = (
    "checkpoint",
    "checkpoint_sha256",
    "arch",
    "encoder",
    "training_data",
    "epoch",
    "temperature",
)


def item_path(map_path: Path) -> Path:
    return Path(map_path).with_suffix(".json")


def write_item(map_path: Path, added: Mapping[str, Path] | None = None) -> Path:
    """Write ``MAP.json`` for the map: its files beside it, the assets ``added`` (key of ASSETS ->
    path) and those an earlier item listed that still exist."""
    map_path, out = Path(map_path), item_path(map_path)
    files = MapFiles(map_path)
    assets = {k: map_path if k == "map" else getattr(files, k) for k in SIBLINGS}
    assets = {k: p for k, p in assets.items() if p.is_file()}
    assets |= _listed(out) | {k: Path(v) for k, v in (added or {}).items()}
    with rasterio.open(map_path) as ds:
        item = _item(ds, map_path)
        counts = class_counts(ds)
    for key, path in assets.items():
        title, roles, media = ASSETS[key]
        item.add_asset(key, pystac.Asset(str(path.resolve()), title=title, roles=roles, media_type=media))
    ClassificationExtension.ext(item.assets["map"], add_if_missing=True).classes = classes(counts)
    source = item.properties.get("landcover:generalized_from")
    if source and item_path(Path(source)).is_file():  # the map it was generalised from, when described
        href = os.path.relpath(item_path(Path(source)).resolve(), out.resolve().parent)
        item.add_link(
            pystac.Link(
                "derived_from", href, pystac.MediaType.JSON, title="the map before the minimum mapping unit"
            )
        )
    item.set_self_href(str(out.resolve()))
    item.make_asset_hrefs_relative()
    atomic_write_text(out, json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return out


def add_to_item(map_path: Path, added: Mapping[str, Path]) -> Path | None:
    """Add products to the map's item, when the map has one (a change raster or a mask has none)."""
    if not item_path(map_path).is_file():
        return None
    return write_item(map_path, added)


def _item(ds, map_path: Path) -> pystac.Item:
    """The item: footprint in WGS 84, the grid (projection extension), scenes and checkpoint."""
    b, geometry, bbox = ds.bounds, None, None
    if ds.crs is not None:  # a map without a CRS has no footprint STAC could place
        geometry = transform_geom(ds.crs, "EPSG:4326", mapping(box(*b)))
        xs, ys = zip(*geometry["coordinates"][0], strict=True)
        bbox = [min(xs), min(ys), max(xs), max(ys)]
    tags = ds.tags()
    when, start, end = time_of(tags.get("datetime"), map_path)
    properties = {
        "title": f"Land cover {map_path.stem}",
        "description": "Land-cover map (12 classes) from Sentinel-2 scenes",
        "landcover:scenes": tags["scenes"].split() if "scenes" in tags else [],
        "landcover:checkpoint": {k: tags[k] for k in CHECKPOINT_TAGS if k in tags},
        "landcover:temperature": float(tags.get("temperature", 1)),
    }
    if "mmu_ha" in tags:
        properties["landcover:mmu_ha"] = float(tags["mmu_ha"])
        properties["landcover:generalized_from"] = tags.get("generalized_from")
    if start:
        properties |= {"start_datetime": start.isoformat(), "end_datetime": end.isoformat()}
    item = pystac.Item(map_path.stem, geometry, bbox, when, properties)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = ds.crs.to_epsg() if ds.crs else None
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=ds.crs.to_wkt() if ds.crs and not epsg else None,
        shape=[ds.height, ds.width],
        transform=list(ds.transform)[:6],
        bbox=list(b),
    )
    return item


def classes(counts: np.ndarray) -> list[Classification]:
    """The classification extension's classes: code, name, colour, pixels and share of valid pixels."""
    valid = max(int(counts[1:].sum()), 1)
    nodata = Classification.create(
        NODATA, name="no_data", title=CLASSES[NODATA][0], nodata=True, count=int(counts[0])
    )
    out = [nodata]
    for code in range(1, NUM_CLASSES):
        name, colour = CLASSES[code]
        share = round(100 * int(counts[code]) / valid, 3)
        out.append(
            Classification.create(
                code,
                name=_slug(name),
                title=name,
                color_hint=colour.lstrip("#").upper(),
                count=int(counts[code]),
                percentage=share,
            )
        )
    return out


def class_counts(ds) -> np.ndarray:
    """Pixels of each code 0..12, read block by block."""
    counts = np.zeros(256, np.int64)
    for _, w in ds.block_windows(1):
        counts += np.bincount(ds.read(1, window=w).ravel(), minlength=256)
    return counts[:NUM_CLASSES]


def _slug(name: str) -> str:
    """A class name as the extension's ``name`` pattern wants it (letters, digits, _ and -)."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in name.lower()).split())


def _listed(out: Path) -> dict[str, Path]:
    """The products an earlier item listed (other than the map's own files) that still exist."""
    if not out.is_file():
        return {}
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}  # a damaged item is rebuilt from the files
    listed = {k: out.parent / a.get("href", "") for k, a in old.get("assets", {}).items()}
    return {k: p for k, p in listed.items() if k in ASSETS and k not in SIBLINGS and p.is_file()}


def parse_datetime(text: str) -> str:
    """``--datetime``: an ISO date or time (UTC unless it says), or START/END; normalised, or ValueError."""
    parts = [dt.datetime.fromisoformat(p) for p in text.split("/")]
    if len(parts) > 2 or (len(parts) == 2 and parts[0] > parts[1]):
        raise ValueError(f"not a date, a time or START/END: {text}")
    return "/".join(_utc(p).isoformat() for p in parts)


def time_of(
    tag: str | None, map_path: Path
) -> tuple[dt.datetime | None, dt.datetime | None, dt.datetime | None]:
    """The item's datetime, or its start and end: the map's ``datetime`` tag (predict.py --datetime),
    else the map file's modification time."""
    if not tag:
        return dt.datetime.fromtimestamp(int(map_path.stat().st_mtime), dt.UTC), None, None
    parts = [dt.datetime.fromisoformat(p) for p in tag.split("/")]
    return (parts[0], None, None) if len(parts) == 1 else (None, parts[0], parts[1])


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
