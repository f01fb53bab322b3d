"""train.py: learning, checkpoints, exact resume, interruption, bad input, torchrun, TensorBoard.

Small generated tiles (32 x 32, 4 bands) and a resnet18 U-Net on the CPU. Most runs call ``main`` in
this process (through ``run_main``, exactly what the script runs) to save the start-up time; the
command line itself is run as a subprocess where the process matters (signals, torchrun, one line).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EASY_CLASSES, ROOT, write_raster, write_tile_split
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import colormap
import train
from landcover.checkpoint import CheckpointWriter, read_checkpoint, save_checkpoint
from landcover.common import InputError, run_main

FAST = ["--encoder", "resnet18", "--batch-size", "2", "--workers", "0", "--log-images-every", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine's cores are shared, and two threads on a busy core are slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(False)


def make_data(root: Path, n_train: int = 4, n_val: int = 2, same: bool = False, **kw) -> Path:
    """A data folder with train/ and val/ splits of easy synthetic tiles (val = train when ``same``)."""
    kw = {"size": 32, "block": 8, **kw}
    write_tile_split(root / "train", n=n_train, seed=1, **kw)
    write_tile_split(root / "val", n=n_train if same else n_val, seed=1 if same else 2, **kw)
    return root


def run(argv: list) -> int:
    """Run train.py's main in this process as the script would; return its exit status."""
    return run_main(train.main, [str(a) for a in argv])


def displayed(stderr: str) -> list[str]:
    """The non-empty lines a terminal shows: progress bars redraw and clear their line with \r."""
    return [ln.split("\r")[-1].strip() for ln in stderr.split("\n") if ln.split("\r")[-1].strip()]


def assert_one_line(stderr: str, *needles: str) -> str:
    """Exactly one line shown on stderr (no traceback), holding every needle."""
    lines = displayed(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py args`` as a user runs it; output decoded without turning \r into newlines."""
    cmd = [sys.executable, str(ROOT / "train.py"), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=timeout)
    return subprocess.CompletedProcess(cmd, res.returncode, res.stdout.decode(), res.stderr.decode())


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------


def test_learns_easy_classes_and_logs_to_tensorboard(tmp_path):
    """Loss goes down, validation mIoU > 0.9 on the training tiles; TensorBoard holds every scalar."""
    data = make_data(tmp_path / "data", n_train=8, same=True)
    out = tmp_path / "run"
    argv = ["--data", data, "--out", out, *FAST, "--epochs", 16, "--lr", 0.003, "--log-images-every", 100]
    assert run(argv) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events")) == ["best.pt", "last.pt"]
    best = read_checkpoint(out / "best.pt")
    assert best["metrics"]["miou"] > 0.9, best["metrics"]
    assert best["bands"] == ["B2", "B3", "B4", "B8"]
    assert "optimizer" not in best  # best.pt is for evaluation: weights and metadata only

    acc = events(out)
    train_loss = [e.value for e in acc.Scalars("Loss/train")]
    assert len(train_loss) == 16 and train_loss[-1] < 0.5 * train_loss[0]
    tags = set(acc.Tags()["scalars"])
    present = [colormap.name(c) for c in EASY_CLASSES]
    expected = {"Loss/train", "Loss/val", "LR", "mIoU/val"}
    expected |= {f"IoU/{n}" for n in present} | {f"Dice/{n}" for n in present}
    assert expected <= tags, expected - tags
    assert steps(acc, "mIoU/val") == list(range(1, 17))
    assert acc.Scalars("mIoU/val")[-1].value == pytest.approx(
        read_checkpoint(out / "last.pt")["metrics"]["miou"]
    )
    images = set(acc.Tags()["images"])
    assert "Confusion matrix/val" in images and "Validation/t000" in images
    assert [e.step for e in acc.Images("Confusion matrix/val")] == [1, 16]  # epoch 1 and the last


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    """Stopped after epoch 1, killed after logging epoch 2 but before its last.pt, resumed twice (with
    another --workers): the same weights, optimizer and metrics as one run; TensorBoard steps once each.
    Stopping by a smaller --epochs needs a schedule counted in epochs (plateau); the cosine schedule is
    counted in the run's steps, so a run resumed with another --epochs is refused (test_interrupt.py
    resumes the default recipe after a kill, bitwise)."""
    data = make_data(tmp_path / "data")
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--data", data, *FAST, "--seed", 5, "--schedule", "plateau"]
    assert run([*common, "--out", a, "--epochs", 3]) == 0

    assert run([*common, "--out", b, "--epochs", 1, "--workers", 2]) == 0
    shutil.copy(b / "last.pt", tmp_path / "epoch1.pt")
    assert run([*common, "--out", b, "--epochs", 2, "--resume"]) == 0
    # SIGKILL after epoch 2 was logged but before its last.pt was renamed into place:
    shutil.copy(tmp_path / "epoch1.pt", b / "last.pt")
    (b / "last.pt.partial").write_bytes(b"half a checkpoint")
    assert run([*common, "--out", b, "--epochs", 3, "--resume", "--workers", 1]) == 0

    ca, cb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    assert cb["epoch"] == 3
    assert same_state(ca["model"], cb["model"])  # bitwise
    assert ca["optimizer"]["state"].keys() == cb["optimizer"]["state"].keys()
    for k, st in ca["optimizer"]["state"].items():
        assert all(torch.equal(v, cb["optimizer"]["state"][k][n]) for n, v in st.items())
    assert ca["scheduler"] == cb["scheduler"] and ca["metrics"] == cb["metrics"]
    assert not (b / "last.pt.partial").exists()

    ea, eb = events(a), events(b)
    for tag in ("Loss/train", "Loss/val", "mIoU/val", "LR"):
        assert steps(eb, tag) == [1, 2, 3], tag  # epoch 2's first logging purged, no duplicates
        assert [e.value for e in eb.Scalars(tag)] == [e.value for e in ea.Scalars(tag)], tag


def test_checkpoint_loads_weights_only_and_holds_the_training_state(tmp_path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "run"
    assert run(["--data", data, "--out", out, *FAST, "--epochs", 1, "--class-weights", "sqrt"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    for key in (
        "model",
        "model_config",
        "optimizer",
        "scheduler",
        "epoch",
        "rng",
        "options",
        "classes",
        "bands",
    ):
        assert key in ckpt, key
    assert ckpt["stats"].keys() == {"mean", "std"} and len(ckpt["stats"]["mean"]) == 4
    assert ckpt["options"]["class_weights"] == "sqrt" and ckpt["epoch"] == 1
    assert ckpt["classes"]["12"] == colormap.name(12)
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    train.set_rng_state(ckpt["rng"])  # restorable as stored
    assert ckpt["class_weights"][0] == 0 and ckpt["metrics"]["pixels"] > 0
    assert ckpt["scheduler"]["last_epoch"] == 2  # the cosine schedule counts steps: 4 tiles, batch 2
    assert ckpt["temperature"] > 0  # fitted on the val pixels of the best epoch


@pytest.mark.parametrize(
    ("content", "needle"),
    [("pickle", "pickled objects"), ("truncated", "truncated"), ("foreign", "not a checkpoint")],
)
def test_resume_refuses_unsafe_or_broken_last_pt(tmp_path, content, needle):
    data = make_data(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    if content == "pickle":  # a pickled object (a Path) inside: torch.load(weights_only=True) refuses it
        torch.save(
            {"model": {}, "model_config": {}, "bands": [], "stats": {}, "classes": Path("x")}, out / "last.pt"
        )
    elif content == "truncated":
        ckpt = {
            "model": {"w": torch.zeros(1000)},
            "model_config": {},
            "bands": [],
            "stats": {},
            "classes": {},
        }
        torch.save(ckpt, out / "last.pt")
        full = (out / "last.pt").read_bytes()
        (out / "last.pt").write_bytes(full[: len(full) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, out / "last.pt")
    before = sorted(out.iterdir())
    res = cli("--data", data, "--out", out, *FAST, "--epochs", 1, "--resume")
    assert res.returncode == 2
    assert_one_line(res.stderr, needle, "last.pt")
    assert sorted(out.iterdir()) == before


def test_sigterm_stops_at_once_and_keeps_last_pt(tmp_path):
    """SIGTERM (as Ctrl-C) mid-run: exit 130, last.pt intact and resumable, no partial file."""
    data = make_data(tmp_path / "data")
    out = tmp_path / "run"
    plateau = ["--schedule", "plateau"]  # counted in epochs: the resume below may stop at another --epochs
    cmd = [sys.executable, ROOT / "train.py", "--data", data, "--out", out, *FAST, *plateau, "--epochs", 1000]
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(2)  # inside the first epochs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    done = read_checkpoint(out / "last.pt")["epoch"]
    assert not list(out.glob("*.partial"))
    assert run(["--data", data, "--out", out, *FAST, *plateau, "--epochs", done + 1, "--resume"]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == done + 1


@pytest.mark.parametrize("cache", [[], ["--cache-tiles"]], ids=["files", "cache"])
def test_torchrun_two_processes_on_cpu(tmp_path, cache):
    """torchrun --nproc_per_node 2 (gloo): finishes, one set of checkpoints, every val pixel counted once;
    with --cache-tiles rank 0 builds the caches and both ranks read them."""
    data = make_data(tmp_path / "data", n_train=4, n_val=3)
    out = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", 2, ROOT / "train.py", "--data", data, "--out", out]
    cmd += [*FAST, "--epochs", 2, *cache]
    if cache:  # and the other architecture
        cmd += ["--arch", "segformer", "--encoder", "mit_b0"]
    res = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if not n.startswith("events.out.tfevents")] == ["best.pt", "last.pt"]
    assert len(names) == 3, names  # one event file: rank 0 alone logs
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    # 3 val tiles over 2 processes: no tile dropped or counted twice (32 x 32 with 4 nodata rows)
    assert ckpt["metrics"]["pixels"] == 3 * 28 * 32
    assert steps(events(out), "Loss/train") == [1, 2]
    assert res.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    if cache:
        built = sorted(p.name.split("-")[0] for p in (data / train.CACHE_DIR).glob("*.npy"))
        assert built == ["train", "train", "val", "val"]


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def test_cli_errors_are_one_line(tmp_path):
    res = cli("--data", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert res.returncode == 2
    assert_one_line(res.stderr, "split folder not found", "nowhere")
    assert not (tmp_path / "run").exists()
    res = cli("--epochs", "0", "--out", tmp_path / "run")
    assert res.returncode == 2
    assert_one_line(res.stderr, "--epochs must be >= 1")


def bad_data(root: Path, case: str) -> Path:
    make_data(root)
    if case == "no val":
        shutil.rmtree(root / "val")
    elif case == "empty split":
        for p in (root / "val").rglob("*.tif"):
            p.unlink()
    elif case == "unpaired":
        (root / "train" / "mask" / "t001.tif").unlink()
    elif case == "mixed sizes":
        write_raster(root / "train" / "img" / "t001.tif", np.ones((4, 16, 16), np.uint16))
        write_raster(root / "train" / "mask" / "t001.tif", np.ones((16, 16), np.uint8))
    elif case == "band counts":
        shutil.rmtree(root / "val")
        write_tile_split(root / "val", n=2, size=32, descriptions=("B2", "B3", "B4"), classes={1: (1, 2, 3)})
    return root


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("no val", ["split folder not found", "val"]),
        ("empty split", ["no tiles", "val"]),
        ("unpaired", ["image tile without its mask", "t001.tif"]),
        ("mixed sizes", ["tile differs", "t001.tif"]),
        ("band counts", ["val tiles have 3 bands", "train tiles 4 bands"]),
    ],
)
def test_bad_data_is_refused_before_writing(tmp_path, capsys, case, needles):
    data = bad_data(tmp_path / "data", case)
    out = tmp_path / "run"
    assert run(["--data", data, "--out", out, *FAST, "--epochs", 1]) == 2
    assert_one_line(capsys.readouterr().err, *needles)
    assert not out.exists() and not (data / "band_stats.json").exists()


def test_a_last_batch_of_one_tile_batch_norm_cannot_train_is_refused_before_writing(tmp_path, capsys):
    """32 px tiles end a ResNet at 1 x 1: a batch of one tile has one value per channel. 3 tiles in
    batches of 2 leave one: one line before the run writes anything (it was a traceback at the last
    step); batches of 3 train."""
    data = make_data(tmp_path / "data", n_train=3)
    assert run(["--data", data, "--out", tmp_path / "run", *FAST, "--epochs", 1]) == 2
    assert_one_line(capsys.readouterr().err, "batch of one 32 x 32 px tile", "--batch-size 2")
    assert not (tmp_path / "run").exists()  # band_stats.json, the split's cache, may be there: it is whole
    argv = ["--data", data, "--out", tmp_path / "run", *FAST, "--batch-size", 3, "--epochs", 1]
    assert run(argv) == 0 and (tmp_path / "run" / "best.pt").is_file()


def test_weights_refuses_a_checkpoint_of_ours_and_checks_it_first(tmp_path, capsys, ckpt):
    """--weights takes encoder weights: one of our checkpoints is named as such (what to do instead),
    and one whose content no longer matches its digest is refused as damaged."""
    data = make_data(tmp_path / "data")
    argv = ["--data", data, "--out", tmp_path / "run", *FAST, "--epochs", 1, "--weights"]
    assert run([*argv, ckpt]) == 2
    assert_one_line(capsys.readouterr().err, "is a checkpoint of train.py", "--resume")
    c = torch.load(ckpt, weights_only=True)
    next(iter(c["model"].values())).add_(1.0)  # bit rot inside a tensor: the digest is the old one
    torch.save(c, tmp_path / "damaged.pt")
    assert run([*argv, tmp_path / "damaged.pt"]) == 2
    assert_one_line(capsys.readouterr().err, "damaged", "damaged.pt")
    assert not (tmp_path / "run").exists()


def test_resume_and_run_folder_mistakes(tmp_path, capsys, monkeypatch):
    data = make_data(tmp_path / "data")
    out = tmp_path / "run"

    def error(argv) -> str:
        capsys.readouterr()
        assert run(argv) == 2
        return assert_one_line(capsys.readouterr().err)

    (tmp_path / "afile").write_text("x")
    assert "--out is a file" in error(["--data", data, "--out", tmp_path / "afile", *FAST])
    base = ["--data", data, "--out", out, *FAST, "--epochs", 1]
    assert "nothing to resume" in error([*base, "--resume"])
    assert not out.exists()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch cache, no network

    def offline(*a, **k):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    msg = error([*base, "--weights", "imagenet"])
    assert "encoder weights not found" in msg and "resnet18" in msg and "--weights none" in msg
    assert not out.exists()

    assert run(base) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "already holds a run" in error(base)  # a second fresh run never overwrites the first
    assert "other options: --encoder resnet18 (now resnet34)" in error(
        [*base, "--resume", "--encoder", "resnet34"]
    )
    assert "--seed 0 (now 1)" in error([*base, "--resume", "--seed", "1"])
    assert "--epochs 1 (now 2)" in error([*base[:-1], "2", "--resume"])  # cosine: steps counted per run
    msg = error([*base, "--resume", "--arch", "segformer", "--encoder", "mit_b0"])
    assert "other options: --arch unet (now segformer)" in msg
    assert "not an encoder of --arch unet" in error([*base, "--encoder", "mit_b0"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # the same run folder, but the tiles now have other bands
    for p in (data / "train" / "img").glob("*.tif"):
        with __import__("rasterio").open(p, "r+") as ds:
            ds.set_band_description(4, "B8A")
    msg = error([*base, "--resume"])
    assert "trained on other bands" in msg and "B8A" in msg

    # resuming a finished run changes nothing
    for p in (data / "train" / "img").glob("*.tif"):
        with __import__("rasterio").open(p, "r+") as ds:
            ds.set_band_description(4, "B8")
    assert run([*base, "--resume"]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == 1


def test_by_default_a_small_split_trains_for_min_steps_and_an_explicit_epochs_is_kept(
    tmp_path, capsys, monkeypatch
):
    """A few hundred tiles at the default epochs would take a few hundred optimizer steps, too few to
    learn: the default budget is raised to MIN_STEPS there (one line says so), the same on --resume;
    --epochs given is the budget."""
    monkeypatch.setattr(train, "EPOCHS", 1)
    monkeypatch.setattr(train, "MIN_STEPS", 5)
    data = make_data(tmp_path / "data", n_train=4)  # 2 steps an epoch at batch 2: 3 epochs, 6 steps
    out = tmp_path / "run"
    assert run(["--data", data, "--out", out, *FAST]) == 0
    assert "3 epochs (6 optimizer steps of 2 on 4 train tiles)" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt")["epoch"] == 3
    assert run(["--data", data, "--out", out, *FAST, "--resume"]) == 0  # the same budget: finished
    assert read_checkpoint(out / "last.pt")["epoch"] == 3
    capsys.readouterr()
    assert run(["--data", data, "--out", tmp_path / "given", *FAST, "--epochs", 2]) == 0
    assert "optimizer steps of" not in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "given" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(train, "MIN_STEPS", 2)  # reached by EPOCHS: unchanged
    assert train.epoch_budget(None, 4, 2, train.Proc.from_env()) == 1


# ---------------------------------------------------------------------------------------------------
# The pieces


def test_sampler_shards_and_depends_only_on_seed_and_epoch():
    n = 11
    shards = []
    for rank in range(3):
        s = train.EpochSampler(n, seed=4, proc=train.Proc(rank, 3))
        s.set_epoch(2)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == 4
    tiles = [i for shard in shards for i, _ in shard]
    assert sorted(set(tiles)) == list(range(n)) and len(tiles) == 12  # padded by one, as DistributedSampler
    one = train.EpochSampler(n, seed=4, proc=train.Proc())
    one.set_epoch(2)
    assert list(one) == list(one) and {k for _, k in one} <= set(range(8)) and len({k for _, k in one}) > 1
    other = train.EpochSampler(n, seed=4, proc=train.Proc())
    other.set_epoch(3)
    assert list(other) != list(one)


def test_argmax_never_predicts_nodata(tmp_path):
    """Validation counts predictions from classes 1..12 even where the nodata logit is the largest."""
    from landcover.metrics import ConfusionMatrix
    from landcover.probabilities import predict_classes

    logits = torch.zeros(1, 13, 2, 2)
    logits[:, 0] = 100.0
    logits[0, 7, 0, 0] = 1.0
    pred = predict_classes(logits)
    assert pred.min() >= 1 and pred[0, 0, 0] == 7
    cm = ConfusionMatrix(13)
    cm.update(torch.tensor([[[7, 0], [2, 2]]]), pred)
    assert cm.mat[0].sum() == 0 and cm.mat[7, 7] == 1  # truth 0 ignored


def test_input_error_is_input_error():
    with pytest.raises(InputError, match="--lr must be >"):
        train.main(["--lr", "0"])


def test_cache_tiles_trains_exactly_as_from_the_files(tmp_path, capsys):
    """--cache-tiles holds the same tiles in memory (decoded once into DATA/tile_cache), and samples,
    transforms and normalises them batch-wise on the device: the same weights, bitwise, as the worker
    loader reading the files, also when stopped after epoch 1 and resumed; the run says where the tiles
    are. A second run reuses the cache, and rewriting a tile rebuilds it."""
    data = make_data(tmp_path / "data")
    common = ["--data", data, *FAST, "--seed", 3, "--schedule", "plateau"]  # plateau: --epochs may grow
    assert run([*common, "--epochs", 2, "--out", tmp_path / "files"]) == 0
    capsys.readouterr()
    assert run([*common, "--epochs", 2, "--out", tmp_path / "cached", "--cache-tiles", "--workers", 2]) == 0
    assert "tiles in host memory (the CPU device)" in capsys.readouterr().out
    resumed = [*common, "--out", tmp_path / "resumed", "--cache-tiles"]
    assert run([*resumed, "--epochs", 1]) == 0 and run([*resumed, "--epochs", 2, "--resume"]) == 0
    a = read_checkpoint(tmp_path / "files/last.pt")
    for b in (read_checkpoint(tmp_path / "cached/last.pt"), read_checkpoint(tmp_path / "resumed/last.pt")):
        assert same_state(a["model"], b["model"]) and a["metrics"] == b["metrics"]

    cache = data / train.CACHE_DIR
    built = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    assert sorted(n.split("-")[0] for n in built) == ["train", "train", "val", "val"]
    assert run([*common, "--epochs", 2, "--out", tmp_path / "again", "--cache-tiles"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == built  # reused as is

    tile = sorted((data / "train/img").glob("*.tif"))[0]
    time.sleep(0.01)
    tile.write_bytes(tile.read_bytes())  # rewritten: a new modification time
    assert run([*common, "--epochs", 2, "--out", tmp_path / "rebuilt", "--cache-tiles"]) == 0
    now = {p.name for p in cache.glob("*.npy")}
    assert (
        len(now) == 4
        and now != set(built)
        and {n for n in now if n.startswith("val")} == {n for n in built if n.startswith("val")}
    )


@pytest.mark.parametrize(("option", "value", "other"), [("--cutmix", 2, 1), ("--jitter", 0.1, 0.2)])
def test_batch_transforms_train_alike_from_cache_and_files_resume_exactly_and_change_the_run(
    tmp_path, option, value, other
):
    """--cutmix and --jitter draw their boxes and gains from the generator train.py seeds per epoch and
    process: the same weights, bitwise, from the files and from the tiles held in memory, and when
    stopped after epoch 1 and resumed; other weights than without it; a resume with another value is
    refused."""
    data = make_data(tmp_path / "data")
    common = ["--data", data, *FAST, "--seed", 3, "--schedule", "plateau", option, value]
    assert run([*common, "--epochs", 2, "--out", tmp_path / "files"]) == 0
    assert run([*common, "--epochs", 2, "--out", tmp_path / "cached", "--cache-tiles"]) == 0
    resumed = [*common, "--out", tmp_path / "resumed"]
    assert run([*resumed, "--epochs", 1]) == 0 and run([*resumed, "--epochs", 2, "--resume"]) == 0
    assert run([*common[:-1], 0, "--epochs", 2, "--out", tmp_path / "plain"]) == 0
    a = read_checkpoint(tmp_path / "files/last.pt")
    for b in (read_checkpoint(tmp_path / "cached/last.pt"), read_checkpoint(tmp_path / "resumed/last.pt")):
        assert same_state(a["model"], b["model"]) and a["metrics"] == b["metrics"]
    assert not same_state(a["model"], read_checkpoint(tmp_path / "plain/last.pt")["model"])
    assert run([*common[:-1], other, "--epochs", 3, "--out", tmp_path / "resumed", "--resume"]) == 2


def map_random_scene(tmp_path: Path, checkpoint: Path, shape: tuple[int, int], window: int) -> np.ndarray:
    """predict.py with nothing but the checkpoint on a random 4-band scene: the map's codes."""
    scene = tmp_path / "scene.tif"
    rng = np.random.default_rng(0)
    write_raster(
        scene, rng.integers(1, 3000, (4, *shape)).astype(np.uint16), descriptions=("B2", "B3", "B4", "B8")
    )
    res = subprocess.run(
        [sys.executable, ROOT / "predict.py", "--checkpoint", checkpoint, "--image", scene,
         "--out", tmp_path / "map.tif", "--window", str(window), "--overlap", str(window // 4)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    with __import__("rasterio").open(tmp_path / "map.tif") as m:
        return m.read(1)


def test_spectral_branch_resumes_exactly_and_its_checkpoint_maps_without_options(tmp_path):
    """--spectral N: the tiles whose network logits are dropped are drawn from the generator train.py
    seeds per epoch, so a run stopped and resumed ends with the same weights; the checkpoint carries the
    branch (predict.py needs no option), and a resume with another --spectral is refused; a run from
    before the option (its options and model settings lack it) resumes as the run without it it was."""
    data = make_data(tmp_path / "data")
    common = ["--data", data, *FAST, "--seed", 2, "--schedule", "plateau", "--spectral", 4]
    assert run([*common, "--epochs", 2, "--out", tmp_path / "one"]) == 0
    resumed = [*common, "--out", tmp_path / "resumed"]
    assert run([*resumed, "--epochs", 1]) == 0 and run([*resumed, "--epochs", 2, "--resume"]) == 0
    a, b = read_checkpoint(tmp_path / "one/last.pt"), read_checkpoint(tmp_path / "resumed/last.pt")
    assert a["model_config"]["spectral"] == 4 and any(k.startswith("spectral.") for k in a["model"])
    assert same_state(a["model"], b["model"]) and a["metrics"] == b["metrics"]
    assert run([*common[:-1], 8, "--epochs", 3, "--out", tmp_path / "resumed", "--resume"]) == 2
    old = [*common[:-1], 0, "--epochs", 1, "--out", tmp_path / "old"]
    assert run(old) == 0
    ckpt = read_checkpoint(tmp_path / "old/last.pt")
    del ckpt["options"]["spectral"], ckpt["model_config"]["spectral"]
    save_checkpoint(ckpt, tmp_path / "old/last.pt")
    assert run([*old[:-4], "--epochs", 2, "--out", tmp_path / "old", "--resume"]) == 0
    codes = map_random_scene(tmp_path, tmp_path / "one/best.pt", (50, 60), window=32)
    assert codes.shape == (50, 60) and codes.min() >= 1 and codes.max() <= 12


def test_segformer_trains_resumes_exactly_and_its_checkpoint_evaluates_and_maps(tmp_path):
    """--arch segformer: a run stopped after epoch 1 and resumed ends with the weights of one run
    (bitwise on CPU); its checkpoint describes the architecture, so test_model.py and predict.py need
    no option; a SegFormer run resumed as a U-Net is refused."""
    data = make_data(tmp_path / "data")
    seg = ["--data", data, *FAST, "--arch", "segformer", "--encoder", "mit_b0", "--full-res", "8"]
    seg += ["--schedule", "plateau"]  # stopped by a smaller --epochs: a schedule counted in epochs
    a, b = tmp_path / "a", tmp_path / "b"
    assert run([*seg, "--out", a, "--epochs", 2]) == 0
    assert run([*seg, "--out", b, "--epochs", 1]) == 0
    assert run([*seg, "--out", b, "--epochs", 2, "--resume"]) == 0
    ka, kb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    assert ka["model_config"]["arch"] == "segformer" and ka["model_config"]["full_res"] == 8
    assert same_state(ka["model"], kb["model"]) and ka["metrics"] == kb["metrics"]
    assert run(["--data", data, "--out", b, *FAST, "--schedule", "plateau", "--epochs", 3, "--resume"]) == 2

    import test_model

    assert run_main(test_model.main, ["--checkpoint", str(a / "best.pt"), "--data", str(data / "val"),
                                      "--out", str(tmp_path / "res"), "--workers", "0"]) == 0  # fmt: skip
    assert (tmp_path / "res" / "metrics.json").is_file()
    codes = map_random_scene(tmp_path, a / "best.pt", (70, 90), window=64)
    assert codes.shape == (70, 90) and codes.min() >= 1 and codes.max() <= 12


def test_compile_trains_the_same_weights_or_falls_back_in_one_line(tmp_path, capsys, monkeypatch):
    """--compile's trial step leaves no trace (batch-norm statistics put back, no gradient kept), and a
    torch.compile that fails is one line, then training goes on without it."""
    data = make_data(tmp_path / "data")
    common = ["--data", data, *FAST, "--epochs", 1]
    assert run([*common, "--out", tmp_path / "plain"]) == 0
    compiled = []  # what was compiled, how: compiles to itself, so the trial step runs
    monkeypatch.setattr(torch, "compile", lambda model, **how: compiled.append((type(model), how)) or model)
    assert run([*common, "--out", tmp_path / "same", "--compile"]) == 0
    static = {"dynamic": False}  # full batches keep one graph; the last, smaller one compiles its own
    assert [how for _, how in compiled] == [static, static]  # what trains and what validates
    a, b = read_checkpoint(tmp_path / "plain/last.pt"), read_checkpoint(tmp_path / "same/last.pt")
    assert same_state(a["model"], b["model"])

    def broken(model, **how):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    capsys.readouterr()
    assert run([*common, "--out", tmp_path / "fallback", "--compile"]) == 0
    err = [ln for ln in displayed(capsys.readouterr().err) if "--compile" in ln]
    assert err == ["--compile: torch.compile failed here (no C++ compiler); training without it"]
    c = read_checkpoint(tmp_path / "fallback/last.pt")
    assert same_state(a["model"], c["model"])


def test_checkpoints_written_in_the_background_are_the_same_files(tmp_path, monkeypatch):
    """On CUDA best.pt and last.pt are written by a thread while the next epoch trains: the files are
    those written in line (forced here on the CPU), and the run waits for the last one before it ends."""
    data = make_data(tmp_path / "data")
    common = ["--data", data, *FAST, "--epochs", 2]
    assert run([*common, "--out", tmp_path / "inline"]) == 0
    monkeypatch.setattr(train, "CheckpointWriter", lambda background: CheckpointWriter(background=True))
    assert run([*common, "--out", tmp_path / "thread"]) == 0
    for name in ("best.pt", "last.pt"):
        a, b = read_checkpoint(tmp_path / "inline" / name), read_checkpoint(tmp_path / "thread" / name)
        assert (
            a["epoch"] == b["epoch"] and a["metrics"] == b["metrics"] and same_state(a["model"], b["model"])
        )
    assert read_checkpoint(tmp_path / "thread" / "last.pt")["epoch"] == 2


def test_a_class_the_val_split_lacks_is_named_once_as_best_pts_blind_spot(tmp_path, capsys):
    """Sparse labels often leave a class out of the val split: best.pt's epoch cannot see its errors,
    and the run says so once, naming the class and its train pixels; a val split with every class
    says nothing."""
    data = make_data(tmp_path / "data")
    shutil.rmtree(data / "val")
    without_water = {c: v for c, v in EASY_CLASSES.items() if c != 12}
    write_tile_split(data / "val", n=2, size=32, block=8, seed=2, classes=without_water)
    assert run(["--data", data, "--out", tmp_path / "run", *FAST, "--epochs", 2]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "blind" in line]
    assert len(lines) == 1 and "12 Watercourses and water bodies (" in lines[0] and "last.pt" in lines[0]
    assert "1 Herbaceous crops" not in lines[0]
    assert (
        run(["--data", make_data(tmp_path / "all"), "--out", tmp_path / "all-run", *FAST, "--epochs", 1]) == 0
    )
    assert "blind" not in capsys.readouterr().out
