"""Bad input, every script, one table: exit status 2, one line naming the file (or option) and what is
wrong, no traceback, and not one file created or changed anywhere.

Each row is (script, case, how to build the bad input, arguments, words the message must hold). The
cases already covered the same way in a script's own tests are not repeated here (see the README's
Reliability section); these are the ones that cut across the chain: files cut short, files that are not
rasters, files with a damaged pixel block, masks of floats, checkpoints that are cut short, of another
architecture or holding a pickled object (refused without running it: the object would write a
marker file), options out of range,
outputs that cannot be created. Shared valid inputs are built once (tiny scenes, tiles and resnet18
checkpoints); the scripts run as real processes, forked from one warm server (tests/prefork.py) so that
torch is imported once. Before and after each run the whole tree of inputs and outputs is compared:
paths, sizes and modification times.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import S2_BANDS, tree_snapshot, write_raster, write_tile_split

from landcover.checkpoint import make_checkpoint, sealed
from model import build_model

SIZE = 64  # scene side (10 m pixels)
ORIGIN = (400000.0, 4600000.0)
BANDS4 = ("B2", "B3", "B4", "B8")  # the bands of the tiles of data/
FAST_TRAIN = ["--encoder", "resnet18", "--epochs", "1", "--batch-size", "2", "--workers", "0"]
# a GeoTIFF cut short: its header says so (blocks past the end), or, when GDAL wrote the directory at the
# end of the file (as for many new files), the file cannot be opened at all
CUT = ("truncated", "not a readable raster")
MARKER = "pickle_ran.txt"  # what the pickled object of a checkpoint writes if it is ever unpickled


class RunsCode:
    """Unpickled (torch.load without weights_only), this creates the file ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------------------------------
# Shared valid inputs, built once


def scene(path: Path, seed: int, bands: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(100, 5000, (bands, SIZE, SIZE), dtype=np.uint16)
    return write_raster(path, img, origin=ORIGIN, descriptions=S2_BANDS[:bands], compress="deflate")


def checkpoint(path: Path, bands, encoder: str = "resnet18", config: dict | None = None, **extra) -> Path:
    """A project checkpoint of an untrained U-Net; ``config`` overrides its model_config."""
    torch.manual_seed(0)
    net = build_model(encoder, len(bands), 13)
    stats = {"mean": [1000.0] * len(bands), "std": [500.0] * len(bands)}
    ckpt = make_checkpoint(net, list(bands), stats, epoch=1)
    ckpt["model_config"].update(config or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**sealed(ckpt), **extra}, path)  # extra: a pickled object, refused before the digest
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, runner) -> Path:
    """raw/ (two scenes, a 1 m mask), mask_10m.tif, tiles/ (by divide_img.py), data/{train,val,test}
    (4-band tiles), ckpt/s2.pt (10 bands), ckpt/b4.pt (4 bands) and ckpt/stack.pt (both scenes, 20
    bands): valid inputs, never changed."""
    root = tmp_path_factory.mktemp("base")
    scene(root / "raw" / "s2_april.tif", 1)
    scene(root / "raw" / "s2_august.tif", 2)
    rng = np.random.default_rng(0)
    codes = rng.integers(1, 13, (SIZE // 8, SIZE // 8), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    write_raster(root / "mask_10m.tif", codes, origin=ORIGIN)
    write_raster(root / "raw" / "landcover_1m.tif", codes.repeat(10, 0).repeat(10, 1), res=1.0, origin=ORIGIN)
    res = runner.run(
        "divide_img.py", "--images", root / "raw" / "s2_april.tif", root / "raw" / "s2_august.tif",
        "--mask", root / "mask_10m.tif", "--out", root / "tiles", "--size", 16,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        write_tile_split(root / "data" / split, n=3, size=32, seed=seed, descriptions=BANDS4)
    checkpoint(root / "ckpt" / "s2.pt", S2_BANDS)
    checkpoint(root / "ckpt" / "b4.pt", BANDS4)
    checkpoint(root / "ckpt" / "stack.pt", [f"{s}:{b}" for s in ("s2_april", "s2_august") for b in S2_BANDS])
    return root


# ---------------------------------------------------------------------------------------------
# How each bad input is made: fn(tmp, base) -> {name: path} for the arguments' placeholders


def cut_in_half(src: Path, dst: Path) -> Path:
    """A copy of the first half of ``src``'s bytes: a download or a copy cut short."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = Path(src).read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def damage(path: Path) -> Path:
    """Garbage over the first pixel block of a GeoTIFF: it opens, and fails to decode."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = b"\x55" * size
    path.write_bytes(bytes(data))
    return path


def text_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a raster, a note someone saved with the wrong name\n")
    return path


def copy_tree(base: Path, name: str, tmp: Path) -> Path:
    return Path(shutil.copytree(base / name, tmp / name))


def b_text(tmp, base):
    return {"bad": text_file(tmp / "notes.tif")}


def b_empty_dir(tmp, base):
    (tmp / "empty").mkdir()
    return {"bad": tmp / "empty"}


def b_cut_mask_1m(tmp, base):
    return {"bad": cut_in_half(base / "raw" / "landcover_1m.tif", tmp / "landcover_cut.tif")}


def b_cut_scene(tmp, base):
    return {"bad": cut_in_half(base / "raw" / "s2_april.tif", tmp / "s2_cut.tif")}


def b_cut_august(tmp, base):
    return {"bad": cut_in_half(base / "raw" / "s2_august.tif", tmp / "cut" / "s2_august.tif")}


def b_cut_mask_10m(tmp, base):
    return {"bad": cut_in_half(base / "mask_10m.tif", tmp / "mask_cut.tif")}


def b_float_mask(tmp, base):
    values = np.random.default_rng(0).random((SIZE, SIZE), dtype=np.float32) * 12
    return {"bad": write_raster(tmp / "mask_float.tif", values, origin=ORIGIN)}


def b_file_in_the_way(tmp, base):
    (tmp / "afile").write_text("a file where a folder should be\n")
    return {"bad": tmp / "afile"}


def b_tiles_no_csv(tmp, base, damage: Callable[[Path], object]):
    tiles = copy_tree(base, "tiles", tmp)
    (tiles / "tiles.csv").unlink()
    damage(sorted((tiles / "mask16").glob("*.tif"))[2])
    return {"tiles": tiles}


def b_tiles_text_mask(tmp, base):
    return b_tiles_no_csv(tmp, base, text_file)


def b_tiles_cut_mask(tmp, base):
    return b_tiles_no_csv(tmp, base, lambda p: cut_in_half(Path(shutil.copy(p, tmp / "whole.tif")), p))


def b_tiles_damaged_mask(tmp, base):
    return b_tiles_no_csv(tmp, base, damage)


def b_tiles_damaged_csv(tmp, base):
    tiles = copy_tree(base, "tiles", tmp)
    lines = (tiles / "tiles.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",many"
    (tiles / "tiles.csv").write_text("\n".join(lines) + "\n")
    return {"tiles": tiles}


def b_tiles_damaged_plan(tmp, base):
    tiles = copy_tree(base, "tiles", tmp)
    (tmp / "data").mkdir()
    (tmp / "data" / "split.csv").write_text("name,place,block,split\nx_0_0,0_0,0_0,holidays\n")
    return {"tiles": tiles}


def b_tiles_out_file(tmp, base):
    return {"tiles": copy_tree(base, "tiles", tmp), **b_file_in_the_way(tmp, base)}


def b_data(tmp, base, damage: Callable[[Path], object] | None = None):
    data = copy_tree(base, "data", tmp)
    if damage is not None:
        damage(data)
    return {"data": data}


def b_data_cut_image(tmp, base):
    return b_data(
        tmp, base, lambda d: cut_in_half(shutil.copy(d / "train/img/t001.tif", tmp), d / "train/img/t001.tif")
    )


def b_data_text_mask(tmp, base):
    return b_data(tmp, base, lambda d: text_file(d / "val" / "mask" / "t001.tif"))


def b_data_damaged_image(tmp, base, split="train"):
    return b_data(tmp, base, lambda d: damage(d / split / "img" / "t001.tif"))


def b_data_damaged_val_image(tmp, base):
    return b_data_damaged_image(tmp, base, split="val")


def b_data_damaged_mask(tmp, base):
    return b_data(tmp, base, lambda d: damage(d / "train" / "mask" / "t001.tif"))


def b_train_text_mask(tmp, base):
    return b_data(tmp, base, lambda d: text_file(d / "train" / "mask" / "t001.tif"))


def b_data_float_mask(tmp, base):
    values = np.full((32, 32), 3.5, np.float32)
    return b_data(tmp, base, lambda d: write_raster(d / "train" / "mask" / "t002.tif", values))


def b_data_mask_other_size(tmp, base):
    return b_data(
        tmp, base, lambda d: write_raster(d / "train" / "mask" / "t000.tif", np.ones((16, 16), np.uint8))
    )


def b_test_cut_image(tmp, base):
    return b_data(
        tmp, base, lambda d: cut_in_half(shutil.copy(d / "test/img/t002.tif", tmp), d / "test/img/t002.tif")
    )


def b_test_empty(tmp, base):
    def empty(d: Path) -> None:
        for p in (d / "test").rglob("*.tif"):
            p.unlink()

    return b_data(tmp, base, empty)


def b_test_unpaired(tmp, base):
    return b_data(tmp, base, lambda d: (d / "test" / "mask" / "t001.tif").unlink())


def b_test_mixed_sizes(tmp, base):
    def other_size(d: Path) -> None:
        write_raster(d / "test" / "img" / "t001.tif", np.ones((4, 16, 16), np.uint16), descriptions=BANDS4)
        write_raster(d / "test" / "mask" / "t001.tif", np.ones((16, 16), np.uint8))

    return b_data(tmp, base, other_size)


def b_run_pickled_last(tmp, base):
    """A run folder whose last.pt holds a pickled object."""
    marker = tmp / MARKER
    checkpoint(tmp / "run" / "last.pt", BANDS4, classes=RunsCode(marker))
    return {"marker": marker}


def b_pickled(tmp, base):
    marker = tmp / MARKER
    ckpt = checkpoint(tmp / "evil.pt", S2_BANDS, classes=RunsCode(marker))
    return {"bad": ckpt, "marker": marker}


def b_pickled_b4(tmp, base):
    marker = tmp / MARKER
    return {"bad": checkpoint(tmp / "evil.pt", BANDS4, classes=RunsCode(marker)), "marker": marker}


def b_pickled_weights(tmp, base):
    marker = tmp / MARKER
    path = tmp / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.note": RunsCode(marker)}, path)
    return {"bad": path, "marker": marker}


def b_cut_weights(tmp, base):
    torch.save(build_model("resnet18", 3, 13).state_dict(), tmp / "full.pth")
    return {"bad": cut_in_half(tmp / "full.pth", tmp / "weights.pth")}


def b_resnet18_weights(tmp, base):
    """torchvision-style resnet18 weights, for an --encoder resnet34 run: another architecture."""
    import torchvision

    path = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return {"bad": path}


def b_cut_ckpt(tmp, base, name="b4.pt"):
    return {"bad": cut_in_half(base / "ckpt" / name, tmp / "cut.pt")}


def b_arch_encoder(tmp, base, bands=BANDS4):
    """resnet18 weights under a resnet34 model_config."""
    return {"bad": checkpoint(tmp / "other.pt", bands, config={"encoder": "resnet34"})}


def b_arch_bands(tmp, base):
    """10 bands named, the weights of a 4-band first convolution, a config that says 10."""
    return {"bad": checkpoint(tmp / "other.pt", BANDS4, config={"in_channels": 10})}


def b_confidence_dir(tmp, base):
    """A folder where predict.py's confidence raster would go."""
    (tmp / "maps" / "m_confidence.tif").mkdir(parents=True)
    return {}


def b_renamed_august_4_bands(tmp, base):
    """Another year's August mosaic, named otherwise, with 4 of the checkpoint's 10 bands."""
    return {"bad": scene(tmp / "2019_august.tif", 3, bands=4)}


# ---------------------------------------------------------------------------------------------
# The table

RAW = "{base}/raw"
APRIL, AUGUST = f"{RAW}/s2_april.tif", f"{RAW}/s2_august.tif"
RESCALE = ["--mask", f"{RAW}/landcover_1m.tif", "--like", APRIL, "--out", "{tmp}/out/m10.tif"]
DIVIDE = ["--mask", "{base}/mask_10m.tif", "--out", "{tmp}/tiles", "--size", "16", "--images"]
MOVE = ["--out", "{tmp}/data", "--tiles"]
CREATE = ["--classes", "1", "--threshold", "0", "--train"]  # every tile with class 1 is augmented
TRAIN = ["--out", "{tmp}/run", *FAST_TRAIN, "--data"]
TEST = ["--out", "{tmp}/results", "--device", "cpu", "--checkpoint"]
PREDICT = ["--image", APRIL, "--out", "{tmp}/maps/m.tif", "--device", "cpu", "--checkpoint"]
S2, B4 = "{base}/ckpt/s2.pt", "{base}/ckpt/b4.pt"
NOT_RASTER = "not a readable raster"

CASES = [
    # (script, case, build, arguments, words of the message)
    ("make_demo_data.py", "size 0", None, ["--out", "{tmp}/raw", "--size", "0"], ["--size"]),
    # rescale_mask.py
    ("rescale_mask.py", "missing mask", None,
     [*RESCALE, "--mask", "{tmp}/nope.tif"], ["nope.tif", "not found"]),
    ("rescale_mask.py", "mask not a raster", b_text,
     [*RESCALE, "--mask", "{bad}"], ["notes.tif", NOT_RASTER]),
    ("rescale_mask.py", "truncated mask", b_cut_mask_1m,
     [*RESCALE, "--mask", "{bad}"], ["landcover_cut.tif", CUT]),
    ("rescale_mask.py", "truncated scene", b_cut_scene, [*RESCALE, "--like", "{bad}"], ["s2_cut.tif", CUT]),
    ("rescale_mask.py", "mask is a folder", b_empty_dir,
     [*RESCALE, "--mask", "{bad}"], ["empty", "not a file"]),
    ("rescale_mask.py", "--out under a file", b_file_in_the_way,
     [*RESCALE, "--out", "{bad}/m10.tif"], ["afile"]),
    ("rescale_mask.py", "--weight-power < 0", None,
     [*RESCALE, "--method", "weighted", "--weight-power", "-1"], ["--weight-power"]),
    # divide_img.py
    ("divide_img.py", "empty folder", b_empty_dir, [*DIVIDE, "{bad}"], ["empty", "not a file"]),
    ("divide_img.py", "empty glob", b_empty_dir, [*DIVIDE, "{bad}/*.tif"], ["no scenes matched", "empty"]),
    ("divide_img.py", "truncated scene", b_cut_scene, [*DIVIDE, "{bad}"], ["s2_cut.tif", CUT]),
    ("divide_img.py", "truncated 2nd scene of a stack", b_cut_scene,
     [*DIVIDE, AUGUST, "{bad}", "--stack"], ["s2_cut.tif", CUT]),
    ("divide_img.py", "truncated mask", b_cut_mask_10m,
     [*DIVIDE, APRIL, "--mask", "{bad}"], ["mask_cut.tif", CUT]),
    ("divide_img.py", "float mask", b_float_mask,
     [*DIVIDE, APRIL, "--mask", "{bad}"], ["mask_float.tif", "float32"]),
    ("divide_img.py", "1 m mask (another grid)", None,
     [*DIVIDE, APRIL, "--mask", f"{RAW}/landcover_1m.tif"], ["landcover_1m.tif", "grid", "rescale_mask.py"]),
    ("divide_img.py", "--max-nodata > 1", None, [*DIVIDE, APRIL, "--max-nodata", "1.5"], ["--max-nodata"]),
    ("divide_img.py", "--stride < 0", None, [*DIVIDE, APRIL, "--stride", "-4"], ["--stride"]),
    ("divide_img.py", "--workers 0", None, [*DIVIDE, APRIL, "--workers", "0"], ["--workers"]),
    ("divide_img.py", "--out is a file", b_file_in_the_way, [*DIVIDE, APRIL, "--out", "{bad}"], ["afile"]),
    # move_images.py
    ("move_images.py", "mask tile not a raster (no tiles.csv)", b_tiles_text_mask,
     [*MOVE, "{tiles}"], ["mask16", NOT_RASTER]),
    ("move_images.py", "truncated mask tile (no tiles.csv)", b_tiles_cut_mask,
     [*MOVE, "{tiles}"], ["mask16", CUT]),
    ("move_images.py", "mask tile with damaged blocks (no tiles.csv)", b_tiles_damaged_mask,
     [*MOVE, "{tiles}"], ["mask16", "cannot read"]),
    ("move_images.py", "damaged tiles.csv", b_tiles_damaged_csv, [*MOVE, "{tiles}"], ["tiles.csv", "line 4"]),
    ("move_images.py", "damaged plan", b_tiles_damaged_plan, [*MOVE, "{tiles}"], ["split.csv"]),
    ("move_images.py", "--out is a file", b_tiles_out_file,
     ["--tiles", "{tiles}", "--out", "{bad}"], ["afile"]),
    ("move_images.py", "--size 0", None, [*MOVE, "{base}/tiles", "--size", "0"], ["--size"]),
    # create_new_images.py
    ("create_new_images.py", "truncated image tile", b_data_cut_image,
     [*CREATE, "{data}/train"], ["t001.tif", CUT]),
    ("create_new_images.py", "image tile with damaged blocks", b_data_damaged_image,
     [*CREATE, "{data}/train"], ["t001.tif", "cannot read"]),
    ("create_new_images.py", "mask tile with damaged blocks", b_data_damaged_mask,
     [*CREATE, "{data}/train"], ["t001.tif", "cannot read"]),
    ("create_new_images.py", "mask tile not a raster", b_train_text_mask,
     [*CREATE, "{data}/train"], ["t001.tif", NOT_RASTER]),
    ("create_new_images.py", "float mask tile", b_data_float_mask,
     [*CREATE, "{data}/train"], ["t002.tif", "float32"]),
    ("create_new_images.py", "mask of another size", b_data_mask_other_size,
     [*CREATE, "{data}/train"], ["t000.tif", "16 x 16"]),
    ("create_new_images.py", "--workers 0", None,
     [*CREATE, "{base}/data/train", "--workers", "0"], ["--workers"]),
    # train.py
    ("train.py", "truncated image tile", b_data_cut_image, [*TRAIN, "{data}"], ["t001.tif", CUT]),
    ("train.py", "image tile with damaged blocks", b_data_damaged_image,
     [*TRAIN, "{data}"], ["t001.tif", "cannot read"]),
    ("train.py", "val image tile with damaged blocks", b_data_damaged_val_image,
     [*TRAIN, "{data}"], ["val", "t001.tif", "cannot read"]),
    ("train.py", "mask tile not a raster", b_data_text_mask, [*TRAIN, "{data}"], ["t001.tif", NOT_RASTER]),
    ("train.py", "float mask tile", b_data_float_mask, [*TRAIN, "{data}"], ["t002.tif", "float32"]),
    ("train.py", "--batch-size 0", None, [*TRAIN, "{base}/data", "--batch-size", "0"], ["--batch-size"]),
    ("train.py", "--lr 0", None, [*TRAIN, "{base}/data", "--lr", "0"], ["--lr"]),
    ("train.py", "--workers -1", None, [*TRAIN, "{base}/data", "--workers", "-1"], ["--workers"]),
    ("train.py", "--jitter 0.7", None, [*TRAIN, "{base}/data", "--jitter", "0.7"], ["--jitter", "0.5"]),
    ("train.py", "--weights holds a pickled object", b_pickled_weights,
     [*TRAIN, "{base}/data", "--weights", "{bad}"], ["weights.pth", "pickled"]),
    ("train.py", "--weights truncated", b_cut_weights,
     [*TRAIN, "{base}/data", "--weights", "{bad}"], ["weights.pth"]),
    ("train.py", "--weights of another architecture", b_resnet18_weights,
     [*TRAIN, "{base}/data", "--weights", "{bad}", "--encoder", "resnet34"], ["resnet18.pth", "resnet34"]),
    ("train.py", "--resume: last.pt holds a pickled object", b_run_pickled_last,
     [*TRAIN, "{base}/data", "--resume"], ["last.pt", "pickled"]),
    # test_model.py
    ("test_model.py", "checkpoint holds a pickled object", b_pickled_b4,
     [*TEST, "{bad}", "--data", "{base}/data/test"], ["evil.pt", "pickled"]),
    ("test_model.py", "truncated checkpoint", b_cut_ckpt,
     [*TEST, "{bad}", "--data", "{base}/data/test"], ["cut.pt", CUT]),
    ("test_model.py", "checkpoint of another encoder", b_arch_encoder,
     [*TEST, "{bad}", "--data", "{base}/data/test"], ["other.pt", "resnet34"]),
    ("test_model.py", "checkpoint of another band count", b_arch_bands,
     [*TEST, "{bad}", "--data", "{base}/data/test"], ["other.pt", "do not fit"]),
    ("test_model.py", "tiles of other bands than the checkpoint", None,
     [*TEST, S2, "--data", "{base}/data/test"], ["4 bands", "10"]),
    ("test_model.py", "truncated image tile", b_test_cut_image,
     [*TEST, B4, "--data", "{data}/test"], ["t002.tif", CUT]),
    ("test_model.py", "image tile with damaged blocks", lambda t, b: b_data_damaged_image(t, b, "test"),
     [*TEST, B4, "--data", "{data}/test"], ["t001.tif", "cannot read"]),
    ("test_model.py", "tiles of mixed sizes", b_test_mixed_sizes,
     [*TEST, B4, "--data", "{data}/test"], ["t001.tif", "16 x 16"]),
    ("test_model.py", "split with no tiles", b_test_empty,
     [*TEST, B4, "--data", "{data}/test"], ["no tiles", "test"]),
    ("test_model.py", "image tile without its mask", b_test_unpaired,
     [*TEST, B4, "--data", "{data}/test"], ["t001.tif", "without its mask"]),
    # predict.py
    ("predict.py", "checkpoint holds a pickled object", b_pickled,
     [*PREDICT, "{bad}"], ["evil.pt", "pickled"]),
    ("predict.py", "checkpoint of another encoder", lambda t, b: b_arch_encoder(t, b, S2_BANDS),
     [*PREDICT, "{bad}"], ["other.pt", "resnet34"]),
    ("predict.py", "truncated scene", b_cut_scene, [*PREDICT, S2, "--image", "{bad}"], ["s2_cut.tif", CUT]),
    ("predict.py", "scene not a raster", b_text,
     [*PREDICT, S2, "--image", "{bad}"], ["notes.tif", NOT_RASTER]),
    ("predict.py", "scene bands differ from the checkpoint's", None,
     [*PREDICT, B4, "--image", APRIL], ["s2_april.tif", "10 bands"]),
    ("predict.py", "stacked model, its 2nd scene truncated", b_cut_august,
     [*PREDICT, "{base}/ckpt/stack.pt", "--image", APRIL, "{bad}"], ["s2_august.tif", CUT]),
    ("predict.py", "--window 0", None, [*PREDICT, S2, "--window", "0"], ["--window"]),
    ("predict.py", "--out under a file", b_file_in_the_way,
     [*PREDICT, S2, "--out", "{bad}/m.tif"], ["afile"]),
    ("predict.py", "a folder where the confidence raster goes", b_confidence_dir,
     [*PREDICT, S2], ["m_confidence.tif", "folder"]),
    ("predict.py", "stacked model, a renamed 2nd scene of 4 bands", b_renamed_august_4_bands,
     [*PREDICT, "{base}/ckpt/stack.pt", "--image", APRIL, "{bad}"], ["2019_august.tif", "4 bands", "10"]),
    ("predict.py", "--review-below 0", None,
     [*PREDICT, S2, "--review-below", "0"], ["--review-below", ">= 1"]),
    ("predict.py", "--review-below 101", None,
     [*PREDICT, S2, "--review-below", "101"], ["--review-below", "<= 100"]),
    # NaN and infinity pass every comparison: refused like any value out of range, before any work (the
    # inputs named are not there: the option's line comes first)
    ("train.py", "--lr nan", None, [*TRAIN, "{tmp}/nowhere", "--lr", "nan"], ["--lr", "nan"]),
    ("train.py", "--weight-decay -inf", None,
     [*TRAIN, "{tmp}/nowhere", "--weight-decay=-inf"], ["--weight-decay", "-inf"]),
    ("train.py", "--warmup nan", None, [*TRAIN, "{tmp}/nowhere", "--warmup", "nan"], ["--warmup", "nan"]),
    ("train.py", "--rare-share inf", None,
     [*TRAIN, "{tmp}/nowhere", "--rare-share", "inf"], ["--rare-share", "inf"]),
    ("test_model.py", "--review-accuracy nan", None,
     [*TEST, "{tmp}/nowhere.pt", "--data", "{tmp}/nowhere", "--review-accuracy", "nan"],
     ["--review-accuracy", "nan"]),
    ("predict.py", "--review-below nan", None,
     ["--image", "{tmp}/nowhere.tif", "--out", "{tmp}/maps/m.tif", "--checkpoint", "{tmp}/nowhere.pt",
      "--review-below", "nan"], ["--review-below", "nan"]),
    ("create_new_images.py", "--threshold nan", None,
     [*CREATE, "{tmp}/nowhere", "--threshold", "nan"], ["--threshold", "nan"]),
    ("divide_img.py", "--max-nodata nan", None,
     [*DIVIDE, "{tmp}/nowhere.tif", "--max-nodata", "nan"], ["--max-nodata", "nan"]),
    ("rescale_mask.py", "--weight-power inf", None,
     [*RESCALE, "--mask", "{tmp}/nowhere.tif", "--method", "weighted", "--weight-power", "inf"],
     ["--weight-power", "inf"]),
    ("move_images.py", "--val nan", None, [*MOVE, "{tmp}/nowhere", "--val", "nan"], ["--val", "nan"]),
    ("move_images.py", "--test inf", None, [*MOVE, "{tmp}/nowhere", "--test", "inf"], ["--test", "inf"]),
    ("sample_map.py", "--target-se nan", None,
     ["--map", "{tmp}/nowhere.tif", "--out", "{tmp}/s.gpkg", "--target-se", "nan"], ["--target-se", "nan"]),
    ("sample_map.py", "--expected-accuracy inf", None,
     ["--map", "{tmp}/nowhere.tif", "--out", "{tmp}/s.gpkg", "--expected-accuracy", "inf"],
     ["--expected-accuracy", "inf"]),
    ("generalize_map.py", "--mmu nan", None,
     ["--map", "{tmp}/nowhere.tif", "--mmu", "nan"], ["--mmu", "nan"]),
]  # fmt: skip


BAR = re.compile(r"\d+%\|.*\|")  # a tqdm progress bar


def shown_lines(stderr: str) -> list[str]:
    """The non-empty lines a terminal shows (a bar redraws its line with \\r, or clears it)."""
    return [s for ln in stderr.split("\n") if (s := ln.split("\r")[-1].strip())]


@pytest.mark.parametrize(
    ("script", "case", "build", "args", "needles"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    runner, base, tmp_path, script, case, build, args, needles
):
    tmp = tmp_path / "case"
    tmp.mkdir()
    names = {"base": base, "tmp": tmp}
    if build is not None:
        names.update(build(tmp, base))
    argv = [a.format(**names) for a in args]
    before = tree_snapshot(tmp_path), tree_snapshot(base)

    res = runner.run(script, *argv)

    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in shown_lines(res.stderr) if not BAR.search(ln)]  # finished bars may stay
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    for word in needles:  # a tuple: any of its words
        words = (word,) if isinstance(word, str) else word
        assert any(w.format(**names) in lines[0] for w in words), (word, lines[0])
    assert (tree_snapshot(tmp_path), tree_snapshot(base)) == before
    if "marker" in names:
        assert not Path(names["marker"]).exists(), "the checkpoint's pickled object was run"
