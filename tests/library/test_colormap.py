"""colormap.py: the class table of PIPELINE.md, the remap, and the picture helpers."""

import matplotlib
import numpy as np
import pytest

import colormap
from landcover import figures

matplotlib.use("Agg")

PIPELINE_TABLE = {
    1: ("Herbaceous crops", "#FFFFA8"),
    2: ("Woody crops", "#E6A600"),
    3: ("Forest", "#00A600"),
    4: ("Scrub, meadows and grasslands", "#CCF24D"),
    5: ("Bare soil", "#CCCCCC"),
    6: ("Urban area", "#E6004D"),
    7: ("Isolated urban areas", "#FF0000"),
    8: ("Green areas", "#FFA6FF"),
    9: ("Industrial, commercial and leisure areas", "#CC4DF2"),
    10: ("Mining or landfills", "#A600CC"),
    11: ("Transport network", "#CC0000"),
    12: ("Watercourses and water bodies", "#00CCF2"),
}


def test_class_table_matches_the_contract():
    assert {c: v for c, v in colormap.CLASSES.items() if c} == PIPELINE_TABLE
    assert colormap.NODATA == 0 and colormap.NUM_CLASSES == 13
    assert colormap.RARE_CLASSES == (5, 7, 8, 10, 11)
    assert colormap.DEFAULT_REMAP == {19: 5, 41: 12}


def test_remap_keeps_classes_remaps_strays_and_drops_unknown_codes():
    lut, unknown = colormap.remap_lut()
    assert [lut[c] for c in range(13)] == list(range(13))
    assert lut[19] == 5 and lut[41] == 12
    assert lut[13] == 0 and lut[40] == 0 and lut[255] == 0  # never clipped into a neighbour
    assert 13 in unknown and 19 not in unknown and 41 not in unknown and 12 not in unknown
    with pytest.raises(ValueError):
        colormap.remap_lut({19: 77})


def test_colour_table_and_cmap_follow_the_codes():
    table = colormap.gdal_colour_table()
    assert table[0] == (0, 0, 0, 0)  # nodata transparent
    assert table[3] == (0, 0xA6, 0, 255)
    cmap, norm = colormap.land_cover_cmap()
    for code in range(13):
        rgb = tuple(round(v * 255) for v in cmap(norm(code))[:3])
        assert rgb == colormap.hex_to_rgb(colormap.CLASSES[code][1])
    picture = colormap.colorize(np.array([[0, 12], [3, 99]]))
    assert picture.dtype == np.uint8 and picture.shape == (2, 2, 3)
    assert tuple(picture[0, 1]) == (0, 0xCC, 0xF2) and tuple(picture[1, 1]) == (0, 0, 0)


def test_rgb_bands_from_descriptions_else_from_option():
    s2 = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    assert colormap.rgb_band_indices(s2) == [2, 1, 0]
    stacked = [f"s2_april:{b}" for b in s2] + [f"s2_august:{b}" for b in s2]
    assert colormap.rgb_band_indices(stacked) == [2, 1, 0]  # the first scene's RGB
    assert colormap.rgb_band_indices([None] * 10) == [2, 1, 0]  # --rgb default 3 2 1
    assert colormap.rgb_band_indices([""] * 4, rgb=(4, 3, 2)) == [3, 2, 1]
    with pytest.raises(ValueError):
        colormap.rgb_band_indices([None] * 3, rgb=(4, 3, 2))


def test_stretch_ignores_nodata():
    rng = np.random.default_rng(0)
    bands = rng.integers(500, 1500, size=(3, 50, 50)).astype(np.uint16)
    bands[:, :10] = 0  # nodata strip
    out = colormap.stretch_rgb(bands)
    assert (out[:10] == 0).all()
    valid = out[10:]
    # with nodata dragging the stretch, valid pixels would be squeezed into the top of the range
    assert valid.min() == 0 and valid.max() == 255
    assert 90 < valid.mean() < 165


def test_legend_names_only_the_classes_shown():
    fig = figures.comparison_figure(
        np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 3), np.array([[3, 12] * 4] * 8)
    )
    texts = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert texts == ["3 Forest", "12 Watercourses and water bodies"]


def test_the_command_prints_the_class_table_and_writes_a_legend(tmp_path, capsys):
    from PIL import Image

    colormap.main(["--legend", str(tmp_path / "legend.png")])
    out = capsys.readouterr().out
    for code, (name, colour) in PIPELINE_TABLE.items():
        assert f"| {code} | {name} | {colour} |" in out
    with Image.open(tmp_path / "legend.png") as im:
        pixels = {tuple(p[:3]) for p in im.convert("RGB").getdata()}
    assert {colormap.hex_to_rgb(c) for _, c in PIPELINE_TABLE.values()} <= pixels, "every class's colour"
    assert not list(tmp_path.glob("*.partial"))
