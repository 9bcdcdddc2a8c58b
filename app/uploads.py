"""Dataset uploads → the canonical dataset the API stores (numpy + Pillow, no torch).

Reading and validation live once, in core.dataset_files (torch free): the worker loads the
stored file with the same functions. This module adds what only the HTTP side needs:
the stored form (a canonical ``.npz``) and the facts a dataset row records.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.dataset_files import ArrayDataset, TooLarge, from_arrays, read_upload
from core.dataset_files import DatasetError as UploadError
from core.dataset_files import decode_image as decode_image
from core.dataset_files import read_image_zip as read_image_zip

__all__ = [
    "CanonicalDataset",
    "DecodeBusy",
    "TooLarge",
    "UploadError",
    "decode_slot",
    "decode_image",
    "parse_upload",
    "read_image_zip",
    "validate_arrays",
]


@dataclass
class CanonicalDataset:
    arrays: dict[str, np.ndarray]  # x_train, y_train and optional val/test pairs
    class_names: list[str]
    task: str
    input_shape: list[int]
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, ds: ArrayDataset) -> CanonicalDataset:
        arrays = {k: v for k, v in vars(ds).items() if isinstance(v, np.ndarray)}
        return cls(arrays, list(ds.class_names), ds.task, ds.input_shape, ds.counts())

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays, class_names=np.asarray(self.class_names, dtype=str))  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool
        return buffer.getvalue()


class DecodeBusy(Exception):
    """Every decode slot stayed taken for the whole wait (HTTP 503)."""


_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


@contextmanager
def decode_slot(limit: int, wait_s: float) -> Iterator[None]:
    """At most ``limit`` uploads of this process decode at once (each may expand to
    settings.max_expanded_bytes); wait up to ``wait_s`` for a slot, else DecodeBusy."""
    with _slots_lock:
        slots = _slots.setdefault(limit, threading.BoundedSemaphore(limit))
    if not slots.acquire(timeout=wait_s):
        raise DecodeBusy(f"{limit} uploads are being decoded; retry in a few seconds")
    try:
        yield
    finally:
        slots.release()


def parse_upload(filename: str, data: bytes, **options: Any) -> tuple[str, CanonicalDataset]:
    """Parse and validate an upload (``core.dataset_files.read_upload``, whose keyword options
    it takes); return (format, canonical dataset). TooLarge (an UploadError) when it would
    expand past ``max_expanded_bytes``."""
    fmt, ds = read_upload(filename, data, **options)
    return fmt, CanonicalDataset.of(ds)


def validate_arrays(
    arrays: dict[str, np.ndarray], class_names: list[str] | None
) -> CanonicalDataset:
    """Check shapes, dtypes, finiteness and labels; return the canonical dataset."""
    return CanonicalDataset.of(from_arrays(arrays, class_names))
