"""Corrections of a dataset's training labels, and the corrected dataset they make
(numpy only; no torch).

A ``Corrections`` says, by row of the parent's ``x_train`` (the rows label issues
index), which rows get a new label and which rows go. It comes either from a model's
findings (``from_findings``: the first ``top`` flagged entries of its label issues,
most suspect first, either relabelled to the suggested class or dropped) or from a CSV
a person wrote (``parse_csv``: ``index,label`` lines, the label a class name or a class
index). Bad corrections raise ``CorrectionError`` naming the line; nothing is applied.

Applied (``corrected_manifest`` for an image folder by reference, ``corrected_arrays``
for array data), the child's ``x_train`` is the parent's rows in their order minus the
dropped ones, each with its corrected label; val and test are the parent's unchanged.
An image folder's child is a manifest of the same files (same sizes and stamps, so a
file changed since the parent was registered fails the child's jobs too): no image is
copied.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.dataset_files import ArrayDataset, DatasetError

ACTIONS = ("relabel", "drop")


class CorrectionError(DatasetError):
    """The corrections are malformed or do not fit the dataset; the message names the row."""


@dataclass(frozen=True)
class Corrections:
    relabel: dict[int, int] = field(default_factory=dict)  # x_train row -> new label
    drop: frozenset[int] = frozenset()  # x_train rows that go


def from_findings(issues: dict[str, np.ndarray], action: str, top: int | None) -> Corrections:
    """The first ``top`` (all when None) flagged entries of a model's label issues
    (arrays ``index``, ``suggested``, ``flagged`` in the file's order, most suspect
    first): relabelled to ``suggested`` or dropped."""
    if action not in ACTIONS:
        raise CorrectionError(f"action must be one of {ACTIONS}, got {action!r}")
    flagged = np.flatnonzero(np.asarray(issues["flagged"], dtype=bool))[:top]
    rows = [int(i) for i in np.asarray(issues["index"])[flagged]]
    if action == "drop":
        return Corrections(drop=frozenset(rows))
    labels = [int(s) for s in np.asarray(issues["suggested"])[flagged]]
    return Corrections(relabel=dict(zip(rows, labels, strict=True)))


def parse_csv(data: bytes, num_rows: int, class_names: list[str]) -> Corrections:
    """``index,label`` lines (an optional ``index,label`` header first): ``index`` a row
    of ``x_train`` in [0, num_rows), ``label`` a class name, else a class index in
    [0, K) (a name wins where a name is also an index). Each row at most once."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorrectionError(f"the corrections are not UTF-8 text: {exc}") from None
    by_name = {name: i for i, name in enumerate(class_names)}
    k = len(class_names)
    relabel: dict[int, int] = {}
    first_line: dict[int, int] = {}
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != 2:
                raise CorrectionError(
                    f"line {line}: {len(fields)} fields, expected 2 (index,label)"
                )
            raw_index, raw_label = fields[0].strip(), fields[1].strip()
            if not relabel and not first_line and raw_index.lower() == "index":
                if raw_label.lower() != "label":
                    raise CorrectionError(f"line {line}: the header must be index,label")
                continue
            try:
                index = int(raw_index)
            except ValueError:
                raise CorrectionError(
                    f"line {line}: index {raw_index[:40]!r} is not a whole number"
                ) from None
            if not 0 <= index < num_rows:
                raise CorrectionError(
                    f"line {line}: index {index} is out of range: the dataset has "
                    f"{num_rows} training rows (0 to {num_rows - 1})"
                )
            if index in first_line:
                raise CorrectionError(
                    f"line {line}: index {index} is corrected twice (first on line "
                    f"{first_line[index]})"
                )
            relabel[index] = _label(raw_label, by_name, k, line)
            first_line[index] = line
    except csv.Error as exc:
        raise CorrectionError(f"line {reader.line_num}: not valid CSV: {exc}") from None
    if not relabel:
        raise CorrectionError("the CSV holds no corrections (index,label lines)")
    return Corrections(relabel=relabel)


def _label(raw: str, by_name: dict[str, int], k: int, line: int) -> int:
    if raw in by_name:
        return by_name[raw]
    try:
        label = int(raw)
    except ValueError:
        label = -1
    if not 0 <= label < k:
        raise CorrectionError(
            f"line {line}: label {raw[:40]!r} is neither a class name nor a class index in [0, {k})"
        )
    return label


def corrected_labels(labels: np.ndarray, corrections: Corrections) -> tuple[np.ndarray, np.ndarray]:
    """(the rows kept, their labels) for the parent's ``y_train``; CorrectionError when
    a row is out of range or too little would remain to train on."""
    labels = np.asarray(labels)
    n = len(labels)
    for row in (*corrections.relabel, *corrections.drop):
        if not 0 <= row < n:
            raise CorrectionError(f"row {row} is out of range: {n} training rows")
    new = labels.astype(np.int64).copy()
    for row, label in corrections.relabel.items():
        new[row] = label
    keep = np.setdiff1d(np.arange(n), np.fromiter(corrections.drop, np.int64), assume_unique=True)
    if len(np.unique(new[keep])) < 2:
        raise CorrectionError(
            f"after the corrections {len(keep)} training rows of fewer than 2 classes remain"
        )
    return keep, new[keep]


def corrected_manifest(manifest: dict[str, Any], corrections: Corrections) -> dict[str, Any]:
    """An image-folder manifest whose ``train`` split is corrected (same files)."""
    if manifest.get("format") != "imagefolder":
        raise CorrectionError(f"not an image-folder manifest: {manifest.get('format')!r}")
    child = copy.deepcopy(manifest)
    train = child["splits"]["train"]
    keep, labels = corrected_labels(np.asarray(train["labels"]), corrections)
    for column, values in train.items():
        train[column] = [values[i] for i in keep]
    train["labels"] = [int(v) for v in labels]
    child["counts"] = {**child["counts"], "num_train": len(keep)}
    return child


def corrected_arrays(ds: ArrayDataset, corrections: Corrections) -> ArrayDataset:
    """A multiclass ArrayDataset with its ``x_train``/``y_train`` corrected."""
    if ds.task != "multiclass":
        raise CorrectionError("corrections are for multiclass datasets (one label per row)")
    keep, labels = corrected_labels(ds.y_train, corrections)
    whole = len(keep) == len(ds.y_train)
    return replace(ds, x_train=ds.x_train if whole else ds.x_train[keep], y_train=labels)
