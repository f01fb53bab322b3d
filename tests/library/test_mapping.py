"""landcover/mapping.py: the sliding-window engine. Windows cover the scene, blending hides their edges,
every pixel is predicted once in place, memory holds the overlap rows and not the scene, a temperature
moves the confidence and never a code."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from checkpoints import OVERLAP, WINDOW, H, W, image_of, label_map

from landcover import inference, mapping
from landcover.checkpoint import load_checkpoint
from landcover.stats import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def predict_maps(net, stats, img, **kw) -> tuple[np.ndarray, np.ndarray]:
    """mapping.predict_scene over an in-memory scene: the map and its confidence as arrays."""
    h, w = img.shape[1:]
    out = np.full((2, h, w), 254, dtype=np.uint8)  # 254: never written

    def read(r, c, wh, ww):
        return img[:, r : r + wh, c : c + ww]

    def write(row0, codes, confidence):
        out[:, row0 : row0 + len(codes)] = codes, confidence

    mapping.predict_scene(net, read, stats, h, w, write, show_progress=False, **kw)
    assert (out != 254).all(), "every pixel written"
    return out[0], out[1]


def predict_array(net, stats, img, **kw) -> np.ndarray:
    """The map alone."""
    return predict_maps(net, stats, img, **kw)[0]


def test_no_seams_window_edges_agree_with_a_window_centred_on_them(ckpt, scene):
    _, labels, img = scene
    net, c = load_checkpoint(ckpt, torch.device("cpu"))
    stats = c["stats"]
    full = predict_array(net, stats, img, window=WINDOW, overlap=OVERLAP, batch_size=4, workers=2)
    rows = mapping.window_starts(H, WINDOW, OVERLAP)
    cols = mapping.window_starts(W, WINDOW, OVERLAP)
    # every interior window edge: the first and last row / column of every window not on the border
    edge_rows = sorted({r for r in rows[1:]} | {r + WINDOW - 1 for r in rows[:-1]})
    edge_cols = sorted({c for c in cols[1:]} | {c + WINDOW - 1 for c in cols[:-1]})
    half = WINDOW // 2
    agree, n = 0, 0
    for r in edge_rows:  # a window centred on the edge row, compared along that row
        r0 = min(max(r - half, 0), H - WINDOW)
        for c0 in range(0, W - WINDOW + 1, half):
            single = predict_array(
                net, stats, img[:, r0 : r0 + WINDOW, c0 : c0 + WINDOW], window=WINDOW, overlap=0
            )
            line_full, line_single = full[r, c0 + 16 : c0 + WINDOW - 16], single[r - r0, 16:-16]
            keep = line_single != 0
            agree += (line_full[keep] == line_single[keep]).sum()
            n += keep.sum()
    for c in edge_cols:  # and along every edge column
        c0 = min(max(c - half, 0), W - WINDOW)
        for r0 in range(0, H - WINDOW + 1, half):
            single = predict_array(
                net, stats, img[:, r0 : r0 + WINDOW, c0 : c0 + WINDOW], window=WINDOW, overlap=0
            )
            line_full, line_single = full[r0 + 16 : r0 + WINDOW - 16, c], single[16:-16, c - c0]
            keep = line_single != 0
            agree += (line_full[keep] == line_single[keep]).sum()
            n += keep.sum()
    assert n > 2000
    assert agree / n > 0.98, f"window edges agree with centred windows on {agree / n:.3%} of {n} pixels"
    valid = labels != 0
    assert (full[valid] == labels[valid]).mean() > 0.95


class EdgeArtefact(torch.nn.Module):
    """A 'model' that sees class 3 everywhere except within 8 px of its window's edge, where it sees 6.

    Window edges (zero padding) are where real models go wrong; blending must hide them.
    """

    def forward(self, x):
        b, _, h, w = x.shape
        logits = torch.zeros(b, 13, h, w)
        logits[:, 3] = 5.0
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        edge = (yy < 8) | (yy >= h - 8) | (xx < 8) | (xx >= w - 8)
        logits[:, 6][:, edge] = 10.0
        return logits


def test_blending_hides_what_goes_wrong_at_window_edges():
    img = np.full((10, H, W), 1000, dtype=np.uint16)
    stats = {"mean": [0.0] * 10, "std": [1.0] * 10}
    blended = predict_array(
        EdgeArtefact(), stats, img, window=WINDOW, overlap=OVERLAP, batch_size=5, workers=0
    )
    inner = blended[8:-8, 8:-8]
    assert (inner == 3).all(), f"{(inner == 6).sum()} pixels of window-edge artefact inside the scene"
    # without overlap every window edge shows: the test can fail
    tiled = predict_array(EdgeArtefact(), stats, img, window=WINDOW, overlap=0)
    assert (tiled[8:-8, 8:-8] == 6).any()


@pytest.mark.parametrize(
    ("h", "w", "window", "overlap", "batch", "workers"),
    [
        (H, W, 128, 32, 3, 2),
        (H, W, 100, 0, 1, 0),
        (H, W, 512, 64, 4, 1),
        (97, 301, 64, 48, 7, 2),
        (40, 40, 64, 8, 2, 0),
    ],
)
def test_every_pixel_is_predicted_once_in_place(h, w, window, overlap, batch, workers):
    """A per-pixel model: the map must equal its prediction of the whole image, pixel for pixel."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(10, 13, 1).eval()
    rng = np.random.default_rng(0)
    img = rng.integers(1, 3000, (10, h, w)).astype(np.uint16)
    img[:, : h // 4, : w // 3] = 0
    stats = {"mean": [1500.0] * 10, "std": [800.0] * 10}
    got = predict_array(net, stats, img, window=window, overlap=overlap, batch_size=batch, workers=workers)
    x = Normalize(stats)(torch.from_numpy(img)[None])
    want = inference.predict_codes(net, x)[0].numpy()
    want[~np.any(img != 0, axis=0)] = 0
    assert np.array_equal(got, want)


@pytest.mark.parametrize(
    ("size", "window", "overlap"), [(300, 128, 32), (1000, 512, 64), (513, 512, 0), (50, 128, 8)]
)
def test_window_starts_cover_the_scene_with_at_least_the_overlap(size, window, overlap):
    starts = mapping.window_starts(size, window, overlap)
    w = min(window, size)
    assert starts[0] == 0 and starts[-1] + w == size
    assert all(b - a <= w - overlap for a, b in itertools.pairwise(starts))
    assert starts == sorted(set(starts))


def test_memory_holds_the_overlap_rows_not_the_scene():
    """The blender keeps a window and the overlap rows across the width, nothing the size of the scene."""
    h, w = 2000, 700
    rows, cols = mapping.window_starts(h, 128, 16), mapping.window_starts(w, 128, 16)
    b = mapping.Blender(h, w, rows, cols, (128, 128), 16)
    biggest = 0
    for i in range(len(rows)):
        for j in range(len(cols)):
            done = b.add(i, j, torch.rand(13, 128, 128), np.ones((128, 128), bool))
            for t in (b.left, b.carry):
                if t is not None:
                    biggest = max(biggest, t.numel())
            if done is not None:
                assert done.valid.shape[0] <= 128
    assert biggest <= 13 * 128 * w


class FourFlips(torch.nn.Module):
    """Class 6 mildly likely in three quadrants of its input, class 3 very likely in the bottom-right one.

    Under TTA every pixel is seen once in each quadrant: the mean of the four passes' probabilities
    picks class 3 at T = 1 and class 6 at T = 0.2 (a vote of the sharpened passes).
    """

    def forward(self, x):
        b, _, h, w = x.shape
        logits = torch.zeros(b, 13, h, w)
        logits[:, 6] = 1.0
        logits[:, 6, h // 2 :, w // 2 :] = 0.0
        logits[:, 3, h // 2 :, w // 2 :] = 5.0
        return logits


def test_a_temperature_never_changes_a_code_under_tta_and_blending():
    img = np.full((10, 96, 160), 1000, dtype=np.uint16)
    stats = {"mean": [0.0] * 10, "std": [1.0] * 10}
    x = torch.zeros(1, 10, 64, 64)
    one = inference.codes_from_probabilities(inference.class_probabilities(FourFlips(), x, tta=True))
    sharp = inference.codes_from_probabilities(inference.class_probabilities(FourFlips(), x, True, 0.2))
    assert (one == 3).all() and (sharp == 6).all(), "the test can fail: T changes the TTA argmax"
    kw = dict(window=64, overlap=16, batch_size=3, tta=True, workers=0)
    codes, conf = predict_maps(FourFlips(), stats, img, **kw)
    codes_t, conf_t = predict_maps(FourFlips(), stats, img, temperature=0.2, **kw)
    assert (codes == 3).all() and np.array_equal(codes_t, codes)
    p3 = (np.exp(5) / (np.exp(5) + 11) + 3 / (np.e + 11)) / 4  # the mean probability of class 3, T = 1
    p3_sharp = (1 / (1 + 11 * np.exp(-25)) + 3 / (np.exp(5) + 11)) / 4  # at T = 0.2
    assert np.abs(conf.astype(int) - round(100 * p3)).max() <= 1, (np.unique(conf), p3)
    assert np.abs(conf_t.astype(int) - round(100 * p3_sharp)).max() <= 1, (np.unique(conf_t), p3_sharp)


def test_confidence_is_higher_where_the_model_is_right(ckpt):
    """A noisy scene, so that the model is wrong on some pixels: they must have the lower confidence."""
    rng = np.random.default_rng(5)
    labels = label_map(H, W, rng, block=37)
    labels[:40, :50] = 0
    img = image_of(labels, rng, noise=300.0)
    net, c = load_checkpoint(ckpt, torch.device("cpu"))
    codes, conf = predict_maps(net, c["stats"], img, window=WINDOW, overlap=OVERLAP, workers=0)
    valid = labels != 0
    assert np.array_equal(codes == 0, ~valid) and np.array_equal(conf == 255, ~valid)
    right, wrong = valid & (codes == labels), valid & (codes != labels)
    assert wrong.sum() > 200 and right.sum() > 20 * wrong.sum(), (right.sum(), wrong.sum())
    assert conf[right].mean() > conf[wrong].mean() + 5, (conf[right].mean(), conf[wrong].mean())
