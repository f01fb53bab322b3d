"""landcover/probabilities.py: the definition (a softmax over codes 1..12, the best of codes 1..12) and
the fast versions the map uses, equal to it."""

from __future__ import annotations

import torch

from landcover import probabilities as probabilities_
from landcover.probabilities import predict_classes


def test_predict_classes_never_returns_nodata():
    logits = torch.randn(2, 13, 5, 6)
    logits[:, 0] += 100  # nodata would win an argmax over all 13 outputs
    pred = predict_classes(logits)
    assert pred.shape == (2, 5, 6) and pred.min() >= 1 and pred.max() <= 12
    assert torch.equal(pred, logits[:, 1:].argmax(1) + 1)


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


def test_class_percent_is_the_definition_in_percent_and_its_top_is_the_confidence():
    torch.manual_seed(1)
    z = torch.randn(1, 13, 9, 11) * 3
    both = probabilities_.code_probabilities(z, (1.0, 0.7))[0]  # blended sums of one window
    percent = probabilities_.class_percent(both)
    want = (probabilities_.probabilities(z, 0.7)[0, 1:] * 100).round().to(torch.uint8)
    assert percent.shape == (12, 9, 11) and percent.dtype == torch.uint8
    assert (percent.int() - want.int()).abs().max() <= 1  # float rounding at .5
    codes, conf = probabilities_.codes_and_confidence(both)
    top = percent.gather(0, codes[None].long() - 1)[0]
    assert (top.int() - conf.int()).abs().max() <= 1
    assert (probabilities_.class_percent(torch.zeros(13, 2, 2)) == 0).all(), "no weight: 0, not NaN"
