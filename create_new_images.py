"""Rare-class augmentation of the train split: create_new_images.py.

Reads ``<train>/img/*.tif`` and ``<train>/mask/*.tif``: the train split made by move_images.py (an
image and its mask have the same file name). Writes, beside every pair in which one of ``--classes``
covers more than ``--threshold`` of the valid mask pixels, five new pairs ``<name>_<op>.tif`` (op:
rot90, rot180, rot270, flip_h, flip_v; see ``AUGMENTATIONS``), image and mask transformed alike, and
prints the class pixel counts of the train split before and after. It exists so that rare classes
weigh more in training; what a copy keeps and how a re-run behaves is in the README's "4.
create_new_images.py" section.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from colormap import CODES, NUM_CLASSES, RARE_CLASSES
from colormap import name as class_name
from landcover.common import (
    ArgumentParser,
    atomic_path,
    check_range,
    fail,
    open_raster,
    ordered_map,
    progress,
    read_pixels,
    remove_partials,
    run_main,
    whole_raster,
)
from landcover.geo import colour_table
from landcover.layout import DATA, KINDS, TEST, TRAIN, VAL, split_folders, tile_names, tile_path, unpaired
from landcover.transforms import NAMED, dihedral

# The copies' names and their dihedral transforms (rot90 turns counter-clockwise, flip_h mirrors
# left-right, flip_v upside down), on arrays whose last two axes are (rows, cols)
AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    op: functools.partial(dihedral, k=k) for op, k in NAMED.items()
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
    img_dir, mask_dir = split_folders(train)
    imgs, masks = tile_names(img_dir), tile_names(mask_dir)
    pairs = imgs & masks
    half = []
    for n in sorted(imgs ^ masks):
        src = augmented_from(n)
        if src is None or src not in pairs:
            fail(unpaired(n, img_dir, mask_dir, n in imgs, partner="its partner"))
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
    img_path, mask_path = (tile_path(d, name) for d in split_folders(train))
    with open_raster(img_path, "image tile") as img, open_raster(mask_path, "mask tile") as m:
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
            colour_table(src),
        )


def write_copy(r: Raster, op: str) -> Path:
    """Write ``<stem>_<op>.tif`` beside the source, atomically: the pixels transformed, the rest kept."""
    out = np.ascontiguousarray(AUGMENTATIONS[op](r.data))
    final = tile_path(r.path.parent, f"{r.path.stem}_{op}")
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
    img, mask = (read_raster(tile_path(d, name)) for d in split_folders(train))
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


def parse_args(argv: Sequence[str] | None):
    p = ArgumentParser.for_script(__doc__)
    p.add_argument(
        "--train", default=str(DATA / TRAIN), help="the train split (img/ and mask/), augmented in place"
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
    return args


def check_train(train: Path) -> None:
    """Fail unless ``train`` is a train split: a folder holding img/ and mask/, not a val or test split."""
    if not train.is_dir():
        fail(f"train split not found (no such folder): {train}")
    if train.resolve().name in (VAL, TEST):
        fail(f"refusing to augment {train}: augmentation belongs in the train split only")
    for kind, folder in zip(KINDS, split_folders(train), strict=True):
        if not folder.is_dir():
            fail(f"not a train split (no {kind}/ folder): {train}")


@dataclass
class Plan:
    """The copies to write, and the class pixel counts of the split before and of what they add."""

    todo: dict[str, list[str]]  # source name -> ops to write
    sources: int  # pairs with a rare class over the threshold
    before: np.ndarray
    added: np.ndarray


def plan_copies(train: Path, names: list[str], done: set[str], half: list[str], args) -> Plan:
    """Read every mask of the split (``names``) for its class counts; the copies of the rare pairs that
    are not there yet (``done``), and the half-written copies (``half``), are to be written."""
    before = np.zeros(NUM_CLASSES, dtype=np.int64)
    tile_counts: dict[str, np.ndarray] = {}
    todo: dict[str, list[str]] = {}
    sources = 0
    _, mask_dir = split_folders(train)
    infos = ordered_map(lambda n: mask_info(tile_path(mask_dir, n)), names, args.workers, 4 * args.workers)
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
    # a dihedral transform moves pixels, it does not change how many of each class there are
    added = sum((tile_counts[n] * len(ops) for n, ops in todo.items()), np.zeros(NUM_CLASSES, np.int64))
    return Plan(todo, sources, before, added)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    train = Path(args.train)
    check_train(train)
    originals, copies, half = scan_train(train)
    for folder in split_folders(train):
        remove_partials(folder)
    plan = plan_copies(train, originals + copies, set(copies), half, args)
    ahead = 2 * args.workers
    for _ in ordered_map(lambda n: check_pair(train, n), plan.todo, args.workers, ahead):
        pass  # every pair to augment checked before the first copy is written
    jobs = ordered_map(lambda job: augment_pair(train, *job), plan.todo.items(), args.workers, ahead)
    for _ in progress(jobs, total=len(plan.todo), desc="augmenting", unit="source"):
        pass
    written = sum(len(ops) for ops in plan.todo.values())
    print(
        f"{plan.sources} of {len(originals)} pairs have more than {args.threshold:g} of their valid pixels "
        f"in class(es) {', '.join(map(str, args.classes))}; wrote {written} new pairs "
        f"({len(copies)} augmented pairs were there already)"
    )
    n_pairs = len(originals) + len(copies)
    print(counts_table(plan.before, plan.before + plan.added, (n_pairs, n_pairs + written)))


if __name__ == "__main__":
    sys.exit(run_main(main))
