"""Draw docs/demo_vector_map.png: a window of a vector map (vectorize_map.py's GeoPackage) styled as its
QGIS style draws it (the class colours, thin grey outlines, names on the larger polygons), with
matplotlib, read from the GeoPackage itself.

    .venv/bin/python docs/vector_map_figure.py MAP.gpkg docs/demo_vector_map.png [--window X0 Y0 SIZE_M]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyogrio.raw
import shapely
from matplotlib.patches import PathPatch
from matplotlib.path import Path as MplPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from colormap import CLASSES, legend_handles


def polygon_path(poly: shapely.Polygon) -> MplPath:
    """A matplotlib path of a polygon with its holes."""
    rings = [np.asarray(poly.exterior.coords), *(np.asarray(r.coords) for r in poly.interiors)]
    codes = np.concatenate(
        [[MplPath.MOVETO, *[MplPath.LINETO] * (len(r) - 2), MplPath.CLOSEPOLY] for r in rings]
    )
    return MplPath(np.concatenate(rings), codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gpkg", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--window", type=float, nargs=3, default=None, metavar=("X0", "Y0", "SIZE_M"))
    args = parser.parse_args()
    layer = pyogrio.list_layers(args.gpkg)[0][0]
    bbox = None
    if args.window:
        x0, y0, size = args.window
        bbox = (x0, y0, x0 + size, y0 + size)
    meta, _, geometry, fields = pyogrio.raw.read(args.gpkg, layer=layer, bbox=bbox)
    table = dict(zip(meta["fields"], fields, strict=True))
    geoms = shapely.from_wkb(geometry)
    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    for g, code, name, ha in zip(geoms, table["code"], table["name"], table["area_ha"], strict=True):
        ax.add_patch(PathPatch(polygon_path(g), facecolor=CLASSES[int(code)][1], edgecolor="0.25", lw=0.3))
        if ha > 40:
            p = g.representative_point()
            ax.annotate(name, (p.x, p.y), fontsize=5.5, ha="center", va="center", clip_on=True,
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))  # fmt: skip
    if bbox:
        ax.set_xlim(bbox[0], bbox[2])
        ax.set_ylim(bbox[1], bbox[3])
    else:
        ax.autoscale_view()
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"{args.gpkg.name}: {len(geoms):,} polygons in view, styled as its QGIS style", fontsize=9)
    fig.legend(handles=legend_handles(set(table["code"].tolist())), loc="outside right center", fontsize=7,
               frameon=False)  # fmt: skip
    fig.savefig(args.png, dpi=130)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
