"""checkpoint.py: a round trip with weights_only loading, and unsafe or broken files refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landcover.checkpoint import CheckpointWriter, load_checkpoint, make_checkpoint, read_checkpoint
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
    del ckpt["version"]
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
