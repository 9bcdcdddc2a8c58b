"""How well a set of flagged training rows, and a score to rank them by, find the rows
whose given label is wrong: the scoring both label-noise benchmarks use (numpy and
scikit-learn only, so the client-side CIFAR-10N bench needs no torch to import it)."""

from __future__ import annotations

import numpy as np


def detection(flagged: np.ndarray, scores: np.ndarray, is_issue: np.ndarray) -> dict:
    """Precision / recall / F1 of the flagged set and AUROC of the score, against the
    truth ``is_issue`` (given label != clean label), plus how many rows were flagged."""
    from sklearn.metrics import roc_auc_score

    tp = int((flagged & is_issue).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(is_issue.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": float(roc_auc_score(is_issue, scores)),
        "flagged": int(flagged.sum()),
    }
