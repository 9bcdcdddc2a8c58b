"""Metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
    average_precision,
    evaluate,
    expected_calibration_error,
    reliability_bins,
    reliability_diagram,
)


def test_multiclass_hand_checked():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.6, 0.0], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    y = np.array([0, 0, 2, 1])
    m = evaluate(probs, y, "multiclass")
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx(
        -(math.log(0.7) + math.log(0.4) + math.log(0.4) + math.log(0.05)) / 4
    )
    brier = (
        (0.3**2 + 0.2**2 + 0.1**2)
        + (0.6**2 + 0.6**2)
        + (0.3**2 + 0.3**2 + 0.6**2)
        + (0.9**2 + 0.95**2 + 0.05**2)
    ) / 4
    assert m["brier"] == pytest.approx(brier)
    # confidences 0.7, 0.6, 0.4, 0.9 fall in four different bins of width 1/15:
    # ECE = mean |correct - confidence| = (0.3 + 0.6 + 0.6 + 0.9) / 4
    assert m["ece"] == pytest.approx((0.3 + 0.6 + 0.6 + 0.9) / 4)
    assert sum(b["count"] for b in m["reliability"]) == 4 and len(m["reliability"]) == 15


def test_ece_pools_within_a_bin():
    conf = np.array([0.81, 0.85, 0.82, 0.84])  # all in (0.8, 0.8667]
    correct = np.array([1.0, 1.0, 0.0, 1.0])
    assert expected_calibration_error(conf, correct) == pytest.approx(abs(0.75 - 0.83))
    bins = reliability_bins(conf, correct)
    full = [b for b in bins if b["count"]]
    assert len(full) == 1 and full[0]["lower"] == pytest.approx(0.8) and full[0]["accuracy"] == 0.75
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0


def test_reliability_diagram_lists_the_ece_bins_side_by_side():
    conf = np.array([0.81, 0.85, 0.82, 0.84, 0.3])
    correct = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    diagram = reliability_diagram(reliability_bins(conf, correct))
    assert len(diagram["bin_edges"]) == 16 and diagram["bin_edges"][0] == 0.0
    assert diagram["bin_edges"][-1] == 1.0
    assert len(diagram["count"]) == len(diagram["accuracy"]) == len(diagram["confidence"]) == 15
    assert sum(diagram["count"]) == 5
    full = [i for i, c in enumerate(diagram["count"]) if c]
    assert diagram["count"][full[-1]] == 4 and diagram["accuracy"][full[-1]] == 0.75
    assert diagram["confidence"][full[-1]] == pytest.approx(0.83)
    empty = next(i for i, c in enumerate(diagram["count"]) if not c)
    assert diagram["accuracy"][empty] is None and diagram["confidence"][empty] is None


def test_nll_of_zero_probability_is_large_but_finite():
    m = evaluate(np.array([[1.0, 0.0]]), np.array([1]), "multiclass")
    assert m["nll"] == pytest.approx(-math.log(1e-12)) and m["accuracy"] == 0.0


def test_average_precision_hand_checked():
    # ranking: s=.9 (pos), .8 (neg), .7 (pos), .1 (neg): precisions at positives 1 and 2/3
    assert average_precision(
        np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])
    ) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.2, 0.3]), np.array([0, 0])) is None


def test_multilabel_hand_checked():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    y = np.array([[1, 0], [0, 1], [0, 0]])
    m = evaluate(probs, y, "multilabel")
    # label 0: ranking .9 (pos) .6 .1 -> AP 1; label 1: .7 (pos) .4 .2 -> AP 1
    assert m["mean_average_precision"] == pytest.approx(1.0)
    nll = (
        -(
            math.log(0.9)
            + math.log(0.8)
            + math.log(0.4)
            + math.log(0.7)
            + math.log(0.9)
            + math.log(0.6)
        )
        / 3
    )
    assert m["nll"] == pytest.approx(nll)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.09 + 0.01 + 0.16) / 3)
