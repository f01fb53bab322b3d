"""predict.py: whole-scene maps on the scene's grid, no seams, nodata, colour table, overviews, preview;
the confidence raster beside the map (calibrated by the checkpoint's temperature, which never changes a
code) and the review mask; stacked scenes matched to the checkpoint by position and bands, whatever their
names; bad input refused with one line and nothing written.

A resnet18 trained for a few CPU seconds on easy synthetic spectra (tests/checkpoints.py) predicts
scenes of a few hundred pixels whose size is not a multiple of the window.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from checkpoints import image_of, label_map, trained_checkpoint
from helpers import S2_BANDS, assert_one_line_error, run_script, write_raster

import predict
from colormap import CODES, gdal_colour_table
from landcover import inference, mapping
from landcover import probabilities as probabilities_
from landcover.checkpoint import load_checkpoint, make_checkpoint
from landcover.common import run_main
from landcover.stats import Normalize
from model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
H, W = 300, 370  # not a multiple of the window
WINDOW, OVERLAP = 128, 32


def scene_data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(labels, image) of a scene with nodata outside an irregular region and a nodata hole."""
    rng = np.random.default_rng(seed)
    labels = label_map(H, W, rng, block=37)
    yy, xx = np.mgrid[:H, :W]
    labels[(yy < 60) & (xx < 90)] = 0  # a nodata corner
    labels[(yy - 200) ** 2 + (xx - 250) ** 2 < 25**2] = 0  # a nodata hole across window edges
    labels[:, -3:] = 0
    return labels, image_of(labels, rng)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    labels, img = scene_data()
    path = tmp_path_factory.mktemp("scene") / "s2_april.tif"
    write_raster(
        path, img, descriptions=S2_BANDS, tiled=True, blockxsize=64, blockysize=64, compress="deflate"
    )
    return path, labels, img


def outputs(folder):
    return sorted(p.name for p in folder.iterdir())


def assert_refused(argv: list[str], capsys, needles) -> str:
    """predict.main(argv) exits 2 with one line on stderr holding every needle; returns its stdout."""
    assert run_main(predict.main, argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], (n, err[0])
    return captured.out


# ---------------------------------------------------------------------------------------------
# The map


def test_map_is_on_the_scene_grid_with_nodata_colours_names_overviews_and_preview(tmp_path, ckpt, scene):
    path, labels, img = scene
    out = tmp_path / "map.tif"
    res = run_script(
        "predict.py",
        *("--checkpoint", ckpt, "--image", path, "--out", out, "--window", WINDOW, "--overlap", OVERLAP),
        *("--batch-size", 3, "--device", "cpu"),
    )
    assert res.returncode == 0, res.stderr
    assert outputs(tmp_path) == [
        "map.png", "map.tif", "map.tif.aux.xml", "map_confidence.png", "map_confidence.tif"
    ]  # fmt: skip
    with rasterio.open(path) as src, rasterio.open(out) as m:
        assert (m.crs, m.transform, m.width, m.height) == (src.crs, src.transform, src.width, src.height)
        assert m.count == 1 and m.dtypes[0] == "uint8" and m.nodata == 0
        assert m.profile["tiled"] and m.block_shapes[0] == (512, 512)
        assert m.compression is not None and m.compression.name.lower() == "deflate"
        assert m.overviews(1), "internal overviews"
        table = m.colormap(1)
        for code, rgba in gdal_colour_table().items():
            assert table[code] == rgba
        assert m.tags(1)["CLASS_12"] == "Watercourses and water bodies"
        got = m.read(1)
        grid = (m.crs, m.transform, m.shape)
    nodata = ~np.any(img != 0, axis=0)
    assert np.array_equal(got == 0, nodata), "nodata exactly where every band is 0"
    assert set(np.unique(got[~nodata])) <= set(CODES)
    assert (got[~nodata] == labels[~nodata]).mean() > 0.95, "the model's predictions, in place"
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    aux = (tmp_path / "map.tif.aux.xml").read_text()
    assert "<Category>Herbaceous crops</Category>" in aux and aux.count("<Category>") == 13
    assert "Forest" in res.stdout and "wrote" in res.stdout
    assert "no fitted temperature" in res.stdout and "temperature" not in res.stderr  # an old checkpoint
    check_confidence_raster(tmp_path / "map_confidence.tif", got, grid)
    assert (tmp_path / "map_confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_confidence_raster(path, codes: np.ndarray, grid) -> np.ndarray:
    """The confidence raster is on the map's grid, uint8 0..100, nodata 255 exactly where the map is 0,
    laid out like the map, with average overviews; returns its pixels."""
    with rasterio.open(path) as c:
        assert (c.crs, c.transform, c.shape) == grid
        assert c.count == 1 and c.dtypes[0] == "uint8" and c.nodata == 255
        assert c.profile["tiled"] and c.block_shapes[0] == (512, 512)
        assert c.compression is not None and c.compression.name.lower() == "deflate"
        assert c.overviews(1) and c.tags(ns="rio_overview")["resampling"] == "average"
        assert "confidence" in c.descriptions[0]
        conf = c.read(1)
        overview = c.read(1, out_shape=(c.height // 2, c.width // 2))
    assert np.array_equal(conf == 255, codes == 0), "nodata exactly where the map has none"
    assert conf[codes != 0].max() <= 100
    assert set(np.unique(overview)) <= set(range(101)) | {255}
    return conf


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


# ---------------------------------------------------------------------------------------------
# Confidence (issue 14)


def with_temperature(ckpt, path, temperature: float):
    """A copy of a checkpoint holding a fitted temperature, as train.py's best.pt does."""
    c = torch.load(ckpt, weights_only=True)
    c["temperature"] = temperature
    torch.save(c, path)
    return path


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


def test_temperature_moves_the_confidence_and_never_the_codes(tmp_path, ckpt, scene, capsys):
    argv = ["--image", scene[0], "--window", WINDOW, "--overlap", OVERLAP, "--device", "cpu", "--no-preview"]
    maps = {}
    for t in (None, 2.0, 0.5):
        ck = ckpt if t is None else with_temperature(ckpt, tmp_path / f"t{t}.pt", t)
        out = tmp_path / f"t{t}" / "m.tif"
        assert run_main(predict.main, list(map(str, [*argv, "--checkpoint", ck, "--out", out]))) == 0
        printed = capsys.readouterr().out
        assert ("no fitted temperature" in printed) == (t is None), printed  # an old checkpoint says so
        assert f"(temperature {t or 1:g})" in printed
        with rasterio.open(out) as m, rasterio.open(out.with_name("m_confidence.tif")) as c:
            maps[t] = m.read(1), c.read(1)
            assert c.tags()["temperature"] == f"{t or 1:g}"
    codes, conf = maps[None]
    valid = codes != 0
    for t in (2.0, 0.5):
        assert np.array_equal(maps[t][0], codes), f"T = {t} changed the map"
    assert maps[2.0][1][valid].mean() < conf[valid].mean() - 5, "softer probabilities: lower confidence"
    assert maps[0.5][1][valid].mean() > conf[valid].mean() + 5, "sharper probabilities: higher confidence"


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


def test_review_mask_flags_the_pixels_below_the_threshold(tmp_path, ckpt, scene, capsys):
    path = scene[0]
    out = tmp_path / "m.tif"
    argv = ["--checkpoint", ckpt, "--image", path, "--out", out, "--window", WINDOW, "--overlap", OVERLAP]
    argv += ["--device", "cpu", "--review-below", "40"]
    assert run_main(predict.main, list(map(str, argv))) == 0
    printed = capsys.readouterr().out
    assert set(outputs(tmp_path)) >= {"m.tif", "m_confidence.tif", "m_review.tif", "m_confidence.png"}
    with rasterio.open(out) as m, rasterio.open(tmp_path / "m_review.tif") as r:
        codes, review = m.read(1), r.read(1)
        assert (r.crs, r.transform, r.shape, r.dtypes[0], r.nodata) == (
            m.crs,
            m.transform,
            m.shape,
            "uint8",
            255,
        )
        assert r.overviews(1) and r.tags(1)["REVIEW_BELOW"] == "40"
    with rasterio.open(tmp_path / "m_confidence.tif") as c:
        conf = c.read(1)
    valid = codes != 0
    assert np.array_equal(review, np.where(valid, conf < 40, 255).astype(np.uint8))
    flagged = int((review == 1).sum())
    assert 0 < flagged < valid.sum(), "some pixels flagged, not all"
    share = 100 * flagged / valid.sum()
    assert f"{flagged:,} pixels, {share:.2f}% of the mapped pixels" in printed, printed


# ---------------------------------------------------------------------------------------------
# Stacked scenes (issue 7)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stacked")
    bands = [f"{s}:{b}" for s in ("s2_april", "s2_august") for b in S2_BANDS]
    ck = trained_checkpoint(folder / "stacked.pt", bands=bands, repeat=2, steps=10)
    labels, img = scene_data(2)
    april, august = img.copy(), img.copy()
    april[:, 100:140, :] = 0  # April has no data in these rows, August has: the map has data there
    august[:, 100:120, :] = 0  # rows 100..119: nodata in both
    kw = dict(descriptions=S2_BANDS, tiled=True, blockxsize=64, blockysize=64)
    a = write_raster(folder / "s2_april.tif", april, **kw)
    b = write_raster(folder / "s2_august.tif", august, **kw)
    return ck, a, b, labels


def test_stacked_model_maps_the_scenes_in_order(tmp_path, stacked, capsys):
    ck, a, b, labels = stacked
    out = tmp_path / "m.tif"
    argv = ["--checkpoint", ck, "--image", a, b, "--out", out, "--window", WINDOW, "--device", "cpu"]
    assert run_main(predict.main, list(map(str, [*argv, "--no-preview"]))) == 0
    assert outputs(tmp_path) == ["m.tif", "m.tif.aux.xml", "m_confidence.tif"]
    with rasterio.open(out) as m:
        got = m.read(1)
    valid = labels != 0
    both_nodata = np.zeros_like(valid)
    both_nodata[100:120] = True
    assert np.array_equal(got == 0, ~valid | both_nodata), "nodata only where every scene is nodata"
    assert (got[120:140][valid[120:140]] > 0).all()


@pytest.mark.parametrize(
    ("order", "needle"),
    [
        ("ba", "wrong order"),
        ("a", "stacks 2 scenes"),
        ("aba", "stacks 2 scenes"),
    ],
)
def test_stacked_model_refuses_wrong_order_or_count(tmp_path, stacked, capsys, order, needle):
    ck, a, b, _ = stacked
    images = [{"a": a, "b": b}[k] for k in order]
    out = tmp_path / "m.tif"
    argv = ["--checkpoint", ck, "--image", *images, "--out", out]
    assert run_main(predict.main, list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "s2_april.tif s2_august.tif" in err[0], err
    assert outputs(tmp_path) == []


def stacked_argv(ck, images, out) -> list[str]:
    argv = ["--checkpoint", ck, "--image", *images, "--out", out, "--window", WINDOW, "--device", "cpu"]
    return list(map(str, [*argv, "--no-preview"]))


def test_stacked_model_maps_the_same_scenes_under_other_names_identically(tmp_path, stacked, capsys):
    """Another year's mosaics carry other names: matched by position and bands, said in one line."""
    ck, a, b, _ = stacked
    renamed = [shutil.copy(a, tmp_path / "2019_april.tif"), shutil.copy(b, tmp_path / "2019_august.tif")]
    pixels, notes = [], []
    for name, images in (("same", [a, b]), ("renamed", renamed)):
        out = tmp_path / name / "m.tif"
        assert run_main(predict.main, stacked_argv(ck, images, out)) == 0
        captured = capsys.readouterr()
        notes.append([ln for ln in captured.out.splitlines() if "matched by position" in ln])
        assert "matched by position" not in captured.err
        with rasterio.open(out) as m, rasterio.open(out.with_name("m_confidence.tif")) as c:
            pixels.append([m.read(1).tobytes(), c.read(1).tobytes(), c.read(1, out_shape=(75, 92)).tobytes()])
    assert pixels[0] == pixels[1], "the same map and confidence, byte for byte"
    assert notes == [
        [],
        [
            "scene 1 is 2019_april.tif, the checkpoint was trained on s2_april.tif; scene 2 is "
            "2019_august.tif, the checkpoint was trained on s2_august.tif: matched by position and bands"
        ],
    ]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("s2_april", "s2_august"), None),
        (
            ("2019_april", "s2_august"),
            "scene 1 is 2019_april.tif, the checkpoint was trained on s2_april.tif: "
            "matched by position and bands",
        ),
        (("s2_august", "s2_april"), "wrong order"),  # the checkpoint's own names, swapped: a mistake
    ],
)
def test_check_scenes_matches_by_position_and_bands(names, expected):
    from landcover.common import InputError

    bands = [f"{s}:{b}" for s in ("s2_april", "s2_august") for b in S2_BANDS]
    scenes = [(Path(f"/x/{n}.tif"), list(S2_BANDS)) for n in names]
    if expected == "wrong order":
        with pytest.raises(InputError, match="wrong order"):
            inference.check_scenes(bands, scenes)
    else:
        assert inference.check_scenes(bands, scenes) == expected


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """An (untrained) stacked checkpoint of 10 April bands and 4 August bands, and such scenes, named
    otherwise than the checkpoint's."""
    folder = tmp_path_factory.mktemp("mixed")
    august_bands = ("B2", "B3", "B4", "B8")
    bands = [f"s2_april:{b}" for b in S2_BANDS] + [f"s2_august:{b}" for b in august_bands]
    torch.manual_seed(0)
    stats = {"mean": [1000.0] * 14, "std": [500.0] * 14}
    torch.save(make_checkpoint(build_model("resnet18", 14, 13), bands, stats), folder / "mixed.pt")
    _, img = scene_data(3)
    a = write_raster(folder / "2019_april.tif", img, descriptions=S2_BANDS)
    b = write_raster(folder / "2019_august.tif", img[:4], descriptions=august_bands)
    return folder / "mixed.pt", a, b


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("other band names", ["2019_august.tif", "band 1 is B3, the checkpoint expects B2"]),
        ("other band order", ["2019_august.tif", "band 9 is B12, the checkpoint expects B11"]),
        ("another band count", ["2019_august.tif", "has 4 bands", "expects 10"]),
        ("scenes swapped", ["2019_august.tif", "has 4 bands", "expects 10"]),
    ],
)
def test_renamed_scenes_with_other_bands_are_refused(tmp_path, stacked, mixed, capsys, case, needles):
    ck, a, _, _ = stacked
    _, img = scene_data(2)
    if case == "other band names":
        b = write_raster(tmp_path / "2019_august.tif", img, descriptions=("B3", *S2_BANDS[1:]))
    elif case == "other band order":
        b = write_raster(tmp_path / "2019_august.tif", img, descriptions=(*S2_BANDS[:8], "B12", "B11"))
    elif case == "another band count":
        b = write_raster(tmp_path / "2019_august.tif", img[:4], descriptions=S2_BANDS[:4])
    else:
        ck, b, a = mixed  # August's 4 bands first, April's 10 second
    before = outputs(tmp_path)
    out = assert_refused(stacked_argv(ck, [a, b], tmp_path / "maps" / "m.tif"), capsys, needles)
    assert "matched by position" not in out
    assert outputs(tmp_path) == before


def test_stacked_scenes_on_different_grids_are_refused(tmp_path, stacked, capsys):
    ck, a, _, _ = stacked
    with rasterio.open(a) as src:
        data = src.read()
    b = write_raster(tmp_path / "s2_august.tif", data, descriptions=S2_BANDS, origin=(400010.0, 4600000.0))
    assert (
        run_main(
            predict.main,
            ["--checkpoint", str(ck), "--image", str(a), str(b), "--out", str(tmp_path / "m.tif")],
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not on the grid" in err[0] and "s2_august.tif" in err[0]
    assert outputs(tmp_path) == ["s2_august.tif"]


def test_single_scene_model_refuses_two_scenes(tmp_path, ckpt, stacked, capsys):
    _, a, b, _ = stacked
    assert (
        run_main(
            predict.main,
            ["--checkpoint", str(ckpt), "--image", str(a), str(b), "--out", str(tmp_path / "m.tif")],
        )
        == 2
    )
    assert "takes one scene" in capsys.readouterr().err
    assert outputs(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def test_cli_refuses_a_missing_scene_and_a_truncated_checkpoint(tmp_path, ckpt, scene):
    out = tmp_path / "out" / "m.tif"
    res = run_script("predict.py", "--checkpoint", ckpt, "--image", tmp_path / "nope.tif", "--out", out)
    assert_one_line_error(res, "scene not found", "nope.tif")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:100000])
    res = run_script("predict.py", "--checkpoint", bad, "--image", scene[0], "--out", out)
    assert_one_line_error(res, "checkpoint", "bad.pt")
    assert not (tmp_path / "out").exists()


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def scene_with(tmp_path, bands, descriptions):
    _, img = scene_data()
    return write_raster(tmp_path / "s.tif", img[:bands], descriptions=descriptions)


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("pickled", ["pickled objects", "evil.pt"]),
        ("overlap<0", ["--overlap"]),
        ("overlap>=window", ["--overlap", "smaller than --window"]),
        ("4 bands", ["has 4 bands", "expects 10"]),
        ("band names", ["band 1 is B3", "expects B2"]),
        ("not tif", ["--out must end with .tif"]),
        ("overwrite input", ["overwrite an input"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, ckpt, scene, capsys, case, needles):
    out = tmp_path / "maps" / "m.tif"
    args = {"--checkpoint": str(ckpt), "--image": str(scene[0]), "--out": str(out)}
    extra: list[str] = []
    if case == "pickled":
        torch.save({"model": Evil()}, tmp_path / "evil.pt")
        args["--checkpoint"] = str(tmp_path / "evil.pt")
    elif case == "overlap<0":
        extra = ["--overlap", "-1"]
    elif case == "overlap>=window":
        extra = ["--window", "64", "--overlap", "64"]
    elif case == "4 bands":
        args["--image"] = str(scene_with(tmp_path, 4, S2_BANDS[:4]))
    elif case == "band names":
        args["--image"] = str(scene_with(tmp_path, 10, ("B3", "B2", *S2_BANDS[2:])))
    elif case == "not tif":
        args["--out"] = str(tmp_path / "maps" / "m.png")
    elif case == "overwrite input":
        args["--out"] = str(scene[0])
    before = outputs(tmp_path)
    argv = [x for kv in args.items() for x in kv] + extra
    assert "this ran" not in assert_refused(argv, capsys, needles)
    assert outputs(tmp_path) == before and not (tmp_path / "maps").exists()


def test_a_damaged_scene_block_stops_with_one_line_and_no_map(tmp_path, ckpt, capsys):
    _, img = scene_data()
    path = write_raster(
        tmp_path / "s.tif",
        img,
        descriptions=S2_BANDS,
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
    )
    data = bytearray(path.read_bytes())
    n = len(data)
    data[2 * n // 5 : 3 * n // 5] = b"\x55" * (3 * n // 5 - 2 * n // 5)  # garbage in the middle of the blocks
    path.write_bytes(bytes(data))
    out = tmp_path / "maps" / "m.tif"
    argv = ["--checkpoint", ckpt, "--image", path, "--out", out, "--window", WINDOW, "--device", "cpu"]
    assert run_main(predict.main, list(map(str, argv))) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot read rows" in last and "s.tif" in last and "Traceback" not in last
    assert outputs(tmp_path / "maps") == []


@pytest.mark.parametrize("nth", [1, 2])
def test_a_full_disk_names_the_raster_and_leaves_nothing(tmp_path, ckpt, scene, capsys, monkeypatch, nth):
    """The map and its confidence are written side by side: the n-th write fails as on a full disk."""
    import errno

    calls, write = [0], rasterio.io.DatasetWriter.write

    def full(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", full)
    out = tmp_path / "maps" / "m.tif"
    argv = ["--checkpoint", ckpt, "--image", scene[0], "--out", out, "--window", WINDOW, "--device", "cpu"]
    assert run_main(predict.main, list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    name = "m.tif" if nth == 1 else "m_confidence.tif"  # the map's row of blocks first, then the confidence
    assert f"{out.with_name(name)}): No space" in err, err
    assert outputs(tmp_path / "maps") == []


# ---------------------------------------------------------------------------------------------
# inference.py, shared with test_model.py


def test_probabilities_cover_codes_1_to_12_and_tta_flips_back():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(10, 13, 1).eval()  # per pixel: the flips must change nothing
    x = torch.randn(2, 10, 37, 53)
    p = inference.class_probabilities(net, x)
    assert p.shape == (2, 13, 37, 53) and (p[:, 0] == 0).all()
    assert torch.allclose(p.sum(1), torch.ones(2, 37, 53))
    assert torch.allclose(inference.class_probabilities(net, x, tta=True), p, atol=1e-6)
    codes = inference.predict_codes(net, x)
    assert codes.dtype == torch.uint8 and codes.min() >= 1 and codes.max() <= 12
    with torch.no_grad():  # code 0 is never predicted, even where its output is the largest
        net.bias[0] = 1e6
    assert inference.predict_codes(net, x).min() >= 1


@pytest.mark.parametrize(
    ("expected", "found", "ok"),
    [
        (["B2", "B3"], ["B2", "B3"], True),
        (["B2", "B3"], [None, "band2"], True),  # unnamed bands: count and position only
        (["B2", "B3"], ["B3", "B2"], False),
        (["B2", "B3"], ["B2"], False),
        (["s2_april:B2", "s2_august:B2"], ["s2_april:B2", "s2_august:B2"], True),
        (["s2_april:B2", "s2_august:B2"], ["s2_august:B2", "s2_april:B2"], False),  # stacked order
    ],
)
def test_check_bands(expected, found, ok):
    from landcover.common import InputError

    if ok:
        inference.check_bands(expected, found, "split x")
    else:
        with pytest.raises(InputError, match="split x"):
            inference.check_bands(expected, found, "split x")


def test_window_probabilities_are_calibrations_and_codes_follow_predict_classes():
    from landcover.probabilities import predict_classes, probabilities

    torch.manual_seed(0)
    z = torch.randn(2, 13, 37, 53) * 4
    for t in (1.0, 1.7):
        p = probabilities_.code_probabilities(z, (t,))
        assert torch.allclose(p, probabilities(z, t), atol=1e-6) and (p[:, 0] == 0).all()
    both = probabilities_.code_probabilities(z, (1.0, 0.5))
    assert both.shape == (2, 26, 37, 53)
    assert torch.allclose(both[:, 13:], probabilities(z, 0.5), atol=1e-6)
    # ties: the first best code, as predict_classes; NaN sums: still a code 1..12
    sums = both[0].clone()
    sums[5, :10] = sums[9, :10] = 2.0
    sums[3, 10:12] = float("nan")
    codes, conf = probabilities_.codes_and_confidence(sums)
    want = predict_classes(sums[None, :13])[0]
    assert torch.equal(codes[12:].long(), want[12:]) and (codes[:10] == 5).all()
    assert codes.dtype == conf.dtype == torch.uint8 and codes.min() >= 1 and codes.max() <= 12
    assert conf.max() <= 100
