"""losses.py: class weights, and every loss ignores nodata, stays finite, and is small when right."""

from __future__ import annotations

import pytest
import torch

from landcover.losses import LOSSES, class_weights, lovasz_loss, make_criterion


def test_class_weights():
    pixels = [500, 600, 0, 300, 0, 0, 100] + [0] * 6  # code 0 (nodata) must not count
    none = class_weights(pixels, "none")
    assert none[0] == 0 and torch.all(none[1:] == 1)
    inv = class_weights(pixels, "inverse")
    present = [1, 3, 6]
    assert inv[0] == 0 and inv[2] == 0 and inv[12] == 0
    assert inv[present].mean().item() == pytest.approx(1.0)
    assert inv[6] / inv[1] == pytest.approx(6.0) and inv[3] / inv[1] == pytest.approx(2.0)
    sq = class_weights(pixels, "sqrt")
    assert sq[6] / sq[1] == pytest.approx(6**0.5) and sq[present].mean().item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_ignore_nodata_and_never_give_nan(kind):
    torch.manual_seed(0)
    weight = class_weights([0] + [1] * 12, "none")
    criterion = make_criterion(kind, weight)
    logits = torch.randn(2, 13, 8, 8, requires_grad=True)
    target = torch.randint(1, 13, (2, 8, 8))
    target[:, :3] = 0
    loss = criterion(logits, target)
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn(2, 13, 3, 8) * 10  # nodata pixels: anything
    assert criterion(changed, target).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert torch.all(logits.grad[:, :, :3] == 0)
    empty = criterion(logits, torch.zeros_like(target))  # a batch without a valid pixel
    assert torch.isfinite(empty) and empty.item() == 0
    perfect = torch.full((2, 13, 8, 8), -20.0).scatter(1, target.unsqueeze(1), 20.0)
    assert criterion(perfect, target).item() < 0.01 < loss.item()


def test_lovasz_is_one_minus_iou_for_confident_predictions():
    """At one-hot probabilities the Lovasz extension equals the Jaccard loss it relaxes: the mean over
    the classes present of 1 - IoU, weighted by the class weights."""
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (2, 16, 16), generator=g)  # 0 is nodata
    pred = torch.where(
        torch.rand(2, 16, 16, generator=g) < 0.3, torch.randint(1, 5, (2, 16, 16), generator=g), target
    )
    logits = torch.full((2, 5, 16, 16), -60.0).scatter(1, pred.unsqueeze(1), 60.0)
    weight = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.5])
    valid = target > 0
    ious, ws = [], []
    for c in range(1, 5):
        t, p = (target == c) & valid, (pred == c) & valid
        ious.append((t & p).sum() / (t | p).sum())
        ws.append(weight[c])
    expected = sum(w * (1 - i) for w, i in zip(ws, ious, strict=True)) / sum(ws)
    assert lovasz_loss(logits, target, weight).item() == pytest.approx(expected.item(), abs=1e-5)
    assert expected > 0.1  # the case is not trivial


def test_lovasz_pixels_that_do_not_count_change_nothing():
    """Lovasz-softmax runs on every pixel (no size depends on the data): the nodata pixels of a batch
    give the loss and gradient of the valid pixels alone."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 13, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 13, (2, 9, 11), generator=g)
    target[0, :4] = 0  # nodata rows
    weight = torch.rand(13, generator=g, dtype=torch.float64)
    weight[0] = 0
    valid = target > 0
    alone = logits.permute(0, 2, 3, 1)[valid].T.reshape(1, 13, 1, -1)  # the valid pixels as one row
    a = lovasz_loss(logits, target, weight)
    b = lovasz_loss(alone, target[valid].reshape(1, 1, -1), weight)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    (ga,), (gb,) = torch.autograd.grad(a, logits), torch.autograd.grad(b, logits)
    assert torch.allclose(ga, gb, atol=1e-15) and ga[0, :, :4].abs().max() == 0
