"""Dataset uploads → the canonical dataset the API stores (numpy + Pillow, no torch).

Reading and validation live once, in models.data (torch free): the worker loads the
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

from models.data import ArrayDataset, PixelBudget, TooLarge, from_arrays, read_upload
from models.data import DatasetError as UploadError
from models.data import decode_image as decode_image
from models.data import read_image_zip as read_image_zip

__all__ = [
    "CanonicalDataset",
    "DecodeBusy",
    "PixelBudget",
    "TooLarge",
    "UploadError",
    "decode_slot",
    "decode_image",
    "parse_upload",
    "stored_limit",
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


# What an upload may take on disk once stored (the canonical .npz: float32 arrays,
# uncompressed): the larger of the upload cap and this many times the bytes uploaded.
# uint8 pixels become float32 (4x) and a compressed .npz inflates ~2x; an 879 KB .npz
# declaring 900 MB of zeros does not pass.
STORED_EXPANSION = 8


def stored_limit(max_upload_bytes: int, uploaded_bytes: int) -> int:
    return max(max_upload_bytes, STORED_EXPANSION * uploaded_bytes)


class DecodeBusy(Exception):
    """Every decode slot stayed taken for the whole wait (HTTP 503)."""


_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


@contextmanager
def decode_slot(limit: int, wait_s: float) -> Iterator[None]:
    """At most ``limit`` uploads or predict calls with images of this process decode at
    once (an upload may expand to settings.max_expanded_bytes, images to PixelBudget);
    wait up to ``wait_s`` for a slot, else DecodeBusy."""
    with _slots_lock:
        slots = _slots.setdefault(limit, threading.BoundedSemaphore(limit))
    if not slots.acquire(timeout=wait_s):
        raise DecodeBusy(f"{limit} uploads or images are being decoded; retry in a few seconds")
    try:
        yield
    finally:
        slots.release()


def parse_upload(filename: str, data: bytes, **options: Any) -> tuple[str, CanonicalDataset]:
    """Parse and validate an upload (``models.data.read_upload``, whose keyword options
    it takes); return (format, canonical dataset). TooLarge (an UploadError) when it would
    expand past ``max_expanded_bytes``."""
    fmt, ds = read_upload(filename, data, **options)
    return fmt, CanonicalDataset.of(ds)


def validate_arrays(
    arrays: dict[str, np.ndarray], class_names: list[str] | None
) -> CanonicalDataset:
    """Check shapes, dtypes, finiteness and labels; return the canonical dataset."""
    return CanonicalDataset.of(from_arrays(arrays, class_names))
