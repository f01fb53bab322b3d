"""calibration.py: temperature scaling recovers a known temperature; the calibration statistics equal hand
computation; one accumulator per split, merged over processes.

Synthetic logits whose truth is drawn from softmax(z / T_true): a model that outputs z is over-confident
(T_true > 1) or under-confident (T_true < 1), and the fitted T must come back near T_true. Hand-made
(confidence, correct) cases give the ECE, the MCE and the review threshold exactly.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import timedelta

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from landcover.calibration import (
    ReliabilityCounts,
    TemperatureFit,
    calibration_report,
    confidence_and_correct,
    fit_temperature,
)
from landcover.figures import coverage_figure, reliability_figure
from landcover.probabilities import probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(t_true: float, n: int = 60_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 13) logits (channel 0 junk, as a model's nodata output) and codes 1..12 drawn from
    softmax(z / t_true) over codes 1..12."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 13, generator=g) * 3
    z[:, 0] = 50.0  # never counts: code 0 has no probability
    p = (z[:, 1:] / t_true).softmax(dim=1)
    return z, torch.multinomial(p, 1, generator=g).squeeze(1) + 1


def counts_of(conf: list[float], ok: list[bool], **kw) -> ReliabilityCounts:
    c = ReliabilityCounts(**kw)
    c.add(torch.tensor(conf), torch.tensor(ok))
    return c


# ---------------------------------------------------------------------------------------------------
# Temperature scaling


@pytest.mark.parametrize("t_true", [2.5, 0.5])
def test_fit_recovers_a_known_temperature(t_true):
    z, y = synthetic(t_true)
    assert fit_temperature(z, y) == pytest.approx(t_true, rel=0.1)


def test_fit_in_batches_with_a_subsample_recovers_it_and_is_deterministic():
    z, y = synthetic(2.5, n=80_000, seed=1)
    images, masks = z.reshape(8, 100, 100, 13).movedim(-1, 1), y.reshape(8, 100, 100)  # (B, 13, H, W)

    def fitted(batch: int, seed: int = 3) -> tuple[float, TemperatureFit]:
        f = TemperatureFit(max_pixels=20_000, seed=seed)
        for b in range(0, 8, batch):
            f.update(images[b : b + batch], masks[b : b + batch])
        return f.fit(), f

    t, f = fitted(1)
    assert len(f) == 20_000 and f.seen == 80_000
    assert t == pytest.approx(2.5, rel=0.1)
    assert fitted(1)[0] == t  # same seed: the same number
    assert fitted(4)[0] == t  # the same pixels in other batches: the same sample
    assert fitted(1, seed=4)[0] != t  # another seed, another sample


def test_nodata_and_stray_targets_are_ignored():
    z, y = synthetic(2.5, n=20_000)
    g = torch.Generator().manual_seed(9)
    junk = torch.randn(5_000, 13, generator=g) * 20  # confident nonsense on nodata and stray codes
    junk_y = torch.cat([torch.zeros(4_000, dtype=torch.int64), torch.full((1_000,), 200)])
    both = fit_temperature(torch.cat([z, junk]), torch.cat([y, junk_y]))
    assert both == pytest.approx(fit_temperature(z, y), rel=1e-6)


def test_no_valid_pixel_gives_one():
    z = torch.randn(100, 13)
    assert fit_temperature(z, torch.zeros(100, dtype=torch.int64)) == 1.0
    assert TemperatureFit().fit() == 1.0


def test_temperature_scaling_at_least_halves_the_ece_of_an_over_confident_model():
    z, y = synthetic(2.5, n=40_000)
    f = TemperatureFit()
    f.update(z, y)
    t = f.fit()
    before, after = f.reliability(1.0), f.reliability(t)
    assert before.pixels == after.pixels == 40_000
    assert before.expected_calibration_error() > 0.1
    assert after.expected_calibration_error() <= before.expected_calibration_error() / 2
    assert f.nll(t) < f.nll(1.0)


def test_merged_subsamples_hold_the_union_and_stay_bounded():
    z, y = synthetic(2.5, n=2_000)
    a, b = TemperatureFit(max_pixels=5_000, rank=0), TemperatureFit(max_pixels=5_000, rank=1)
    a.update(z[:1_200], y[:1_200])
    b.update(z[1_200:], y[1_200:])
    a.merge(b)
    assert len(a) == 2_000 and a.seen == 2_000
    got = sorted(map(tuple, a.sample()[0].tolist()))
    assert got == sorted(map(tuple, z[:, 1:].tolist()))  # every pixel once, logits of codes 1..12
    small = TemperatureFit(max_pixels=500, rank=0)
    small.update(z, y)
    assert len(small) == 500 and small.seen == 2_000


def test_probabilities_are_inferences_softmax_over_codes_1_to_12():
    z = torch.randn(2, 13, 4, 5)
    p = probabilities(z)
    assert torch.equal(p[:, 0], torch.zeros(2, 4, 5))
    torch.testing.assert_close(p[:, 1:], z[:, 1:].softmax(dim=1))
    hot = probabilities(z, temperature=0.5)
    torch.testing.assert_close(hot.sum(dim=1), torch.ones(2, 4, 5))
    assert torch.equal(hot[:, 1:].argmax(1), p[:, 1:].argmax(1))  # T moves confidence, never the code


# ---------------------------------------------------------------------------------------------------
# Calibration statistics


def test_a_perfectly_calibrated_case_has_ece_near_zero():
    g = torch.Generator().manual_seed(0)
    conf = 0.1 + 0.9 * torch.rand(200_000, generator=g)
    ok = torch.rand(200_000, generator=g) < conf  # right exactly as often as confident
    c = counts_of(conf.tolist(), ok.tolist())
    assert c.expected_calibration_error() < 0.01


# 10 pixels in two reliability bins (of 20): 4 at 0.93 (bin 0.90-0.95), 2 right: gap |0.5 - 0.93| = 0.43;
# 6 at 0.62 (bin 0.60-0.65), all right: gap |1 - 0.62| = 0.38. ECE = 0.4 * 0.43 + 0.6 * 0.38 = 0.4;
# MCE = 0.43.
HAND_CONF = [0.93] * 4 + [0.62] * 6
HAND_OK = [True, True, False, False] + [True] * 6


def test_a_miscalibrated_case_equals_hand_computation():
    c = counts_of(HAND_CONF, HAND_OK)
    assert c.expected_calibration_error() == pytest.approx(0.4 * 0.43 + 0.6 * 0.38, abs=1e-6)
    assert c.maximum_calibration_error() == pytest.approx(0.43, abs=1e-6)
    rows = c.reliability()
    assert len(rows) == 20 and sum(r["pixels"] for r in rows) == 10
    assert rows[18] == pytest.approx(
        {"lower": 0.9, "upper": 0.95, "pixels": 4, "confidence": 0.93, "accuracy": 0.5}
    )
    assert rows[12]["pixels"] == 6 and rows[12]["accuracy"] == 1.0
    assert rows[0]["confidence"] is None and rows[0]["accuracy"] is None


def test_coverage_is_monotone_and_starts_with_every_pixel():
    g = torch.Generator().manual_seed(2)
    conf = 1 / 12 + (11 / 12) * torch.rand(5_000, generator=g)
    c = counts_of(conf.tolist(), (torch.rand(5_000, generator=g) < conf).tolist())
    rows = c.coverage()
    assert [r["threshold"] for r in rows] == pytest.approx([i / 20 for i in range(20)])
    assert rows[0]["pixels"] == 5_000 and rows[0]["share"] == 1.0
    shares = [r["share"] for r in rows]
    assert all(a >= b for a, b in itertools.pairwise(shares))


def test_threshold_for_accuracy_on_a_hand_built_case():
    # 4 pixels at 0.3, all wrong; 4 at 0.6, 2 right; 2 at 0.9, both right. Kept at t <= 0.30: 10 pixels,
    # accuracy 0.4; at 0.31..0.60: 6 pixels, 4/6; at 0.61..0.90: 2 pixels, 1.0; above: none.
    c = counts_of([0.3] * 4 + [0.6] * 4 + [0.9] * 2, [False] * 4 + [True, True, False, False] + [True] * 2)
    assert c.threshold_for_accuracy(0.4) == 0.0
    assert c.threshold_for_accuracy(0.6) == 0.31
    assert c.threshold_for_accuracy(0.9) == 0.61
    assert c.threshold_for_accuracy(1.0) == 0.61
    assert c.threshold_for_accuracy(1.01) is None
    assert ReliabilityCounts().threshold_for_accuracy(0.5) is None
    rows = {r["threshold"]: r for r in c.coverage([0.0, 0.5, 0.7, 0.95])}
    assert rows[0.5]["pixels"] == 6 and rows[0.5]["accuracy"] == pytest.approx(4 / 6)
    assert rows[0.7]["share"] == 0.2 and rows[0.95]["pixels"] == 0 and rows[0.95]["accuracy"] is None


def test_update_from_probabilities_skips_nodata_and_never_predicts_code_0():
    probs = torch.tensor([[0.0, 0.7, 0.3], [0.0, 0.2, 0.8], [0.0, 0.6, 0.4], [0.9, 0.05, 0.05]])
    truth = torch.tensor([1, 1, 0, 2])  # the third is nodata; on the fourth code 0 is not a prediction
    conf, ok = confidence_and_correct(probs, truth)
    torch.testing.assert_close(conf, torch.tensor([0.7, 0.8, 0.05]))
    assert ok.tolist() == [True, False, False]
    c = ReliabilityCounts()
    c.update(probs[None].movedim(-1, 1).reshape(1, 3, 2, 2), truth.reshape(1, 2, 2))
    assert c.pixels == 3 and int(c.correct.sum()) == 1


def test_merging_two_accumulators_equals_one_over_the_union():
    g = torch.Generator().manual_seed(5)
    conf, ok = torch.rand(3_000, generator=g), torch.rand(3_000, generator=g) < 0.7
    whole = counts_of(conf.tolist(), ok.tolist())
    part = counts_of(conf[:1_000].tolist(), ok[:1_000].tolist())
    part.merge(counts_of(conf[1_000:].tolist(), ok[1_000:].tolist()))
    assert torch.equal(part.count, whole.count) and torch.equal(part.correct, whole.correct)
    torch.testing.assert_close(part.confidence, whole.confidence)
    part.reduce_from_all_processes()  # one process: nothing changes
    got, want = part.to_dict(), whole.to_dict()
    assert got["coverage"] == want["coverage"] and got["pixels"] == want["pixels"]
    assert got["ece"] == pytest.approx(want["ece"]) and got["mce"] == pytest.approx(want["mce"])
    with pytest.raises(ValueError):
        part.merge(ReliabilityCounts(bins=10))


def test_an_empty_accumulator_reports_none():
    d = ReliabilityCounts().to_dict()
    assert d["pixels"] == 0 and d["ece"] is None and d["mce"] is None and d["accuracy"] is None
    assert d["coverage"][0]["share"] is None


def test_the_report_is_json_ready():
    c = counts_of(HAND_CONF, HAND_OK)
    report = json.loads(json.dumps(calibration_report(c, c, temperature=1.7)))
    assert report["temperature"] == 1.7 and report["calibrated"]["pixels"] == 10
    assert math.isclose(report["uncalibrated"]["ece"], 0.4)


# ---------------------------------------------------------------------------------------------------
# Figures


def test_figures_build_with_the_expected_axes():
    before, after = counts_of(HAND_CONF, HAND_OK), counts_of([0.5, 0.55], [True, False])
    for fig, axes in (
        (reliability_figure(before, after, "val", temperature=1.8), 2),
        (reliability_figure(before), 2),
        (reliability_figure(ReliabilityCounts(), ReliabilityCounts()), 2),
        (coverage_figure(before, "val"), 1),
        (coverage_figure(ReliabilityCounts()), 1),
    ):
        assert len(fig.axes) == axes
        fig.canvas.draw()
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Over torchrun processes (gloo on the CPU)


def _two_processes(rank: int, store: str, out: str) -> None:
    """One of two processes: half the pixels each; both must end with the union's sample and counts."""
    torch.set_num_threads(1)  # a forked child: no OpenMP pool inherited mid-use
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        z, y = synthetic(2.5, n=4_000)
        mine = slice(0, 2_500) if rank == 0 else slice(2_500, None)
        f = TemperatureFit(max_pixels=3_000)
        f.update(z[mine], y[mine])
        f.reduce_from_all_processes()
        c = ReliabilityCounts()
        c.update(probabilities(z[mine]), y[mine])
        c.reduce_from_all_processes()
        torch.save({"t": f.fit(), "len": len(f), "seen": f.seen, "count": c.count}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_share_one_sample_and_one_count(tmp_path):
    """Forked (a spawned child would import torch again: seconds)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    mp.start_processes(_two_processes, args=(str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    r0, r1 = (torch.load(f"{out}.{r}") for r in (0, 1))
    assert r0["t"] == r1["t"] and r0["len"] == r1["len"] == 3_000 and r0["seen"] == r1["seen"] == 4_000
    z, y = synthetic(2.5, n=4_000)
    whole = ReliabilityCounts()
    whole.update(probabilities(z), y)
    assert torch.equal(r0["count"], whole.count) and torch.equal(r1["count"], whole.count)
