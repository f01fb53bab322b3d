"""A full disk, every stage: the run stops with one clear line (exit status 2), the inputs are untouched
and no partial output is left: whatever output exists is whole (byte for byte what an uninterrupted run
writes), and once there is room again, re-running completes the work exactly.

Two ways to fill the disk, for each stage:
  tmpfs     the outputs go to a small tmpfs mounted for the test (the tests run as root, so a chmod'ed
            folder would prove nothing); skipped, with the reason, where mounting is not permitted.
  injected  the n-th write of the stage (a GDAL write, a checkpoint save, a copy across file systems)
            raises OSError(ENOSPC): runs anywhere.
On a real full disk GDAL's TIFF library prints its own diagnostics on stderr ("_tiffWriteProc: No space
left on device.") before the script can say anything; those lines come from C and are tolerated, the
script itself must print exactly one.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import S2_BANDS, tree_snapshot
from prefork import ONE_THREAD, call_at, files

from landcover.checkpoint import load_checkpoint, make_checkpoint, read_checkpoint
from model import build_model

SIZE = 192  # demo scene side
TILE = 32
PAGE = 4096  # tmpfs counts whole pages per file
TRAIN = ["--encoder", "resnet18", "--epochs", "3", "--batch-size", "4", "--max-tiles", "8"]
TRAIN += ["--workers", "0", "--log-images-every", "0", "--device", "cpu"]
PREDICT = ["--window", "128", "--overlap", "32", "--workers", "1", "--device", "cpu"]
NOSPACE = "No space left on device"
BAR = re.compile(r"\d+%\|.*\|")  # a tqdm progress bar
# GDAL's and libtiff's own lines; libtiff writes from several threads at once, so a line may also be the
# tail of one of its messages cut off by another ("_tiffSeekProc: _tiffSeekProc: No space ...\nNo space
# left on device.")
C_LIBRARY = re.compile(r"^(_tiff\w+|TIFF\w+|ERROR \d+|Warning \d+): |^No space left on device\.$")


def assert_stopped_by_full_disk(res, script: str, *names: str) -> None:
    """Exit status 2, no traceback, one line of the script's own: 'cannot write (file): No space ...'."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    shown = [s for ln in res.stderr.split("\n") if (s := ln.split("\r")[-1].strip())]
    ours = [ln for ln in shown if not BAR.search(ln) and not C_LIBRARY.match(ln)]
    assert len(ours) == 1, f"{len(ours)} lines of the script's own in its stderr: {res.stderr[-3000:]!r}"
    assert ours[0].startswith(f"{script}: error: cannot write") and NOSPACE in ours[0], ours[0]
    assert all(name in ours[0] for name in names), (names, ours[0])


def pages(folder: Path) -> int:
    """Bytes the files under ``folder`` take on a tmpfs."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


def only_whole_outputs(folder: Path, reference: Path, records: tuple[str, ...] = ()) -> dict[str, str]:
    """Require that every file under ``folder`` is the reference's file of that name, byte for byte (no
    partial or short file), except run records (JSON that a re-run reads); return the files."""
    found = files(folder)
    ref = files(reference)
    assert not [f for f in found if f.endswith(".partial")], found
    for name, digest in found.items():
        if Path(name).name in records:
            json.loads((folder / name).read_text())
            continue
        assert ref.get(name) == digest, f"{name}: not a whole output"
    return found


# ---------------------------------------------------------------------------------------------
# Inputs, references, disks


@pytest.fixture(scope="module")
def chain(tmp_path_factory, runner) -> Path:
    """A small demo and every stage's uninterrupted output under ref/ (each the next one's input)."""
    root = tmp_path_factory.mktemp("chain")
    raw, ref = root / "raw", root / "ref"
    runner.run_ok("make_demo_data.py", "--out", raw, "--size", SIZE)
    runner.run_ok("rescale_mask.py", "--mask", raw / "landcover_1m.tif", "--like", raw / "s2_april.tif",
           "--out", ref / "rescale" / "mask_10m.tif", "--method", "mode")  # fmt: skip
    runner.run_ok("divide_img.py", "--images", raw / "s2_april.tif", raw / "s2_august.tif",
           "--mask", ref / "rescale" / "mask_10m.tif", "--out", ref / "divide", "--size", TILE)  # fmt: skip
    shutil.copytree(ref / "divide", root / "tiles_for_move")
    runner.run_ok("move_images.py", "--tiles", root / "tiles_for_move", "--out", ref / "move")
    shutil.copytree(ref / "move", ref / "create")
    runner.run_ok("create_new_images.py", "--train", ref / "create" / "train")
    torch.manual_seed(0)
    net = build_model("resnet18", 10, 13)
    stats = {"mean": [1500.0] * 10, "std": [800.0] * 10}
    torch.save(make_checkpoint(net, list(S2_BANDS), stats), root / "model.pt")
    runner.run_ok("predict.py", "--checkpoint", root / "model.pt", "--image", raw / "s2_april.tif",
           "--out", ref / "predict" / "map.tif", *PREDICT)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def mount_refused(tmp_path_factory) -> str | None:
    """None where a tmpfs can be mounted, else the reason it cannot."""
    probe = tmp_path_factory.mktemp("probe")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True, text=True
    )
    if res.returncode != 0:
        return f"cannot mount a tmpfs here (mount: {res.stderr.strip() or res.returncode})"
    subprocess.run(["umount", probe], check=True)
    return None


class Disk:
    """Where a stage writes: a tmpfs of a given size, or a plain folder whose writes fail on cue."""

    def __init__(self, kind: str, path: Path):
        self.kind, self.path, self.mounted = kind, path, False
        path.mkdir(parents=True)

    def make(self, size: int) -> Path:
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", self.path], check=True)
            self.mounted = True
        return self.path

    def grow(self) -> None:
        """Room again (a re-run must then complete the work)."""
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=2g", self.path], check=True)

    def setup(self, inject: str) -> str:
        """Code run before the script: the injected failure, on the injected kind only."""
        return ONE_THREAD + (inject if self.kind == "injected" else "")


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, mount_refused) -> Iterator[Disk]:
    if request.param == "tmpfs" and mount_refused:
        pytest.skip(mount_refused)
    d = Disk(request.param, tmp_path / "disk")
    yield d
    if d.mounted:
        subprocess.run(["umount", "-l", d.path], check=False)


def enospc(target: str, n: int, when: str = "before") -> str:
    return call_at(target, n, when, "enospc")


GDAL_WRITE = "rasterio.io.DatasetWriter.write"

# ---------------------------------------------------------------------------------------------
# The stages


def test_rescale_mask(runner, chain, disk):
    out = disk.make(PAGE)  # not even one block of the output fits
    raw = tree_snapshot(chain / "raw")
    args = ["--mask", chain / "raw/landcover_1m.tif", "--like", chain / "raw/s2_april.tif",
            "--out", out / "mask_10m.tif", "--method", "mode"]  # fmt: skip
    res = runner.run("rescale_mask.py", *args, setup=disk.setup(enospc(GDAL_WRITE, 1)))
    assert_stopped_by_full_disk(res, "rescale_mask.py", "mask_10m.tif")
    assert tree_snapshot(chain / "raw") == raw
    assert only_whole_outputs(out, chain / "ref" / "rescale") == {}
    disk.grow()
    runner.run_ok("rescale_mask.py", *args)
    assert files(out) == files(chain / "ref" / "rescale")


@pytest.mark.parametrize("stack", [False, True], ids=["single", "stack"])
def test_divide_img(runner, chain, disk, stack, tmp_path):
    reference = chain / "ref" / "divide"
    if stack:  # the stacked reference: made here, once per disk kind
        reference = tmp_path / "ref_stack"
        scenes = [chain / "raw/s2_april.tif", chain / "raw/s2_august.tif"]
        mask = chain / "ref/rescale/mask_10m.tif"
        runner.run_ok(
            "divide_img.py",
            "--images",
            *scenes,
            "--mask",
            mask,
            "--out",
            reference,
            "--size",
            TILE,
            "--stack",
        )
    out = disk.make(pages(reference) // 3 // PAGE * PAGE) / "tiles"
    inputs = tree_snapshot(chain / "raw"), tree_snapshot(chain / "ref" / "rescale")
    args = ["--images", chain / "raw/s2_april.tif", chain / "raw/s2_august.tif",
            "--mask", chain / "ref/rescale/mask_10m.tif", "--out", out, "--size", TILE,
            *(["--stack"] if stack else [])]  # fmt: skip
    res = runner.run("divide_img.py", *args, setup=disk.setup(enospc(GDAL_WRITE, 25)))
    assert_stopped_by_full_disk(res, "divide_img.py")
    assert (tree_snapshot(chain / "raw"), tree_snapshot(chain / "ref" / "rescale")) == inputs
    left = only_whole_outputs(out, reference, records=("divide_img.json",))
    assert any(name.startswith(("img", "mask")) for name in left), f"no whole tile left: {sorted(left)}"
    disk.grow()
    runner.run_ok("divide_img.py", *args)
    assert files(out) == files(reference)


def tile_places(*folders: Path) -> dict[str, list[str]]:
    """``img/<name>`` and ``mask/<name>`` of every tile under the folders, with the digest of each copy."""
    out: dict[str, list[str]] = {}
    for folder in folders:
        for name, digest in files(folder).items():
            if name.endswith(".tif"):
                kind = "mask" if "mask" in Path(name).parent.as_posix() else "img"
                out.setdefault(f"{kind}/{Path(name).name}", []).append(digest)
    return out


def test_move_images_never_loses_a_pair(runner, chain, disk, tmp_path):
    """The split goes to another file system (moves are copies, then deletes) that fills up mid-move."""
    tiles = Path(shutil.copytree(chain / "ref" / "divide", tmp_path / "tiles"))
    reference = chain / "ref" / "move"
    out = (
        disk.make((pages(reference) // 3 + 16 * PAGE) // PAGE * PAGE) / "data"
    )  # the plan fits, not all tiles
    originals = tile_places(tiles)
    cross_device = (  # injected: the split is on another file system
        "import errno, os\n"
        "def no_rename(a, b):\n"
        "    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))\n"
        "os.rename = no_rename\n"
    )
    args = ["--tiles", tiles, "--out", out]
    res = runner.run(
        "move_images.py", *args, setup=disk.setup(cross_device + enospc("shutil.copy2", 7, "after"))
    )
    assert_stopped_by_full_disk(res, "move_images.py")
    only_whole_outputs(out, reference)
    assert tile_places(tiles, out) == originals  # every tile whole, in exactly one place
    assert files(tiles) != files(chain / "ref" / "divide")  # stopped part-way
    disk.grow()
    runner.run_ok("move_images.py", *args)
    assert files(out) == files(reference)
    assert not list(tiles.rglob("*.tif"))


def test_create_new_images(runner, chain, disk):
    before, reference = chain / "ref" / "move", chain / "ref" / "create"
    added = pages(reference) - pages(before)
    data = disk.make((pages(before) + added // 3) // PAGE * PAGE + 8 * PAGE)
    shutil.copytree(before, data, dirs_exist_ok=True)
    args = ["--train", data / "train"]
    res = runner.run("create_new_images.py", *args, setup=disk.setup(enospc(GDAL_WRITE, 6)))
    assert_stopped_by_full_disk(res, "create_new_images.py")
    left = only_whole_outputs(data, reference)
    assert files(before).items() < left.items()  # every original pair untouched, some copies made
    disk.grow()
    runner.run_ok("create_new_images.py", *args)
    assert files(data) == files(reference)


def test_predict(runner, chain, disk):
    out = disk.make(PAGE)
    args = [
        "--checkpoint",
        chain / "model.pt",
        "--image",
        chain / "raw/s2_april.tif",
        "--out",
        out / "map.tif",
    ]
    res = runner.run("predict.py", *args, *PREDICT, setup=disk.setup(enospc(GDAL_WRITE, 1)))
    assert_stopped_by_full_disk(res, "predict.py", "map")
    assert only_whole_outputs(out, chain / "ref" / "predict") == {}
    disk.grow()
    runner.run_ok("predict.py", *args, *PREDICT)
    assert files(out) == files(chain / "ref" / "predict")


# epoch 2's last.pt (the third save of last.pt) cannot be written
FAIL_THIRD_LAST_PT = """
import errno, os, torch
save, saves = torch.save, [0]
def failing_save(obj, f, *a, **k):
    if str(getattr(f, "name", f)).endswith("last.pt.partial"):
        saves[0] += 1
        if saves[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(obj, f, *a, **k)
torch.save = failing_save
"""


def test_train_keeps_the_previous_last_pt(runner, chain, disk):
    """The run folder fills up while last.pt of epoch 2 is being saved: last.pt of epoch 1 stays whole
    and --resume finishes the run once there is room."""
    buf = io.BytesIO()
    stats = {"mean": [0.0] * 10, "std": [1.0] * 10}
    torch.save(make_checkpoint(build_model("resnet18", 10, 13), list(S2_BANDS), stats), buf)
    w = buf.tell()  # best.pt and the first last.pt weigh w; a last.pt with Adam's two moments about 3w
    # epoch 1 needs at most 5w at once (last of epoch 0, best, and the new last being written), epoch 2
    # 7w (best, last of epoch 1 and the new one): a disk of 6w fills up while epoch 2's last.pt is written
    run = disk.make(6 * w // PAGE * PAGE) / "run"
    data = chain / "ref" / "create"
    tiles = tree_snapshot(data / "train"), tree_snapshot(data / "val")
    args = ["--data", data, "--out", run, *TRAIN]
    res = runner.run("train.py", *args, setup=disk.setup(FAIL_THIRD_LAST_PT))
    assert_stopped_by_full_disk(res, "train.py", "last.pt")
    assert (tree_snapshot(data / "train"), tree_snapshot(data / "val")) == tiles
    assert not list(run.glob("*.partial"))
    assert read_checkpoint(run / "last.pt")["epoch"] == 1  # whole, loads with weights_only
    disk.grow()
    runner.run_ok("train.py", *args, "--resume")
    last = read_checkpoint(run / "last.pt")
    assert last["epoch"] == 3 and read_checkpoint(run / "best.pt")["epoch"] == last["best_epoch"]
    load_checkpoint(run / "best.pt")
