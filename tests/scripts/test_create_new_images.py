"""create_new_images.py: exact dihedral copies of rare-class pairs, in the train split only, once."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import (
    S2_BANDS,
    assert_one_line_error,
    run_script,
    run_script_killed,
    tree_snapshot,
    write_raster,
)

import create_new_images as cni
from colormap import gdal_colour_table

SIZE = 20
OPS = ("rot90", "rot180", "rot270", "flip_h", "flip_v")
# independent definitions of what each name means, (C, H, W) arrays
EXPECTED = {
    "rot90": lambda a: np.stack([np.rot90(b) for b in a]),  # counter-clockwise
    "rot180": lambda a: a[:, ::-1, ::-1],
    "rot270": lambda a: np.stack([np.rot90(b, -1) for b in a]),  # clockwise
    "flip_h": lambda a: a[:, :, ::-1],
    "flip_v": lambda a: a[:, ::-1, :],
}


def mask_with(code: int, pixels: int, nodata: int = 0) -> np.ndarray:
    """A 20 x 20 mask: ``nodata`` pixels of 0 first, then ``pixels`` of ``code``, the rest forest/crops."""
    flat = np.where(np.arange(SIZE * SIZE) % 3 == 0, 3, 1).astype(np.uint8)
    flat[:nodata] = 0
    flat[nodata : nodata + pixels] = code
    return np.random.default_rng(code + pixels).permutation(flat).reshape(SIZE, SIZE)


# name: (mask, bands, augmented by default?)
TILES = {
    "s2_april_0_0": (mask_with(5, 40), 10, True),  # 10 % bare soil
    "s2_april_0_20": (mask_with(7, 20), 10, False),  # exactly 5 %: not more than the threshold
    "s2_april_20_0": (mask_with(10, 11, nodata=200), 10, True),  # 5.5 % of the valid pixels, 2.75 % of all
    "s2_april_20_20": (mask_with(4, 60), 10, False),  # a common class only
    "stack_0_0": (mask_with(11, 80), 20, True),  # a stacked tile: 20 bands move together
}


def write_pair(split: Path, name: str, mask: np.ndarray, bands: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(1, 10000, size=(bands, SIZE, SIZE), dtype=np.uint16)
    img[:, mask == 0] = 0
    if bands == 20:
        desc = [f"{s}:{b}" for s in ("s2_april", "s2_august") for b in S2_BANDS]
    else:
        desc = list(S2_BANDS)
    origin = (400000.0 + 200 * seed, 4600000.0)
    write_raster(split / "img" / f"{name}.tif", img, descriptions=desc, origin=origin, compress="deflate")
    write_raster(split / "mask" / f"{name}.tif", mask, origin=origin, compress="deflate")
    with rasterio.open(split / "mask" / f"{name}.tif", "r+") as m:
        m.write_colormap(1, gdal_colour_table())


@pytest.fixture()
def data(tmp_path) -> Path:
    """data/{train,val,test}: the train tiles above; val and test hold rare-class pairs too."""
    for i, (name, (mask, bands, _)) in enumerate(TILES.items()):
        write_pair(tmp_path / "train", name, mask, bands, seed=i)
    for split in ("val", "test"):
        write_pair(tmp_path / split, "s2_august_40_40", mask_with(5, 100), 10)
    return tmp_path


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*.tif")
    }


def read(path: Path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.descriptions, src.tags()


def test_the_table_is_dataset_dihedral():
    """The named ops are transforms.dihedral's k = 1, 2, 3, 4, 6 (what training uses)."""

    from landcover.transforms import dihedral

    a = np.arange(3 * 4 * 5, dtype=np.int32).reshape(3, 4, 5)
    for op, k in zip(OPS, (1, 2, 3, 4, 6), strict=True):
        assert np.array_equal(cni.AUGMENTATIONS[op](a), dihedral(a, k)), op
        assert np.array_equal(cni.AUGMENTATIONS[op](a), EXPECTED[op](a)), op
        assert np.array_equal(cni.AUGMENTATIONS[op](a[0]), EXPECTED[op](a)[0]), op  # (H, W) too
    assert list(cni.AUGMENTATIONS) == list(OPS)


def test_rare_pairs_get_five_exact_copies(data):
    val_test = tree_snapshot(data / "val"), tree_snapshot(data / "test")
    res = run_script("create_new_images.py", "--train", data / "train", check=True)
    train = data / "train"
    rare = [n for n, (_, _, aug) in TILES.items() if aug]
    expected = set(TILES) | {f"{n}_{op}" for n in rare for op in OPS}
    assert {p.stem for p in (train / "img").glob("*.tif")} == expected
    assert {p.stem for p in (train / "mask").glob("*.tif")} == expected
    assert not list(train.rglob("*.partial"))
    for n in rare:
        img, iprof, idesc, _ = read(train / "img" / f"{n}.tif")
        mask, mprof, _, _ = read(train / "mask" / f"{n}.tif")
        for op in OPS:
            cimg, cprof, cdesc, ctags = read(train / "img" / f"{n}_{op}.tif")
            cmask, cmprof, _, cmtags = read(train / "mask" / f"{n}_{op}.tif")
            assert np.array_equal(cimg, EXPECTED[op](img)), (n, op)  # every band, same transform
            assert np.array_equal(cmask, EXPECTED[op](mask)), (n, op)
            assert cimg.dtype == img.dtype and cmask.dtype == mask.dtype
            assert cdesc == idesc and len(cdesc) == TILES[n][1]
            for prof, src_prof in ((cprof, iprof), (cmprof, mprof)):
                for key in ("crs", "transform", "nodata", "compress", "count", "width", "height"):
                    assert prof.get(key) == src_prof.get(key), (key, n, op)
            assert ctags["AUGMENTATION"] == op and ctags["AUGMENTED_FROM"] == f"{n}.tif"
            assert cmtags["AUGMENTATION"] == op and cmtags["AUGMENTED_FROM"] == f"{n}.tif"
            with rasterio.open(train / "mask" / f"{n}_{op}.tif") as m:
                assert m.colormap(1)[5][:3] == (0xCC, 0xCC, 0xCC)
    # val and test untouched
    assert (tree_snapshot(data / "val"), tree_snapshot(data / "test")) == val_test
    # before / after with class names; bare soil gains exactly 5 copies' worth
    out = res.stdout
    assert "Bare soil" in out and "Mining or landfills" in out
    line = next(ln for ln in out.splitlines() if "Bare soil" in ln)
    before, after = (int(v.replace(",", "")) for v in line.split()[-3:-1])
    assert before == 40 and after == 40 * 6
    assert "wrote 15 new pairs" in out


def test_rerun_adds_nothing_and_copies_are_never_augmented_again(data):
    train = data / "train"
    run_script("create_new_images.py", "--train", train, check=True)
    before = tree_snapshot(train)
    res = run_script("create_new_images.py", "--train", train, check=True)
    assert tree_snapshot(train) == before
    assert "wrote 0 new pairs" in res.stdout
    # even with every class rare, the copies themselves (which qualify) get no copies
    res = run_script(
        "create_new_images.py", "--train", train, "--classes", "1", "--threshold", "0", check=True
    )
    stems = {p.stem for p in (train / "img").glob("*.tif")}
    assert all(cni.augmented_from(cni.augmented_from(s) or "x_0_0") is None for s in stems)
    assert len(stems) == len(TILES) * 6
    # a copy renamed by a user is still known by its tag
    src = train / "img" / "s2_april_0_0_rot90.tif"
    shutil.move(src, train / "img" / "renamed_0_0.tif")
    shutil.move(train / "mask" / src.name, train / "mask" / "renamed_0_0.tif")
    before = tree_snapshot(train)
    run_script("create_new_images.py", "--train", train, "--classes", "1", "--threshold", "0", check=True)
    new = set(tree_snapshot(train)) - set(before)
    assert new == {"img/s2_april_0_0_rot90.tif", "mask/s2_april_0_0_rot90.tif"}  # source gets it back


def test_threshold_counts_valid_pixels_only():
    counts = np.zeros(13, np.int64)
    counts[0], counts[1], counts[10] = 200, 189, 11  # 11 / 200 valid = 5.5 %, of all pixels 2.75 %
    assert cni.is_rare(counts, [10], 0.05)
    assert not cni.is_rare(counts, [10], 0.055)  # exactly: not more than
    counts[1], counts[10] = 71, 29
    counts[0] = 0
    assert not cni.is_rare(counts, [10], 0.29)
    assert not cni.is_rare(np.zeros(13, np.int64), [10], 0)  # no valid pixel


@pytest.mark.parametrize("n", [1, 13])  # after the first image copy; in the second source
def test_killed_run_then_rerun_ends_like_an_uninterrupted_run(data, tmp_path_factory, n):
    reference = tmp_path_factory.mktemp("ref")
    shutil.copytree(data, reference, dirs_exist_ok=True)
    run_script("create_new_images.py", "--train", reference / "train", "--workers", 1, check=True)

    res = run_script_killed(
        "create_new_images.py", "replace", n, "after", "--train", data / "train", "--workers", 1
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    imgs = {p.stem for p in (data / "train" / "img").glob("*.tif")}
    masks = {p.stem for p in (data / "train" / "mask").glob("*.tif")}
    assert len(imgs ^ masks) == 1  # a copy's image without its mask
    run_script("create_new_images.py", "--train", data / "train", check=True)
    assert digests(data) == digests(reference)


@pytest.mark.parametrize(
    ("args", "prepare", "needle"),
    [
        (["--train", "{root}/nowhere"], None, "nowhere"),
        (["--train", "{root}/val"], None, "train split only"),
        (["--threshold", "1"], None, "--threshold"),
        (["--threshold", "-0.1"], None, "--threshold"),
        (["--classes", "5", "13"], None, "unknown class code 13"),
        (["--classes", "0"], None, "unknown class code 0"),
        ([], "no_mask_dir", "no mask/ folder"),
        ([], "empty", "no tiles"),
        ([], "unpaired", "s2_april_0_20.tif"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(data, args, prepare, needle):
    train = data / "train"
    if prepare == "no_mask_dir":
        shutil.rmtree(train / "mask")
    elif prepare == "empty":
        for p in train.rglob("*.tif"):
            p.unlink()
    elif prepare == "unpaired":
        (train / "mask" / "s2_april_0_20.tif").unlink()
    args = [str(a).format(root=data) for a in args]
    if "--train" not in args:
        args = ["--train", train, *args]
    before = tree_snapshot(data)
    res = run_script("create_new_images.py", *args)
    assert_one_line_error(res, needle)
    assert tree_snapshot(data) == before
