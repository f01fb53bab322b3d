"""Make the demo data: a synthetic, Catalonia-like area seen by Sentinel-2 in April and August.

Reads nothing. Writes into --out (default data/raw) what the real ICGC inputs look like, so that the
demo and the tests run the whole chain with no download: ``s2_april.tif`` and ``s2_august.tif`` (10
bands uint16 surface reflectance x 10000, B2 B3 B4 B5 B6 B7 B8 B8A B11 B12 named in the band
descriptions, 10 m, EPSG:32631, nodata 0, tiled DEFLATE; --size x --size pixels) and
``landcover_1m.tif`` (uint8 codes of colormap.py plus 19 beaches and 41 sea, as in the ICGC map; 1 m,
same extent and CRS, nodata 0, colour table). The same --seed gives the same pixels; a finished set
of the same size, seed and ``VERSION`` is left as it is (--force makes it again), and an interrupted
run leaves only *.partial files. How the landscape is painted: ``paint_landscape``; rendered:
``render_scenes``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import ArrayLike
from rasterio import features
from rasterio.transform import Affine
from rasterio.windows import Window
from scipy import ndimage
from scipy.signal import lfilter
from scipy.spatial import Voronoi
from shapely.geometry import Polygon
from shapely.ops import unary_union

from colormap import CLASSES, NODATA, gdal_colour_table
from landcover.common import ArgumentParser, atomic_path, check_range, fail, progress, run_main

BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
SEASONS = ("april", "august")
SCENE_NAMES = {"april": "s2_april.tif", "august": "s2_august.tif"}
MASK_NAME = "landcover_1m.tif"
CHANGES_NAME = "changes.json"  # the second year's planned changes
CRS = "EPSG:32631"
ORIGIN = (420000.0, 4610000.0)  # top-left corner (UTM 31N, inland of the Maresme coast)
PIXEL = 10.0  # metres per scene pixel
FINE = 10  # mask pixels per scene pixel along each axis (the mask is 1 m)
REFLECTANCE_SCALE = 10000  # reflectance scaling of the scenes
STRIP_ROWS = 64  # scene rows per strip (640 mask rows)
MIN_SIZE, MAX_SIZE = 100, 10000
VERSION = "2"  # bump when the generator changes, so that finished data is made again
BEACH, SEA = 19, 41  # stray codes of the real 41-class map (colormap.DEFAULT_REMAP)

# ---------------------------------------------------------------------------------------------------
# Spectra. Endmember surface reflectances x 10000 in BANDS order; every cover is a mixture of them.

ENDMEMBERS: dict[str, tuple[int, ...]] = {
    "leaf": (280, 620, 330, 1050, 2900, 3600, 3900, 4000, 1950, 900),  # green crop canopy
    "canopy": (190, 360, 210, 620, 1650, 2050, 2250, 2350, 1050, 450),  # dark tree crowns and shade
    "straw": (950, 1250, 1550, 1850, 2100, 2250, 2400, 2500, 3350, 2650),  # dry grass, stubble
    "soil": (1150, 1550, 1950, 2250, 2450, 2600, 2700, 2800, 3550, 3000),  # dry calcareous soil
    "wet_soil": (650, 900, 1150, 1350, 1500, 1600, 1700, 1800, 2450, 1950),  # tilled or irrigated soil
    "rock": (2300, 2700, 3100, 3300, 3400, 3500, 3550, 3600, 4050, 3500),  # limestone
    "asphalt": (600, 700, 780, 860, 930, 980, 1030, 1070, 1300, 1200),
    "concrete": (1400, 1500, 1600, 1680, 1750, 1800, 1850, 1900, 2150, 1950),
    "tile": (650, 850, 1450, 1750, 1900, 2000, 2100, 2200, 2550, 2050),  # red roof tiles
    "metal": (2700, 2800, 2900, 2950, 3000, 3050, 3100, 3100, 2950, 2600),  # industrial roofs
    "shade": (250, 280, 300, 320, 350, 370, 400, 410, 350, 300),  # building shadows
    "water": (480, 650, 480, 420, 300, 260, 230, 210, 90, 70),  # inland water, a little turbid
    "sea": (620, 560, 300, 230, 170, 150, 130, 120, 50, 40),
    "sand": (1500, 1900, 2300, 2600, 2800, 2950, 3050, 3150, 3700, 3200),
}
CLOUD_SPECTRUM = np.array((4300, 4350, 4400, 4500, 4600, 4650, 4700, 4750, 3700, 2700), dtype=np.float32)
# How more vigour changes a spectrum (relative): less red and blue, more red edge and NIR.
VIGOUR_RESPONSE = np.array((-0.4, -0.25, -0.5, -0.15, 0.25, 0.35, 0.4, 0.4, -0.1, -0.3), dtype=np.float32)


@dataclass(frozen=True)
class Cover:
    """One kind of surface: its class in the mask and how much it varies."""

    name: str
    code: int  # class code written to the mask
    texture: float  # relative pixel-to-pixel variation inside a patch
    brightness: float  # relative variation between patches (parcels, stands, towns)
    vigour: float  # variation of the vegetation vigour between patches


# Index in this tuple = the code burnt by the rasterizer; 0 is outside the region (nodata).
# fmt: off
COVERS: tuple[Cover, ...] = (
    #     name                  class  texture brightness vigour
    Cover("outside",         NODATA,    0.00,   0.00,     0.00),
    Cover("winter cereal",        1,    0.03,   0.09,     0.20),
    Cover("summer crop",          1,    0.05,   0.09,     0.20),
    Cover("fallow",               1,    0.05,   0.09,     0.15),
    Cover("olive grove",          2,    0.06,   0.09,     0.15),
    Cover("vineyard",             2,    0.06,   0.09,     0.15),
    Cover("orchard",              2,    0.06,   0.09,     0.15),
    Cover("pine forest",          3,    0.08,   0.06,     0.08),
    Cover("holm oak forest",      3,    0.08,   0.06,     0.08),
    Cover("riparian forest",      3,    0.08,   0.05,     0.06),
    Cover("scrub",                4,    0.10,   0.09,     0.15),
    Cover("grassland",            4,    0.06,   0.09,     0.20),
    Cover("bare soil",            5,    0.06,   0.10,     0.00),
    Cover("gravel bar",           5,    0.08,   0.06,     0.00),
    Cover("urban",                6,    0.08,   0.08,     0.00),
    Cover("old town",             6,    0.06,   0.06,     0.00),
    Cover("street",               6,    0.06,   0.05,     0.00),
    Cover("farmhouse",            7,    0.10,   0.06,     0.00),
    Cover("residential estate",   7,    0.15,   0.06,     0.06),
    Cover("park",                 8,    0.10,   0.06,     0.10),
    Cover("industrial yard",      9,    0.15,   0.08,     0.00),
    Cover("industrial roof",      9,    0.08,   0.10,     0.00),
    Cover("quarry",              10,    0.10,   0.08,     0.00),
    Cover("landfill",            10,    0.12,   0.08,     0.00),
    Cover("road",                11,    0.04,   0.05,     0.00),
    Cover("highway",             11,    0.04,   0.03,     0.00),
    Cover("railway",             11,    0.05,   0.03,     0.00),
    Cover("river",               12,    0.05,   0.05,     0.00),
    Cover("lake",                12,    0.02,   0.05,     0.00),
    Cover("beach",            BEACH,    0.03,   0.03,     0.00),
    Cover("sea",                SEA,    0.01,   0.02,     0.00),
)
# Endmember fractions of each cover in April, and in August where it differs. Single dates are
# ambiguous on purpose, as in reality: in April cereal looks like grassland, olive groves like scrub
# and vineyards like bare soil; in August stubble looks like bare soil and summer crops like
# orchards. The pair of dates tells them apart.
APRIL_MIXTURES = {
    "winter cereal":      "leaf .88 soil .12",
    "summer crop":        "leaf .2 wet_soil .8",
    "fallow":             "leaf .35 straw .15 soil .5",
    "olive grove":        "canopy .33 leaf .25 soil .27 straw .15",
    "vineyard":           "leaf .1 soil .7 straw .2",
    "orchard":            "leaf .5 canopy .15 wet_soil .35",
    "pine forest":        "canopy .9 wet_soil .1",
    "holm oak forest":    "canopy .6 leaf .3 wet_soil .1",
    "riparian forest":    "leaf .7 canopy .3",
    "scrub":              "canopy .35 leaf .25 soil .25 straw .15",
    "grassland":          "leaf .85 straw .03 soil .12",
    "bare soil":          "soil .7 straw .22 rock .08",
    "gravel bar":         "soil .5 rock .3 wet_soil .2",
    "urban":              "concrete .4 tile .3 shade .15 leaf .15",
    "old town":           "tile .6 concrete .2 shade .2",
    "street":             "asphalt .55 concrete .2 shade .15 leaf .1",
    "farmhouse":          "tile .55 concrete .2 leaf .25",
    "residential estate": "tile .25 concrete .15 asphalt .1 leaf .35 canopy .15",
    "park":               "leaf .65 canopy .2 concrete .15",
    "industrial yard":    "asphalt .45 concrete .45 metal .1",
    "industrial roof":    "metal .75 concrete .25",
    "quarry":             "rock .8 soil .2",
    "landfill":           "wet_soil .45 soil .25 concrete .3",
    "road":               "asphalt 1",
    "highway":            "asphalt .85 concrete .15",
    "railway":            "wet_soil .4 rock .35 asphalt .25",
    "river":              "water .95 leaf .05",
    "lake":               "water 1",
    "beach":              "sand 1",
    "sea":                "sea 1",
}
AUGUST_MIXTURES = {
    **APRIL_MIXTURES,
    "winter cereal":      "straw .5 soil .45 leaf .05",  # harvested: stubble
    "summer crop":        "leaf .85 wet_soil .15",  # irrigated maize, alfalfa: green
    "fallow":             "wet_soil .7 straw .3",  # ploughed
    "olive grove":        "leaf .22 canopy .3 soil .48",
    "vineyard":           "leaf .36 straw .1 soil .54",  # in leaf
    "orchard":            "leaf .7 canopy .12 wet_soil .18",
    "pine forest":        "canopy .88 straw .12",
    "holm oak forest":    "canopy .62 leaf .25 straw .13",
    "riparian forest":    "leaf .72 canopy .28",
    "scrub":              "canopy .35 leaf .07 straw .3 soil .28",  # drier
    "grassland":          "leaf .3 straw .55 soil .15",  # dry
    "gravel bar":         "soil .55 rock .35 straw .1",
    "urban":              "concrete .4 tile .3 shade .15 leaf .1 straw .05",
    "farmhouse":          "tile .55 concrete .2 leaf .12 straw .13",
    "residential estate": "tile .25 concrete .15 asphalt .1 leaf .25 canopy .15 straw .1",
    "park":               "leaf .6 canopy .2 straw .05 concrete .15",
    "river":              "water .92 leaf .08",
}
# fmt: on
MIXTURES = {"april": APRIL_MIXTURES, "august": AUGUST_MIXTURES}
BACKGROUND = "scrub"  # what shows where nothing else is painted: field margins, forest edges
COVER_CODE = {cover.name: i for i, cover in enumerate(COVERS)}  # cover name -> burnt code (its index)
N_COVERS = len(COVERS)


def _spectra(season: str) -> np.ndarray:
    """(N_COVERS, 10) float32 reflectance x 10000 of every cover in ``season``."""
    out = np.zeros((N_COVERS, len(BANDS)), dtype=np.float32)
    for name, mixture in MIXTURES[season].items():
        words = mixture.split()
        for endmember, fraction in zip(words[::2], words[1::2], strict=True):
            out[COVER_CODE[name]] += float(fraction) * np.asarray(ENDMEMBERS[endmember], dtype=np.float32)
    return out


SPECTRA = {season: _spectra(season) for season in SEASONS}
TEXTURE = np.array([c.texture for c in COVERS], dtype=np.float32)
CLASS_OF = np.zeros(256, dtype=np.uint8)  # burnt code -> class code in the mask
CLASS_OF[:N_COVERS] = [c.code for c in COVERS]


# ---------------------------------------------------------------------------------------------------
# Geometry helpers: rings are (N, 2) float arrays of (x, y) metres, y pointing down, first == last.


def _close(pts: np.ndarray) -> np.ndarray:
    return np.vstack([pts, pts[:1]])


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """A rotated rectangle centred on (cx, cy)."""
    u = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * (length / 2, width / 2)
    c, s = np.cos(angle), np.sin(angle)
    return _close(u @ np.array([[c, s], [-s, c]]) + (cx, cy))


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    irregular: float = 0.25,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """An irregular round patch: a radius wobbling with a few harmonics, stretched by ``aspect``."""
    n = int(np.clip(2 * np.pi * r / 12, 16, 120))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        rad += rng.uniform(0, irregular) / k**0.5 * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rad = r * np.clip(rad, 0.35, None)
    x, y = rad * np.cos(t) * aspect, rad * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return _close(np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1))


def _buffer(line: np.ndarray, width: float | np.ndarray, chunk: int = 40) -> list[np.ndarray]:
    """Rings covering a smooth polyline of ``width`` metres, in pieces of ``chunk`` vertices.

    The ends are extended by half the width so that lines meeting at a junction leave no notch;
    short pieces never intersect themselves and keep each polygon small for the strip filter.
    """
    line = np.array(line, dtype=float)
    if len(line) < 2:
        return []
    half = np.broadcast_to(np.asarray(width, dtype=float) / 2, (len(line),))
    d = np.gradient(line, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    line[0] -= d[0] * half[0]
    line[-1] += d[-1] * half[-1]
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) * half[:, None]
    left, right = line + normal, line - normal
    rings = []
    for a in range(0, len(line) - 1, chunk - 1):
        b = min(a + chunk, len(line))
        rings.append(_close(np.vstack([left[a:b], right[a:b][::-1]])))
    return rings


def _clip_convex(poly: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Clip a convex polygon (open ring) to the box (u0, v0, u1, v1): Sutherland-Hodgman."""
    u0, v0, u1, v1 = rect
    for axis, bound, keep_below in ((0, u0, False), (0, u1, True), (1, v0, False), (1, v1, True)):
        if len(poly) == 0:
            break
        s = poly[:, axis] - bound if keep_below else bound - poly[:, axis]
        inside = s <= 0
        if inside.all():
            continue
        out = []
        for i in range(len(poly)):
            j = (i + 1) % len(poly)
            if inside[i]:
                out.append(poly[i])
            if inside[i] != inside[j]:
                out.append(poly[i] + s[i] / (s[i] - s[j]) * (poly[j] - poly[i]))
        poly = np.array(out).reshape(-1, 2)
    return poly


def _inside_star(ring: np.ndarray, cx: float, cy: float, pts: np.ndarray) -> np.ndarray:
    """Whether points lie inside a ring that is star-shaped around (cx, cy) (a ``_blob``)."""
    ang = np.arctan2(ring[:-1, 1] - cy, ring[:-1, 0] - cx)
    rad = np.hypot(ring[:-1, 1] - cy, ring[:-1, 0] - cx)
    order = np.argsort(ang)
    at = np.interp(np.arctan2(pts[:, 1] - cy, pts[:, 0] - cx), ang[order], rad[order], period=2 * np.pi)
    return np.hypot(pts[:, 1] - cy, pts[:, 0] - cx) < at


def _area(poly: np.ndarray) -> float:
    """The area of a polygon (open or closed ring): the shoelace formula."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


class Noise:
    """Smooth value noise in about [-1, 1]: random values on a grid of ``spacing`` metres, interpolated."""

    def __init__(self, rng: np.random.Generator, extent: float, spacing: float) -> None:
        n = int(np.ceil(extent / spacing)) + 4
        self.grid = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        self.spacing = spacing

    def __call__(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Noise at points (x, y) in metres (arrays that broadcast together)."""
        n = self.grid.shape[0]
        gx = np.clip(np.asarray(x, dtype=np.float32) / self.spacing + 1, 0, n - 1.001)
        gy = np.clip(np.asarray(y, dtype=np.float32) / self.spacing + 1, 0, n - 1.001)
        ix, iy = gx.astype(np.intp), gy.astype(np.intp)
        fx, fy = gx - ix, gy - iy
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        g = self.grid
        top = g[iy, ix] * (1 - fx) + g[iy, ix + 1] * fx
        bottom = g[iy + 1, ix] * (1 - fx) + g[iy + 1, ix + 1] * fx
        return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------------
# The terrain and the canvas. Every layer below draws from the canvas's one random generator in turn:
# the order of the layers, and of the draws inside each, is the layout of a seed (never reorder them).


def _region_boundary(rng: np.random.Generator, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Angles and radii (metres from the centre) of the region: a wobbly star that always cuts the
    corners, so that every area has nodata around it as a real map does."""
    angle = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    radius = np.full(angle.shape, 0.56)
    for k in range(2, 9):
        radius += rng.uniform(0.02, 0.1) / k**0.5 * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    for k in range(12, 40, 3):
        radius += rng.uniform(0, 0.008) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return angle, np.clip(radius, 0.38, 0.69) * side


@dataclass
class Terrain:
    """The lie of the land that the layers follow: hills inland and plains towards the coast, a coast
    running NNE-SSW with the sea to the east, the region's boundary, and a warp that bends district edges.
    """

    side: float  # metres along each side of the area
    relief: list[Noise]  # broad hills, then smaller ones
    coast_waves: list[tuple[float, float, float]]  # amplitude, wavelength (m), phase: 3 bends, 3 wiggles
    warp: list[Noise]  # x and y shifts of district edges: broad, then fine
    region_angle: np.ndarray  # the region's boundary: radius (m) from the centre at each angle
    region_radius: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, side: float) -> Terrain:
        """A new terrain; it takes the first draws of the generator."""
        relief = [Noise(rng, side, 4000.0), Noise(rng, side, 1500.0)]
        bends = [
            (rng.uniform(0.004, 0.012) * side, side / rng.uniform(1.5, 6), rng.uniform(0, 2 * np.pi))
            for _ in range(3)
        ]
        wiggles = [(rng.uniform(3, 12), rng.uniform(150, 500), rng.uniform(0, 2 * np.pi)) for _ in range(3)]
        warp = [Noise(rng, side, spacing) for spacing in (300.0, 300.0, 70.0, 70.0)]
        return cls(side, relief, bends + wiggles, warp, *_region_boundary(rng, side))

    def coast_x(self, y: ArrayLike, smooth: bool = False) -> np.ndarray:
        """The x of the coastline at rows y (metres); ``smooth`` leaves out the small wiggles."""
        y = np.asarray(y, dtype=float)
        x = self.side * (0.93 - 0.2 * y / self.side)
        for amp, wavelength, phase in self.coast_waves[: 3 if smooth else None]:
            x = x + amp * np.sin(2 * np.pi * y / wavelength + phase)
        return x

    def relief_at(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Hilliness, higher inland: about 0 on the coastal plain, 1 on the hills."""
        inland = np.clip((self.coast_x(y, smooth=True) - x) / max(self.side, 1.0), 0, 1)
        return 0.5 + 0.3 * self.relief[0](x, y) + 0.2 * self.relief[1](x, y) + 0.5 * (inland - 0.5)

    def on_land(self, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points lie inside the region and at least ``margin`` metres from sea and boundary."""
        c = self.side / 2
        ang = np.arctan2(pts[:, 1] - c, pts[:, 0] - c) % (2 * np.pi)
        rad = np.interp(ang, self.region_angle, self.region_radius, period=2 * np.pi)
        inside = np.hypot(pts[:, 0] - c, pts[:, 1] - c) < rad - margin
        return inside & (pts[:, 0] < self.coast_x(pts[:, 1]) - margin)

    def wobble(self, poly: np.ndarray, amp: float = 90.0, step: float = 20.0) -> np.ndarray:
        """A convex polygon with its edges subdivided and bent by the warp (a field, the same for
        neighbours, so that wobbly districts still tile)."""
        pts = []
        for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
            m = max(1, int(np.hypot(*(b - a)) / step))
            pts.append(a + np.arange(m)[:, None] / m * (b - a))
        pts = np.vstack(pts)
        x, y = pts[:, 0], pts[:, 1]
        shift = np.stack([self.warp[0](x, y), self.warp[1](x, y)], axis=1)
        shift += 0.25 * np.stack([self.warp[2](x, y), self.warp[3](x, y)], axis=1)
        return _close(pts + amp * shift)


@dataclass
class Canvas:
    """What the layers paint on: polygons in painter's order, each with a cover and a patch id, the
    terrain they follow and the random generator they all draw from."""

    size: int  # scene pixels along each side
    seed: int
    rng: np.random.Generator
    terrain: Terrain
    geoms: list[list[np.ndarray]] = field(default_factory=list)  # rings of each polygon, exterior first
    cover: list[int] = field(default_factory=list)  # burnt code of each polygon
    ident: list[int] = field(default_factory=list)  # patch id of each polygon
    patch_cover: list[int] = field(default_factory=lambda: [0])  # burnt code of each patch id (0: none)
    marks: dict[str, int] = field(default_factory=dict)  # layer -> polygons painted up to its end

    @classmethod
    def start(cls, size: int, seed: int) -> Canvas:
        """An empty canvas for an area of ``size`` x ``size`` scene pixels, its terrain drawn."""
        rng = np.random.default_rng([seed, 1])
        return cls(size, seed, rng, Terrain.draw(rng, size * PIXEL))

    @property
    def side(self) -> float:
        """Metres along each side of the area."""
        return self.size * PIXEL

    def new_id(self, cover: int) -> int:
        """A new patch id: a patch has its own brightness and vigour, drawn at the end."""
        self.patch_cover.append(cover)
        return len(self.patch_cover) - 1

    def add(self, rings: np.ndarray | list[np.ndarray], cover: str, ident: int | None = None) -> None:
        """Paint a polygon (a ring, or exterior then holes) over what is there.

        ``ident``: None gives the polygon its own patch variation, 0 takes what lies below, another
        value shares a patch (e.g. every piece of one river).
        """
        rings = [rings] if isinstance(rings, np.ndarray) else rings
        code = COVER_CODE[cover]
        self.geoms.append(rings)
        self.cover.append(code)
        self.ident.append(self.new_id(code) if ident is None else ident)

    def add_line(
        self, line: np.ndarray, width: float | np.ndarray, cover: str, ident: int | None = 0
    ) -> None:
        """Paint a polyline ``width`` metres wide (constant or one value per vertex)."""
        if ident is None:
            ident = self.new_id(COVER_CODE[cover])
        for ring in _buffer(line, width):
            self.add(ring, cover, ident)

    def scatter(self, spacing: float, margin: float = 0.0, at_least: int = 1) -> np.ndarray:
        """Points on land, about one per ``spacing`` x ``spacing`` metres, spread evenly (jittered grid)."""
        rng, side, on_land = self.rng, self.side, self.terrain.on_land
        n = max(1, round(side / spacing))
        cell = side / n
        gy, gx = np.mgrid[0:n, 0:n]
        pts = (np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.uniform(0.1, 0.9, (n * n, 2))) * cell
        pts = pts[on_land(pts, margin)]
        tries = 0
        while len(pts) < at_least and tries < 1000:  # small areas: make sure there is at least one
            p = rng.uniform(0.2, 0.8, (1, 2)) * side
            if on_land(p, margin).all():
                pts = np.vstack([pts, p])
            tries += 1
        return pts


# ---------------------------------------------------------------------------------------------------
# Layers, bottom to top. Each paints one kind of thing onto the canvas.


@dataclass
class Districts:
    """The Voronoi districts: the roads run along their edges, more often between farmland."""

    vor: Voronoi
    kind: np.ndarray  # (n,) "forest", "scrub", "woody" or "herbaceous" of each Voronoi point


def paint_districts(canvas: Canvas) -> Districts:
    """Voronoi districts: forest and scrub on the hills (wobbly edges), field parcels in the plains."""
    rng, side, terrain = canvas.rng, canvas.side, canvas.terrain
    d = 800.0  # district spacing, metres
    n = int(np.ceil(side / d)) + 4
    gy, gx = np.mgrid[0:n, 0:n]
    seeds = (np.stack([gx.ravel(), gy.ravel()], axis=1) - 2 + rng.uniform(0.15, 0.85, (n * n, 2))) * d
    vor = Voronoi(seeds)
    near = np.all((seeds > -d) & (seeds < side + d), axis=1)
    relief = terrain.relief_at(seeds[:, 0], seeds[:, 1])
    q = np.zeros(len(seeds))
    q[near] = (np.argsort(np.argsort(relief[near])) + 0.5) / near.sum()  # relief as a quantile
    kinds = ("forest", "scrub", "woody", "herbaceous")
    probs = {
        "high": (0.65, 0.22, 0.08, 0.05),
        "mid": (0.2, 0.2, 0.32, 0.28),
        "low": (0.05, 0.08, 0.25, 0.62),
    }
    kind_of = np.array(["herbaceous"] * len(seeds), dtype=object)
    for i in np.flatnonzero(near):
        band = "high" if q[i] > 0.65 else "mid" if q[i] > 0.35 else "low"
        kind = kinds[rng.choice(4, p=probs[band])]
        kind_of[i] = kind
        region = vor.regions[vor.point_region[i]]
        if not region or -1 in region:
            continue
        poly = vor.vertices[region]
        poly = poly[np.argsort(np.arctan2(*(poly - poly.mean(0)).T[::-1]))]  # convex: sort by angle
        if kind == "forest":
            pine = rng.random() < (0.75 if q[i] > 0.6 else 0.3)
            canvas.add(terrain.wobble(poly), "pine forest" if pine else "holm oak forest")
        elif kind == "scrub":
            canvas.add(terrain.wobble(poly), "scrub" if rng.random() < 0.75 else "grassland")
        else:
            _paint_parcels(canvas, poly, kind)
    return Districts(vor, kind_of)


# What grows in the parcels of a farmland district, and how often.
# fmt: off
PARCEL_COVERS = {
    "herbaceous": (("winter cereal", "summer crop", "fallow", "olive grove", "vineyard", "orchard",
                    "grassland", "scrub", "bare soil", "holm oak forest"),
                   (0.5, 0.16, 0.08, 0.05, 0.05, 0.05, 0.05, 0.03, 0.01, 0.02)),
    "woody": (("olive grove", "vineyard", "orchard", "winter cereal", "summer crop", "fallow",
               "grassland", "scrub", "holm oak forest"),
              (0.22, 0.22, 0.14, 0.22, 0.06, 0.05, 0.04, 0.03, 0.02)),
}
# fmt: on


def _field_rows(rng: np.random.Generator, u_lo: float, v_lo: float, u_hi: float, v_hi: float) -> np.ndarray:
    """(n, 4) fields (u0, v0, u1, v1) covering a box: rows 70..220 m deep of fields 50..320 m long,
    each shrunk by a random field margin."""
    rects = []
    v = v_lo
    while v < v_hi:
        depth = rng.uniform(70, 220)
        lengths = rng.uniform(50, 320, int((u_hi - u_lo) / 50) + 2)
        u0 = u_lo - rng.uniform(0, 50) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        row = np.stack([u0, np.full_like(u0, v), u0 + lengths, np.full_like(u0, v + depth)], axis=1)
        rects.append(row[u0 <= u_hi])
        v += depth
    rects = np.vstack(rects)
    margin = rng.uniform(0.3, 1.5, (len(rects), 1))  # half the field margin
    return rects + np.hstack([margin, margin, -margin, -margin])


def _paint_parcels(canvas: Canvas, poly: np.ndarray, kind: str) -> None:
    """Fill a convex district with field parcels: rows of rectangles along the longest edge."""
    rng = canvas.rng
    names, p = PARCEL_COVERS[kind]
    edges = np.roll(poly, -1, axis=0) - poly
    e = edges[np.argmax(np.hypot(edges[:, 0], edges[:, 1]))]
    angle = np.arctan2(e[1], e[0]) + rng.normal(0, 0.05)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])  # xy @ rot -> uv (u along the edge)
    uv = poly @ rot
    (u_lo, v_lo), (u_hi, v_hi) = uv.min(0), uv.max(0)
    rects = _field_rows(rng, u_lo, v_lo, u_hi, v_hi)
    covers = rng.choice(len(names), size=len(rects), p=p)
    # Fields whose four corners lie inside the (convex) district need no clipping.
    corners = rects[:, [[0, 1], [2, 1], [2, 3], [0, 3]]]  # (n, 4, 2)
    edge = np.roll(uv, -1, axis=0) - uv
    rel = corners[:, :, None, :] - uv  # (n, 4, edges, 2)
    side = edge[:, 0] * rel[..., 1] - edge[:, 1] * rel[..., 0]
    inside = np.all(side >= 0, axis=(1, 2))  # districts run anticlockwise (sorted by angle)
    outside = np.any(np.all(side < 0, axis=1), axis=1)  # all four corners beyond one edge
    for rect, quad, cover, whole, out in zip(rects, corners, covers, inside, outside, strict=True):
        if out:
            continue
        piece = quad if whole else _clip_convex(uv, tuple(rect))
        if len(piece) >= 3 and (whole or _area(piece) > 300):
            canvas.add(_close(piece @ rot.T), names[cover])


def paint_patches(canvas: Canvas) -> None:
    """Small woods, clearings and bare patches everywhere (rock outcrops higher up)."""
    rng = canvas.rng
    for x, y in canvas.scatter(550.0):
        if canvas.terrain.relief_at(x, y) > 0.55:  # clearings and outcrops in the hills
            names, p = ("grassland", "scrub", "pine forest", "bare soil"), (0.3, 0.3, 0.2, 0.2)
        else:  # small woods and rough patches in the plains
            names, p = ("holm oak forest", "pine forest", "grassland", "scrub"), (0.35, 0.15, 0.25, 0.25)
        ring = _blob(rng, x, y, rng.uniform(30, 160), 0.35, rng.uniform(1, 2), rng.uniform(0, np.pi))
        canvas.add(ring, names[rng.choice(4, p=p)])
    for x, y in canvas.scatter(800.0, at_least=2):  # bare ground: outcrops, eroded slopes, building sites
        r = rng.uniform(20, 70)
        canvas.add(_blob(rng, x, y, r, 0.4, rng.uniform(1, 2.5), rng.uniform(0, np.pi)), "bare soil")


def _walk(
    canvas: Canvas,
    start: ArrayLike,
    heading: float,
    step: float,
    length: float,
    turn: float,
    pull: float = 0.03,
) -> np.ndarray:
    """A meandering path from ``start``, pulled to the sea, until it reaches it or leaves the area."""
    rng, side, start = canvas.rng, canvas.side, np.asarray(start, dtype=float)
    target = np.arctan2(1.0, 5.0) + rng.uniform(-0.5, 0.5)  # ESE, across the coast
    bend = lfilter([1.0], [1.0, -0.85], rng.normal(0, turn, int(length / step)))  # persistent turns
    # heading[i] = heading[i-1] + bend[i] + pull * (target - heading[i-1])
    heading = lfilter([1.0], [1.0, pull - 1], bend + pull * target, zi=[(1 - pull) * heading])[0]
    steps = step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    pts = np.vstack([start, start + np.cumsum(steps, axis=0)])
    x, y = pts[:, 0], pts[:, 1]
    gone = (
        (x > canvas.terrain.coast_x(y) + 60) | (x < -400) | (x > side + 400) | (y < -400) | (y > side + 400)
    )
    end = np.argmax(gone) + 1 if gone.any() else len(pts)
    return pts[:end]


def paint_rivers(canvas: Canvas) -> None:
    """A main river (wide, gravel bars, riparian forest; larger areas) and streams thinner than 10 m."""
    rng, side = canvas.rng, canvas.side
    if side >= 6000:
        start = (-300.0, rng.uniform(0.15, 0.6) * side)
        line = _walk(canvas, start, rng.uniform(-0.2, 0.5), 20.0, 3 * side, 0.02, pull=0.1)
        t = np.arange(len(line)) * 20.0
        width = rng.uniform(22, 35) * (1 + 0.3 * np.sin(t / rng.uniform(800, 2000) + rng.uniform(0, 6)))
        # Gravel bars, now on this bank, now gone: the bed is wider than the water here and there.
        bars = np.clip(np.sin(t / rng.uniform(150, 400) + rng.uniform(0, 6)), 0, None)
        bed = width * (1.05 + 1.2 * bars)
        canvas.add_line(line, bed + 2 * rng.uniform(15, 35), "riparian forest", None)
        canvas.add_line(line, bed, "gravel bar", None)
        canvas.add_line(line, width, "river", None)
    n = max(2, round(side * side / 10e6))
    starts = canvas.scatter(side / np.sqrt(n), margin=50.0, at_least=2)
    for x, y in starts[rng.permutation(len(starts))[:n]]:
        length = min(rng.uniform(2000, 10000), 1.5 * side)
        line = _walk(canvas, (x, y), rng.uniform(-0.6, 0.9), 12.0, length, 0.05)
        width = rng.uniform(2.5, 7.0)
        if rng.random() < 0.5:
            canvas.add_line(line, width + 2 * rng.uniform(4, 12), "riparian forest", None)
        canvas.add_line(line, width, "river", None)


@dataclass
class Towns:
    """Where the towns are: placed before the roads that join them, painted over the roads later."""

    centres: np.ndarray  # (n, 2) metres
    radius: np.ndarray  # (n,) metres


def place_towns(canvas: Canvas) -> Towns:
    """Town centres and sizes, and a coastal city on the largest areas."""
    rng, side = canvas.rng, canvas.side
    centres = canvas.scatter(2800.0, margin=150.0)
    radius = np.minimum(np.clip(rng.lognormal(np.log(300), 0.45, len(centres)), 120, 900), 0.12 * side)
    if side >= 15000:  # a coastal city
        y = rng.uniform(0.35, 0.65) * side
        r = rng.uniform(1200, 1700)
        centres = np.vstack([centres, [canvas.terrain.coast_x(y, smooth=True) - 0.6 * r, y]])
        radius = np.append(radius, r)
    return Towns(centres, radius)


def _curve(rng: np.random.Generator, p: ArrayLike, q: ArrayLike, bend: float) -> np.ndarray:
    """A gently curved line from p to q (a sideways bow of up to ``bend`` x its length)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    length = max(np.hypot(*(q - p)), 1.0)
    t = np.linspace(0, 1, max(2, int(length / 20)))[:, None]
    normal = np.array([-(q - p)[1], (q - p)[0]]) / length
    bow = rng.uniform(-bend, bend) * length * np.sin(np.pi * t)
    wiggle = rng.uniform(2, 8) * np.sin(2 * np.pi * t * length / rng.uniform(200, 600))
    return p + t * (q - p) + normal * (bow + wiggle * np.sin(np.pi * t))


def paint_roads(canvas: Canvas, districts: Districts, towns: Towns) -> None:
    """Local roads along district edges, main roads between towns, a coastal road and railway."""
    rng, side = canvas.rng, canvas.side
    vor = districts.vor
    for (a, b), (i, j) in zip(vor.ridge_vertices, vor.ridge_points, strict=True):
        if a < 0 or b < 0:
            continue
        p, q = vor.vertices[a], vor.vertices[b]
        if not (np.all(np.minimum(p, q) < side + 100) and np.all(np.maximum(p, q) > -100)):
            continue
        farmland = sum(districts.kind[k] in ("herbaceous", "woody") for k in (i, j))
        if rng.random() < (0.2, 0.35, 0.6)[farmland]:
            n = max(2, int(np.hypot(*(q - p)) / 25))
            t = np.linspace(0, 1, n)[:, None]
            line = p + t * (q - p)
            normal = np.array([-(q - p)[1], (q - p)[0]]) / max(np.hypot(*(q - p)), 1e-9)
            line += normal * (rng.uniform(-5, 5) * np.sin(np.pi * t))  # a gentle bend
            canvas.add_line(line, rng.uniform(4, 6.5), "road")
    # Main roads: each town to its two nearest neighbours.
    centres = towns.centres
    pairs = set()
    for k in range(len(centres)):
        for m in np.argsort(np.hypot(*(centres - centres[k]).T))[1:3]:
            pairs.add((min(k, int(m)), max(k, int(m))))
    for k, m in sorted(pairs):
        canvas.add_line(_curve(rng, centres[k], centres[m], 0.12), rng.uniform(7, 9.5), "road")
    # Along the coast: the railway, then the old coastal road a little inland.
    y = np.arange(-300.0, side + 300.0, 20.0)
    shore = canvas.terrain.coast_x(y, smooth=True)
    rail = rng.uniform(110, 250)
    canvas.add_line(np.stack([shore - rail, y], 1), 9.0, "railway")
    canvas.add_line(np.stack([shore - rail - rng.uniform(80, 250), y], 1), 9.5, "road")


def paint_reservoirs(canvas: Canvas) -> None:
    """Reservoirs in the highest hills (large areas only)."""
    rng, side = canvas.rng, canvas.side
    if side < 8000:
        return
    candidates = canvas.scatter(3000.0, margin=800.0)
    relief = canvas.terrain.relief_at(candidates[:, 0], candidates[:, 1])
    for x, y in candidates[np.argsort(-relief)[: max(1, round(side * side / 250e6))]]:
        r = rng.uniform(250, 600)
        canvas.add(_blob(rng, x, y, r, 0.45, rng.uniform(2, 3.5), rng.uniform(0, np.pi)), "lake")


def paint_quarries(canvas: Canvas) -> None:
    """Quarries (with a lower bench, sometimes flooded) away from the sea and the boundary."""
    rng, side = canvas.rng, canvas.side
    for x, y in canvas.scatter(3000.0, margin=100.0):
        r = min(rng.uniform(90, 260), 0.06 * side)
        aspect, angle = rng.uniform(1, 1.8), rng.uniform(0, np.pi)
        canvas.add(_blob(rng, x, y, r, 0.3, aspect, angle), "quarry")
        canvas.add(_blob(rng, x, y, 0.55 * r, 0.3, aspect, angle), "quarry")  # a lower bench
        if rng.random() < 0.25:
            canvas.add(_blob(rng, x, y, 0.2 * r, 0.2), "lake", 0)


def paint_ponds(canvas: Canvas) -> None:
    """Farm ponds: square irrigation tanks and small round ponds."""
    rng = canvas.rng
    for x, y in canvas.scatter(1100.0):
        if rng.random() < 0.6:
            side = rng.uniform(12, 45)
            canvas.add(_rect(x, y, side, side * rng.uniform(0.6, 1), rng.uniform(0, np.pi)), "lake", 0)
        else:
            canvas.add(_blob(rng, x, y, rng.uniform(8, 25), 0.15), "lake", 0)


def paint_estates(canvas: Canvas) -> None:
    """Residential estates in the countryside."""
    rng, side = canvas.rng, canvas.side
    for x, y in canvas.scatter(3500.0, margin=200.0):
        if rng.random() < 0.8:
            r = min(rng.uniform(110, 320), 0.08 * side)
            estate = _blob(rng, x, y, r, 0.35, rng.uniform(1, 1.8), rng.uniform(0, np.pi))
            canvas.add(estate, "residential estate")


def paint_farmhouses(canvas: Canvas) -> None:
    """Farmhouses, alone or a few together (hamlets): buildings narrower than a scene pixel."""
    rng = canvas.rng
    for x, y in canvas.scatter(420.0, at_least=3):
        for i in range(1 if rng.random() < 0.85 else rng.integers(3, 8)):
            dx, dy = (0, 0) if i == 0 else rng.normal(0, 40, 2)
            length = rng.uniform(10, 22)
            ring = _rect(x + dx, y + dy, length, length * rng.uniform(0.5, 0.9), rng.uniform(0, np.pi))
            canvas.add(ring, "farmhouse", 0)


def _paint_city_blocks(
    canvas: Canvas,
    outline: np.ndarray,
    x: float,
    y: float,
    block: tuple[float, float],
    street: tuple[float, float],
    cover: str,
) -> None:
    """Blocks of buildings (``block`` metres, min and max) on a rotated street grid (streets ``street``
    metres wide), those whose centre lies inside ``outline`` (a star-shaped ring around (x, y)); the
    streets are what was painted below."""
    rng = canvas.rng
    rad = np.hypot(outline[:, 0] - x, outline[:, 1] - y).max()
    a = rng.uniform(0, np.pi / 2)
    c, s = np.cos(a), np.sin(a)
    edges = []
    for _ in range(2):  # street lines along u, then along v
        sizes = rng.uniform(*block, int(2 * rad / block[0]) + 2)
        edges.append(-rad - rng.uniform(0, block[1]) + np.concatenate([[0], np.cumsum(sizes)]))
    (u, v), gap = edges, rng.uniform(*street) / 2
    u0, v0 = np.meshgrid(u[:-1], v[:-1])
    u1, v1 = np.meshgrid(u[1:], v[1:])
    mu, mv = (u0 + u1).ravel() / 2, (v0 + v1).ravel() / 2
    centres = np.stack([x + c * mu - s * mv, y + s * mu + c * mv], axis=1)
    sizes = np.stack([(u1 - u0).ravel(), (v1 - v0).ravel()], axis=1) - 2 * gap
    inside = _inside_star(outline, x, y, centres)
    for (px, py), (lu, lv) in zip(centres[inside], sizes[inside], strict=True):
        canvas.add(_rect(px, py, lu, lv, a), cover)


def _paint_parks(canvas: Canvas, x: float, y: float, r: float) -> None:
    """A few parks inside a town of radius ``r``, more in larger towns."""
    rng = canvas.rng
    for _ in range(2 + int(r // 200)):
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.75) * r
        px, py = x + d * np.cos(a), y + d * np.sin(a)
        s = np.clip(rng.uniform(0.12, 0.3) * r, 30, 250)
        if rng.random() < 0.6:
            canvas.add(_rect(px, py, s * rng.uniform(1, 1.8), s, rng.uniform(0, np.pi)), "park")
        else:
            canvas.add(_blob(rng, px, py, s / 1.5, 0.25), "park")


def _paint_industrial_estate(canvas: Canvas, x: float, y: float, r: float) -> None:
    """A rectangle of yards and roads beside a town (on land), with rows of large roofs."""
    rng = canvas.rng
    length = min(rng.uniform(200, 600), 2 * r)
    width = min(rng.uniform(100, 320), length)
    for _ in range(10):
        a = rng.uniform(0, 2 * np.pi)
        cx, cy = x + (r + 0.35 * length) * np.cos(a), y + (r + 0.35 * length) * np.sin(a)
        if canvas.terrain.on_land(np.array([[cx, cy]]), 0.3 * length).all():
            break
    canvas.add(_rect(cx, cy, length, width, a), "industrial yard")
    c, s = np.cos(a), np.sin(a)
    u = -length / 2 + 10
    while u < length / 2 - 30:
        bl = rng.uniform(25, 80)
        v = -width / 2 + 10
        while v < width / 2 - 25:
            bw = rng.uniform(20, 60)
            if rng.random() < 0.85 and u + bl < length / 2 - 8 and v + bw < width / 2 - 8:
                mu, mv = u + bl / 2, v + bw / 2
                canvas.add(_rect(cx + c * mu - s * mv, cy + s * mu + c * mv, bl, bw, a), "industrial roof")
            v += bw + rng.uniform(10, 20)
        u += bl + rng.uniform(10, 20)


def paint_towns(canvas: Canvas, towns: Towns) -> None:
    """Towns: an urban blob, a denser old core, parks, an industrial estate, sometimes a landfill."""
    rng = canvas.rng
    for k, ((x, y), r) in enumerate(zip(towns.centres, towns.radius, strict=True)):
        town = _blob(rng, x, y, r, 0.3, rng.uniform(1, 1.4), rng.uniform(0, np.pi))
        canvas.add(town, "street", 0)
        _paint_city_blocks(canvas, town, x, y, (50, 120), (8, 14), "urban")
        core = _blob(rng, x, y, r * rng.uniform(0.3, 0.45), 0.3)
        canvas.add(core, "street", 0)
        _paint_city_blocks(canvas, core, x, y, (25, 60), (4, 7), "old town")
        _paint_parks(canvas, x, y, r)
        for _ in range(1 if k == 0 or rng.random() < 0.5 else rng.choice([0, 2])):
            _paint_industrial_estate(canvas, x, y, r)
        if rng.random() < 0.6:  # a building site on the edge of town
            a = rng.uniform(0, 2 * np.pi)
            site = _blob(rng, x + r * np.cos(a), y + r * np.sin(a), rng.uniform(30, 90), 0.3)
            canvas.add(site, "bare soil")
        if rng.random() < 0.25:  # a landfill out of town
            a, d = rng.uniform(0, 2 * np.pi), r + rng.uniform(300, 800)
            dump = _blob(rng, x + d * np.cos(a), y + d * np.sin(a), rng.uniform(60, 150), 0.3)
            canvas.add(dump, "landfill")


def paint_highways(canvas: Canvas) -> None:
    """A highway parallel to the coast and a trunk road crossing towards it (large areas)."""
    rng, side, coast_x = canvas.rng, canvas.side, canvas.terrain.coast_x
    if side >= 5000:
        y = np.arange(-400.0, side + 400.0, 25.0)
        x = coast_x(y, smooth=True) - rng.uniform(0.3, 0.45) * side
        x = x + 0.03 * side * np.sin(2 * np.pi * y / rng.uniform(0.8, 1.6) / side + rng.uniform(0, 6))
        canvas.add_line(np.stack([x, y], 1), rng.uniform(24, 30), "highway")
    if side >= 15000:
        y0, y1 = rng.uniform(0.3, 0.7, 2) * side
        canvas.add_line(_curve(rng, (-400, y0), (coast_x(y1, smooth=True), y1), 0.05), 14.0, "highway")


def paint_coast(canvas: Canvas) -> None:
    """Beaches (some stretches rocky) and the sea east of the coastline."""
    rng, side = canvas.rng, canvas.side
    y = np.arange(-200.0, side + 200.0, 5.0)
    shore = canvas.terrain.coast_x(y)
    beach = np.clip(30 + 45 * Noise(rng, side + 400, 400.0)(np.zeros_like(y), y + 200), 0, 70)
    left = np.stack([shore - beach, y], axis=1)
    right = np.stack([shore + 5, y], axis=1)
    for a in range(0, len(y) - 1, 199):  # in pieces, to keep each polygon short
        b = min(a + 200, len(y))
        canvas.add(_close(np.vstack([left[a:b], right[a:b][::-1]])), "beach")
    sea = np.vstack([np.stack([shore, y], 1), [[side + 300, side + 200], [side + 300, -200]]])
    canvas.add(_close(sea), "sea")


def paint_outside(canvas: Canvas) -> None:
    """Nodata outside the region: a frame with the region as its hole."""
    side, terrain = canvas.side, canvas.terrain
    frame = _close(np.array([[-500, -500], [side + 500, -500], [side + 500, side + 500], [-500, side + 500]]))
    c, t, r = side / 2, terrain.region_angle, terrain.region_radius
    hole = _close(np.stack([c + r * np.cos(t), c + r * np.sin(t)], axis=1))
    canvas.add([frame, hole], "outside", 0)


# ---------------------------------------------------------------------------------------------------
# The second year (--changes-from): planned changes of known place, kind and size, painted over the
# first year's polygons. Sites are chosen on the first year's 10 m classes, inside one class, so that
# the planned area is what changes; new covers go above the fields and patches (rivers, roads and
# houses stay on top of them, as they would), switched parcels and the shrunk reservoir in place.

HERBACEOUS = ("winter cereal", "summer crop", "fallow")
WOODY = ("olive grove", "vineyard", "orchard")


def _site(
    cover10: np.ndarray, cls: int, radius: float, rng: np.random.Generator
) -> tuple[float, float] | None:
    """The centre (metres) of a square of 2 ``radius`` metres that is the most of class ``cls`` (80 %
    at least; ties drawn), or None."""
    k = max(3, round(2 * radius / PIXEL))
    share = ndimage.uniform_filter((cover10 == cls).astype(np.float32), k, mode="constant")
    best = share.max()
    if best < 0.8:
        return None
    rows, cols = np.nonzero(share >= best - 1e-3)
    i = rng.integers(rows.size)
    return (cols[i] + 0.5) * PIXEL, (rows[i] + 0.5) * PIXEL


def _insert(canvas: Canvas, at: int, rings: list[np.ndarray], cover: str, ident: int | None = None) -> int:
    """Paint a polygon at painter's position ``at`` (its own patch unless ``ident``); the next position."""
    code = COVER_CODE[cover]
    canvas.geoms.insert(at, rings)
    canvas.cover.insert(at, code)
    canvas.ident.insert(at, canvas.new_id(code) if ident is None else ident)
    return at + 1


def _change(kind: str, before: int, after: int, area_m2: float, x: float | None, y: float | None) -> dict:
    """One planned transition: the area of the polygons painted for it in hectares (parcels: those
    switched, partly hidden by what lies above them) and where it is (metres from the top-left)."""
    at = None if x is None else [round(float(x)), round(float(y))]
    return dict(kind=kind, before=before, after=after, painted_ha=round(area_m2 / 1e4, 4), at=at)


def measure_changes(planned: list[dict], before10: np.ndarray, after10: np.ndarray) -> list[dict]:
    """Each planned transition's area as it came out: its 10 m pixels in the two years' burns (hectares;
    the 1 m truth agrees to a few percent)."""
    pairs = before10.astype(np.int64) * 256 + after10
    counts = np.bincount(pairs.ravel(), minlength=65536)
    ha = PIXEL * PIXEL / 1e4
    return [{**c, "area_ha": round(float(counts[c["before"] * 256 + c["after"]] * ha), 2)} for c in planned]


def _shape(rings: list[np.ndarray]) -> Polygon:
    """The polygon of rings (exterior first), made valid, for its area."""
    return Polygon(rings[0], rings[1:]).buffer(0)


def plan_estate(canvas: Canvas, cover10: np.ndarray, rng: np.random.Generator, at: int) -> tuple[int, list]:
    """A new housing estate on farmland, its two streets and an access road."""
    r = min(250.0, 0.03 * canvas.side)
    site = _site(cover10, 1, 1.5 * r, rng)
    if site is None:
        return at, []
    x, y = site
    estate = _blob(rng, x, y, r, 0.2, 1.0, rng.uniform(0, np.pi))
    at = _insert(canvas, at, [estate], "residential estate")
    a = rng.uniform(0, np.pi)
    roads = []
    for angle, lo, hi in ((a, -0.45, 0.45), (a + np.pi / 2, -0.45, 0.45), (a, 0.45, 1.4)):
        t = np.linspace(lo * r, hi * r, 20)
        line = np.stack([x + t * np.cos(angle), y + t * np.sin(angle)], axis=1)
        for ring in _buffer(line, 6.0 if hi > 1 else 5.0):
            at = _insert(canvas, at, [ring], "road", 0)
            roads.append(Polygon(ring).buffer(0))
    road = unary_union(roads)
    houses = _shape([estate]).difference(road).area
    return at, [
        _change("housing estate", 1, 7, houses, x, y),
        _change("estate roads", 1, 11, road.area, x, y),
    ]


def plan_burn(canvas: Canvas, cover10: np.ndarray, rng: np.random.Generator, at: int) -> tuple[int, list]:
    """A burnt forest patch: bare soil, with scrub already back in a few places."""
    r = min(400.0, 0.04 * canvas.side)
    site = _site(cover10, 3, 1.5 * r, rng)
    if site is None:
        return at, []
    x, y = site
    burnt = _blob(rng, x, y, r, 0.3, rng.uniform(1, 1.5), rng.uniform(0, np.pi))
    at = _insert(canvas, at, [burnt], "bare soil")
    scrub = []
    for angle in rng.uniform(0, 2 * np.pi, 3):
        ring = _blob(rng, x + 0.35 * r * np.cos(angle), y + 0.35 * r * np.sin(angle), 0.22 * r, 0.3)
        at = _insert(canvas, at, [ring], "scrub")
        scrub.append(Polygon(ring).buffer(0))
    burnt_shape, regrown = _shape([burnt]), unary_union(scrub)
    return at, [
        _change("burnt forest", 3, 5, burnt_shape.difference(regrown).area, x, y),
        _change("burnt forest, scrub back", 3, 4, regrown.area, x, y),
    ]


def plan_quarry(canvas: Canvas, cover10: np.ndarray, rng: np.random.Generator, at: int) -> tuple[int, list]:
    """A quarry opening in the scrub."""
    r = min(150.0, 0.03 * canvas.side)
    site = _site(cover10, 4, 1.5 * r, rng)
    if site is None:
        return at, []
    x, y = site
    pit = _blob(rng, x, y, r, 0.3, rng.uniform(1, 1.6), rng.uniform(0, np.pi))
    return _insert(canvas, at, [pit], "quarry"), [_change("new quarry", 4, 10, _shape([pit]).area, x, y)]


def plan_reservoir(canvas: Canvas, rng: np.random.Generator) -> list:
    """The largest lake (over 5 ha) drawn down: its outer rim becomes bare shore."""
    lake = COVER_CODE["lake"]
    lakes = [i for i, c in enumerate(canvas.cover) if c == lake and _area(canvas.geoms[i][0]) > 5e4]
    if not lakes:
        return []
    i = max(lakes, key=lambda k: _area(canvas.geoms[k][0]))
    ring = canvas.geoms[i][0]
    centre = ring[:-1].mean(axis=0)
    shrunk = _close(centre + rng.uniform(0.7, 0.8) * (ring[:-1] - centre))
    ident = canvas.ident[i]
    canvas.cover[i] = COVER_CODE["bare soil"]
    canvas.ident[i] = canvas.new_id(canvas.cover[i])
    _insert(canvas, i + 1, [shrunk], "lake", ident)
    shore = _shape([ring]).difference(Polygon(shrunk).buffer(0)).area
    return [_change("reservoir shore", 12, 5, shore, *centre)]


def plan_fields(canvas: Canvas, rng: np.random.Generator, end: int) -> list:
    """Parcels replanted: some cereal fields become vineyards or orchards, some groves are grubbed up."""
    herb = {COVER_CODE[n] for n in HERBACEOUS}
    woody = {COVER_CODE[n] for n in WOODY}
    moved = {(1, 2): 0.0, (2, 1): 0.0}
    for i in range(end):
        c = canvas.cover[i]
        if c in herb and rng.random() < 0.03:
            new, key = WOODY[rng.integers(3)], (1, 2)
        elif c in woody and rng.random() < 0.08:
            new, key = HERBACEOUS[rng.integers(3)], (2, 1)
        else:
            continue
        canvas.cover[i] = COVER_CODE[new]
        canvas.ident[i] = canvas.new_id(canvas.cover[i])
        moved[key] += _area(canvas.geoms[i][0])
    kinds = {(1, 2): "fields to woody crops", (2, 1): "woody crops to fields"}
    return [_change(kinds[k], *k, a, None, None) for k, a in moved.items() if a > 0]


def plan_changes(canvas: Canvas, cover10: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Paint the second year's changes onto the canvas; what was planned, one row per transition."""
    at = canvas.marks["patches"]
    planned = plan_fields(canvas, rng, at)
    for plan in (plan_estate, plan_burn, plan_quarry):
        at, rows = plan(canvas, cover10, rng, at)
        planned += rows
    return planned + plan_reservoir(canvas, rng)


# ---------------------------------------------------------------------------------------------------
# What the scenes add to the painted polygons: per-patch variation, and clouds over April.


def patch_gains(canvas: Canvas) -> dict[str, np.ndarray]:
    """Season -> (n_ids + 1, 10) multiplier of each patch's spectrum: a brightness, and a vigour that
    August partly keeps from April (a vigorous parcel tends to stay so). Row 0 (no patch) is 1."""
    rng = canvas.rng
    ids = np.array(canvas.patch_cover)
    gains = {}
    bright = 1 + rng.normal(0, 1, len(ids)) * np.array([COVERS[c].brightness for c in ids])
    vig_sd = np.array([COVERS[c].vigour for c in ids])
    vig_april = rng.normal(0, 1, len(ids)) * vig_sd
    vig_august = 0.6 * vig_april + 0.8 * rng.normal(0, 1, len(ids)) * vig_sd
    for season, vig in zip(SEASONS, (vig_april, vig_august), strict=True):
        response = 1 + np.clip(vig, -0.5, 0.5)[:, None] * VIGOUR_RESPONSE[None]
        g = np.clip(bright, 0.7, 1.3)[:, None] * response
        g[0] = 1.0
        gains[season] = g.astype(np.float32)
    return gains


def draw_clouds(canvas: Canvas) -> tuple[np.ndarray, tuple[float, float]]:
    """Cloud puffs (x, y, radius, opacity) in a few clusters, and the shadows' offset."""
    rng, side = canvas.rng, canvas.side
    puffs = []
    for _ in range(max(1, round(side * side / 80e6))):
        cx, cy = rng.uniform(0.2, 0.8, 2) * side
        spread = min(rng.uniform(150, 800), 0.08 * side)
        for _ in range(rng.integers(4, 12)):
            x, y = rng.normal((cx, cy), spread)
            puffs.append((x, y, min(rng.uniform(80, 350), 0.04 * side), rng.uniform(0.6, 0.95)))
    shift = (-rng.uniform(150, 400), -rng.uniform(100, 300))  # sun in the south-east: shadows to the NW
    return np.array(puffs, dtype=np.float64), shift


@dataclass
class Landscape:
    """Everything the strips need: polygons, their covers and patch ids, gains, noise and clouds."""

    size: int  # scene pixels along each side
    seed: int
    geoms: list[list[np.ndarray]]  # rings of each polygon (exterior first), painter's order
    cover: np.ndarray  # (n,) burnt code of each polygon
    ident: np.ndarray  # (n,) patch id, 0 = takes the variation of whatever lies below
    ymin: np.ndarray  # (n,) bounding rows in metres, for the strip filter
    ymax: np.ndarray
    gains: dict[str, np.ndarray]  # season -> (n_ids + 1, 10) per-patch multiplier, row 0 = 1
    clouds: np.ndarray  # (m, 4) cloud puffs: x, y, radius (metres), opacity
    shadow_shift: tuple[float, float]  # cloud shadow offset in metres
    texture: list[Noise]  # smooth noise of the texture
    cloud_edge: Noise
    year: int = 1  # 2: the second year (--changes-from), its own gains, clouds and noise

    @property
    def width_m(self) -> float:
        return self.size * PIXEL

    def rows(self, y0: float, y1: float) -> np.ndarray:
        """Indices (painter's order) of the polygons that reach rows y0..y1 (metres)."""
        return np.flatnonzero((self.ymax >= y0) & (self.ymin <= y1))


def paint_landscape(size: int, seed: int) -> Canvas:
    """The polygons of a demo area of ``size`` x ``size`` scene pixels, in painter's order.

    Metres from the top-left corner, bottom to top: Voronoi districts of forest and scrub on the hills
    and of field parcels in the plains; woods, clearings and bare patches; meandering rivers and
    streams; roads along the district edges and between towns, and a railway; reservoirs, quarries,
    ponds, residential estates and farmhouses; towns (blocks on a street grid, a denser old core,
    parks, industrial estates); a highway; a coast with beaches and the sea; nodata outside an
    irregular region boundary. Every layer draws from the canvas's one generator in turn: the order
    of the layers, and of the draws inside each, is what a seed means (never reorder them).
    """
    canvas = Canvas.start(size, seed)
    districts = paint_districts(canvas)
    paint_patches(canvas)
    canvas.marks["patches"] = len(canvas.geoms)  # the second year's new covers go on top of these
    paint_rivers(canvas)
    towns = place_towns(canvas)
    paint_roads(canvas, districts, towns)
    paint_reservoirs(canvas)
    paint_quarries(canvas)
    paint_ponds(canvas)
    paint_estates(canvas)
    paint_farmhouses(canvas)
    paint_towns(canvas, towns)
    paint_highways(canvas)
    paint_coast(canvas)
    paint_outside(canvas)
    return canvas


def finish_landscape(canvas: Canvas, year: int = 1) -> Landscape:
    """The painted canvas with its per-patch gains, clouds and textures (drawn from canvas.rng)."""
    gains = patch_gains(canvas)
    clouds, shadow_shift = draw_clouds(canvas)
    rng, side = canvas.rng, canvas.side
    return Landscape(
        size=canvas.size,
        seed=canvas.seed,
        geoms=canvas.geoms,
        cover=np.array(canvas.cover, dtype=np.uint8),
        ident=np.array(canvas.ident, dtype=np.int32),
        ymin=np.array([g[0][:, 1].min() for g in canvas.geoms]),
        ymax=np.array([g[0][:, 1].max() for g in canvas.geoms]),
        gains=gains,
        clouds=clouds,
        shadow_shift=shadow_shift,
        texture=[Noise(rng, side, 60.0), Noise(rng, side, 25.0)],
        cloud_edge=Noise(rng, side, 150.0),
        year=year,
    )


def build_landscape(size: int, seed: int) -> Landscape:
    """The first year: the painted polygons, their gains, the clouds (the draws of ``seed``)."""
    return finish_landscape(paint_landscape(size, seed))


def build_second_year(size: int, seed: int) -> tuple[Landscape, list[dict]]:
    """The same landscape a year later, with the planned changes (plan_changes) painted in,
    and its own gains, clouds and noise; the changes as planned. The first year's draws are made
    unchanged first, the second year's come from generators of their own, so the first year stays
    byte-identical."""
    canvas = paint_landscape(size, seed)
    first = finish_landscape(canvas)  # the first year's draws, as they are made for the first year
    cover10 = CLASS_OF[burn(first, 0.0, size * PIXEL, PIXEL)]
    planned = plan_changes(canvas, cover10, np.random.default_rng([seed, 3]))
    canvas.rng = np.random.default_rng([seed, 4])
    second = finish_landscape(canvas, year=2)
    return second, measure_changes(planned, cover10, CLASS_OF[burn(second, 0.0, size * PIXEL, PIXEL)])


# ---------------------------------------------------------------------------------------------------
# Rendering, one strip of rows at a time.


def burn(land: Landscape, y0: float, y1: float, res: float, values: str = "cover") -> np.ndarray:
    """Rasterize rows y0..y1 (metres) at ``res`` metres: burnt cover codes (uint8) or patch ids (int32).

    Where no polygon lies, the cover is the background (scrub) and the patch id 0.
    """
    shape = (round((y1 - y0) / res), round(land.width_m / res))
    sel = land.rows(y0, y1)
    if values == "ident":
        sel = sel[land.ident[sel] > 0]
        vals, dtype, fill = land.ident, "int32", 0
    else:
        vals, dtype, fill = land.cover, "uint8", COVER_CODE[BACKGROUND]
    if len(sel) == 0:
        return np.full(shape, fill, dtype=dtype)
    shapes = (({"type": "Polygon", "coordinates": land.geoms[i]}, int(vals[i])) for i in sel)
    return features.rasterize(
        shapes, out_shape=shape, transform=Affine(res, 0, 0, 0, res, y0), fill=fill, dtype=dtype
    )


def cell_counts(codes: np.ndarray, k: int = N_COVERS, fine: int = FINE) -> np.ndarray:
    """(h * fine, w * fine) codes -> (h, w, k) int32: how many pixels of each code in each block."""
    h, w = codes.shape[0] // fine, codes.shape[1] // fine
    blocks = codes.reshape(h, fine, w, fine).transpose(0, 2, 1, 3).reshape(h * w, fine * fine)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    counts = np.zeros((h * w, k), dtype=np.int32)
    counts[np.arange(h * w), lo] = fine * fine  # pure blocks; mixed ones are counted below
    mixed = np.flatnonzero(lo != hi)
    if mixed.size:
        index = blocks[mixed].astype(np.intp) + (np.arange(mixed.size, dtype=np.intp) * k)[:, None]
        counts[mixed] = np.bincount(index.ravel(), minlength=mixed.size * k).reshape(-1, k)
    return counts.reshape(h, w, k)


def cloud_cover(land: Landscape, r0: int, r1: int, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(rows, size) cloud opacity 0..1 of scene rows r0..r1 (puffs moved by ``shift`` for shadows)."""
    n = land.size
    y = (np.arange(r0, r1) + 0.5) * PIXEL
    x = (np.arange(n) + 0.5) * PIXEL
    clear = np.ones((r1 - r0, n), dtype=np.float32)
    touched = False
    for px, py, r, opacity in land.clouds:
        px, py = px + shift[0], py + shift[1]
        rows = np.flatnonzero(np.abs(y - py) < 2.5 * r)
        if rows.size == 0:
            continue
        c0, c1 = np.searchsorted(x, [px - 2.5 * r, px + 2.5 * r])
        if c1 <= c0:
            continue
        d2 = ((x[None, c0:c1] - px) ** 2 + (y[rows, None] - py) ** 2) / (r * r)
        clear[rows[0] : rows[-1] + 1, c0:c1] *= 1 - opacity * np.exp(-1.5 * d2)
        touched = True
    if not touched:
        return np.zeros_like(clear)
    alpha = 1 - clear
    edge = land.cloud_edge(x[None, :] + shift[0], y[:, None] + shift[1])
    return np.clip(alpha * (1.1 + 0.6 * edge), 0, 1).astype(np.float32)


def mean_over_blocks(counts: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(n, N_COVERS) block counts, (N_COVERS, m) values per cover -> (n, m) mean over the valid 1 m
    pixels of each block.

    Pure blocks (most of them) just take their cover's row; mixed ones are counts @ table / count.
    """
    top = counts.argmax(axis=1)
    out = table[top]
    mixed = np.flatnonzero(counts[np.arange(len(top)), top] < FINE * FINE)
    if mixed.size:
        valid = counts[mixed, 1:].astype(np.float32)
        out[mixed] = (valid @ table[1:]) / np.maximum(valid.sum(axis=1), 1)[:, None]
    return out


# Per cover: April spectrum, August spectrum, texture (one table, so that one product mixes all).
MIX_TABLE = np.hstack([SPECTRA["april"], SPECTRA["august"], TEXTURE[:, None]])


def render_scenes(land: Landscape, counts: np.ndarray, ids: np.ndarray, r0: int) -> dict[str, np.ndarray]:
    """(10, rows, size) uint16 reflectance of each season from the block counts of a strip.

    Each 10 m pixel is the mean of the spectra of its 100 1 m pixels (class fractions @ spectra: roads,
    streams and houses narrower than 10 m are mixed pixels, as in reality), times a per-patch
    brightness and vigour, a texture and sensor noise. The seasons differ as in reality (MIXTURES):
    winter cereals are green in April and stubble in August, summer crops the reverse, vineyards leaf
    out, scrub and grassland dry up, forests and towns stay. A few clouds and their shadows cover part
    of the April scene only; the mask does not see them.
    The 1 m mask is never held whole: GDAL burns the polygons one strip (640 mask rows) at a time, so
    memory grows with the width only (about 0.6 GB at the default size).
    """
    rows, n = counts.shape[:2]
    counts = counts.reshape(-1, N_COVERS)
    valid = counts[:, 0] <= FINE * FINE // 2  # nodata where most of the 1 m pixels are outside
    mixed = mean_over_blocks(counts, MIX_TABLE)
    y = (np.arange(r0, r0 + rows) + 0.5)[:, None] * PIXEL
    x = (np.arange(n) + 0.5)[None, :] * PIXEL
    smooth = (0.7 * land.texture[0](x, y) + 0.5 * land.texture[1](x, y)).ravel()
    rng = np.random.default_rng([land.seed, 2, r0] if land.year == 1 else [land.seed, 2, r0, land.year])
    texture = 1 + mixed[:, -1] * (smooth + 0.5 * rng.standard_normal(smooth.shape, dtype=np.float32))
    ids = ids.ravel()
    nb = len(BANDS)
    out = {}
    for s, season in enumerate(SEASONS):
        value = mixed[:, s * nb : (s + 1) * nb] * land.gains[season][ids]
        value *= texture[:, None]
        noise = rng.random(value.shape, dtype=np.float32)  # sensor noise: uniform, 1 % + 8 sd
        noise -= 0.5
        noise *= 0.0346 * value + 27.7
        value += noise
        if season == "april":
            shadow = cloud_cover(land, r0, r0 + rows, land.shadow_shift).ravel()
            cloud = cloud_cover(land, r0, r0 + rows).ravel()
            if shadow.any() or cloud.any():
                value *= ((1 - 0.6 * shadow) * (1 - cloud))[:, None]
                value += cloud[:, None] * CLOUD_SPECTRUM[None]
        np.rint(value, out=value)
        np.clip(value, 1, 65535, out=value)
        value[~valid] = 0
        out[season] = np.ascontiguousarray(value.T, dtype=np.uint16).reshape(nb, rows, n)
    return out


# ---------------------------------------------------------------------------------------------------
# Writing.


def _tags(size: int, seed: int, year: int = 1) -> dict[str, str]:
    tags = {
        "DEMO_GENERATOR": "make_demo_data.py",
        "DEMO_VERSION": VERSION,
        "DEMO_SIZE": str(size),
        "DEMO_SEED": str(seed),
    }
    return tags if year == 1 else {**tags, "DEMO_YEAR": str(year)}  # the first year's tags as they were


def outputs(out: str | Path) -> dict[str, Path]:
    """The three files written into ``out``."""
    out = Path(out)
    return {
        "april": out / SCENE_NAMES["april"],
        "august": out / SCENE_NAMES["august"],
        "mask": out / MASK_NAME,
    }


def is_done(out: str | Path, size: int, seed: int, year: int = 1) -> bool:
    """Whether ``out`` already holds a finished set made with this size, seed, year and generator
    version (the second year also has its changes.json)."""
    want = {**_tags(size, seed, year), "DEMO_YEAR": str(year)}
    for path in outputs(Path(out)).values():
        try:
            with rasterio.open(path) as src:
                tags = {"DEMO_YEAR": "1", **src.tags()}
        except (rasterio.errors.RasterioError, OSError):
            return False
        if any(tags.get(k) != v for k, v in want.items()):
            return False
    return year == 1 or (Path(out) / CHANGES_NAME).is_file()


def first_year_of(folder: Path) -> tuple[int, int]:
    """The size and seed of the finished first-year set in ``folder``, or one line."""
    try:
        with rasterio.open(outputs(folder)["mask"]) as src:
            tags = src.tags()
        size, seed = int(tags["DEMO_SIZE"]), int(tags["DEMO_SEED"])
    except (rasterio.errors.RasterioError, OSError, KeyError, ValueError):
        fail(f"--changes-from holds no finished demo data (make_demo_data.py --out {folder}): {folder}")
    if tags.get("DEMO_YEAR", "1") != "1" or not is_done(folder, size, seed):
        fail(f"--changes-from is not a finished first year of this generator (make it again): {folder}")
    return size, seed


def _profile(size: int, count: int, dtype: str, res: float) -> dict:
    block = 512 if size >= 512 else 256
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=count,
        dtype=dtype,
        crs=CRS,
        transform=Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1]),
        nodata=0,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        num_threads="ALL_CPUS",
        bigtiff="IF_SAFER",
    )
    if dtype == "uint16":
        profile["predictor"] = 2
    return profile


def generate(
    out: str | Path, size: int = 3000, seed: int = 0, show_progress: bool = True, year: int = 1
) -> dict[str, Path]:
    """Write the two scenes and the 1 m mask of a demo area of ``size`` x ``size`` scene pixels (year 2:
    the same area a year later, with changes.json, the planned changes).

    Returns the paths written ("april", "august", "mask"). Files appear only when all are finished.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planned = None
    if year == 1:
        land = build_landscape(size, seed)
    else:
        land, planned = build_second_year(size, seed)
    paths = outputs(out)
    _write(land, paths, size, seed, show_progress, planned)
    return paths


def _write(land: Landscape, paths: dict, size: int, seed: int, show_progress: bool, planned) -> None:
    """Render the strips into the three files (and changes.json for a second year), renamed last."""
    n_fine = size * FINE
    totals = np.zeros(N_COVERS, dtype=np.int64)
    # GDAL's block cache holds the tiles being written: the rows of tiles a strip touches, plus room.
    cache = 64 * 2**20 + 2 * size * 512 * len(BANDS) * 2 + n_fine * 512
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cache))
        if planned is not None:  # written first, renamed last of all: is_done needs the four files
            changes = stack.enter_context(atomic_path(paths["mask"].with_name(CHANGES_NAME)))
            changes.write_text(json.dumps(planned, indent=1) + "\n")
        tmp = {key: stack.enter_context(atomic_path(p)) for key, p in paths.items()}  # renamed last
        dst = {}
        for season in SEASONS:
            dst[season] = stack.enter_context(
                rasterio.open(tmp[season], "w", **_profile(size, len(BANDS), "uint16", PIXEL))
            )
            dst[season].update_tags(
                **_tags(size, seed, land.year), SEASON=season, REFLECTANCE_SCALE=str(REFLECTANCE_SCALE)
            )
            for i, band in enumerate(BANDS, start=1):
                dst[season].set_band_description(i, band)
        mask = dst["mask"] = stack.enter_context(
            rasterio.open(tmp["mask"], "w", **_profile(n_fine, 1, "uint8", PIXEL / FINE))
        )
        mask.update_tags(**_tags(size, seed, land.year))
        mask.set_band_description(1, "land cover")
        mask.write_colormap(1, gdal_colour_table())
        bar = stack.enter_context(
            progress(total=size, desc="demo data", unit="row", disable=not show_progress)
        )
        for r0 in range(0, size, STRIP_ROWS):
            r1 = min(r0 + STRIP_ROWS, size)
            codes = burn(land, r0 * PIXEL, r1 * PIXEL, PIXEL / FINE)
            mask.write(CLASS_OF[codes], 1, window=Window(0, r0 * FINE, n_fine, (r1 - r0) * FINE))
            counts = cell_counts(codes)
            totals += counts.reshape(-1, N_COVERS).sum(axis=0)
            ids = burn(land, r0 * PIXEL, r1 * PIXEL, PIXEL, values="ident")
            for season, value in render_scenes(land, counts, ids, r0).items():
                dst[season].write(value, window=Window(0, r0, size, r1 - r0))
            bar.update(r1 - r0)
    _report(totals)


def _report(totals: np.ndarray) -> None:
    """Print each class's share of the mask."""
    per_class: dict[int, int] = {}
    for i, n in enumerate(totals):
        per_class[COVERS[i].code] = per_class.get(COVERS[i].code, 0) + int(n)
    total = max(sum(per_class.values()), 1)
    names = {**{c: name for c, (name, _) in CLASSES.items()}, BEACH: "Beaches (-> 5)", SEA: "Sea (-> 12)"}
    print("class shares of the 1 m mask:")
    for code in sorted(per_class):
        print(f"  {code:3d} {names[code]:42s} {100 * per_class[code] / total:6.2f} %")


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser.for_script(
        __doc__,
        epilog=f"Writes {SCENE_NAMES['april']} and {SCENE_NAMES['august']} (10 bands, 10 m, reflectance x "
        f"{REFLECTANCE_SCALE}) and {MASK_NAME} (class codes, 1 m) into --out, and prints each class's "
        "share of the mask.",
    )
    parser.add_argument("--out", default="data/raw", help="folder for the two scenes and the 1 m mask")
    parser.add_argument(
        "--size",
        type=int,
        default=3000,
        help=f"scene width and height in 10 m pixels ({MIN_SIZE}..{MAX_SIZE}); the mask is 10x larger",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data")
    parser.add_argument(
        "--force", action="store_true", help="make the data again even if a finished set is there"
    )
    parser.add_argument(
        "--changes-from",
        type=Path,
        metavar="DIR",
        help="make the second year of the first year's set in DIR (its size and seed; --size and --seed "
        "are not used): the same landscape with planned changes (listed in changes.json), its own "
        "clouds and seasons",
    )
    args = parser.parse_args(argv)
    check_range("--size", args.size, MIN_SIZE, MAX_SIZE)
    check_range("--seed", args.seed, 0)
    out, year = Path(args.out), 1
    if args.changes_from is not None:
        if out.resolve() == args.changes_from.resolve():
            fail(f"--out must be another folder than --changes-from (the first year): {out}")
        (args.size, args.seed), year = first_year_of(args.changes_from), 2
    if out.exists() and not out.is_dir():
        fail(f"--out is not a folder: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot make the --out folder {out}: {e.strerror}")
    if not args.force and is_done(out, args.size, args.seed, year):
        print(
            f"{out}: demo data of size {args.size} and seed {args.seed} already there (--force to remake it)"
        )
        return
    paths = generate(out, args.size, args.seed, year=year)
    for p in paths.values():
        print(f"wrote {p}")
    if year == 2:
        print(f"wrote {out / CHANGES_NAME}:")
        for c in json.loads((out / CHANGES_NAME).read_text()):
            print(f"  {c['before']:2d} -> {c['after']:2d} {c['kind']:26s} {c['area_ha']:9.2f} ha")
        print("(area_ha: the transition's area as generated; painted_ha: its polygons')")


if __name__ == "__main__":
    sys.exit(run_main(main))
