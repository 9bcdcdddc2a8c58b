"""One training example of a stored dataset, read the way training reads it (numpy,
Pillow and fsspec only; no torch).

Row ``i`` is the ``i``-th row of the dataset's ``x_train`` as registered (the rows a
model's label issues index, core/label_issues_file.py):

- an image folder registered by reference (manifest format ``imagefolder``): the
  ``i``-th file of the manifest's ``train`` split, opened through ``ImageFiles``, so its
  size and stamp are checked against the manifest first (``DatasetError`` naming the
  file when it changed or went missing) and it is decoded as training decodes it;
- an ``.npz`` registered by reference: the referenced file, checked the same way, then
  its row;
- an uploaded dataset (its canonical ``.npz`` in the artifact store): the row alone,
  read from the uncompressed archive without loading the rest.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from core.dataset_files import DatasetError, read_npy_header
from core.datastore import store_for_root
from core.manifest import ImageFiles, split_images

THUMBNAIL_SIDE = 128  # the largest side of an item's PNG
# The formats of a dataset registered by reference: its artifact is a manifest.
REFERENCE_FORMATS = ("imagefolder", "npz-ref")


def train_locations(manifest: dict[str, Any]) -> list[str] | None:
    """Where each ``x_train`` row of an image-folder manifest lives (``root/path``: an
    absolute path on disk, an ``s3://`` URI in object storage); None for any other
    dataset (its rows are rows of one array)."""
    if manifest.get("format") != "imagefolder":
        return None
    root = store_for_root(manifest["root"]).uri.rstrip("/")
    train = manifest["splits"].get("train", {"paths": []})
    return [f"{root}/{rel}" for rel in train["paths"]]


def train_images(
    manifest: dict[str, Any], s3_endpoint_url: str | None = None, roots: Sequence[str | Path] = ()
) -> ImageFiles:
    """The ``train`` split of an image-folder manifest as ``ImageFiles``, checked as
    training checks it (``open_manifest``): each file's size, stamp and sha256 against the
    manifest as it is opened, and its real path under the dataset ``roots``."""
    store = store_for_root(manifest["root"], s3_endpoint_url, roots)
    return split_images(store, manifest, "train", digests=True)


def npz_row(source: IO[bytes], name: str, index: int) -> np.ndarray:
    """Row ``index`` of array ``name`` in a ``.npz`` (a seekable binary file): only
    that row is read from a stored (uncompressed) member, a C-ordered array."""
    try:
        with zipfile.ZipFile(source) as archive, archive.open(f"{name}.npy") as fp:
            shape, fortran, dtype = read_npy_header(fp)
            if not shape or not 0 <= index < shape[0] or dtype.hasobject:
                raise DatasetError(f"{name} has no row {index}")
            if fortran:  # rows are not contiguous: read the whole array
                return np.asarray(np.lib.format.read_array(fp, allow_pickle=False)[index])
            items = int(np.prod(shape[1:], dtype=np.int64))
            fp.seek(fp.tell() + index * items * dtype.itemsize)
            row = np.frombuffer(fp.read(items * dtype.itemsize), dtype=dtype, count=items)
            return row.reshape(shape[1:])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot read row {index} of {name}: {exc}") from None


def read_train_item(
    manifest_or_file: dict[str, Any] | IO[bytes],
    index: int,
    s3_endpoint_url: str | None = None,
    roots: Sequence[str | Path] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(``x_train[index]``, ``y_train[index]``) of a manifest (``imagefolder`` or
    ``npz-ref``, checked as the module docstring says) or of an open canonical ``.npz``.
    DatasetError when a file by reference changed or went missing."""
    if not isinstance(manifest_or_file, dict):
        return npz_row(manifest_or_file, "x_train", index), npz_row(
            manifest_or_file, "y_train", index
        )
    manifest = manifest_or_file
    if manifest["format"] == "imagefolder":
        pixels = train_images(manifest, s3_endpoint_url, roots).load(index)
        return pixels, np.asarray(manifest["splits"]["train"]["labels"][index])
    store = store_for_root(manifest["root"], s3_endpoint_url, roots)
    f = manifest["file"]
    # The checked file itself, seekable (a local file, an S3 object read by range): only
    # the two rows' bytes are read, not the whole archive.
    with store.open_checked(f["path"], f["size"], f[store.stamp_key]) as opened:
        return npz_row(opened, "x_train", index), npz_row(opened, "y_train", index)


def png_bytes(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """An image row [C, H, W] (C = 1 or 3; values in [0, 1] as decoded for training,
    any other range stretched to it) as a PNG no larger than ``side`` on either side."""
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise DatasetError(f"a row of shape {list(x.shape)} is not a [1|3, H, W] image")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        x = (x - low) / (high - low) if high > low else np.zeros_like(x)
    channels = np.rint(x * 255.0).astype(np.uint8)
    image = Image.fromarray(channels[0] if channels.shape[0] == 1 else channels.transpose(1, 2, 0))
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
