"""landcover/inference.py: scenes and tiles matched to a checkpoint by position and bands; the model's
class probabilities over codes 1..12, with test-time flips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import S2_BANDS

from landcover import inference


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
