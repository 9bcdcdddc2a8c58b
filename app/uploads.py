"""Dataset uploads → the canonical dataset the API stores (numpy + Pillow, no torch).

Reading and validation live once, in models.data (torch free): the worker loads the
stored file with the same functions. This module adds what only the HTTP side needs:
the stored form (a canonical ``.npz``) and the facts a dataset row records.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from models.data import ArrayDataset, from_arrays, read_upload
from models.data import DatasetError as UploadError
from models.data import decode_image as decode_image
from models.data import read_image_zip as read_image_zip

__all__ = [
    "CanonicalDataset",
    "UploadError",
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
        np.savez(buffer, **self.arrays, class_names=np.asarray(self.class_names, dtype=str))
        return buffer.getvalue()


def parse_upload(
    filename: str, data: bytes, *, image_size: int | None = None, grayscale: bool = False
) -> tuple[str, CanonicalDataset]:
    """Parse and validate an upload; return (format, canonical dataset)."""
    fmt, ds = read_upload(filename, data, image_size=image_size, grayscale=grayscale)
    return fmt, CanonicalDataset.of(ds)


def validate_arrays(
    arrays: dict[str, np.ndarray], class_names: list[str] | None
) -> CanonicalDataset:
    """Check shapes, dtypes, finiteness and labels; return the canonical dataset."""
    return CanonicalDataset.of(from_arrays(arrays, class_names))
