"""Datasets as arrays: load, validate, split, standardise. numpy only (no torch here).

Formats (DESIGN §5):
- ``.npz`` with ``x_train``, ``y_train`` and optional ``x_val``, ``y_val``, ``x_test``,
  ``y_test``, ``class_names``; read with ``allow_pickle=False`` so a pickle inside is
  refused instead of executed.
- ``.csv`` with a ``label`` column, every other column a numeric feature.

Labels: multiclass ``y`` is an integer vector in [0, K); multilabel ``y`` is an
(N, K) 0/1 matrix. Inputs: vectors (N, D) or images (N, C, H, W).
Bad data raises ``DatasetError`` naming what is wrong.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """The dataset is malformed; the message says what and where."""


@dataclass
class ArrayDataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return "multilabel" if self.y_train.ndim == 2 else "multiclass"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def counts(self) -> dict[str, int]:
        return {
            f"num_{s}": 0 if self.split(s)[0] is None else len(self.split(s)[0]) for s in SPLITS
        }


def load_dataset(source: str | Path | bytes, fmt: str | None = None) -> ArrayDataset:
    """Load and validate a ``.npz`` or ``.csv`` dataset from a path or raw bytes."""
    if isinstance(source, (str, Path)):
        fmt = fmt or Path(source).suffix.lstrip(".").lower()
        data = Path(source).read_bytes()
    else:
        data = source
    if fmt == "npz":
        return validate(_read_npz(data))
    if fmt == "csv":
        return validate(_read_csv(data))
    raise DatasetError(f"unsupported dataset format {fmt!r}: use .npz or .csv")


def _read_npz(data: bytes) -> ArrayDataset:
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise DatasetError(f"not a readable .npz file: {exc}") from None
    with npz:
        keys = set(npz.files)
        allowed = {f"{xy}_{s}" for xy in "xy" for s in SPLITS} | {"class_names"}
        unknown = keys - allowed
        if unknown:
            raise DatasetError(
                f"unexpected arrays in .npz: {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        arrays = {}
        for key in keys:
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                # allow_pickle=False raises here for object arrays (pickles).
                raise DatasetError(
                    f"array {key!r} holds Python objects (pickle), which are refused: {exc}"
                ) from None
    for required in ("x_train", "y_train"):
        if required not in arrays:
            raise DatasetError(f".npz is missing the required array {required!r}")
    names = arrays.pop("class_names", None)
    # np.savez of a list of Python bytes gives dtype "S": decode it instead of writing "b'cat'".
    class_names = (
        [n.decode() if isinstance(n, bytes) else str(n) for n in names.ravel().tolist()]
        if names is not None
        else []
    )
    return ArrayDataset(**arrays, class_names=class_names)


def _read_csv(data: bytes) -> ArrayDataset:
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"not a readable UTF-8 .csv file: {exc}") from None
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise DatasetError(".csv needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if "label" not in header:
        raise DatasetError(f".csv has no 'label' column (columns: {header[:20]})")
    li = header.index("label")
    if len(header) < 2:
        raise DatasetError(".csv has no feature columns beside 'label'")
    labels, feats = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(f".csv line {n}: {len(row)} fields, header has {len(header)}")
        labels.append(row[li].strip())
        try:
            feats.append([float(v) for i, v in enumerate(row) if i != li])
        except ValueError as exc:
            raise DatasetError(f".csv line {n}: non-numeric feature ({exc})") from None
    x = np.asarray(feats, dtype=np.float32)
    try:
        y = np.asarray([int(v) for v in labels], dtype=np.int64)
        class_names: list[str] = []
    except ValueError:
        class_names = sorted(set(labels))
        index = {c: i for i, c in enumerate(class_names)}
        y = np.asarray([index[v] for v in labels], dtype=np.int64)
    return ArrayDataset(x_train=x, y_train=y, class_names=class_names)


def validate(ds: ArrayDataset) -> ArrayDataset:
    """Check shapes, types, finiteness and labels; return a canonical copy.

    Canonical: x float32, multiclass y int64, multilabel y float32 0/1, class_names filled.
    """
    multilabel = np.asarray(ds.y_train).ndim == 2
    x_rank = None
    out = {}
    num_classes = None
    for s in SPLITS:
        x, y = ds.split(s)
        if (x is None) != (y is None):
            raise DatasetError(f"x_{s} and y_{s} must be given together")
        if x is None:
            continue
        x, y = np.asarray(x), np.asarray(y)
        for name, arr in ((f"x_{s}", x), (f"y_{s}", y)):
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise DatasetError(f"{name} must be numeric, got dtype {arr.dtype}")
        if x.ndim not in (2, 4):
            raise DatasetError(
                f"x_{s} must be [N, D] vectors or [N, C, H, W] images, got shape {list(x.shape)}"
            )
        if x_rank is None:
            x_rank, feature_shape = x.ndim, x.shape[1:]
        elif x.shape[1:] != feature_shape:
            raise DatasetError(
                f"x_{s} has per-example shape {list(x.shape[1:])}, x_train has {list(feature_shape)}"
            )
        if len(x) == 0:
            raise DatasetError(f"x_{s} is empty")
        if len(x) != len(y):
            raise DatasetError(f"x_{s} has {len(x)} rows but y_{s} has {len(y)}")
        # Checked after the cast: 1e300 is finite in float64 but inf in float32.
        with np.errstate(over="ignore"):
            x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1).all(1))[0, 0])
            raise DatasetError(f"x_{s} contains NaN or inf in float32 (first at row {bad})")
        if multilabel:
            if y.ndim != 2:
                raise DatasetError(
                    f"y_{s} must be [N, K] 0/1 like y_train, got shape {list(y.shape)}"
                )
            if not np.isin(y, (0, 1)).all():
                raise DatasetError(f"multilabel y_{s} must hold only 0 and 1")
            k = y.shape[1]
            if num_classes is not None and k != num_classes:
                raise DatasetError(f"y_{s} has {k} labels, y_train has {num_classes}")
            num_classes = k
            y = y.astype(np.float32)
        else:
            if y.ndim != 1:
                raise DatasetError(
                    f"y_{s} must be a vector of class indices, got shape {list(y.shape)}"
                )
            if y.dtype.kind == "f":
                if not np.isfinite(y).all() or (y != np.round(y)).any():
                    raise DatasetError(f"y_{s} must hold whole class indices")
            y = y.astype(np.int64)
            if (y < 0).any():
                raise DatasetError(f"y_{s} has negative labels (min {int(y.min())})")
        out[f"x_{s}"], out[f"y_{s}"] = x, y

    if not multilabel:
        seen = int(max(out[f"y_{s}"].max() for s in SPLITS if f"y_{s}" in out)) + 1
        num_classes = len(ds.class_names) if ds.class_names else seen
        if seen > num_classes:
            raise DatasetError(
                f"labels out of range: found label {seen - 1} but only {num_classes} class names"
            )
    if num_classes < 2:
        raise DatasetError(f"need at least 2 classes, got {num_classes}")
    if not multilabel and len(np.unique(out["y_train"])) < 2:
        raise DatasetError("y_train holds fewer than 2 distinct classes")
    names = list(ds.class_names) or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise DatasetError(f"{len(names)} class_names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise DatasetError("class_names must be unique")
    return ArrayDataset(**out, class_names=names)


def validation_rows(n: int, fraction: float) -> int:
    """How many of ``n`` training rows become the validation split; at least one stays."""
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise DatasetError(f"too few training rows ({n}) to split off a validation set")
    return n_val


def with_validation_split(ds: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
    """Carve a seeded validation split out of train when none is given."""
    if ds.x_val is not None:
        return ds
    n = len(ds.x_train)
    n_val = validation_rows(n, fraction)
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    return replace(
        ds,
        x_train=ds.x_train[train],
        y_train=ds.y_train[train],
        x_val=ds.x_train[val],
        y_val=ds.y_train[val],
    )


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the training set: per feature for vectors, per channel for images.

    Shapes broadcast against one example: (D,) or (C, 1, 1).
    """
    axes = (0,) if x_train.ndim == 2 else (0, 2, 3)
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = x_train.std(axis=axes, dtype=np.float64)
    std = np.where(std < 1e-6, 1.0, std)  # constant features pass through unscaled
    if x_train.ndim == 4:
        mean, std = mean[:, None, None], std[:, None, None]
    return mean.astype(np.float32), std.astype(np.float32)


def save_npz(ds: ArrayDataset, path: str | Path) -> None:
    arrays = {k: v for k, v in vars(ds).items() if isinstance(v, np.ndarray)}
    np.savez(path, **arrays, class_names=np.asarray(ds.class_names, dtype=str))
