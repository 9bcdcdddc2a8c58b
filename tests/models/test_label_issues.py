"""Label issues by confident learning on given probabilities, and the noise-free probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.spec import HeadSpec
from models.backbones import MLP
from models.classifier import Classifier
from models.heads import HetHead, LinearHead
from models.label_issues import find_label_issues, find_label_issues_in_chunks, noise_free_probs


def clear_example(seed: int = 0, n: int = 300, k: int = 3, num_wrong: int = 15):
    """Confident, correct probabilities for the true class; num_wrong labels changed."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n) * 0.1
    probs[np.arange(n), truth] += 0.9
    labels = truth.copy()
    wrong = rng.choice(n, num_wrong, replace=False)
    labels[wrong] = (truth[wrong] + rng.integers(1, k, num_wrong)) % k
    mask = np.zeros(n, dtype=bool)
    mask[wrong] = True
    return probs, labels, mask


@pytest.mark.parametrize("rule", ["prune_by_noise_rate", "confident_joint", "predicted_neq_given"])
def test_flags_exactly_the_mislabeled_rows(rule):
    probs, labels, wrong = clear_example()
    scores, flagged = find_label_issues(probs, labels, rule=rule)
    np.testing.assert_array_equal(flagged, wrong)
    assert scores[wrong].min() > scores[~wrong].max()
    np.testing.assert_allclose(scores, 1 - probs[np.arange(len(labels)), labels])


def test_normalized_margin_score():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    scores, _ = find_label_issues(probs, np.array([1, 1]), score="normalized_margin")
    np.testing.assert_allclose(scores, [(1 - (0.2 - 0.7)) / 2, (1 - (0.6 - 0.3)) / 2])


def test_per_class_thresholds_count_a_class_the_model_is_never_sure_of():
    """Class 2 is always predicted with low probability (t_2 = 0.3): an example labelled 0
    with p_2 = 0.45 is above t_2, counts as confidently 2, and is the one flagged.
    """
    n_per = 50
    probs, labels = [], []
    for _ in range(n_per):
        probs.append([0.9, 0.05, 0.05])
        labels.append(0)
        probs.append([0.05, 0.9, 0.05])
        labels.append(1)
        probs.append([0.35, 0.35, 0.3])
        labels.append(2)
    probs.append([0.4, 0.15, 0.45])  # labelled 0, confidently class 2 by class 2's standard
    labels.append(0)
    probs, labels = np.array(probs), np.array(labels)
    _, flagged = find_label_issues(probs, labels, rule="prune_by_noise_rate")
    assert flagged[-1]
    assert flagged.sum() == 1


def test_permuting_rows_permutes_scores_and_flags():
    rng = np.random.default_rng(1)
    n, k = 400, 5
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), truth)
    perm = rng.permutation(n)
    for rule in ("prune_by_noise_rate", "confident_joint", "predicted_neq_given"):
        scores, flagged = find_label_issues(probs, labels, rule=rule)
        assert 0 < flagged.sum() < n / 2
        p_scores, p_flagged = find_label_issues(probs[perm], labels[perm], rule=rule)
        np.testing.assert_array_equal(p_scores, scores[perm])
        np.testing.assert_array_equal(p_flagged, flagged[perm])


def test_every_class_keeps_an_unflagged_example():
    probs = np.array([[0.9, 0.1]] * 20 + [[0.95, 0.05]] * 3)
    labels = np.array([0] * 20 + [1] * 3)  # every row labelled 1 looks like class 0
    _, flagged = find_label_issues(probs, labels, rule="prune_by_noise_rate")
    assert not flagged[:20].any()
    assert flagged[20:].sum() == 2


def test_rejects_bad_inputs():
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="multilabel"):
        find_label_issues(probs, np.zeros((4, 3), dtype=int))
    with pytest.raises(ValueError, match="labels must lie"):
        find_label_issues(probs, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="score"):
        find_label_issues(probs, np.zeros(4, dtype=int), score="entropy")


def test_noise_free_probs_are_the_tempered_softmax_of_mu_in_row_order():
    torch.manual_seed(0)
    d, k = 6, 4
    head = HetHead(HeadSpec(num_factors=2, temperature=2.5), d, k)
    model = Classifier(MLP(d, []), head, np.zeros(d), np.ones(d))
    x = np.random.default_rng(0).normal(size=(11, d)).astype(np.float32)
    probs = noise_free_probs(model, x, batch_size=4)
    with torch.no_grad():
        expected = torch.softmax(head.loc(torch.as_tensor(x)) / 2.5, -1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(probs, torch.softmax(torch.as_tensor(expected).log() * 2.5, -1))

    baseline = Classifier(MLP(d, []), LinearHead(d, k), np.zeros(d), np.ones(d))
    np.testing.assert_allclose(
        noise_free_probs(baseline, x), baseline.predict(torch.as_tensor(x)).numpy(), rtol=1e-5
    )


def test_the_default_rule_flags_where_the_argmax_is_not_the_given_label():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]])
    labels = np.array([1, 1, 2, 2])
    _, flagged = find_label_issues(probs, labels)
    np.testing.assert_array_equal(flagged, [True, False, True, False])


@pytest.mark.parametrize("rule", ["prune_by_noise_rate", "confident_joint", "predicted_neq_given"])
def test_chunks_give_what_one_call_gives(rule):
    """Rows in chunks (the worker streams a training set): the same scores, flags and
    suggestions as one call on all rows, ties in the margins included."""
    rng = np.random.default_rng(3)
    n, k = 700, 6
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[truth]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # ties
    labels = np.where(rng.random(n) < 0.25, rng.integers(0, k, n), truth)
    scores, flagged = find_label_issues(probs, labels, rule=rule)
    assert 0 < flagged.sum() < n / 2
    calls = []
    for size in (1, 97, 350, n):

        def chunks(size=size):
            calls.append(size)
            return ((probs[s : s + size], labels[s : s + size]) for s in range(0, n, size))

        c_scores, c_flagged, suggested = find_label_issues_in_chunks(chunks, k, rule=rule)
        np.testing.assert_array_equal(c_scores, scores)
        np.testing.assert_array_equal(c_flagged, flagged)
        np.testing.assert_array_equal(suggested, probs.argmax(1))
    passes = {"predicted_neq_given": 1, "confident_joint": 2, "prune_by_noise_rate": 3}[rule]
    assert len(calls) == 4 * passes
