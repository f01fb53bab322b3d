"""predict.py: whole-scene maps on the scene's grid, no seams, nodata, colour table, overviews, preview;
stacked scenes in the checkpoint's order; bad input refused with one line and nothing written.

A resnet18 trained for a few CPU seconds on easy synthetic spectra (tests/checkpoints.py) predicts
scenes of a few hundred pixels whose size is not a multiple of the window.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import rasterio
import torch
from checkpoints import image_of, label_map, trained_checkpoint
from helpers import S2_BANDS, assert_one_line_error, run_script, write_raster

import inference
import predict
from checkpoint import load_checkpoint
from colormap import CODES, gdal_colour_table
from common import run_main
from stats import Normalize

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
    assert outputs(tmp_path) == ["map.png", "map.tif", "map.tif.aux.xml"]
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
    nodata = ~np.any(img != 0, axis=0)
    assert np.array_equal(got == 0, nodata), "nodata exactly where every band is 0"
    assert set(np.unique(got[~nodata])) <= set(CODES)
    assert (got[~nodata] == labels[~nodata]).mean() > 0.95, "the model's predictions, in place"
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    aux = (tmp_path / "map.tif.aux.xml").read_text()
    assert "<Category>Herbaceous crops</Category>" in aux and aux.count("<Category>") == 13
    assert "Forest" in res.stdout and "wrote" in res.stdout


def predict_array(net, stats, img, **kw) -> np.ndarray:
    """predict.predict_scene over an in-memory scene: the map as an array."""
    h, w = img.shape[1:]
    out = np.full((h, w), 255, dtype=np.uint8)

    def read(r, c, wh, ww):
        return img[:, r : r + wh, c : c + ww]

    def write(row0, codes):
        out[row0 : row0 + len(codes)] = codes

    predict.predict_scene(net, read, stats, h, w, write, show_progress=False, **kw)
    return out


def test_no_seams_window_edges_agree_with_a_window_centred_on_them(ckpt, scene):
    _, labels, img = scene
    net, c = load_checkpoint(ckpt, torch.device("cpu"))
    stats = c["stats"]
    full = predict_array(net, stats, img, window=WINDOW, overlap=OVERLAP, batch_size=4, workers=2)
    rows = predict.window_starts(H, WINDOW, OVERLAP)
    cols = predict.window_starts(W, WINDOW, OVERLAP)
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
    starts = predict.window_starts(size, window, overlap)
    w = min(window, size)
    assert starts[0] == 0 and starts[-1] + w == size
    assert all(b - a <= w - overlap for a, b in itertools.pairwise(starts))
    assert starts == sorted(set(starts))


def test_memory_holds_the_overlap_rows_not_the_scene():
    """The blender keeps a window and the overlap rows across the width, nothing the size of the scene."""
    h, w = 2000, 700
    rows, cols = predict.window_starts(h, 128, 16), predict.window_starts(w, 128, 16)
    b = predict.Blender(h, w, rows, cols, (128, 128), 16)
    biggest = 0
    for i in range(len(rows)):
        for j in range(len(cols)):
            done = b.add(i, j, torch.rand(13, 128, 128), np.ones((128, 128), bool))
            for t in (b.left, b.carry):
                if t is not None:
                    biggest = max(biggest, t.numel())
            if done is not None:
                assert done[1].shape[0] <= 128
    assert biggest <= 13 * 128 * w


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
    assert outputs(tmp_path) == ["m.tif", "m.tif.aux.xml"]
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
    assert run_main(predict.main, argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], (n, err[0])
    assert "this ran" not in captured.out
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
    from common import InputError

    if ok:
        inference.check_bands(expected, found, "split x")
    else:
        with pytest.raises(InputError, match="split x"):
            inference.check_bands(expected, found, "split x")
