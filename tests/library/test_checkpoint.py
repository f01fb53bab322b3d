"""checkpoint.py: a round trip with weights_only loading, unsafe or broken files refused in one line, and
the digest that finds a damaged one."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from landcover.checkpoint import (
    CheckpointWriter,
    check_resumable,
    content_digest,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from landcover.common import InputError
from model import build_model


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    net = build_model("resnet18", 4, 13)
    stats = {"mean": np.array([1.0, 2, 3, 4]), "std": [1.0, 1, 1, 1]}
    ckpt = make_checkpoint(net, ["B2", "B3", "B4", "B8"], stats, epoch=3, metrics={"miou": 0.5, "x": None})
    torch.save(ckpt, tmp_path / "c.pt")
    loaded, raw = load_checkpoint(tmp_path / "c.pt")
    assert raw["epoch"] == 3 and raw["bands"] == ["B2", "B3", "B4", "B8"] and raw["stats"]["mean"][3] == 4
    assert not loaded.training and loaded.config == net.config
    a, b = loaded.state_dict(), net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("object", "pickled objects"),
        ("truncated", "truncated or not a checkpoint"),
        ("text", "truncated or not a checkpoint"),
        ("foreign", "not a checkpoint of this project"),
    ],
)
def test_unsafe_or_broken_checkpoints_are_refused(tmp_path, kind, needle):
    path = tmp_path / "c.pt"
    if kind == "object":
        torch.save({"model": {}, "model_config": {}, "bands": [], "stats": {}, "classes": Path("/")}, path)
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(5000)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    with pytest.raises(InputError, match=needle):
        read_checkpoint(path)


def test_a_checkpoint_from_before_the_architecture_options_loads_and_predicts_as_before(tmp_path):
    """Checkpoints written before ``arch`` and ``full_res`` existed (a U-Net config without them, no
    version) rebuild the same U-Net, load strictly and give the same outputs."""
    torch.manual_seed(0)
    net = build_model("resnet18", 4, 13).eval()
    ckpt = make_checkpoint(net, ["B2", "B3", "B4", "B8"], {"mean": [0.0] * 4, "std": [1.0] * 4})
    old = {k: v for k, v in ckpt["model_config"].items() if k not in ("arch", "full_res")}
    ckpt = {**ckpt, "model_config": old}
    del ckpt["version"], ckpt["digest"]  # nor a digest
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    x = torch.randn(1, 4, 37, 41)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_a_checkpoint_of_a_newer_version_is_refused_in_one_line(tmp_path):
    net = build_model("resnet18", 4, 13)
    ckpt = make_checkpoint(net, ["B2", "B3", "B4", "B8"], {"mean": [0.0] * 4, "std": [1.0] * 4})
    torch.save({**ckpt, "version": 99}, tmp_path / "new.pt")
    with pytest.raises(InputError, match="newer version of this pipeline") as e:
        read_checkpoint(tmp_path / "new.pt")
    assert "\n" not in str(e.value)


def test_background_writer_saves_a_snapshot_in_order_and_raises_its_error(tmp_path, monkeypatch):
    """What save() was given is what lands on disk, even though training changes the tensors in place
    at once; best.pt is written before last.pt; a failed write is raised by the next wait()."""
    from landcover import checkpoint

    weights = torch.zeros(1000)
    written = []
    real_save = checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda c, p: written.append(p.name) or real_save(c, p))
    writer = CheckpointWriter(background=True)
    writer.save([({"w": weights, "epoch": 1}, tmp_path / "best.pt"), ({"w": weights}, tmp_path / "last.pt")])
    weights += 1  # the next training step
    writer.wait()
    assert written == ["best.pt", "last.pt"]
    for name in written:
        assert torch.equal(torch.load(tmp_path / name, weights_only=True)["w"], torch.zeros(1000))

    writer.save([({"w": weights}, tmp_path / "gone" / "last.pt")])  # a folder that is not there
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # raised once
    assert not list(tmp_path.glob("*.partial"))


def test_writer_knows_which_epoch_each_file_holds_even_when_interrupted(tmp_path, monkeypatch):
    """train.py's 'interrupted: last.pt holds epoch N' comes from here: a Ctrl-C held during a write is
    raised once the file is in place, so that write counts; a write that failed does not."""
    from landcover import checkpoint

    real_save = checkpoint.save_checkpoint

    def interrupted(ckpt, path):
        real_save(ckpt, path)
        raise KeyboardInterrupt  # as signals_held raises it, after the rename

    writer = CheckpointWriter(background=False)
    writer.save([({"w": torch.zeros(3)}, tmp_path / "last.pt")], label=4)
    monkeypatch.setattr(checkpoint, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.save([({"w": torch.ones(3)}, tmp_path / "last.pt")], label=5)
    assert writer.written[tmp_path / "last.pt"] == 5
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    with pytest.raises(OSError):
        writer.save([({"w": torch.ones(3)}, tmp_path / "gone" / "last.pt")], label=6)
    assert tmp_path / "gone" / "last.pt" not in writer.written


# ---------------------------------------------------------------------------------------------
# The digest (issue 24)

BANDS = ["B2", "B3", "B4", "B8"]
STATS = {"mean": [0.0] * 4, "std": [1.0] * 4}


def small_checkpoint() -> dict:
    torch.manual_seed(0)
    return make_checkpoint(build_model("resnet18", 4, 13), BANDS, STATS, epoch=2, metrics={"miou": 0.25})


def flip_tensor_bytes(path: Path, n: int = 300, seed: int = 0) -> None:
    """XOR ``n`` bytes at random places inside the largest tensor record of a torch zip file (records are
    stored uncompressed: the data follows the local header, its name and its extra field)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = data[info.header_offset : info.header_offset + 30]
    start = (
        info.header_offset
        + 30
        + int.from_bytes(header[26:28], "little")
        + int.from_bytes(header[28:30], "little")
    )
    rng = np.random.default_rng(seed)
    for i in rng.choice(info.file_size, n, replace=False):
        data[start + i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_digest_is_stable_across_save_and_load_and_changes_with_any_content():
    ckpt = small_checkpoint()
    assert ckpt["digest"] == content_digest(ckpt)
    conv = "encoder.conv1.weight" if "encoder.conv1.weight" in ckpt["model"] else next(iter(ckpt["model"]))
    w = ckpt["model"][conv]
    one_value = w.clone()
    one_value.view(-1)[7] += 1e-3
    changed = {
        "one weight": {**ckpt["model"], conv: one_value},
        "dtype": {**ckpt["model"], conv: w.double()},
        "shape": {**ckpt["model"], conv: w.reshape(w.shape[0], -1)},
        "name": {**{k: v for k, v in ckpt["model"].items() if k != conv}, conv + "_": w},
    }
    digests = {name: content_digest({**ckpt, "model": model}) for name, model in changed.items()}
    digests["bands"] = content_digest({**ckpt, "bands": ["B2", "B3", "B8", "B4"]})
    digests["a metric"] = content_digest({**ckpt, "metrics": {"miou": 0.2500001}})
    digests["an int for a float"] = content_digest({**ckpt, "epoch": 2.0})
    assert len(set(digests.values()) | {ckpt["digest"]}) == len(digests) + 1, digests
    reordered = {k: ckpt[k] for k in reversed(ckpt)}  # the same content in another order: the same digest
    assert content_digest(reordered) == ckpt["digest"]


def test_digest_survives_the_save_and_load_of_a_training_state(tmp_path):
    """train.py's path: make_checkpoint, then the optimizer state added, then the background writer (a
    host copy): the file carries the digest of what it holds, which a reader recomputes equal."""
    net = build_model("resnet18", 4, 13)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4, 64, 64)).sum().backward()
    opt.step()
    ckpt = make_checkpoint(net, BANDS, STATS, epoch=1)
    ckpt.update(optimizer=opt.state_dict(), rng={"python": [3, list(range(5)), None]}, best=float("inf"))
    writer = CheckpointWriter(background=True)
    writer.save([(ckpt, tmp_path / "last.pt")])
    writer.wait()
    loaded = read_checkpoint(tmp_path / "last.pt")
    assert loaded["digest"] == content_digest(loaded) != ckpt["digest"]  # sealed again: the optimizer is in
    assert loaded["digest"] == content_digest(ckpt)  # the host copy (plain dicts) holds the same content
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_a_checkpoint_with_flipped_tensor_bytes_is_refused_in_one_line(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(small_checkpoint(), path)
    flip_tensor_bytes(path)
    torch.load(path, weights_only=True)  # torch itself loads it without a word: the digest is what finds it
    with pytest.raises(InputError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"checkpoint is damaged: its content does not match its checksum: {path}"


def test_a_checkpoint_without_digest_loads_with_one_line_saying_so(tmp_path, capsys):
    ckpt = small_checkpoint()
    del ckpt["digest"]
    torch.save(ckpt, tmp_path / "old.pt")
    net, loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["epoch"] == 2 and net.config["in_channels"] == 4
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "carries no checksum" in err[0] and "old.pt" in err[0], err
    save_checkpoint(small_checkpoint(), tmp_path / "new.pt")
    load_checkpoint(tmp_path / "new.pt")
    assert capsys.readouterr().err == ""  # a checked checkpoint loads silently


def test_a_run_started_before_an_option_existed_resumes_as_what_it_did_and_refuses_another_value():
    state = {"optimizer": {}, "scheduler": {}, "epoch": 3, "rng": {}, "bands": [], "options": {"seed": 0}}
    before = {"cutmix": 0}  # a run from before --cutmix: its options lack it
    check_resumable(state, Path("last.pt"), {"seed": 0, "cutmix": 0}, ["seed", "cutmix"], [], before)
    with pytest.raises(InputError, match=r"--cutmix 0 \(now 4\)"):
        check_resumable(state, Path("last.pt"), {"seed": 0, "cutmix": 4}, ["seed", "cutmix"], [], before)
    with pytest.raises(InputError, match=r"--cutmix unset \(now 0\)"):  # an option nobody said anything of
        check_resumable(state, Path("last.pt"), {"seed": 0, "cutmix": 0}, ["seed", "cutmix"], [])
