"""landcover/evaluation.py: the one evaluation loop of train.py and test_model.py. What it accumulates
equals a direct computation over the same batches: the matrix, the loss, each tile's scores and the
reliability counts, and its codes never depend on the temperature."""

from __future__ import annotations

import torch

from landcover.evaluation import LossSum, evaluate, tile_scores
from landcover.metrics import ConfusionMatrix
from landcover.probabilities import predict_classes, probabilities
from landcover.stats import Normalize


def batches(n: int = 3, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        raw = torch.randint(0, 3000, (b, 4, 16, 16), generator=g, dtype=torch.int32).to(torch.uint16)
        y = torch.randint(0, 13, (b, 16, 16), generator=g).to(torch.uint8)  # code 0: nodata
        out.append((raw, y))
    return out


def net_and_norm():
    torch.manual_seed(0)
    return torch.nn.Conv2d(4, 13, 3, padding=1).eval(), Normalize({"mean": [1500.0] * 4, "std": [800.0] * 4})


def test_matrix_loss_and_tile_scores_equal_a_direct_pass():
    net, norm = net_and_norm()
    data = batches()
    criterion = torch.nn.CrossEntropyLoss(ignore_index=0)
    names = [f"t{i}" for i in range(6)]
    ev = evaluate(net, data, norm, torch.device("cpu"), criterion=criterion, tile_names=names)
    cm, total, scores = ConfusionMatrix(13), 0.0, []
    with torch.no_grad():
        for raw, y in data:
            z = net(norm(raw))
            cm.update(y.long(), predict_classes(z))
            total += criterion(z, y.long()).item() * len(y)
            for b in range(len(y)):
                scores.append(tile_scores(names[len(scores)], y[b].long(), predict_classes(z)[b]))
    assert torch.equal(ev.cm.mat, cm.mat)
    loss, tiles = ev.losses.read()
    assert tiles == 6 and abs(loss - total) < 1e-4 * total
    assert ev.scores == scores


def test_reliability_at_two_temperatures_and_codes_that_do_not_follow_them():
    net, norm = net_and_norm()
    data = batches(seed=1)
    cpu = torch.device("cpu")
    one = evaluate(net, data, norm, cpu, temperature=1.0)
    hot = evaluate(net, data, norm, cpu, temperature=0.3)
    assert torch.equal(one.cm.mat, hot.cm.mat), "a temperature changed a code"
    assert one.raw.pixels == hot.raw.pixels == int(sum((y > 0).sum() for _, y in data))
    direct = probabilities(torch.cat([net(norm(r)) for r, _ in data]).detach(), 0.3)
    top = direct[:, 1:].amax(1)[torch.cat([y for _, y in data]) > 0]
    assert abs(hot.calibrated.confidence.sum() / hot.calibrated.pixels - top.mean().item()) < 1e-4
    assert hot.calibrated.confidence.sum() > one.calibrated.confidence.sum(), "sharper: more confident"


def test_loss_sum_is_the_sum_of_the_per_batch_items():
    s = LossSum()
    for v, n in ((0.5, 3), (1.25, 2)):
        s.add(torch.tensor(v), n)
    assert s.read() == (0.5 * 3 + 1.25 * 2, 5) and s.mean() == (0.5 * 3 + 1.25 * 2) / 5
