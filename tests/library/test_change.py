"""landcover.change: pair codes fit one uint8 and name their transition; a block's change and counts;
the confidence of a change; recall and precision against a known change."""

from __future__ import annotations

import numpy as np
import pytest

from landcover.change import (
    agreement,
    change_block,
    change_confidence,
    is_pair,
    pair_code,
    pair_name,
    pair_of,
    recall_precision,
    transitions,
)


def test_pair_codes_are_one_per_transition_in_a_byte():
    codes = {pair_code(a, b) for a in range(1, 13) for b in range(1, 13) if a != b}
    assert len(codes) == 132 and min(codes) >= 1 and max(codes) <= 255
    assert all(pair_of(pair_code(a, b)) == (a, b) for a in range(1, 13) for b in range(1, 13))
    assert all(is_pair(c) for c in codes) and not is_pair(0) and not is_pair(pair_code(3, 3))
    assert pair_name(pair_code(12, 5)) == "Watercourses and water bodies -> Bare soil"


def test_block_change_is_zero_where_unchanged_or_either_has_no_data():
    before = np.array([[1, 1, 0, 3], [12, 4, 4, 2]], dtype=np.uint8)
    after = np.array([[1, 2, 5, 0], [1, 4, 10, 2]], dtype=np.uint8)
    codes, valid = change_block(before, after)
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[0, pair_code(1, 2), 0, 0], [pair_code(12, 1), 0, pair_code(4, 10), 0]]
    assert valid.tolist() == [[True, True, False, False], [True, True, True, True]]


def test_change_confidence_is_the_lower_and_min_keeps_the_sure_ones():
    codes = np.array([0, 7, 7, 7], dtype=np.uint8)
    ca = np.array([90, 90, 40, 255], dtype=np.uint8)
    cb = np.array([90, 70, 95, 80], dtype=np.uint8)
    kept, conf = change_confidence(codes, ca, cb, None)
    assert kept.tolist() == [0, 7, 7, 7] and conf.tolist() == [255, 70, 40, 255]
    kept, conf = change_confidence(codes, ca, cb, 60)
    assert kept.tolist() == [0, 7, 0, 0] and conf.tolist() == [255, 70, 255, 255]


def test_recall_precision_against_a_known_change():
    c = pair_code(3, 5)
    mapped = np.array([c, c, c, 0, 0, pair_code(1, 2)], dtype=np.uint8)
    truth = np.array([c, c, 0, c, 0, 0], dtype=np.uint8)
    r, p = recall_precision(agreement(mapped, truth), c)
    assert (r, p) == pytest.approx((2 / 3, 2 / 3))
    assert np.isnan(recall_precision(agreement(mapped, truth), pair_code(1, 2))[0])  # no true change


def test_transitions_largest_first_without_the_diagonal():
    m = np.zeros((13, 13))
    m[1, 1], m[1, 2], m[3, 5], m[5, 3] = 100, 2, 7, 2
    assert transitions(m) == [(3, 5, 7.0), (1, 2, 2.0), (5, 3, 2.0)]
