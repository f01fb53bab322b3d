"""predict.py: whole-scene maps on the scene's grid, no seams, nodata, colour table, overviews, preview;
the confidence raster beside the map (calibrated by the checkpoint's temperature, which never changes a
code) and the review mask; stacked scenes matched to the checkpoint by position and bands, whatever their
names; bad input refused with one line and nothing written.

A resnet18 trained for a few CPU seconds on easy synthetic spectra (tests/checkpoints.py) predicts
scenes of a few hundred pixels whose size is not a multiple of the window.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest
import rasterio
import torch
from checkpoints import OVERLAP, WINDOW, scene_data, trained_checkpoint
from helpers import S2_BANDS, assert_one_line_error, run_script, validate_stac_item, write_raster

import predict
from colormap import CLASSES, CODES, gdal_colour_table
from landcover.checkpoint import make_checkpoint, sealed
from landcover.common import run_main
from model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
        "map.json", "map.png", "map.tif", "map.tif.aux.xml", "map_confidence.png", "map_confidence.tif"
    ]  # fmt: skip
    with rasterio.open(path) as src, rasterio.open(out) as m:
        assert (m.crs, m.transform, m.width, m.height) == (src.crs, src.transform, src.width, src.height)
        assert m.count == 1 and m.dtypes[0] == "uint8" and m.nodata == 0
        assert m.profile["tiled"] and m.block_shapes[0] == (512, 512)
        assert m.compression is not None and m.compression.name.lower() == "deflate"
        assert m.overviews(1), "internal overviews"
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", "a Cloud-Optimized GeoTIFF"
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
    check_item(tmp_path / "map.json", ckpt, path)


def check_item(item, ckpt, scene) -> None:
    """The STAC item beside the map validates, lists the map's files and names the model and scene."""
    validate_stac_item(item)
    d = json.loads(item.read_text())
    assert set(d["assets"]) == {"map", "confidence", "preview", "confidence_preview"}
    model = d["properties"]["landcover:checkpoint"]
    assert model["checkpoint"] == str(ckpt) and model["arch"] == "unet" and model["encoder"] == "resnet18"
    assert model["checkpoint_sha256"].startswith("sha256:")
    assert d["properties"]["landcover:scenes"] == [str(scene)]
    mtime = dt.datetime.fromtimestamp(int(scene.stat().st_mtime), dt.UTC)
    assert dt.datetime.fromisoformat(d["properties"]["datetime"]) == mtime, "the scene's time by default"


def check_confidence_raster(path, codes: np.ndarray, grid) -> np.ndarray:
    """The confidence raster is on the map's grid, uint8 0..100, nodata 255 exactly where the map is 0,
    laid out like the map, with average overviews; returns its pixels."""
    with rasterio.open(path) as c:
        assert (c.crs, c.transform, c.shape) == grid
        assert c.count == 1 and c.dtypes[0] == "uint8" and c.nodata == 255
        assert c.profile["tiled"] and c.block_shapes[0] == (512, 512)
        assert c.compression is not None and c.compression.name.lower() == "deflate"
        assert c.overviews(1) and c.tags()["OVERVIEW_RESAMPLING"] == "average"
        assert "confidence" in c.descriptions[0]
        conf = c.read(1)
        overview = c.read(1, out_shape=(c.height // 2, c.width // 2))
    assert np.array_equal(conf == 255, codes == 0), "nodata exactly where the map has none"
    assert conf[codes != 0].max() <= 100
    assert set(np.unique(overview)) <= set(range(101)) | {255}
    return conf


# ---------------------------------------------------------------------------------------------
# Confidence (issue 14)


def with_temperature(ckpt, path, temperature: float):
    """A copy of a checkpoint holding a fitted temperature, as train.py's best.pt does."""
    c = torch.load(ckpt, weights_only=True)
    c["temperature"] = temperature
    torch.save(sealed(c), path)  # a new digest: the content changed
    return path


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
        assert r.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    with rasterio.open(tmp_path / "m_confidence.tif") as c:
        conf = c.read(1)
        assert c.overviews(1) and c.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", "confidence as COG"
    valid = codes != 0
    assert np.array_equal(review, np.where(valid, conf < 40, 255).astype(np.uint8))
    flagged = int((review == 1).sum())
    assert 0 < flagged < valid.sum(), "some pixels flagged, not all"
    share = 100 * flagged / valid.sum()
    assert f"{flagged:,} pixels, {share:.2f}% of the mapped pixels" in printed, printed


# ---------------------------------------------------------------------------------------------
# Class probabilities (issue 23)


def test_probabilities_raster_sums_to_100_and_its_argmax_is_the_map(tmp_path, ckpt, scene, capsys):
    """--probabilities: 12 bands of calibrated percent named by class, nodata 255 where the map has
    none, summing to about 100 on valid pixels; the best band is the mapped class, and the mapped
    class's band is its confidence; a Cloud-Optimized GeoTIFF like the map."""
    ck = with_temperature(ckpt, tmp_path / "t.pt", 1.5)  # calibrated at T = 1.5: still the map's argmax
    out = tmp_path / "m.tif"
    argv = ["--checkpoint", ck, "--image", scene[0], "--out", out, "--window", WINDOW, "--overlap", OVERLAP]
    argv += ["--device", "cpu", "--no-preview", "--probabilities"]
    assert run_main(predict.main, list(map(str, argv))) == 0
    assert f"wrote {tmp_path / 'm_probabilities.tif'}" in capsys.readouterr().out
    with rasterio.open(out) as m, rasterio.open(tmp_path / "m_confidence.tif") as c:
        codes, conf = m.read(1), c.read(1)
    with rasterio.open(tmp_path / "m_probabilities.tif") as p:
        assert p.count == 12 and p.dtypes[0] == "uint8" and p.nodata == 255
        assert list(p.descriptions) == [CLASSES[c][0] for c in CODES]
        assert p.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and p.overviews(1)
        probs = p.read()
    valid = codes != 0
    assert (probs[:, ~valid] == 255).all(), "nodata exactly where the map has none"
    total = probs[:, valid].astype(int).sum(axis=0)
    assert total.min() >= 94 and total.max() <= 106 and abs(total.mean() - 100) < 1, "percent, rounded"
    top = probs[:, valid].max(axis=0)
    mapped = np.take_along_axis(probs[:, valid], codes[valid][None].astype(int) - 1, axis=0)[0]
    assert (mapped == top).mean() > 0.999, "the best band is the mapped class (ties of rounding aside)"
    assert np.array_equal(mapped, conf[valid]), "the mapped class's band is its confidence"


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
    assert outputs(tmp_path) == ["m.json", "m.tif", "m.tif.aux.xml", "m_confidence.tif"]
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
        ("datetime", ["--datetime", "ISO 8601"]),
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
    elif case == "datetime":
        extra = ["--datetime", "2023-08-31/2023-04-01"]
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
