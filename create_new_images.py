"""Rare-class augmentation of the train split: create_new_images.py.

Reads  ``<train>/img/*.tif`` and ``<train>/mask/*.tif``: the train split made by move_images.py (an
       image and its mask have the same file name).
Writes, beside every pair in which one of ``--classes`` covers more than ``--threshold`` of the
       valid (non-zero) mask pixels, five new pairs ``<name>_<op>.tif`` (op: rot90, rot180, rot270,
       flip_h, flip_v; see ``AUGMENTATIONS``), image (every band, any count) and mask transformed
       alike. Prints the class pixel counts of the train split before and after.

A copy keeps the source's dtype, band count and descriptions, nodata, CRS, transform, colour table,
tags and compression. Its pixels are rotated or mirrored, so it is a training sample, not a map: it
keeps the source's footprint (the same transform; tiles are square) and says what it is in two
GeoTIFF tags, ``AUGMENTATION`` (the op) and ``AUGMENTED_FROM`` (the source file name). Copies are
recognised by their name (an original tile name ends with its column offset, a copy with ``_<op>``)
or by the tag, and are never augmented again; a copy that already exists is not written again, so a
re-run adds nothing. Every file is written under a temporary name and renamed; after a kill, a copy
whose image exists without its mask (or the reverse) is completed by the next run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from colormap import CODES, NUM_CLASSES, RARE_CLASSES
from colormap import name as class_name
from common import (
    ArgumentParser,
    atomic_path,
    check_range,
    fail,
    open_raster,
    progress,
    read_pixels,
    remove_partials,
    run_main,
    whole_raster,
)

# The dihedral transforms, on arrays whose last two axes are (rows, cols), e.g. (C, H, W) or (H, W).
# rot90 turns counter-clockwise (as np.rot90 and torch.rot90); flip_h mirrors left-right, flip_v
# upside down. In dataset.dihedral's numbering they are k = 1, 2, 3, 4 and 6.
AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rot90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
    "rot180": lambda a: np.rot90(a, 2, axes=(-2, -1)),
    "rot270": lambda a: np.rot90(a, 3, axes=(-2, -1)),
    "flip_h": lambda a: a[..., :, ::-1],
    "flip_v": lambda a: a[..., ::-1, :],
}
TAG_OP, TAG_SOURCE = "AUGMENTATION", "AUGMENTED_FROM"


def augmented_from(stem: str) -> str | None:
    """The source name of an augmented copy's name (``<name>_<op>``), or None for an original."""
    for op in AUGMENTATIONS:
        if stem.endswith(f"_{op}"):
            return stem[: -len(op) - 1]
    return None


def scan_train(train: Path) -> tuple[list[str], list[str], list[str]]:
    """(originals, finished copies, half-written copies) of a train split, names without .tif.

    An original without its partner is an error naming it; so is a half-written copy whose source
    pair is gone (it cannot be completed), and a split without tiles.
    """
    img_dir, mask_dir = train / "img", train / "mask"
    imgs = {p.stem for p in img_dir.glob("*.tif")}
    masks = {p.stem for p in mask_dir.glob("*.tif")}
    pairs = imgs & masks
    half = []
    for n in sorted(imgs ^ masks):
        src = augmented_from(n)
        if src is None or src not in pairs:
            have, lack = (img_dir, mask_dir) if n in imgs else (mask_dir, img_dir)
            kind = "image" if n in imgs else "mask"
            fail(f"{kind} tile without its partner: {have / (n + '.tif')} (expected {lack / (n + '.tif')})")
        half.append(n)
    if not pairs:
        fail(f"no tiles in {train} (expected GeoTIFF pairs in {img_dir} and {mask_dir})")
    originals = sorted(n for n in pairs if augmented_from(n) is None)
    copies = sorted(n for n in pairs if augmented_from(n) is not None)
    return originals, copies, half


def mask_info(path: Path) -> tuple[np.ndarray, bool]:
    """Pixel counts of codes 0..12 of a mask tile, and whether it is tagged as an augmented copy."""
    with open_raster(path, "mask tile") as src:
        if np.dtype(src.dtypes[0]).kind not in "ui":
            fail(f"mask tile holds {src.dtypes[0]} values, expected integer class codes: {path}")
        m = read_pixels(src, "mask tile", 1)
        tagged = TAG_OP in src.tags()
    return np.bincount(m.ravel(), minlength=256)[:NUM_CLASSES].astype(np.int64), tagged


def check_pair(train: Path, name: str) -> None:
    """Fail unless a pair's image reads whole (not cut short, no damaged block) and has its mask's size:
    checked for every pair to augment before the first copy is written (the masks are read already)."""
    mask_path = train / "mask" / f"{name}.tif"
    with (
        open_raster(train / "img" / f"{name}.tif", "image tile") as img,
        open_raster(mask_path, "mask tile") as m,
    ):
        if (img.height, img.width) != (m.height, m.width):
            fail(
                f"mask tile does not fit its image ({m.height} x {m.width}, image {img.height} x "
                f"{img.width}): {mask_path}"
            )
        read_pixels(img, "image tile")


def is_rare(counts: np.ndarray, classes: Sequence[int], threshold: float) -> bool:
    """Whether one of ``classes`` covers more than ``threshold`` of the valid (codes 1..12) pixels."""
    valid = counts[1:].sum()
    # a ratio, not counts[c] > threshold * valid: 29 / 100 > 0.29 is False as it should be
    return bool(valid > 0 and any(counts[c] / valid > threshold for c in classes))


@dataclass
class Raster:
    """A tile file in memory: its pixels and everything a copy must keep."""

    path: Path
    data: np.ndarray
    profile: dict
    descriptions: tuple
    tags: dict
    band_tags: list[dict]
    scales: tuple
    offsets: tuple
    units: tuple
    colormap: dict | None


def read_raster(path: Path) -> Raster:
    """Read a tile with its profile, descriptions, tags, scales, units and colour table."""
    with open_raster(path, "tile") as src:
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = None
        return Raster(
            path,
            read_pixels(src, "tile"),
            dict(src.profile),
            src.descriptions,
            src.tags(),
            [src.tags(i) for i in range(1, src.count + 1)],
            src.scales,
            src.offsets,
            src.units,
            colormap,
        )


def write_copy(r: Raster, op: str) -> Path:
    """Write ``<stem>_<op>.tif`` beside the source, atomically: the pixels transformed, the rest kept."""
    out = np.ascontiguousarray(AUGMENTATIONS[op](r.data))
    final = r.path.with_name(f"{r.path.stem}_{op}.tif")
    profile = {**r.profile, "height": out.shape[1], "width": out.shape[2]}
    with atomic_path(final) as tmp, whole_raster(tmp), rasterio.open(tmp, "w", **profile) as dst:
        dst.write(out)
        for i, d in enumerate(r.descriptions, start=1):
            if d:
                dst.set_band_description(i, d)
        for i, t in enumerate(r.band_tags, start=1):
            if t:
                dst.update_tags(i, **t)
        dst.scales, dst.offsets, dst.units = r.scales, r.offsets, r.units
        dst.update_tags(**{**r.tags, TAG_OP: op, TAG_SOURCE: r.path.name})
        if r.colormap:
            dst.write_colormap(1, r.colormap)
    return final


def augment_pair(train: Path, name: str, ops: Sequence[str]) -> None:
    """The copies ``ops`` of one pair: for each, the image, then the mask."""
    img = read_raster(train / "img" / f"{name}.tif")
    mask = read_raster(train / "mask" / f"{name}.tif")
    for op in ops:
        write_copy(img, op)
        write_copy(mask, op)


def counts_table(before: np.ndarray, after: np.ndarray, pairs: tuple[int, int]) -> str:
    """Class pixel counts of the train split before and after, with the gain of each class."""
    width = 46
    lines = [f"{'class':<{width}}{'before':>14}{'after':>14}{'gain':>8}"]
    for c in CODES:
        gain = f"{after[c] / before[c]:.2f}x" if before[c] else "-"
        lines.append(f"{f'{c:>3} {class_name(c)}':<{width}}{before[c]:>14,}{after[c]:>14,}{gain:>8}")
    lines.append(f"{'tile pairs':<{width}}{pairs[0]:>14,}{pairs[1]:>14,}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--train", default="data/train", help="the train split (img/ and mask/), augmented in place"
    )
    p.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=list(RARE_CLASSES),
        help="rare class codes: a pair is augmented when one of them covers more than --threshold",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="share of the valid (non-zero) mask pixels a rare class must exceed, in [0, 1)",
    )
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="threads writing the copies"
    )
    args = p.parse_args(argv)

    if not 0 <= args.threshold < 1:
        fail(f"--threshold must be in [0, 1), got {args.threshold}")
    for c in args.classes:
        if c not in CODES:
            fail(f"--classes: unknown class code {c} (codes are 1..12, see colormap.py)")
    check_range("--workers", args.workers, 1)
    train = Path(args.train)
    if not train.is_dir():
        fail(f"train split not found (no such folder): {train}")
    if train.resolve().name in ("val", "test"):
        fail(f"refusing to augment {train}: augmentation belongs in the train split only")
    for sub in ("img", "mask"):
        if not (train / sub).is_dir():
            fail(f"not a train split (no {sub}/ folder): {train}")
    originals, copies, half = scan_train(train)

    remove_partials(train / "img")
    remove_partials(train / "mask")
    done = set(copies)
    before = np.zeros(NUM_CLASSES, dtype=np.int64)
    tile_counts: dict[str, np.ndarray] = {}
    todo: dict[str, list[str]] = {}  # source name -> ops to write
    sources = 0
    with ThreadPoolExecutor(args.workers) as pool:
        names = originals + copies
        infos = pool.map(lambda n: mask_info(train / "mask" / f"{n}.tif"), names)
        for n, (counts, tagged) in zip(
            names, progress(infos, total=len(names), desc="class counts", unit="tile"), strict=True
        ):
            before += counts
            tile_counts[n] = counts
            if n in done or tagged or not is_rare(counts, args.classes, args.threshold):
                continue
            sources += 1
            ops = [op for op in AUGMENTATIONS if f"{n}_{op}" not in done]
            if ops:
                todo[n] = ops
        for n in half:  # a copy cut short by a kill: completed whatever the options are now
            src = augmented_from(n)
            todo.setdefault(src, [])
            op = n[len(src) + 1 :]
            if op not in todo[src]:
                todo[src].append(op)
        list(pool.map(lambda n: check_pair(train, n), todo))
        jobs = [pool.submit(augment_pair, train, n, ops) for n, ops in todo.items()]
        for job in progress(jobs, desc="augmenting", unit="source"):
            job.result()
    # a dihedral transform moves pixels, it does not change how many of each class there are
    added = sum((tile_counts[n] * len(ops) for n, ops in todo.items()), np.zeros(NUM_CLASSES, np.int64))
    written = sum(len(ops) for ops in todo.values())
    print(
        f"{sources} of {len(originals)} pairs have more than {args.threshold:g} of their valid pixels in "
        f"class(es) {', '.join(map(str, args.classes))}; wrote {written} new pairs "
        f"({len(done)} augmented pairs were there already)"
    )
    n_pairs = len(originals) + len(copies)
    print(counts_table(before, before + added, (n_pairs, n_pairs + written)))


if __name__ == "__main__":
    sys.exit(run_main(main))
