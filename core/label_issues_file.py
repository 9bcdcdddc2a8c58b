"""The label-issues artifact of a model: one ``.issues.npz`` (numpy only, no torch).

The worker writes it once per trained multiclass model (worker/registration.py); the API reads
its head (app/routers/noise.py). Five parallel arrays, one entry per row of the
dataset's uploaded ``x_train`` (the validation hold-out included), sorted most likely
mislabeled first (score descending, ties by row index):

- ``index`` (int64): the row of the uploaded ``x_train``;
- ``given`` (int64): its label in ``y_train``;
- ``suggested`` (int64): the argmax of the model's noise-free predictive;
- ``score`` (float64): 1 - p(given label), higher = more suspect;
- ``flagged`` (bool): in the set the flag rule flags (models/label_issues.py).

Stored uncompressed, so a reader takes the first ``limit`` entries of each array
without reading the rest: a request costs O(limit) (plus one byte per row to count
the flagged), whatever the dataset's size.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from core.dataset_files import read_npy_header

ARRAYS = ("index", "given", "suggested", "score", "flagged")


def encode(scores: ArrayLike, flagged: ArrayLike, given: ArrayLike, suggested: ArrayLike) -> bytes:
    """The .npz bytes for per-row arrays in upload order (row i = x_train[i])."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    index = np.arange(n, dtype=np.int64)
    order = np.lexsort((index, -scores))  # score descending, then row
    arrays = {
        "index": index[order],
        "given": np.asarray(given, dtype=np.int64)[order],
        "suggested": np.asarray(suggested, dtype=np.int64)[order],
        "score": scores[order],
        "flagged": np.asarray(flagged, dtype=bool)[order],
    }
    if any(len(a) != n for a in arrays.values()):
        raise ValueError("scores, flagged, given and suggested must have one entry per row")
    # np.savez's layout, with fixed entry times: equal issues give equal bytes, so the
    # same content address (a redelivered job stores no second file).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def _read(archive: zipfile.ZipFile, name: str, limit: int | None, offset: int = 0) -> np.ndarray:
    """``limit`` entries (all when None) of one 1-d member array, from entry ``offset``."""
    with archive.open(f"{name}.npy") as fp:
        shape, _fortran, dtype = read_npy_header(fp)
        if len(shape) != 1 or dtype.hasobject:
            raise ValueError(f"label issues: {name} is not a flat numeric array")
        offset = min(offset, shape[0])
        count = shape[0] - offset if limit is None else min(limit, shape[0] - offset)
        fp.read(offset * dtype.itemsize)  # a stored member: skipped, never inflated
        return np.frombuffer(fp.read(count * dtype.itemsize), dtype=dtype, count=count)


def read_head(path: str | Path, limit: int, offset: int = 0) -> dict[str, Any]:
    """``{"num_examples", "num_flagged", "issues": [{"index", "given_label",
    "suggested_label", "score", "flagged"}, ...]}``: ``limit`` entries from entry
    ``offset`` of the most-suspect-first order (a page; ``read_selection`` unfiltered)."""
    selection = read_selection(path, offset=offset, limit=limit)
    return {
        "num_examples": selection["num_examples"],
        "num_flagged": selection["num_flagged"],
        "issues": issues(selection["arrays"]),
    }


def issues(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """``[{"index", "given_label", "suggested_label", "score", "flagged"}, ...]``, plain
    Python numbers, from a selection's arrays (``read_selection``)."""
    return [
        {
            "index": int(i),
            "given_label": int(g),
            "suggested_label": int(s),
            "score": float(sc),
            "flagged": bool(f),
        }
        for i, g, s, sc, f in zip(
            arrays["index"],
            arrays["given"],
            arrays["suggested"],
            arrays["score"],
            arrays["flagged"],
            strict=True,
        )
    ]


def read_selection(
    path: str | Path,
    *,
    offset: int = 0,
    limit: int | None = None,
    flagged_only: bool = False,
    given: int | None = None,
    suggested: int | None = None,
) -> dict[str, Any]:
    """The entries that match every filter given (``flagged_only``: in the flagged set;
    ``given`` / ``suggested``: that class index), in the file's order, from ``offset``,
    at most ``limit`` (all when None): ``{"num_examples", "num_flagged", "num_matching",
    "arrays": {name: array}}``. Without a filter only the first offset + limit entries
    are read."""
    with zipfile.ZipFile(path) as archive:
        flagged = _read(archive, "flagged", None)
        filtered = flagged_only or given is not None or suggested is not None
        head = None if filtered or limit is None else offset + limit
        arrays = {name: _read(archive, name, head) for name in ARRAYS if name != "flagged"}
    arrays["flagged"] = flagged if head is None else flagged[:head]
    keep = np.ones(len(arrays["flagged"]), dtype=bool)
    if flagged_only:
        keep &= arrays["flagged"]
    if given is not None:
        keep &= arrays["given"] == given
    if suggested is not None:
        keep &= arrays["suggested"] == suggested
    matching = int(keep.sum()) if filtered else len(flagged)
    stop = None if limit is None else offset + limit
    rows = np.flatnonzero(keep)[offset:stop]
    return {
        "num_examples": len(flagged),
        "num_flagged": int(flagged.sum()),
        "num_matching": matching,
        "arrays": {name: array[rows] for name, array in arrays.items()},
    }
