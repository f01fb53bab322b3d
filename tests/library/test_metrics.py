"""metrics.py: every number from one confusion matrix, equal to hand computation and to scikit-learn.

Hand-made cases with known answers; nodata (truth 0) never counts; classes absent from truth and
prediction are left out of the means; a split accumulated batch by batch equals one matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from colormap import CLASSES, CODES
from landcover.metrics import ConfusionMatrix, format_table

NAMES = {c: n for c, (n, _) in CLASSES.items()}


def cm_of(truth, pred) -> ConfusionMatrix:
    cm = ConfusionMatrix(13)
    cm.update(torch.as_tensor(np.asarray(truth)), torch.as_tensor(np.asarray(pred)))
    return cm


# A hand-made case: 10 valid pixels of classes 1, 3 and 12, and 3 nodata pixels (truth 0) whose
# predictions must not count.
TRUTH = [1, 1, 1, 1, 3, 3, 3, 12, 12, 12, 0, 0, 0]
PRED = [1, 1, 1, 3, 3, 3, 1, 12, 12, 3, 5, 1, 12]
# By hand, over the 10 valid pixels:
#   class 1: tp 3, support 4, predicted 4 (3 + one 3-pixel)  -> IoU 3/5, Dice 6/8, P 3/4, R 3/4
#   class 3: tp 2, support 3, predicted 4 (2 + one 1-pixel + one 12-pixel) -> IoU 2/5, Dice 4/7, P 2/4, R 2/3
#   class 12: tp 2, support 3, predicted 2 -> IoU 2/3, Dice 4/5, P 1, R 2/3
#   accuracy 7/10; kappa: pe = (4*4 + 3*4 + 3*2) / 100 = 0.34, (0.7 - 0.34) / 0.66
HAND = {
    1: dict(iou=3 / 5, dice=6 / 8, precision=3 / 4, recall=3 / 4, support=4),
    3: dict(iou=2 / 5, dice=4 / 7, precision=2 / 4, recall=2 / 3, support=3),
    12: dict(iou=2 / 3, dice=4 / 5, precision=1.0, recall=2 / 3, support=3),
}


def test_hand_made_case_equals_hand_computation():
    m = cm_of(TRUTH, PRED).compute(NAMES)
    assert m["pixels"] == 10
    assert m["overall_accuracy"] == pytest.approx(0.7)
    assert m["kappa"] == pytest.approx((0.7 - 0.34) / 0.66)
    for c, want in HAND.items():
        got = m["per_class"][str(c)]
        assert got["name"] == NAMES[c]
        for k, v in want.items():
            assert got[k] == pytest.approx(v), (c, k)
    assert m["miou"] == pytest.approx((3 / 5 + 2 / 5 + 2 / 3) / 3)
    assert m["mean_dice"] == pytest.approx((6 / 8 + 4 / 7 + 4 / 5) / 3)
    # the other nine classes are absent from truth and prediction: undefined, left out of the means
    assert m["classes_left_out"] == [c for c in CODES if c not in HAND]
    assert m["classes_in_means"] == sorted(HAND)
    for c in m["classes_left_out"]:
        pc = m["per_class"][str(c)]
        assert pc["iou"] is None and pc["dice"] is None and pc["support"] == 0


def test_nodata_pixels_never_count():
    base = cm_of(TRUTH[:10], PRED[:10])
    with_nodata = cm_of(TRUTH + [0] * 50, PRED + list(range(13)) * 3 + [7] * 11)
    assert torch.equal(base.mat, with_nodata.mat)
    assert with_nodata.mat[0].sum() == 0
    # class 5 predicted only on nodata pixels: still absent
    assert 5 in with_nodata.compute()["classes_left_out"]


def test_class_predicted_but_absent_from_truth_counts_in_the_means_with_iou_0():
    m = cm_of([1, 1, 1, 1], [1, 1, 1, 7]).compute()
    assert m["per_class"]["7"]["iou"] == 0.0 and m["per_class"]["7"]["support"] == 0
    assert 7 in m["classes_in_means"] and 7 not in m["classes_left_out"]
    assert m["miou"] == pytest.approx((3 / 4 + 0.0) / 2)


def random_case(seed: int, n: int = 5000):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 13, n)  # about 1 in 13 nodata
    truth[truth == 9] = 4  # class 9 never in the truth
    pred = np.where(rng.random(n) < 0.6, truth, rng.integers(1, 13, n))
    pred[pred == 10] = 2  # class 10 never predicted
    truth[truth == 10] = 2  # ... and never true: absent, left out
    pred[truth == 0] = rng.integers(0, 13, (truth == 0).sum())  # anything on nodata
    return truth, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn(seed):
    truth, pred = random_case(seed)
    m = cm_of(truth, pred).compute(NAMES)
    valid = truth != 0
    t, p = truth[valid], pred[valid]
    labels = [c for c in CODES if c not in m["classes_left_out"]]
    assert m["classes_left_out"] == [10]

    cm = confusion_matrix(truth, pred, labels=list(range(13)))
    cm[0] = 0  # sklearn counts the nodata row; ours skips it
    assert np.array_equal(cm_of(truth, pred).mat.numpy(), cm)

    assert m["overall_accuracy"] == pytest.approx(accuracy_score(t, p))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(t, p))
    kw = dict(labels=labels, average=None, zero_division=0)
    for name, fn in (("iou", jaccard_score), ("dice", f1_score), ("precision", precision_score)):
        got = [m["per_class"][str(c)][name] for c in labels]
        assert got == pytest.approx(list(fn(t, p, **kw))), name
    got = [m["per_class"][str(c)]["recall"] for c in labels]
    assert got == pytest.approx(list(recall_score(t, p, **kw)))
    assert m["miou"] == pytest.approx(jaccard_score(t, p, labels=labels, average="macro", zero_division=0))
    assert m["mean_dice"] == pytest.approx(f1_score(t, p, labels=labels, average="macro", zero_division=0))
    assert [m["per_class"][str(c)]["support"] for c in CODES] == [int((t == c).sum()) for c in CODES]


def test_accumulating_batches_equals_one_matrix_not_a_mean_of_batches():
    truth, pred = random_case(3, 6000)
    whole = cm_of(truth, pred)
    split = ConfusionMatrix(13)
    for part in np.array_split(np.arange(len(truth)), 7):
        split.update(torch.as_tensor(truth[part]).reshape(1, -1), torch.as_tensor(pred[part]).reshape(1, -1))
    assert torch.equal(whole.mat, split.mat)
    assert split.compute() == whole.compute()
    # a mean of per-batch mIoU would differ: the split's number is not one
    batch_mean = np.mean(
        [cm_of(truth[p], pred[p]).compute()["miou"] for p in np.array_split(np.arange(6000), 7)]
    )
    assert not math.isclose(batch_mean, whole.compute()["miou"], rel_tol=1e-6)


def test_prediction_of_nodata_or_no_class_on_a_valid_pixel_is_an_error_never_a_neighbour():
    # 0 and 200 are no class: wrong on those pixels, counted in the support, never clipped into 12
    m = cm_of([12, 12, 12, 12], [12, 12, 0, 200]).compute()
    assert m["overall_accuracy"] == pytest.approx(0.5)
    pc = m["per_class"]["12"]
    assert pc["support"] == 4 and pc["recall"] == pytest.approx(0.5) and pc["precision"] == pytest.approx(1.0)
    assert pc["iou"] == pytest.approx(0.5)


def test_empty_matrix_gives_no_numbers_not_zeros():
    m = ConfusionMatrix(13).compute()
    assert m["overall_accuracy"] is None and m["miou"] is None and m["kappa"] is None
    assert m["classes_left_out"] == list(CODES)


def test_format_table_names_classes_and_marks_undefined_values():
    m = cm_of(TRUTH, PRED).compute(NAMES)
    table = format_table(m)
    assert "Herbaceous crops" in table and "Watercourses and water bodies" in table
    assert "n/a" in table  # classes absent from truth and prediction
    assert "0.700" in table  # overall accuracy
    assert "left out of the means" in table
