"""What a trained model knows about its training labels: its noise report and the label
issues of every training row. Plain functions of a model and a dataset (no store): the
worker calls them once per registered model and stores the result
(worker/registration.py; the label issues as an core/label_issues_file.py artifact).

Both run over every row of the dataset's uploaded ``x_train`` in upload order, the
validation hold-out that train() split off included (``data`` is the dataset as stored,
never split), so a row index is a row of the upload. A registered image folder is read
from disk again, a batch of images at a time (the flag rule's passes over the rows, then the noise
report).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import numpy as np

from core.dataset_files import ArrayDataset
from core.manifest import ImageFiles
from models.heads import LinearHead
from models.label_issues import find_label_issues_in_chunks, noise_free_probs
from models.noise_report import NoNoiseModel, noise_report

log = logging.getLogger("hetserve.worker")  # its callers' log, as before the move

# The noise report's flip rates: S draws per training row, S = DRAWS // N within
# [MIN, MAX] (100 up to N = 2000, fewer above: the rates pool over rows, and the draws
# dominate the step's time; docs/models.md has the timings).
NOISE_REPORT_DRAWS = 200_000
NOISE_REPORT_SAMPLES = (10, 100)
LABEL_ISSUE_CHUNK_ROWS = 4096  # rows of noise-free probabilities held at once


class LabelIssues(NamedTuple):
    """Per-row arrays in upload order (row i = x_train[i]), the arguments of
    ``core.label_issues_file.encode``: score = 1 - p(given label) under the noise-free
    predictive, flagged by models.label_issues' default rule, the given label, and the
    noise-free argmax."""

    scores: np.ndarray
    flagged: np.ndarray
    given: np.ndarray
    suggested: np.ndarray


class LabelKnowledge(NamedTuple):
    """``noise_report``: the HET head's noise report, ``{"unavailable": reason}`` for a HET
    head whose covariance is exactly zero, None for a softmax baseline or multilabel.
    ``issues``: None for multilabel (not defined there)."""

    noise_report: dict[str, Any] | None
    issues: LabelIssues | None


def noise_report_samples(n: int) -> int:
    low, high = NOISE_REPORT_SAMPLES
    return max(low, min(high, NOISE_REPORT_DRAWS // max(1, n)))


def label_knowledge(model, data: ArrayDataset, seed: int) -> LabelKnowledge:
    """The noise report and label issues of ``model`` over ``data.x_train``.

    Multilabel: neither is defined (both None). A softmax baseline: no noise report,
    but label issues from its own softmax (cheap, and a useful comparison).
    """
    if data.task != "multiclass":
        return LabelKnowledge(None, None)
    start = time.perf_counter()
    x, y = data.x_train, np.asarray(data.y_train, dtype=np.int64)

    def chunks():
        # No N x K array of probabilities exists at once: each pass of the flag rule
        # recomputes them a chunk at a time (a streamed image folder: a lazy subset).
        for row in range(0, len(x), LABEL_ISSUE_CHUNK_ROWS):
            chunk = slice(row, row + LABEL_ISSUE_CHUNK_ROWS)
            rows = x[np.arange(len(x))[chunk]] if isinstance(x, ImageFiles) else x[chunk]
            yield noise_free_probs(model, rows), y[chunk]

    scores, flagged, suggested = find_label_issues_in_chunks(chunks, data.num_classes)
    issues = LabelIssues(scores, flagged, y, suggested)
    report: dict[str, Any] | None
    try:
        report = noise_report(model, x, num_samples=noise_report_samples(len(x)), seed=seed)
    except NoNoiseModel as exc:
        report = None if isinstance(model.head, LinearHead) else {"unavailable": str(exc)}
    log.info(
        "label knowledge over %d training rows (K=%d): %d flagged, %.2f s",
        len(x),
        data.num_classes,
        int(issues.flagged.sum()),
        time.perf_counter() - start,
    )
    return LabelKnowledge(report, issues)
