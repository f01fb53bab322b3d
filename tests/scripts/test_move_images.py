"""move_images.py: a spatial, class-balanced, seeded split that a SIGKILL can never corrupt.

The tiles are generated here: a grid of 12 x 12 places of 20 x 20 px, tiled from three scenes whose
stems hold underscores and digits, with rare classes placed in a few blocks only.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error, run_script, run_script_killed, tree_snapshot, write_raster

import move_images
from colormap import CODES

SIZE = 20
GRID = 12  # places per side
BLOCK = 2  # 6 x 6 = 36 blocks
SCENES = ("s2_april", "s2_august", "scene_2024_08")
# rare classes and the blocks (block row, block col) where they occur
RARE = {
    10: [(0, 0), (2, 3), (5, 5)],  # exactly three blocks: must reach every split
    9: [(1, 1), (4, 2)],  # two blocks: cannot be everywhere
    5: [(0, 2), (1, 4), (3, 0), (3, 3), (5, 1)],
    7: [(0, 5), (2, 1), (4, 4), (5, 3)],
    8: [(1, 2), (2, 5), (4, 0), (5, 4)],
    11: [(0, 1), (1, 3), (2, 2), (3, 5), (4, 1), (5, 0)],
}


def make_tiles(root: Path, *, scenes=SCENES, grid=GRID, with_csv=True, stack=False, bands=3) -> list[str]:
    """divide_img.py's output layout: img20/, mask20/ and tiles.csv; returns the tile names."""
    rng = np.random.default_rng(42)
    header = ["name", "scene", "row_off", "col_off", "height", "width", "left", "bottom", "right", "top"]
    header += ["nodata_fraction", *(f"n{c}" for c in range(13))]
    rows, names = [], []
    stems = ["stack"] if stack else list(scenes)
    for i in range(grid):
        for j in range(grid):
            r, c = i * SIZE, j * SIZE
            mask = rng.choice([1, 2, 3, 4, 6, 12], p=[0.3, 0.2, 0.25, 0.15, 0.05, 0.05], size=(2, 2))
            mask = np.kron(mask, np.ones((SIZE // 2, SIZE // 2), dtype=np.int64)).astype(np.uint8)
            blk = (i // BLOCK, j // BLOCK)
            for k, (code, where) in enumerate(RARE.items()):
                if blk in where and (i % BLOCK, j % BLOCK) == (k % 2, 0):
                    mask[2 + k : 6 + k, 3:9] = code
            if (i + j) % 7 == 0:
                mask[:, :3] = 0  # some nodata
            for stem in stems:
                name = f"{stem}_{r}_{c}"
                names.append(name)
                img = rng.integers(1, 5000, size=(bands, SIZE, SIZE), dtype=np.uint16)
                origin = (400000.0 + c * 10, 4600000.0 - r * 10)
                write_raster(root / f"img{SIZE}" / f"{name}.tif", img, origin=origin)
                write_raster(root / f"mask{SIZE}" / f"{name}.tif", mask, origin=origin)
                n = np.bincount(mask.ravel(), minlength=13)
                rows.append([name, stem, r, c, SIZE, SIZE, 0, 0, 0, 0, round(n[0] / mask.size, 4), *n])
    if with_csv:
        with open(root / "tiles.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return names


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source") / "tiles"
    make_tiles(root)
    return root


@pytest.fixture()
def tiles(source, tmp_path) -> Path:
    dst = tmp_path / "data" / "tiles"
    shutil.copytree(source, dst)
    return dst


def split_args(tiles: Path, *extra) -> list:
    return ["--tiles", tiles, "--out", tiles.parent, "--block", BLOCK, *extra]


def read_plan(out: Path) -> list[dict]:
    with open(out / "split.csv", newline="") as f:
        return list(csv.DictReader(f))


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def final_state(out: Path) -> dict[str, str]:
    """Every file of the splits and the plan, by path relative to ``out``, with its content digest."""
    files = [p for s in move_images.SPLITS for p in (out / s).rglob("*") if p.is_file()]
    files.append(out / "split.csv")
    return {str(p.relative_to(out)): digest(p) for p in files}


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict:
    """An uninterrupted split of the source tiles: its final state, plan, stdout, and the source digests."""
    tiles = tmp_path_factory.mktemp("ref") / "data" / "tiles"
    shutil.copytree(source, tiles)
    originals = {(p.parent.name[: -len(str(SIZE))], p.name): digest(p) for p in tiles.rglob("*.tif")}
    res = run_script("move_images.py", *split_args(tiles), check=True)
    left = list(tiles.rglob("*.tif"))
    return dict(
        state=final_state(tiles.parent),
        plan=read_plan(tiles.parent),
        stdout=res.stdout,
        originals=originals,
        left=left,
    )


# ---------------------------------------------------------------------------------------------
# The split itself


def test_split_is_spatial_balanced_and_complete(reference, source):
    state, originals = reference["state"], reference["originals"]
    assert not reference["left"]
    # nothing lost, nothing duplicated, contents unchanged, each pair in one split
    where: dict[tuple[str, str], str] = {}
    for key, d in state.items():
        if key == "split.csv":
            continue
        split, kind, name = key.split("/")
        assert (kind, name) not in where, key  # never in two splits
        where[(kind, name)] = split
        assert originals[(kind, name)] == d
    assert where.keys() == originals.keys()
    split_of = {name: split for (kind, name), split in where.items() if kind == "img"}
    assert all(where[("mask", n)] == s for n, s in split_of.items())
    assert {f"{r['name']}.tif": r["split"] for r in reference["plan"]} == split_of

    # every place (all scenes) and every block in exactly one split
    by_place, by_block = {}, {}
    for name, split in split_of.items():
        r, c = move_images.parse_place(name[:-4])
        by_place.setdefault((r, c), set()).add(split)
        by_block.setdefault((r // (SIZE * BLOCK), c // (SIZE * BLOCK)), set()).add(split)
    assert len(by_place) == GRID * GRID and all(len(s) == 1 for s in by_place.values())
    assert len(by_block) == (GRID // BLOCK) ** 2 and all(len(s) == 1 for s in by_block.values())

    # fractions within one block (in tiles)
    total = len(split_of)
    block_tiles = BLOCK * BLOCK * len(SCENES)
    for split, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        n = sum(s == split for s in split_of.values())
        assert abs(n - frac * total) <= block_tiles, (split, n, frac * total)

    # every class found in >= 3 blocks is present in every split (10 is in exactly 3 blocks)
    counts = {s: np.zeros(13, np.int64) for s in move_images.SPLITS}
    for name, split in split_of.items():
        with rasterio.open(source / f"mask{SIZE}" / name) as src:
            counts[split] += np.bincount(src.read(1).ravel(), minlength=13)
    for code in (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12):
        assert all(counts[s][code] > 0 for s in move_images.SPLITS), code

    # the printed table names the classes
    assert "Mining or landfills" in reference["stdout"] and "test" in reference["stdout"]


def test_balance_beats_chance():
    """The class shares of val and test are closer to the whole's than a seeded random block fill."""
    rng = np.random.default_rng(1)
    counts = rng.gamma(0.3, 1000, size=(60, 12)).astype(np.int64)
    counts[:, 9] = 0
    counts[[3, 17, 44], 9] = 50  # a rare class in three blocks
    tiles = np.full(60, 8)
    obj = move_images.Objective(counts, tiles, np.array([0.7, 0.15, 0.15]))

    def cost(a):
        C = np.zeros((3, obj.keep.sum()))
        np.add.at(C, a, counts[:, obj.keep])
        return float(obj(C, np.bincount(a, weights=tiles, minlength=3)))

    a = move_images.assign_blocks(counts, tiles, (0.7, 0.15, 0.15), seed=0)
    random_costs = [
        cost(move_images._greedy(tiles.astype(float), obj.target, rng.permutation(60))) for _ in range(20)
    ]
    assert cost(a) < min(random_costs)
    assert all(counts[a == s, 9].sum() > 0 for s in range(3))
    assert all(abs((a == s).sum() * 8 - f * 480) <= 8 for s, f in enumerate((0.7, 0.15, 0.15)))


def test_a_zero_fraction_leaves_its_split_empty():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 100, size=(30, 12))
    a = move_images.assign_blocks(counts, np.full(30, 4), (0.8, 0.0, 0.2), seed=0)
    assert not (a == 1).any() and (a == 2).sum() == 6


def test_same_seed_same_split_other_seed_differs(source):
    names = move_images.list_pairs(source / "img20", source / "mask20")
    counts = move_images.tile_counts(names, source, SIZE)
    plans = {s: move_images.make_plan(names, counts, SIZE, BLOCK, (0.7, 0.15, 0.15), s) for s in range(4)}
    again = move_images.make_plan(names, counts, SIZE, BLOCK, (0.7, 0.15, 0.15), 0)
    assert again == plans[0]
    assert len({tuple(r.split for r in p) for p in plans.values()}) > 1


def test_counts_from_masks_when_there_is_no_tiles_csv(source, tmp_path):
    names = move_images.list_pairs(source / "img20", source / "mask20")
    from_csv = move_images.tile_counts(names, source, SIZE)
    no_csv = tmp_path / "t"
    shutil.copytree(source, no_csv, ignore=shutil.ignore_patterns("tiles.csv"))
    from_masks = move_images.tile_counts(names, no_csv, SIZE)
    assert np.array_equal(from_csv, from_masks)
    assert from_masks[:, CODES.index(10)].sum() > 0
    # tiles.csv rows of another tile size (same names) are not this size's counts
    with open(source / "tiles.csv", newline="") as f:
        rows = list(csv.reader(f))
    other = [[r[0], r[1], r[2], r[3], "40", "40", *r[6:11], *(["999"] * 13)] for r in rows[1:]]
    with open(no_csv / "tiles.csv", "w", newline="") as f:
        csv.writer(f).writerows([*rows, *other])
    assert np.array_equal(move_images.tile_counts(names, no_csv, SIZE), from_csv)


def test_names_with_underscores_and_stacked_tiles(tmp_path):
    assert move_images.parse_place("scene_2024_08_40_200") == (40, 200)
    assert move_images.parse_place("stack_0_300") == (0, 300)
    with pytest.raises(ValueError):
        move_images.parse_place("s2_april_x_300")
    # stacked tiles (20 bands, one tile per place) split the same way
    tiles = tmp_path / "data" / "tiles"
    names = make_tiles(tiles, stack=True, grid=8, bands=20)
    res = run_script("move_images.py", *split_args(tiles), check=True)
    moved = {p.stem for p in (tiles.parent).glob("*/img/*.tif")}
    assert moved == set(names) and "Transport network" in res.stdout


def test_default_block_shrinks_for_small_areas_and_explicit_block_must_fit(tiles):
    out = tiles.parent
    res = run_script("move_images.py", "--tiles", tiles, "--out", out, "--block", GRID + 1)
    assert_one_line_error(res, "1 block", "--block")
    assert not (out / "split.csv").exists()
    res = run_script("move_images.py", "--tiles", tiles, "--out", out, check=True)
    assert "blocks of 2 x 2 tiles" in res.stdout  # 36 blocks of 2, only 16 of 3
    assert {r["block"] for r in read_plan(out)} == {f"{i}_{j}" for i in range(6) for j in range(6)}


# ---------------------------------------------------------------------------------------------
# Crashes and re-runs


@pytest.mark.parametrize(
    ("fn", "n", "when"),
    [
        ("replace", 1, "before"),  # while writing the plan: nothing moved, no plan
        ("replace", 1, "after"),  # plan written, nothing moved
        ("rename", 1, "after"),  # one image moved, its mask not: a half-moved pair
        ("rename", 2, "after"),  # one whole pair moved
        ("rename", 301, "after"),  # in the middle
    ],
)
def test_killed_run_then_rerun_ends_like_an_uninterrupted_run(tiles, reference, fn, n, when):
    out = tiles.parent
    res = run_script_killed("move_images.py", fn, n, when, *split_args(tiles))
    assert res.returncode == -signal.SIGKILL, res.stderr
    n_tiles = len(list(tiles.rglob("*.tif")))
    n_out = sum(1 for s in move_images.SPLITS for _ in (out / s).rglob("*.tif"))
    assert n_tiles + n_out == len(reference["originals"])  # at every moment, every file is somewhere, once
    if fn == "rename":
        assert n_out == n
    run_script("move_images.py", *split_args(tiles), check=True)
    assert final_state(out) == reference["state"]
    assert not list(tiles.rglob("*.tif"))


def test_hand_moved_files_and_interrupted_copies_are_repaired(tiles, reference):
    out = tiles.parent
    run_script_killed("move_images.py", "replace", 1, "after", *split_args(tiles))
    plan = read_plan(out)
    assert plan and not any((out / s).exists() for s in move_images.SPLITS)
    # a user moved some images by hand (their masks left behind) ...
    for row in plan[:5]:
        (out / row["split"] / "img").mkdir(parents=True, exist_ok=True)
        os.rename(tiles / "img20" / f"{row['name']}.tif", out / row["split"] / "img" / f"{row['name']}.tif")
    # ... and a cross-device move was killed after the copy, before deleting the source
    row = plan[7]
    (out / row["split"] / "mask").mkdir(parents=True, exist_ok=True)
    shutil.copy2(tiles / "mask20" / f"{row['name']}.tif", out / row["split"] / "mask" / f"{row['name']}.tif")
    (out / row["split"] / "mask" / "leftover.tif.partial").write_bytes(b"half a copy")
    run_script("move_images.py", *split_args(tiles), check=True)
    assert final_state(out) == reference["state"]
    assert not list(tiles.rglob("*.tif"))


def test_rerun_of_a_finished_split_changes_nothing(tiles, reference):
    out = tiles.parent
    run_script("move_images.py", *split_args(tiles), check=True)
    # augmented copies added later to train are not the plan's business
    extra = out / "train" / "img" / "x_0_0_rot90.tif"
    extra.write_bytes(b"not ours")
    (out / "train" / "mask" / "x_0_0_rot90.tif").write_bytes(b"not ours")
    before = tree_snapshot(out)
    res = run_script("move_images.py", *split_args(tiles, "--seed", 5, "--val", 0.3), check=True)
    assert "nothing to move" in res.stdout and "Forest" in res.stdout
    assert tree_snapshot(out) == before


def test_cross_device_move_copies_then_deletes(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.tif", tmp_path / "b" / "a.tif"
    dst.parent.mkdir()
    src.write_bytes(b"tile bytes")

    def no_rename(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(move_images.os, "rename", no_rename)
    move_images.move_file(src, dst)
    assert dst.read_bytes() == b"tile bytes" and not src.exists()
    assert list(dst.parent.iterdir()) == [dst]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing changed


def _unpaired(tiles: Path) -> str:
    victim = sorted((tiles / "mask20").glob("*.tif"))[3]
    victim.unlink()
    return victim.name


def _empty(tiles: Path) -> str:
    for p in tiles.rglob("*.tif"):
        p.unlink()
    return "no tiles"


def _two_sizes(tiles: Path) -> str:
    (tiles / "img256").mkdir()
    (tiles / "mask256").mkdir()
    return "--size"


def _occupied(tiles: Path) -> str:
    (tiles.parent / "val" / "img").mkdir(parents=True)
    shutil.copy2(next((tiles / "img20").glob("*.tif")), tiles.parent / "val" / "img")
    return "already holds tiles"


def _plan_then_lost(tiles: Path) -> str:
    run_script_killed("move_images.py", "replace", 1, "after", *split_args(tiles))  # the plan, nothing moved
    (tiles / "mask20" / "s2_april_0_0.tif").unlink()
    return "s2_april_0_0.tif"


def _plan_then_foreign(tiles: Path) -> str:
    run_script_killed("move_images.py", "replace", 1, "after", *split_args(tiles))
    shutil.copy2(tiles / "img20" / "s2_april_0_0.tif", tiles / "img20" / "s2_june_0_0.tif")
    return "not in the plan"


@pytest.mark.parametrize(
    ("args", "prepare", "needle"),
    [
        (["--tiles", "{root}/nowhere"], None, "nowhere"),
        (["--block", BLOCK], _plan_then_lost, None),
        (["--block", BLOCK], _plan_then_foreign, None),
        ([], _empty, "no tiles"),
        ([], _unpaired, None),
        ([], _two_sizes, "img256"),
        ([], _occupied, "already holds tiles"),
        (["--val", "-0.1"], None, "--val"),
        (["--test", "-1"], None, "--test"),
        (["--val", "0.5", "--test", "0.5"], None, "below 1"),
        (["--block", "0"], None, "--block"),
    ],
)
def test_bad_input_is_one_line_and_moves_nothing(tiles, args, prepare, needle):
    root = tiles.parent
    if prepare is not None:
        needle = prepare(tiles) or needle
    args = [str(a).format(root=root) for a in args]
    if "--tiles" not in args:
        args = ["--tiles", tiles, *args]
    before = tree_snapshot(root)
    res = run_script("move_images.py", *args, "--out", root)
    assert_one_line_error(res, needle)
    assert tree_snapshot(root) == before
