"""Kill and re-run, every stage: a run SIGKILLed at any moment, then run again, ends exactly like a run
that was never interrupted.

The chain runs on a small demo (make_demo_data.py --size 256): rescale_mask, divide_img (single and
--stack), move_images, create_new_images and predict are each killed at several points after some of
their output exists (at the n-th call of a function: a rename, a write, a model call), re-run with the
same arguments, and their output folder is compared file by file, byte for byte, with the folder of an
uninterrupted run. train.py is killed in the middle of epoch 2 of 3 (and once after epoch 2 was logged
but before its checkpoint was saved), resumed with --resume, and must end with a valid best.pt and
last.pt and a TensorBoard history holding every scalar exactly once per epoch 1..3 (as TensorBoard
reads the event files: an epoch logged before the kill and again after the resume is purged once), with
the weights of an uninterrupted run. Runs are real processes forked from a warm server (tests/prefork.py).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch
from helpers import S2_BANDS
from prefork import ONE_THREAD, Prefork, call_at, files
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from landcover.checkpoint import load_checkpoint, make_checkpoint, read_checkpoint
from model import build_model

SIZE = 256  # demo scene side
TILE = 32
TRAIN = ["--encoder", "resnet18", "--epochs", "3", "--batch-size", "4", "--max-tiles", "8"]
TRAIN += ["--workers", "0", "--log-images-every", "0", "--device", "cpu"]
STEPS_PER_EPOCH = 2  # 8 tiles, batches of 4
PREDICT = ["--window", "128", "--overlap", "32", "--batch-size", "2", "--workers", "1", "--device", "cpu"]


def kill_at(target: str, n: int, when: str) -> str:
    """Code run before the script: SIGKILL the process at the n-th call of ``target``."""
    return call_at(target, n, when, "kill")


def killed(runner: Prefork, script: str, args: list, target: str, n: int, when: str) -> None:
    """Run ``script`` and require that it was killed at the chosen call (not finished before it)."""
    res = runner.run(script, *args, setup=ONE_THREAD + kill_at(target, n, when))
    assert res.returncode == -signal.SIGKILL, (script, target, n, res.returncode, res.stderr[-3000:])


# ---------------------------------------------------------------------------------------------
# The uninterrupted chain: each stage's output is the reference and the next stage's input


@pytest.fixture(scope="module")
def chain(tmp_path_factory, runner) -> Path:
    root = tmp_path_factory.mktemp("chain")
    raw = root / "raw"
    runner.run_ok("make_demo_data.py", "--out", raw, "--size", SIZE)
    mask = root / "ref" / "rescale" / "mask_10m.tif"
    runner.run_ok("rescale_mask.py", "--mask", raw / "landcover_1m.tif", "--like", raw / "s2_april.tif",
           "--out", mask, "--method", "mode")  # fmt: skip
    scenes = [raw / "s2_april.tif", raw / "s2_august.tif"]
    for name, extra in (("divide", []), ("stack", ["--stack"])):
        runner.run_ok("divide_img.py", "--images", *scenes, "--mask", mask, "--out", root / "ref" / name,
               "--size", TILE, *extra)  # fmt: skip
    shutil.copytree(root / "ref" / "divide", root / "move_in" / "tiles")
    runner.run_ok("move_images.py", "--tiles", root / "move_in" / "tiles", "--out", root / "ref" / "move")
    shutil.copytree(root / "ref" / "move", root / "ref" / "create")
    runner.run_ok("create_new_images.py", "--train", root / "ref" / "create" / "train")
    return root


STAGES = {  # stage: (script, arguments with {root} and {out}, the folder compared)
    "rescale_mask": (
        "rescale_mask.py",
        ["--mask", "{root}/raw/landcover_1m.tif", "--like", "{root}/raw/s2_april.tif",
         "--out", "{out}/mask_10m.tif", "--method", "mode"],
    ),
    "divide_img": (
        "divide_img.py",
        ["--images", "{root}/raw/s2_april.tif", "{root}/raw/s2_august.tif",
         "--mask", "{root}/ref/rescale/mask_10m.tif", "--out", "{out}", "--size", str(TILE)],
    ),
    "divide_img --stack": (
        "divide_img.py",
        ["--images", "{root}/raw/s2_april.tif", "{root}/raw/s2_august.tif",
         "--mask", "{root}/ref/rescale/mask_10m.tif", "--out", "{out}", "--size", str(TILE), "--stack"],
    ),
    "move_images": ("move_images.py", ["--tiles", "{out}/tiles", "--out", "{out}/data"]),
    "create_new_images": ("create_new_images.py", ["--train", "{out}/train"]),
}  # fmt: skip
REFERENCE = {
    "rescale_mask": "rescale",
    "divide_img": "divide",
    "divide_img --stack": "stack",
    "move_images": "move",
    "create_new_images": "create",
}


def prepare(stage: str, root: Path, out: Path) -> Path:
    """The folder the stage works in, holding its inputs as an uninterrupted run found them; and the
    folder to compare with the reference afterwards."""
    if stage == "move_images":
        shutil.copytree(root / "ref" / "divide", out / "tiles")
        return out / "data"
    if stage == "create_new_images":
        shutil.copytree(root / "ref" / "move", out)
    return out


@pytest.mark.parametrize(
    ("stage", "target", "n", "when"),
    [
        ("rescale_mask", "rasterio.warp.reproject", 1, "after"),  # the output is open, nothing written
        ("rescale_mask", "os.replace", 1, "before"),  # written whole, not renamed yet
        ("divide_img", "os.replace", 1, "after"),  # the run record saved, no tile yet
        ("divide_img", "os.replace", 40, "after"),  # in the middle of the first scene
        ("divide_img", "os.replace", 150, "before"),  # in the second scene
        ("divide_img --stack", "os.replace", 30, "after"),
        ("move_images", "os.replace", 1, "after"),  # the plan written, nothing moved
        ("move_images", "os.rename", 7, "after"),  # an image moved without its mask
        ("create_new_images", "os.replace", 1, "before"),  # a copy written, not renamed
        ("create_new_images", "os.replace", 9, "after"),  # a copy's image without its mask
    ],
)
def test_killed_stage_then_rerun_equals_an_uninterrupted_run(runner, chain, tmp_path, stage, target, n, when):
    script, args = STAGES[stage]
    out = tmp_path / "out"
    compared = prepare(stage, chain, out)
    args = [a.format(root=chain, out=out) for a in args]
    reference = files(chain / "ref" / REFERENCE[stage])

    killed(runner, script, args, target, n, when)
    assert compared.exists() and files(compared) != reference  # interrupted part-way
    runner.run_ok(script, *args)
    assert files(compared) == reference
    runner.run_ok(script, *args)  # and a run after the finished one changes nothing
    assert files(compared) == reference


# ---------------------------------------------------------------------------------------------
# predict.py


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained resnet18 checkpoints (any fixed weights make a reproducible map): one for a scene's
    10 bands, written before temperatures were (T = 1), one for the two scenes stacked, with a fitted
    temperature (the confidence is then blended beside the map's probabilities)."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, bands in (
        ("single", list(S2_BANDS)),
        ("stack", [f"{s}:{b}" for s in ("s2_april", "s2_august") for b in S2_BANDS]),
    ):
        torch.manual_seed(0)
        net = build_model("resnet18", len(bands), 13)
        stats = {"mean": [1500.0] * len(bands), "std": [800.0] * len(bands)}
        extra = {"temperature": 1.7} if name == "stack" else {}
        torch.save(make_checkpoint(net, bands, stats, **extra), root / f"{name}.pt")
        out[name] = root / f"{name}.pt"
    return out


def predict_args(chain: Path, checkpoints: dict[str, Path], mode: str, folder: Path) -> list:
    """The stacked run also writes the review mask."""
    scenes = [chain / "raw" / "s2_april.tif"] + ([chain / "raw" / "s2_august.tif"] if mode == "stack" else [])
    review = ["--review-below", "50"] if mode == "stack" else []
    out = ["--out", folder / "map.tif"]
    return ["--checkpoint", checkpoints[mode], "--image", *scenes, *out, *PREDICT, *review]


PREDICT_FILES = {
    "map.json",
    "map.tif",
    "map.png",
    "map.tif.aux.xml",
    "map_confidence.tif",
    "map_confidence.png",
}


@pytest.fixture(scope="module")
def maps(chain, checkpoints, runner, tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted predictions, single scene and stacked; every file is compared byte for byte
    after a kill and a re-run, the confidence raster and the review mask included."""
    out = {}
    for mode in ("single", "stack"):
        out[mode] = tmp_path_factory.mktemp(f"map_{mode}")
        runner.run_ok("predict.py", *predict_args(chain, checkpoints, mode, out[mode]))
        review = {"map_review.tif"} if mode == "stack" else set()
        assert set(files(out[mode])) == PREDICT_FILES | review
    return out


@pytest.mark.parametrize(
    ("mode", "target", "n", "when"),
    [
        ("single", "landcover.inference.flipped_logits", 4, "after"),  # part of the map and confidence done
        ("single", "os.replace", 2, "after"),  # both previews in place, the rasters not
        ("single", "os.replace", 4, "after"),  # the confidence renamed into place, the map not
        ("stack", "os.replace", 1, "before"),  # the rasters and a preview written, nothing renamed
        ("stack", "os.replace", 4, "after"),  # the review mask in place, the confidence and map not
    ],
)
def test_killed_predict_then_rerun_equals_an_uninterrupted_run(
    runner, chain, checkpoints, maps, tmp_path, mode, target, n, when
):
    args = predict_args(chain, checkpoints, mode, tmp_path)
    killed(runner, "predict.py", args, target, n, when)
    assert "map.tif" not in files(tmp_path) and files(tmp_path)  # some output, no map that looks finished
    runner.run_ok("predict.py", *args)
    assert files(tmp_path) == files(maps[mode])
    if (target, n) == ("os.replace", 4):  # and a run after a finished one changes nothing (once per mode)
        runner.run_ok("predict.py", *args)
        assert files(tmp_path) == files(maps[mode])


# ---------------------------------------------------------------------------------------------
# train.py: SIGKILL, --resume, a valid result and a continuous TensorBoard history


def scalar_steps(run: Path) -> dict[str, list[int]]:
    """Every scalar tag of every event file of a run folder, with its steps as TensorBoard shows them."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_steps(run: Path, tag: str) -> list[int]:
    """The steps of a scalar in the event files as written (before TensorBoard drops what a restart
    purges), file after file."""
    steps = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


@pytest.fixture(scope="module")
def uninterrupted(chain, runner, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    runner.run_ok("train.py", "--data", chain / "ref" / "create", "--out", run, *TRAIN)
    return run


@pytest.mark.parametrize(
    ("target", "n", "when", "logged"),
    [
        ("torch.optim.Adam.step", STEPS_PER_EPOCH + 2, "before", [1]),  # the middle of epoch 2
        ("os.replace", 4, "before", [1, 2]),  # epoch 2 logged, its checkpoint (best or last) not in place
    ],
)
def test_train_killed_then_resumed_ends_valid_with_one_value_per_epoch(
    runner, chain, uninterrupted, tmp_path, target, n, when, logged
):
    run = tmp_path / "run"
    args = ["--data", chain / "ref" / "create", "--out", run, *TRAIN]
    killed(runner, "train.py", args, target, n, when)
    assert read_checkpoint(run / "last.pt")["epoch"] == 1  # what the kill left: epoch 1 finished
    assert raw_steps(run, "Loss/train") == logged

    runner.run_ok("train.py", *args, "--resume")

    last, best = read_checkpoint(run / "last.pt"), read_checkpoint(run / "best.pt")  # weights_only
    assert last["epoch"] == 3 and not list(run.glob("*.partial"))
    assert best["epoch"] == last["best_epoch"] and 1 <= best["epoch"] <= 3
    assert best["metrics"]["miou"] == last["best_miou"]
    load_checkpoint(run / "best.pt")  # the weights fit the architecture
    steps = scalar_steps(run)
    assert {"Loss/train", "Loss/val", "LR", "mIoU/val"} <= steps.keys()
    assert all(s == [1, 2, 3] for s in steps.values()), steps  # none missing, none twice
    assert raw_steps(run, "Loss/train") == [*logged, 2, 3]  # epoch 2 logged again: the first one purged
    assert steps.keys() == scalar_steps(uninterrupted).keys()
    reference = read_checkpoint(uninterrupted / "last.pt")
    assert all(torch.equal(v, reference["model"][k]) for k, v in last["model"].items())  # the same run
