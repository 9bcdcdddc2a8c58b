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

from core.dataset_files import (
    ArrayDataset,
    PixelBudget,
    TooLarge,
    from_arrays,
    npz_declared_bytes,
    read_upload,
)
from core.dataset_files import DatasetError as UploadError
from core.dataset_files import decode_image as decode_image
from core.dataset_files import read_image_zip as read_image_zip

__all__ = [
    "CanonicalDataset",
    "DecodeBusy",
    "PixelBudget",
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


# What an upload may take on disk once stored (the canonical .npz: float32 arrays,
# uncompressed): the larger of the upload cap and this many times the bytes uploaded.
# uint8 pixels become float32 (4x) and a compressed .npz inflates ~2x; an 879 KB .npz
# declaring 900 MB of zeros does not pass.
STORED_EXPANSION = 8


def stored_limit(max_upload_bytes: int, uploaded_bytes: int) -> int:
    return max(max_upload_bytes, STORED_EXPANSION * uploaded_bytes)


def check_stored_size(size: int, uploaded_bytes: int, max_upload_bytes: int) -> None:
    """TooLarge when a dataset of ``size`` bytes on disk is past ``stored_limit``."""
    limit = stored_limit(max_upload_bytes, uploaded_bytes)
    if size > limit:
        raise TooLarge(
            f"the dataset takes {size} bytes once stored (float32 arrays); at most {limit} are"
            f" accepted: the larger of HETSERVE_MAX_UPLOAD_BYTES and {STORED_EXPANSION}x the"
            f" {uploaded_bytes} bytes uploaded"
        )


def declared_npz_bytes(data: bytes) -> int | None:
    """What a .npz's arrays take once canonical, from its npy headers alone; None when
    it is not a readable .npz (read_upload then says why)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return npz_declared_bytes(npz)
    except Exception:
        return None


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


def parse_upload(
    filename: str, data: bytes, max_upload_bytes: int, **options: Any
) -> tuple[str, bytes, CanonicalDataset]:
    """Parse and validate an upload (``core.dataset_files.read_upload``, whose keyword options
    it takes); return (format, the canonical .npz bytes, canonical dataset). TooLarge (an
    UploadError) when it would expand past ``max_expanded_bytes`` in memory or past
    ``stored_limit`` on disk (a .npz: from its npy headers, before any array is read)."""
    if filename.lower().endswith(".npz"):
        declared = declared_npz_bytes(data)
        # Past the in-memory cap too: read_upload names that one.
        if declared is not None and declared <= options.get("max_expanded_bytes", declared):
            check_stored_size(declared, len(data), max_upload_bytes)
    fmt, ds = read_upload(filename, data, **options)
    dataset = CanonicalDataset.of(ds)
    canonical = dataset.to_npz_bytes()
    check_stored_size(len(canonical), len(data), max_upload_bytes)
    return fmt, canonical, dataset


def validate_arrays(
    arrays: dict[str, np.ndarray], class_names: list[str] | None
) -> CanonicalDataset:
    """Check shapes, dtypes, finiteness and labels; return the canonical dataset."""
    return CanonicalDataset.of(from_arrays(arrays, class_names))
