"""Split the tiles into train / val / test by place, in whole spatial blocks: move_images.py.

Reads ``<tiles>/img<SIZE>/`` and ``<tiles>/mask<SIZE>/`` (pairs with the same file name, written by
divide_img.py) and ``<tiles>/tiles.csv`` for every tile's class pixel counts (without it, the masks
are read). Writes ``<out>/split.csv``, the plan (one row per tile: name, place, block, split,
n1..n12), before anything moves; then moves every pair into ``<out>/<split>/img/`` and
``<out>/<split>/mask/`` (train, val, test), names unchanged, and prints tiles and class shares per
split. It exists so that no neighbouring tile, and no season of a place, sits on both sides of a
score: how blocks are assigned and why a killed run is safe is in the README's "3. move_images.py".
"""

from __future__ import annotations

import csv
import errno
import filecmp
import io
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from colormap import CODES
from colormap import name as class_name
from landcover.common import (
    ArgumentParser,
    atomic_path,
    atomic_write_text,
    check_range,
    csv_rows,
    fail,
    open_raster,
    progress,
    read_pixels,
    remove_partials,
    run_main,
)
from landcover.layout import (
    DATA,
    IMG,
    KINDS,
    SPLITS,
    TILES,
    TILES_CSV,
    count_column,
    pair_names,
    parse_place,
    split_folders,
    tile_folders,
    tile_names,
    tile_path,
    tile_sizes,
)

PLAN_FILE = "split.csv"
PLAN_COLUMNS = ("name", "place", "block", "split", *(count_column(c) for c in CODES))
DEFAULT_BLOCK = 10
MIN_BLOCKS = 20  # with the default --block, blocks shrink until the tiles form at least this many
MISSING_PENALTY = 1000.0  # per class missing from a split (classes found in >= 3 blocks)
FRACTION_PENALTY = 1e6  # per tile beyond the one-block tolerance
CLOSENESS_WEIGHT = 0.01  # mild preference for fractions close to the target within the tolerance
MAX_STEPS = 3000  # improving moves or swaps per start of the local search
MAX_SWAP_SCAN = 400  # blocks tried as the first of a swap when no single move helps


@dataclass(frozen=True)
class PlanRow:
    """One tile of the plan: where it goes and its class pixel counts (codes 1..12)."""

    name: str
    place: str
    block: str
    split: str
    counts: tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Reading the tiles folder


def find_size(tiles: Path, size: int | None) -> int | None:
    """The tile size whose ``img<SIZE>/`` and ``mask<SIZE>/`` folders are in ``tiles``; None if none.

    Several sizes without ``--size`` is an error naming them.
    """
    if size is not None:
        return size if any(d.is_dir() for d in tile_folders(tiles, size)) else None
    sizes = tile_sizes(tiles)
    if len(sizes) > 1:
        found = ", ".join(tile_folders(tiles, s)[0].name for s in sizes)
        fail(f"several tile sizes in {tiles} ({found}): choose one with --size")
    return sizes[0] if sizes else None


def list_pairs(img_dir: Path, mask_dir: Path) -> list[str]:
    """Names (without .tif) of the tile pairs, sorted; an unpaired or misnamed tile is an error."""
    names = pair_names(img_dir, mask_dir)
    for n in names:
        try:
            parse_place(n)
        except ValueError:
            fail(f"tile name does not end with _<row offset>_<col offset>: {tile_path(img_dir, n)}")
    return names


def counts_from_csv(csv_path: Path, size: int) -> dict[str, np.ndarray]:
    """Class pixel counts (codes 1..12) per tile name of the tiles of ``size`` from ``tiles.csv``.

    divide_img.py's table holds a row per tile and tile size (its height). Empty when the file is
    missing or has no count columns; a damaged row is an error.
    """
    if not csv_path.is_file():
        return {}
    cols = [count_column(c) for c in CODES]
    rows = csv_rows(csv_path, "tiles.csv")
    header = rows[0] if rows else []
    if "name" not in header or any(c not in header for c in cols):
        return {}
    out = {}
    for line, values in enumerate(rows[1:], start=2):
        try:
            if len(values) != len(header):
                raise ValueError
            row = dict(zip(header, values, strict=True))
            if "height" in row and int(row["height"]) != size:
                continue
            out[row["name"]] = np.array([int(row[c]) for c in cols], dtype=np.int64)
        except ValueError:
            fail(f"damaged row in {csv_path} (line {line}): class counts are not integers")
    return out


def mask_counts(mask_path: Path) -> np.ndarray:
    """Pixel counts of codes 1..12 in a mask tile."""
    with open_raster(mask_path, "mask tile") as src:
        m = read_pixels(src, "mask tile", 1)
    return np.bincount(m.ravel(), minlength=256)[1 : len(CODES) + 1].astype(np.int64)


def tile_counts(names: list[str], tiles: Path, size: int) -> np.ndarray:
    """(tiles, 12) class pixel counts: from ``tiles.csv`` where it has the tile, else from the mask."""
    known = counts_from_csv(tiles / TILES_CSV, size)
    _, mask_dir = tile_folders(tiles, size)
    missing = [n for n in names if n not in known]
    if missing:
        why = "not in tiles.csv" if known else "no tiles.csv with class counts"
        print(f"reading {len(missing)} mask tiles for their class counts ({why})")
        for n in progress(missing, desc="class counts", unit="tile"):
            known[n] = mask_counts(tile_path(mask_dir, n))
    return np.stack([known[n] for n in names]) if names else np.zeros((0, len(CODES)), np.int64)


# ---------------------------------------------------------------------------------------------
# Blocks and their assignment


def block_of(row: int, col: int, size: int, block: int) -> tuple[int, int]:
    """The block (row, col) of a place: squares of ``block`` x ``block`` tiles of ``size`` pixels."""
    return row // (block * size), col // (block * size)


def choose_block(places: set[tuple[int, int]], size: int, block: int | None, active: int) -> int:
    """``--block``, or without it the largest block size <= 10 that gives >= MIN_BLOCKS blocks.

    Fewer blocks than splits to fill is an error.
    """

    def n_blocks(k: int) -> int:
        return len({block_of(r, c, size, k) for r, c in places})

    if block is None:
        block = next((k for k in range(DEFAULT_BLOCK, 0, -1) if n_blocks(k) >= MIN_BLOCKS), 1)
        if block != DEFAULT_BLOCK:
            print(
                f"note: the tiles form {n_blocks(DEFAULT_BLOCK)} block(s) of {DEFAULT_BLOCK} x "
                f"{DEFAULT_BLOCK} tiles; using blocks of {block} x {block} tiles ({n_blocks(block)} blocks) "
                "so that every split gets several (--block chooses)"
            )
    if n_blocks(block) < active:
        fail(
            f"the tiles form only {n_blocks(block)} block(s) of {block} x {block} tiles, too few for "
            f"{active} splits: use a smaller --block"
        )
    return block


class Objective:
    """The cost of a block assignment: a sum over the splits of a cost of the split's own totals."""

    def __init__(self, counts: np.ndarray, tiles: np.ndarray, fractions: np.ndarray):
        total = counts.sum(0).astype(np.float64)
        self.keep = total > 0  # classes that occur at all
        self.share = total[self.keep] / max(total.sum(), 1)
        self.need = (counts[:, self.keep] > 0).sum(0) >= 3  # classes every split must have
        self.target = fractions * tiles.sum()
        self.active = fractions > 0
        self.tol = np.where(self.active, tiles.max(initial=0), 0).astype(np.float64)

    def split_cost(self, C: np.ndarray, n: np.ndarray, s) -> np.ndarray:
        """Cost of split(s) ``s`` holding class pixels C (..., K) and n (...) tiles -> (...)."""
        rel = C / np.maximum(C.sum(-1, keepdims=True), 1) / self.share - 1
        balance = (rel**2).mean(-1) if C.shape[-1] else np.zeros(C.shape[:-1])
        missing = ((C == 0) & self.need).sum(-1)
        dev, tol = np.abs(n - self.target[s]), self.tol[s]
        inside = balance + MISSING_PENALTY * missing + CLOSENESS_WEIGHT * (dev / np.maximum(tol, 1)) ** 2
        return np.where(self.active[s], inside, 0) + FRACTION_PENALTY * np.maximum(dev - tol, 0)

    def __call__(self, C: np.ndarray, n: np.ndarray) -> np.ndarray:
        """C (..., 3, K) class pixels and n (..., 3) tiles per split -> cost (...)."""
        return self.split_cost(C, n, np.arange(len(SPLITS))).sum(-1)


def _greedy(tiles: np.ndarray, target: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Blocks in ``order``, each to the split furthest below its target: fractions met within a block."""
    a = np.zeros(len(tiles), dtype=np.int64)
    n = np.zeros(len(target))
    for b in order:
        s = int(np.argmax(target - n))
        a[b] = s
        n[s] += tiles[b]
    return a


def _improve(
    a: np.ndarray, X: np.ndarray, t: np.ndarray, obj: Objective, rng: np.random.Generator, max_steps: int
) -> tuple[np.ndarray, float]:
    """Local search: the best single-block move, else the first improving swap; until neither helps.

    Only the two splits a move or swap touches change cost, so every candidate costs O(classes).
    """
    B, S = len(a), len(SPLITS)
    splits = np.arange(S)
    C = np.zeros((S, X.shape[1]))
    np.add.at(C, a, X)
    n = np.bincount(a, weights=t, minlength=S).astype(np.float64)
    g = obj.split_cost(C, n, splits)
    for _ in range(max_steps):
        # every block into every other split
        leave = obj.split_cost(C[a] - X, n[a] - t, a) - g[a]
        enter = obj.split_cost(C[None] + X[:, None], n[None] + t[:, None], splits) - g
        delta = leave[:, None] + enter
        delta[np.arange(B), a] = np.inf
        b, s = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if delta[b, s] < -1e-12:
            C[a[b]] -= X[b]
            n[a[b]] -= t[b]
            C[s] += X[b]
            n[s] += t[b]
            a[b] = s
            g = obj.split_cost(C, n, splits)
            continue
        # swaps: b1 (random order, at most MAX_SWAP_SCAN of them) with the best b2 of another split
        for b1 in rng.permutation(B)[:MAX_SWAP_SCAN]:
            a1 = a[b1]
            d, dt = X - X[b1], t - t[b1]  # b2 enters a1 and b1 leaves it; the reverse in b2's split
            delta = obj.split_cost(C[a1] + d, n[a1] + dt, a1) - g[a1]
            delta = delta + obj.split_cost(C[a] - d, n[a] - dt, a) - g[a]
            delta[a == a1] = np.inf
            b2 = int(np.argmin(delta))
            if delta[b2] < -1e-12:
                a2 = a[b2]
                C[a1] += d[b2]
                n[a1] += dt[b2]
                C[a2] -= d[b2]
                n[a2] -= dt[b2]
                a[b1], a[b2] = a2, a1
                g = obj.split_cost(C, n, splits)
                break
        else:
            break
    return a, float(g.sum())


def assign_blocks(counts: np.ndarray, tiles: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of every block, from its class counts (B, 12) and tiles (B,).

    Seeded: the same inputs and seed give the same assignment.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    obj = Objective(counts, tiles, fractions)
    X = counts[:, obj.keep].astype(np.float64)
    t = tiles.astype(np.float64)
    rng = np.random.default_rng(seed)
    B = len(tiles)
    restarts = 4 if B <= 500 else 1
    best, best_cost = None, np.inf
    for _ in range(restarts):
        a = _greedy(t, obj.target, rng.permutation(B))
        a, cost = _improve(a, X, t, obj, rng, max_steps=min(4 * B + 50, MAX_STEPS))
        if cost < best_cost - 1e-12:
            best, best_cost = a.copy(), cost
    return best


def make_plan(
    names: list[str], counts: np.ndarray, size: int, block: int, fractions: Sequence[float], seed: int
) -> list[PlanRow]:
    """The plan: every tile with its place, block and split, all tiles of a block in one split."""
    places = [parse_place(n) for n in names]
    block_ids = [block_of(r, c, size, block) for r, c in places]
    blocks = sorted(set(block_ids))
    index = {b: i for i, b in enumerate(blocks)}
    bi = np.array([index[b] for b in block_ids], dtype=np.int64)
    bcounts = np.zeros((len(blocks), counts.shape[1]), dtype=np.int64)
    np.add.at(bcounts, bi, counts)
    btiles = np.bincount(bi, minlength=len(blocks))
    a = assign_blocks(bcounts, btiles, fractions, seed)
    return [
        PlanRow(n, f"{r}_{c}", f"{b[0]}_{b[1]}", SPLITS[a[i]], tuple(int(v) for v in k))
        for n, (r, c), b, i, k in zip(names, places, block_ids, bi, counts, strict=True)
    ]


def overlapping_tiles(plan: list[PlanRow], size: int, block: int) -> int:
    """How many tiles reach into a block that went to another split (overlapping tiles only)."""
    split_of = {r.block: r.split for r in plan}
    n = 0
    for r in plan:
        row, col = map(int, r.place.split("_"))
        b0, b1 = block_of(row, col, size, block), block_of(row + size - 1, col + size - 1, size, block)
        touched = {f"{i}_{j}" for i in range(b0[0], b1[0] + 1) for j in range(b0[1], b1[1] + 1)}
        n += any(split_of.get(b, r.split) != r.split for b in touched)
    return n


# ---------------------------------------------------------------------------------------------
# The plan on disk


def write_plan(path: Path, plan: list[PlanRow]) -> None:
    """Write the plan atomically (a killed run leaves either no plan or the whole plan)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PLAN_COLUMNS)
    for r in plan:
        w.writerow([r.name, r.place, r.block, r.split, *r.counts])
    atomic_write_text(path, buf.getvalue())


def read_plan(path: Path) -> list[PlanRow]:
    """The plan written by an earlier run; a damaged file is an error naming it."""
    rows = csv_rows(path, "split.csv")
    if not rows or tuple(rows[0]) != PLAN_COLUMNS:
        fail(f"not a plan of move_images.py (header differs): {path}")
    plan, seen = [], set()
    for i, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(PLAN_COLUMNS) or row[3] not in SPLITS or row[0] in seen:
                raise ValueError
            plan.append(PlanRow(row[0], row[1], row[2], row[3], tuple(int(v) for v in row[4:])))
            seen.add(row[0])
        except ValueError:
            fail(f"damaged plan {path} at line {i}: delete it only if no tile has been moved yet")
    return plan


# ---------------------------------------------------------------------------------------------
# Moving


def move_file(src: Path, dst: Path) -> None:
    """Move one file: a rename, or across file systems a copy to ``<dst>.partial``, rename, delete."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.unlink(src)


@dataclass(frozen=True)
class Step:
    """What to do with one file of the plan: move it, or delete a source already copied whole."""

    src: Path
    dst: Path
    action: str  # "move" or "drop-source"


def split_dirs(out: Path) -> dict[tuple[str, str], Path]:
    """The folder of every (split, kind of tile) under ``out``: ``<out>/train/img`` ..."""
    return {(s, k): d for s in SPLITS for k, d in zip(KINDS, split_folders(out / s), strict=True)}


def plan_steps(plan: list[PlanRow], src_dirs: dict[str, Path | None], out: Path) -> list[list[Step]]:
    """The steps left per pair (image then mask), after checking where every file is.

    A file missing everywhere, found in another split's folder, or present both in the tiles folder
    and in its split with different content is an error naming it (nothing is moved). Each folder is
    listed once, so this stays fast for tens of thousands of tiles.
    """
    dst_dirs = split_dirs(out)
    at_src = {k: tile_names(src_dirs[k]) for k in KINDS}
    at_out = {key: tile_names(d) for key, d in dst_dirs.items()}
    todo = []
    for r in plan:
        steps = []
        for kind in KINDS:
            for s in SPLITS:
                if s != r.split and r.name in at_out[s, kind]:
                    fail(
                        f"tile is in the {s} split but the plan {out / PLAN_FILE} puts it in {r.split}: "
                        f"{tile_path(dst_dirs[s, kind], r.name)}"
                    )
            dst = tile_path(dst_dirs[r.split, kind], r.name)
            if r.name in at_src[kind]:
                src = tile_path(src_dirs[kind], r.name)
                if r.name not in at_out[r.split, kind]:
                    steps.append(Step(src, dst, "move"))
                elif filecmp.cmp(src, dst, shallow=False):
                    steps.append(Step(src, dst, "drop-source"))
                else:
                    fail(f"tile is both in the tiles folder and in its split, with different content: {src}")
            elif r.name not in at_out[r.split, kind]:
                where = f"{src_dirs[kind]} nor {dst.parent}" if src_dirs[kind] else str(dst.parent)
                fail(f"tile {dst.name} of the plan {out / PLAN_FILE} is missing: not in {where}")
        if steps:
            todo.append(steps)
    return todo


def run_steps(todo: list[list[Step]]) -> None:
    """Carry out the steps, pair by pair, creating the split folders as needed."""
    made: set[Path] = set()
    for steps in progress(todo, desc="moving", unit="pair"):
        for st in steps:
            if st.action == "drop-source":
                os.unlink(st.src)
                continue
            if st.dst.parent not in made:
                st.dst.parent.mkdir(parents=True, exist_ok=True)
                made.add(st.dst.parent)
            move_file(st.src, st.dst)


# ---------------------------------------------------------------------------------------------
# Report


def split_table(plan: list[PlanRow]) -> str:
    """Tiles, places, blocks and class pixel shares of the whole and of each split."""
    groups = {"all": plan, **{s: [r for r in plan if r.split == s] for s in SPLITS}}
    width = 46
    lines = [f"{'':<{width}}" + "".join(f"{g:>9}" for g in groups)]
    for label, f in (
        ("tiles", len),
        ("places", lambda rows: len({r.place for r in rows})),
        ("blocks", lambda rows: len({r.block for r in rows})),
    ):
        lines.append(f"{label:<{width}}" + "".join(f"{f(rows):>9}" for rows in groups.values()))
    lines.append(
        f"{'tiles (%)':<{width}}"
        + "".join(f"{100 * len(rows) / max(len(plan), 1):>8.1f}%" for rows in groups.values())
    )
    totals = {
        g: np.sum([r.counts for r in rows], axis=0) if rows else np.zeros(len(CODES))
        for g, rows in groups.items()
    }
    lines.append("class pixel shares (% of valid mask pixels)")
    for i, code in enumerate(CODES):
        label = f"{code:>3} {class_name(code)}"
        cells = "".join(f"{100 * tot[i] / max(tot.sum(), 1):>8.2f}%" for tot in totals.values())
        lines.append(f"{label:<{width}}{cells}")
    return "\n".join(lines)


def missing_classes(plan: list[PlanRow]) -> list[str]:
    """Classes found in >= 3 blocks but absent from a non-empty split (there should be none)."""
    blocks: dict[str, np.ndarray] = {}
    for r in plan:
        blocks[r.block] = blocks.get(r.block, 0) + np.array(r.counts)
    n_blocks = (np.array(list(blocks.values())) > 0).sum(0) if blocks else np.zeros(len(CODES))
    out = []
    for s in SPLITS:
        rows = [r for r in plan if r.split == s]
        if rows:
            tot = np.sum([r.counts for r in rows], axis=0)
            out += [
                f"{code} {class_name(code)} not in {s}"
                for i, code in enumerate(CODES)
                if n_blocks[i] >= 3 and tot[i] == 0
            ]
    return out


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None):
    p = ArgumentParser.for_script(__doc__)
    p.add_argument(
        "--tiles",
        default=str(TILES),
        help="folder written by divide_img.py (img<SIZE>/, mask<SIZE>/, tiles.csv)",
    )
    p.add_argument(
        "--out", default=str(DATA), help="folder that receives train/, val/, test/ and the plan split.csv"
    )
    p.add_argument(
        "--val", type=float, default=0.15, help="fraction of the tiles for validation (met within one block)"
    )
    p.add_argument(
        "--test", type=float, default=0.15, help="fraction of the tiles for testing (met within one block)"
    )
    p.add_argument(
        "--block",
        type=int,
        default=None,
        # "%(default).0s" prints nothing: it stops argparse from appending "(default: None)"
        help=f"side of a spatial block, in tiles; whole blocks go to one split (default: "
        f"{DEFAULT_BLOCK}, made smaller when the tiles form fewer than {MIN_BLOCKS} blocks)%(default).0s",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the block assignment: same seed, same split")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="tile size to split (img<SIZE>/) (default: the only one in --tiles)%(default).0s",
    )
    args = p.parse_args(argv)
    check_range("--val", args.val, 0)
    check_range("--test", args.test, 0)
    if args.val + args.test >= 1:
        fail(f"--val + --test must be below 1 (nothing left for training), got {args.val} + {args.test}")
    if args.block is not None:
        check_range("--block", args.block, 1)
    if args.size is not None:
        check_range("--size", args.size, 1)
    return args


def earlier_plan(plan_path: Path, tiles: Path, src_dirs: dict[str, Path | None]) -> list[PlanRow]:
    """The plan of an earlier run, to finish; a tile it does not name is an error.

    An interrupted run may have left half-moved pairs: no pairing check here.
    """
    plan = read_plan(plan_path)
    print(
        f"found the plan {plan_path} of an earlier run: finishing it (--val, --test, --block and "
        "--seed apply only to a new split)"
    )
    planned = {r.name for r in plan}
    extra = sorted(set().union(*(tile_names(d) for d in src_dirs.values())) - planned)
    if extra:
        fail(
            f"{len(extra)} tiles in {tiles} are not in the plan {plan_path} "
            f"(first: {extra[0]}.tif): split them with another --out"
        )
    return plan


def new_plan(args, tiles: Path, size: int | None, src_dirs: dict[str, Path | None]) -> list[PlanRow]:
    """Plan the split of the tiles and write the plan (``<out>/split.csv``), before anything moves."""
    out = Path(args.out)
    plan_path = out / PLAN_FILE
    if size is None:
        fail(f"no tiles in {tiles}: expected img<SIZE>/ and mask<SIZE>/ folders (run divide_img.py first)")
    names = list_pairs(*src_dirs.values())
    if not names:
        fail(f"no tiles in {tiles} (no GeoTIFFs in {src_dirs[IMG]})")
    for folder in split_dirs(out).values():
        if tile_names(folder):
            fail(
                f"{folder} already holds tiles but there is no plan {plan_path}: "
                "refusing to mix splits (choose another --out)"
            )
    fractions = (1 - args.val - args.test, args.val, args.test)
    places = {parse_place(n) for n in names}
    block = choose_block(places, size, args.block, sum(f > 0 for f in fractions))
    counts = tile_counts(names, tiles, size)
    plan = make_plan(names, counts, size, block, fractions, args.seed)
    n_over = overlapping_tiles(plan, size, block)
    if n_over:
        print(
            f"warning: {n_over} tiles overlap a block of another split (tiles overlap: divide_img.py "
            "--stride below --size); their edge pixels are shared across splits"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_plan(plan_path, plan)
    return plan


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    tiles, out = Path(args.tiles), Path(args.out)
    plan_path = out / PLAN_FILE
    has_plan = plan_path.is_file()
    if not tiles.is_dir() and not has_plan:
        fail(f"tiles folder not found (no such folder): {tiles} (run divide_img.py first)")
    size = find_size(tiles, args.size) if tiles.is_dir() else None
    folders = tile_folders(tiles, size) if size is not None else (None, None)
    src_dirs = dict(zip(KINDS, folders, strict=True))
    plan = earlier_plan(plan_path, tiles, src_dirs) if has_plan else new_plan(args, tiles, size, src_dirs)

    for folder in split_dirs(out).values():
        remove_partials(folder)
    todo = plan_steps(plan, src_dirs, out)
    if todo:
        run_steps(todo)
        print(f"moved {len(todo)} pairs into {out}/{{train,val,test}}")
    else:
        print(f"nothing to move: every pair of the plan {plan_path} is in its split")
    print(split_table(plan))
    for m in missing_classes(plan):
        print(f"warning: {m}")


if __name__ == "__main__":
    sys.exit(run_main(main))
