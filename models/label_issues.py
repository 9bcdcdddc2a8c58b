"""Label issues: which training examples are likely mislabeled (numpy only at import).

The probabilities to judge labels by are a HET model's **noise-free predictive**
softmax(mu(x) / tau) on its own training inputs (``noise_free_probs``): the learned
label noise absorbs the flips during training, so mu(x) keeps pointing at the true
class of a flipped example, and one training run is enough (no out-of-fold refits).

``find_label_issues(probs, labels)`` returns, row for row in the given order:

- ``scores``: how unlikely the given label is, 1 - p_y (self-confidence; higher = more
  likely mislabeled; sort by it descending for "most likely mislabeled first"); or the
  normalised margin p_y - max_{k != y} p_k (``score="normalized_margin"``), reported as
  (1 - margin) / 2 so that higher still means more suspect.
- ``flagged``: by default every example whose noise-free argmax is not its given label
  (``rule="predicted_neq_given"``); or the set confident learning (Northcutt, Jiang,
  Chuang, JAIR 2021) flags, implemented here:

  1. per-class thresholds t_j = mean of p_j over the examples labelled j;
  2. the confident joint C: an example with given label i counts in C[i, j] where j is
     its most probable class among those with p_j >= t_j (examples above no threshold
     do not count);
  3. C calibrated so that row i sums to the number of examples labelled i and the
     whole matrix to N, then rounded;
  4. ``prune_by_noise_rate``: for each off-diagonal (i, j), the round(C[i, j]) examples
     labelled i with the largest margin p_j - p_i are flagged (union over j);
  5. an example whose given label is its argmax is never flagged.

  Every class keeps at least one unflagged example. ``rule="confident_joint"`` flags
  instead exactly the off-diagonal examples of step 2 (confident class != given label),
  step 5 applied too; ``rule="predicted_neq_given"`` flags every example whose argmax
  is not its given label (no thresholds).

The default is ``predicted_neq_given``: flag y_r != argmax_k p_rk. It needs no
estimate of the noise rate, and the noise-free predictive it reads is not fitted to the
flips (the learned noise absorbed them in training), so where the model is accurate its
disagreements are the flips. ``prune_by_noise_rate`` flags a subset of those rows (the
calibrated confident joint's count per pair, largest margins first): the smaller, more
precise set, for when a person reviews every flag. docs/cifar10n.md compares the rules
on real annotator noise, bench/quality.py on injected noise.

``find_label_issues_in_chunks`` gives the same answer over rows that arrive in chunks
(the worker's training set, read a batch at a time): one pass for the default rule, up
to three for confident learning, never an N x K array.

Every rule is equivariant under a permutation of the rows, up to exact ties in the
margins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SCORES = ("self_confidence", "normalized_margin")
RULES = ("prune_by_noise_rate", "confident_joint", "predicted_neq_given")
DEFAULT_RULE = "predicted_neq_given"


def find_label_issues(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    score: str = "self_confidence",
    rule: str = DEFAULT_RULE,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,) float64, flagged (N,) bool) for probs (N, K) and integer labels (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
    scores, flagged, _ = find_label_issues_in_chunks(
        lambda: iter([(probs, labels)]), probs.shape[1], score=score, rule=rule
    )
    return scores, flagged


def find_label_issues_in_chunks(
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    num_classes: int,
    *,
    score: str = "self_confidence",
    rule: str = DEFAULT_RULE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``find_label_issues`` over rows that come in chunks: ``chunks()`` yields
    (probs (n, K), labels (n,)) in row order, the same rows on every call. It is called
    once for ``predicted_neq_given``, twice for ``confident_joint`` (thresholds, then
    the joint) and three times for ``prune_by_noise_rate`` (then the margins), so no
    N x K array need exist. Returns (scores, flagged, suggested = argmax), equal to
    one call on all the rows."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    k = num_classes
    # pass 1: scores, argmax, and what the thresholds need
    scores_, suggested_, labels_ = [], [], []
    label_count = np.zeros(k, dtype=np.int64)
    p_given_sum = np.zeros(k)
    for probs, labels in chunks():
        probs, labels = _checked(probs, labels, k)
        rows = np.arange(len(labels))
        p_given = probs[rows, labels]
        if score == "self_confidence":
            scores_.append(1.0 - p_given)
        else:
            others = probs.copy()
            others[rows, labels] = -np.inf
            scores_.append((1.0 - (p_given - others.max(1))) / 2.0)
        suggested_.append(probs.argmax(1))
        labels_.append(labels)
        label_count += np.bincount(labels, minlength=k)
        p_given_sum += np.bincount(labels, weights=p_given, minlength=k)
    scores = np.concatenate(scores_) if scores_ else np.zeros(0)
    suggested = np.concatenate(suggested_) if suggested_ else np.zeros(0, dtype=np.int64)
    labels = np.concatenate(labels_) if labels_ else np.zeros(0, dtype=np.int64)
    n = len(labels)
    argmax_is_label = suggested == labels
    if rule == "predicted_neq_given" or n == 0:
        return scores, ~argmax_is_label if n else np.zeros(0, dtype=bool), suggested

    # 1. thresholds: mean p_j over examples labelled j (a class nobody has: never confident)
    thresholds = np.full(k, np.inf)
    present = label_count > 0
    thresholds[present] = p_given_sum[present] / label_count[present]

    # 2. confident joint (pass 2)
    joint = np.zeros((k, k), dtype=np.int64)
    off_diagonal = np.zeros(n, dtype=bool)
    start = 0
    for probs, chunk_labels in chunks():
        probs, chunk_labels = _checked(probs, chunk_labels, k)
        above = probs >= thresholds - 1e-6
        confident = above.any(1)
        guess = np.where(above, probs, -np.inf).argmax(1)
        np.add.at(joint, (chunk_labels[confident], guess[confident]), 1)
        off_diagonal[start : start + len(chunk_labels)] = confident & (guess != chunk_labels)
        start += len(chunk_labels)
    if rule == "confident_joint":
        return scores, off_diagonal & ~argmax_is_label, suggested

    # 3. calibrate: rows to the label counts, total to N
    row_sums = joint.sum(1)
    calibrated = np.zeros((k, k))
    nz = row_sums > 0
    calibrated[nz] = joint[nz] / row_sums[nz, None] * label_count[nz, None]
    if calibrated.sum() > 0:
        calibrated *= n / calibrated.sum()
    prune = np.rint(calibrated).astype(np.int64)
    np.fill_diagonal(prune, 0)
    # every class keeps at least one example
    for i in range(k):
        excess = prune[i].sum() - max(label_count[i] - 1, 0)
        while excess > 0:
            j = int(prune[i].argmax())
            take = min(excess, prune[i, j])
            prune[i, j] -= take
            excess -= take

    # 4. prune by noise rate (pass 3): for each (i, j), the prune[i, j] rows labelled i
    # with the largest margin p_j - p_i, ties to the lower row; kept as a running top set
    pairs = list(zip(*np.nonzero(prune), strict=True))
    best: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {
        pair: (np.zeros(0), np.zeros(0, dtype=np.int64)) for pair in pairs
    }
    start = 0
    for probs, chunk_labels in chunks():
        probs, chunk_labels = _checked(probs, chunk_labels, k)
        for i, j in pairs:
            members = np.flatnonzero(chunk_labels == i)
            margins = np.concatenate([best[i, j][0], probs[members, j] - probs[members, i]])
            rows = np.concatenate([best[i, j][1], members + start])
            top = np.lexsort((rows, -margins))[: prune[i, j]]
            best[i, j] = (margins[top], rows[top])
        start += len(chunk_labels)
    flagged = np.zeros(n, dtype=bool)
    for _, rows in best.values():
        flagged[rows] = True
    # 5. never flag an example the model agrees with
    flagged &= ~argmax_is_label
    return scores, flagged, suggested


def _checked(probs: Any, labels: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must be (N, {k}), got shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(
            "labels must be one integer class per row of probs (multilabel is not supported)"
        )
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    return probs, labels


def noise_free_probs(model: Any, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """softmax(mu(x) / tau) (sigmoid for multilabel) of a ``Classifier`` over x, in batches.

    Exact, no sampling; for a softmax baseline it is its ordinary predictive. Rows in
    the order of x.
    """
    import torch

    from models.het_formula import MULTICLASS

    model.eval()
    device = model.input_mean.device
    head = model.head
    out = []
    with torch.no_grad():
        tau = head.temperature.to(device)
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(
                np.asarray(x[start : start + batch_size], np.float32), device=device
            )
            z = head.latent(model.features(xb).float()).mu / tau
            p = torch.softmax(z, -1) if head.task == MULTICLASS else torch.sigmoid(z)
            out.append(p.double().cpu().numpy())
    if not out:
        return np.zeros((0, head.num_classes))
    return np.concatenate(out)
