"""Evaluation metrics on predicted probabilities (numpy only).

Multiclass: accuracy, NLL, ECE (15 equal-width confidence bins), Brier score
(sum over classes of squared error, averaged over examples), reliability bins.
Multilabel: mean average precision over labels, NLL (summed over labels), and
per-label accuracy, ECE and Brier treating each label as a binary prediction.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
_EPS = 1e-12


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, num_bins: int = ECE_BINS
) -> list[dict]:
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # bin i holds confidences in (edges[i], edges[i+1]]; 0 goes to the first bin
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    bins = []
    for i in range(num_bins):
        mask = idx == i
        n = int(mask.sum())
        bins.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": n,
                "confidence": float(confidence[mask].mean()) if n else None,
                "accuracy": float(correct[mask].mean()) if n else None,
            }
        )
    return bins


def reliability_diagram(bins: list[dict]) -> dict:
    """The bins of ``reliability_bins`` as parallel lists, the form stored with a model:
    ``{"bin_edges": [num_bins + 1], "accuracy", "confidence", "count": [num_bins]}``;
    accuracy and confidence are None for an empty bin."""
    return {
        "bin_edges": [bins[0]["lower"], *(b["upper"] for b in bins)] if bins else [],
        "accuracy": [b["accuracy"] for b in bins],
        "confidence": [b["confidence"] for b in bins],
        "count": [b["count"] for b in bins],
    }


def expected_calibration_error(confidence, correct, num_bins: int = ECE_BINS) -> float:
    n = len(confidence)
    return float(
        sum(
            b["count"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(confidence, correct, num_bins)
            if b["count"]
        )
    )


def multiclass_metrics(probs: np.ndarray, y: np.ndarray) -> dict:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    n = len(y)
    pred = probs.argmax(-1)
    confidence = probs.max(-1)
    correct = (pred == y).astype(np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), y] = 1.0
    return {
        "accuracy": float(correct.mean()),
        "nll": float(-np.log(np.clip(probs[np.arange(n), y], _EPS, None)).mean()),
        "ece": expected_calibration_error(confidence, correct),
        "brier": float(((probs - onehot) ** 2).sum(-1).mean()),
        "reliability": reliability_bins(confidence, correct),
    }


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AP of one label: mean precision at each positive, ranked by score. None without positives."""
    positives = labels.sum()
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / positives)


def multilabel_metrics(probs: np.ndarray, y: np.ndarray) -> dict:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(probs, _EPS, 1 - _EPS)
    per_label = [average_precision(probs[:, k], y[:, k]) for k in range(y.shape[1])]
    aps = [a for a in per_label if a is not None]
    flat_conf = np.where(probs >= 0.5, probs, 1 - probs).ravel()
    flat_correct = ((probs >= 0.5) == (y == 1)).astype(np.float64).ravel()
    return {
        "mean_average_precision": float(np.mean(aps)) if aps else None,
        "nll": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1).mean()),
        "accuracy": float(flat_correct.mean()),
        "ece": expected_calibration_error(flat_conf, flat_correct),
        "brier": float(((probs - y) ** 2).sum(-1).mean()),
        "reliability": reliability_bins(flat_conf, flat_correct),
    }


def evaluate(probs: np.ndarray, y: np.ndarray, task: str) -> dict:
    return multiclass_metrics(probs, y) if task == "multiclass" else multilabel_metrics(probs, y)
