"""test_model.py: every promised file, metrics from one confusion matrix over the whole split, pictures
of the best / worst / random tiles with a legend naming only the classes shown, bad input refused.

A resnet18 trained for a few CPU seconds on easy synthetic spectra (tests/checkpoints.py) evaluated on
a tiny split of 64 x 64 tiles with nodata.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from checkpoints import image_of, label_map
from helpers import S2_BANDS, assert_one_line_error, run_script, write_raster
from sklearn.metrics import accuracy_score, jaccard_score

import test_model
from colormap import CLASSES, CODES
from landcover import inference
from landcover.checkpoint import load_checkpoint
from landcover.common import run_main
from landcover.dataset import TileDataset
from landcover.layout import tile_pairs
from landcover.metrics import ConfusionMatrix
from landcover.stats import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TILES = 7
FIELDS = ("overall_accuracy", "miou", "mean_dice", "kappa", "per_class", "classes_left_out")


def write_split(split, bands=10, descriptions=S2_BANDS, seed=3):
    """TILES pairs of 64 x 64 tiles: nodata rows in image and mask, mask-only nodata, one empty tile."""
    rng = np.random.default_rng(seed)
    for i in range(TILES):
        labels = label_map(64, 64, rng, block=16 + 4 * i)
        img = image_of(labels, rng)
        mask = labels.copy()
        img[:, :5] = 0  # image nodata: the mask there must not count
        mask[60:, :10] = 0  # mask nodata under valid image
        if i == TILES - 1:
            img[:] = 0  # a tile with no valid pixel: never ranked
        write_raster(split / "img" / f"t{i}.tif", img[:bands], descriptions=descriptions[:bands])
        write_raster(split / "mask" / f"t{i}.tif", mask)
    return split


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("data") / "test")


@pytest.fixture(scope="module")
def run(tmp_path_factory, ckpt, split):
    out = tmp_path_factory.mktemp("results") / "r"
    res = run_script(
        "test_model.py",
        *("--checkpoint", ckpt, "--data", split, "--out", out, "--n", 2, "--batch-size", 3),
        *("--workers", 0, "--device", "cpu"),
    )
    assert res.returncode == 0, res.stderr
    return out, res


def test_writes_every_promised_file_and_nothing_else(run):
    out, _ = run
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    pictures = [f for f in files if f.startswith("comparisons/")]
    assert [f for f in files if f not in pictures] == [
        "confusion_matrix.png",
        "coverage.png",
        "metrics.json",
        "reliability.png",
        "tile_scores.csv",
    ]
    # 6 tiles with valid pixels: 2 best, 2 worst, 2 random, each once
    groups = sorted(f.split("/")[1].split("_")[0] for f in pictures)
    assert groups == ["best", "best", "random", "random", "worst", "worst"]
    assert len({f.split("_", 2)[2] for f in pictures}) == 6
    assert not any(f.startswith("comparisons/") and f"t{TILES - 1}.png" in f for f in files), "empty tile"
    for f in ["confusion_matrix.png", "coverage.png", "reliability.png", *pictures]:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.partial"))


def test_metrics_json_has_the_fields_and_prints_them_as_a_table(run):
    out, res = run
    m = json.loads((out / "metrics.json").read_text())
    for k in FIELDS:
        assert k in m
    assert sorted(m["per_class"], key=int) == [str(c) for c in CODES]
    for code, pc in m["per_class"].items():
        assert pc["name"] == CLASSES[int(code)][0]
        assert {"iou", "dice", "precision", "recall", "support"} <= set(pc)
    # the split holds classes 1, 3, 6 and 12; the others are absent from the truth
    for c in (1, 3, 6, 12):
        assert m["per_class"][str(c)]["support"] > 0
    assert set(m["classes_left_out"]) <= {2, 4, 5, 7, 8, 9, 10, 11}
    assert m["split"]["tiles"] == TILES and m["checkpoint"]["encoder"] == "resnet18"
    assert m["miou"] > 0.8, "the easy model scores high"
    assert "Herbaceous crops" in res.stdout and "Watercourses and water bodies" in res.stdout
    assert f"{m['miou']:.3f}" in res.stdout


def test_metrics_come_from_one_matrix_over_every_valid_pixel(run, ckpt, split):
    """Recompute with scikit-learn over all valid pixels of the split, tile by tile predictions."""
    out, _ = run
    m = json.loads((out / "metrics.json").read_text())
    net, c = load_checkpoint(ckpt, torch.device("cpu"))
    ds, norm = TileDataset(tile_pairs(split), len(c["bands"])), Normalize(c["stats"])
    truth, pred = [], []
    for i in range(len(ds)):
        raw, y = ds[i]
        p = inference.predict_codes(net, norm(raw[None]))[0]
        valid = y != 0
        truth.append(y[valid].numpy())
        pred.append(p[valid].numpy())
    t, p = np.concatenate(truth), np.concatenate(pred)
    assert m["pixels"] == len(t) == sum(m["per_class"][str(c)]["support"] for c in CODES)
    assert m["overall_accuracy"] == pytest.approx(accuracy_score(t, p))
    labels = [c for c in CODES if c not in m["classes_left_out"]]
    assert m["miou"] == pytest.approx(jaccard_score(t, p, labels=labels, average="macro"))
    counts = np.array(m["confusion_matrix"]["counts"])
    assert counts.sum() == len(t) and counts[0].sum() == 0


def test_best_and_worst_pictures_follow_the_tile_scores(run):
    out, _ = run
    with open(out / "tile_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TILES and rows[-1]["miou"] == ""  # the empty tile has no score
    scored = sorted((r for r in rows if r["miou"]), key=lambda r: (-float(r["miou"]), r["tile"]))
    names = {p.name for p in (out / "comparisons").iterdir()}
    assert f"best_1_{scored[0]['tile']}.png" in names
    assert f"worst_1_{scored[-1]['tile']}.png" in names


def test_legend_names_only_the_classes_shown(ckpt, split):
    net, c = load_checkpoint(ckpt, torch.device("cpu"))
    ds, norm = TileDataset(tile_pairs(split), len(c["bands"])), Normalize(c["stats"])
    for i in (0, 3):
        raw, y = ds[i]
        fig = inference.tile_figure(net, raw, y, norm, [2, 1, 0], "t")
        pred = inference.predict_codes(net, norm(raw[None]))[0].numpy()
        img_valid = (raw != 0).any(0).numpy()
        shown = (set(np.unique(y.numpy())) | set(np.unique(pred[img_valid]))) - {0}
        texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        assert texts == [f"{c} {CLASSES[c][0]}" for c in sorted(shown)]
        assert len(shown) < len(CODES)


def test_select_tiles_disjoint_groups_seeded_and_never_an_empty_tile():
    scores = [{"tile": f"t{i}", "miou": None if i == 5 else (i * 37 % 11) / 11} for i in range(12)]
    picks = test_model.select_tiles(scores, 3, seed=0)
    assert picks == test_model.select_tiles(scores, 3, seed=0)
    idx = [i for _, _, i in picks]
    assert len(idx) == len(set(idx)) == 9 and 5 not in idx
    best = [i for g, _, i in picks if g == "best"]
    worst = [i for g, _, i in picks if g == "worst"]
    assert [scores[i]["miou"] for i in best] == sorted(s["miou"] for s in scores if s["miou"] is not None)[
        ::-1
    ][:3]
    assert min(scores[i]["miou"] for i in best) >= max(scores[i]["miou"] for i in worst)
    few = test_model.select_tiles(scores[:3], 4, seed=0)
    assert sorted(i for _, _, i in few) == [0, 1, 2]


def test_rerun_is_identical_and_fewer_pictures_drop_the_old_ones(tmp_path, ckpt, split, capsys):
    out = tmp_path / "r"
    argv = [
        "--checkpoint",
        str(ckpt),
        "--data",
        str(split),
        "--out",
        str(out),
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    assert run_main(test_model.main, [*argv, "--n", "2"]) == 0
    first = (out / "metrics.json").read_bytes()
    assert run_main(test_model.main, [*argv, "--n", "1"]) == 0
    assert (out / "metrics.json").read_bytes() == first
    assert len(list((out / "comparisons").iterdir())) == 3


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("band count", ["has 4 bands", "expects 10"]),
        ("band names", ["band 1 is B3", "expects B2"]),
        ("text checkpoint", ["not a checkpoint", "best.pt"]),
        ("no split", ["not found", "nowhere"]),
        ("n<0", ["--n must be >= 0"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, ckpt, case, needles):
    split, checkpoint, extra = tmp_path / "test", ckpt, []
    if case == "band count":
        write_split(split, bands=4)
    elif case == "band names":
        write_split(split, descriptions=("B3", "B2", *S2_BANDS[2:]))
    else:
        write_split(split)
    if case == "text checkpoint":
        checkpoint = tmp_path / "best.pt"
        checkpoint.write_text("not a checkpoint\n")
    elif case == "no split":
        split = tmp_path / "nowhere"
    elif case == "n<0":
        extra = ["--n", "-1"]
    out = tmp_path / "results"
    res = run_script("test_model.py", "--checkpoint", checkpoint, "--data", split, "--out", out, *extra)
    assert_one_line_error(res, *needles)
    assert not out.exists()


def test_calibration_is_reported_and_an_old_checkpoint_says_it_is_uncalibrated(run):
    """metrics.json's calibration: the temperature (1 for a checkpoint written before temperatures,
    which the run says), ECE before and after, the reliability and coverage tables, and the threshold
    that sends the least-confident pixels to review."""
    out, res = run
    cal = json.loads((out / "metrics.json").read_text())["calibration"]
    assert "holds no fitted temperature" in res.stdout and cal["temperature"] == 1.0
    raw, calibrated = cal["uncalibrated"], cal["calibrated"]
    assert raw["ece"] == pytest.approx(calibrated["ece"])  # T = 1: nothing to change
    assert 0 <= raw["ece"] <= 1 and raw["pixels"] > 0
    shares = [row["share"] for row in calibrated["coverage"]]
    assert shares[0] == pytest.approx(1.0) and shares == sorted(shares, reverse=True)
    review = cal["review"]
    if review["threshold"] is not None:
        assert review["kept_accuracy"] >= review["accuracy"]
    assert "expected calibration error" in res.stdout


def test_codes_with_flips_are_predict_py_codes_whatever_the_temperature(ckpt, split):
    """With --tta the scores are of the codes predict.py maps (the T = 1 blend of the flips): a
    temperature only changes the confidence, never which code a pixel gets."""
    cpu = torch.device("cpu")
    net, c = load_checkpoint(ckpt, cpu)
    pairs = tile_pairs(split)
    ds, norm = TileDataset(pairs, len(c["bands"])), Normalize(c["stats"])
    expected = ConfusionMatrix(len(CLASSES))
    for i in range(len(ds)):
        raw, y = ds[i]
        expected.update(y[None], inference.predict_codes(net, norm(raw[None]), tta=True))
    for t in (1.0, 0.05):
        ev = test_model.evaluate(net, pairs, c["stats"], cpu, temperature=t, tta=True, batch_size=3)
        assert torch.equal(ev.cm.mat, expected.mat), t
