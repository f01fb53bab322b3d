"""The land-cover classes: codes, names, CORINE colours, rare classes, the remap of stray codes, and
the helpers that turn codes into colours (class pictures, legends, RGB composites).

Bottom floor: imports nothing of ours. This is the one place that knows the classes; every other
module takes codes, names and colours from here (the figures themselves: ``landcover.figures``).
As a command, ``python colormap.py`` prints the class table and writes a legend PNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

NODATA = 0
NUM_CLASSES = 13  # codes 0..12; the model has one output per code, 0 is never predicted

# code: (name, colour). Colours follow the CORINE Land Cover convention.
CLASSES: dict[int, tuple[str, str]] = {
    0: ("No data", "#000000"),
    1: ("Herbaceous crops", "#FFFFA8"),
    2: ("Woody crops", "#E6A600"),
    3: ("Forest", "#00A600"),
    4: ("Scrub, meadows and grasslands", "#CCF24D"),
    5: ("Bare soil", "#CCCCCC"),
    6: ("Urban area", "#E6004D"),
    7: ("Isolated urban areas", "#FF0000"),
    8: ("Green areas", "#FFA6FF"),
    9: ("Industrial, commercial and leisure areas", "#CC4DF2"),
    10: ("Mining or landfills", "#A600CC"),
    11: ("Transport network", "#CC0000"),
    12: ("Watercourses and water bodies", "#00CCF2"),
}
CODES: tuple[int, ...] = tuple(c for c in CLASSES if c != NODATA)  # 1..12, the valid classes
WATER = 12
RARE_CLASSES: tuple[int, ...] = (5, 7, 8, 10, 11)
# Stray codes of the 41-class source map and the class they belong to: beaches -> bare soil,
# sea -> water. Any other code outside 0..12 is unknown: reported and treated as nodata.
DEFAULT_REMAP: dict[int, int] = {19: 5, 41: 12}


def name(code: int) -> str:
    """The class name of a code."""
    return CLASSES[int(code)][0]


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


# (13, 3) uint8: the colour of each code, so that PALETTE[mask] colours a class map.
PALETTE = np.array([hex_to_rgb(CLASSES[c][1]) for c in range(NUM_CLASSES)], dtype=np.uint8)


def gdal_colour_table() -> dict[int, tuple[int, int, int, int]]:
    """Colour table for ``rasterio``'s ``write_colormap``: nodata transparent, classes opaque."""
    table = {c: (*hex_to_rgb(CLASSES[c][1]), 255) for c in CODES}
    table[NODATA] = (0, 0, 0, 0)
    return table


def remap_lut(remap: dict[int, int] | None = None) -> tuple[np.ndarray, list[int]]:
    """A 256-entry lookup table for uint8 masks: valid codes kept, stray codes remapped, the rest 0.

    Returns the table and the list of codes it sends to nodata as unknown (to be reported).
    """
    remap = DEFAULT_REMAP if remap is None else remap
    lut = np.zeros(256, dtype=np.uint8)
    for c in CODES:
        lut[c] = c
    for src, dst in remap.items():
        if dst not in CLASSES:
            raise ValueError(f"remap target {dst} is not a class code")
        lut[src] = dst
    unknown = [v for v in range(1, 256) if lut[v] == 0]
    return lut, unknown


def land_cover_cmap():
    """A matplotlib colormap and norm indexed by code: ``imshow(mask, cmap=cmap, norm=norm)``."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap([CLASSES[c][1] for c in range(NUM_CLASSES)], name="land_cover")
    norm = BoundaryNorm(np.arange(-0.5, NUM_CLASSES + 0.5), NUM_CLASSES)
    return cmap, norm


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class codes -> (H, W, 3) uint8 picture in the class colours (unknown codes black)."""
    m = np.asarray(mask)
    return PALETTE[np.where((m >= 0) & (m < NUM_CLASSES), m, 0).astype(np.intp)]


def legend_handles(codes: Iterable[int]):
    """One labelled colour patch per class code given (nodata left out), in code order."""
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=CLASSES[c][1], edgecolor="0.3", label=f"{c} {CLASSES[c][0]}")
        for c in sorted({int(c) for c in codes})
        if c != NODATA and c in CLASSES
    ]


def rgb_band_indices(descriptions: Sequence[str | None], rgb: Sequence[int] = (3, 2, 1)) -> list[int]:
    """0-based indices of the red, green and blue bands.

    Taken from the band descriptions when they name B4, B3 and B2 (for a stacked tile such as
    ``s2_april:B4``, the first scene's), else from ``rgb``: 1-based band numbers (``--rgb``).
    """
    names = [(d or "").split(":")[-1].strip().upper() for d in descriptions]
    found = []
    for band in ("B4", "B3", "B2"):
        if band not in names:
            break
        found.append(names.index(band))
    if len(found) == 3:
        return found
    if any(not 1 <= b <= len(descriptions) for b in rgb):
        raise ValueError(f"--rgb {list(rgb)} is out of range for {len(descriptions)} bands")
    return [b - 1 for b in rgb]


def stretch_rgb(
    bands: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2, 98)
) -> np.ndarray:
    """(3, H, W) reflectances -> (H, W, 3) uint8 with a per-band percentile stretch.

    The percentiles are computed over valid pixels only (nodata would drag the stretch to black);
    nodata pixels are drawn black.
    """
    bands = np.asarray(bands, dtype=np.float32)
    if valid is None:
        valid = np.any(bands != 0, axis=0)
    out = np.zeros((*bands.shape[1:], 3), dtype=np.uint8)
    if not valid.any():
        return out
    for i in range(3):
        lo, hi = np.percentile(bands[i][valid], percentiles)
        scaled = (bands[i] - lo) / max(hi - lo, 1e-6)
        out[..., i] = np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)
    out[~valid] = 0
    return out


def class_table() -> str:
    """The classes as a Markdown table: code, name, colour, rare (augmented by default)."""
    lines = ["| code | name | colour | rare |", "|---|---|---|---|"]
    for c, (label, colour) in CLASSES.items():
        lines.append(f"| {c} | {label} | {colour} | {'yes' if c in RARE_CLASSES else ''} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from pathlib import Path

    from landcover.common import ArgumentParser
    from landcover.figures import legend_figure, save_figure

    parser = ArgumentParser(description="Print the class table and write a legend PNG of the classes.")
    parser.add_argument("--legend", type=Path, default=Path("land_cover_legend.png"), help="PNG to write")
    args = parser.parse_args(argv)
    print(class_table())
    save_figure(legend_figure(), args.legend, tight=True)
    print(f"wrote {args.legend}")


if __name__ == "__main__":
    import sys

    from landcover.common import run_main

    sys.exit(run_main(main))
