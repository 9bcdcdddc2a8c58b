"""A dataset by reference's manifest, after registration (``core.dataset_scan`` writes
it): ``check_manifest`` tells whether the files changed since (nothing read: a stat per
file, or a listing); ``open_manifest`` opens it as an ``ArrayDataset`` whose image splits
are ``ImageFiles``, decoded on access with ``core.dataset_files.decode_image``, each file
checked against the manifest as it is opened and read. The worker (training) and the
API (dataset items, corrections) share these. No torch.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.dataset_files import (
    ArrayDataset,
    DatasetError,
    channel_stats,
    decode_image,
    load_dataset,
    standardisation_rows,
)
from core.datastore import DataStore, LocalStore, store_for_root

# 2: the sha256 of an .npz ("file"), and of every image of a folder on disk (the split's
# "sha256" column); a version-1 manifest has neither and is checked by size and stamp only.
MANIFEST_VERSION = 2


def manifest_files(
    manifest: dict[str, Any], store: DataStore | None = None
) -> Iterator[tuple[str, int, int | str | None]]:
    """(relative path, size, stamp) of every file a manifest records."""
    store = store or store_for_root(manifest["root"])
    if manifest["format"] == "npz-ref":
        f = manifest["file"]
        yield f["path"], f["size"], f[store.stamp_key]
        return
    for cols in manifest["splits"].values():
        yield from zip(cols["paths"], cols["sizes"], cols[store.stamps_key], strict=True)


def check_manifest(manifest: dict[str, Any], s3_endpoint_url: str | None = None) -> None:
    """DatasetError naming the first file that is missing or changed (size, or mtime_ns
    on disk, ETag in object storage) since the dataset was registered. Nothing read: one
    stat per file on disk, one listing per 1000 objects."""
    store = store_for_root(manifest["root"], s3_endpoint_url)
    files = list(manifest_files(manifest, store))
    now = store.stamps([rel for rel, _, _ in files])
    for rel, size, stamp in files:
        current = now[rel]
        if current is None:
            raise store.missing(rel)
        if current != (size, stamp):
            raise store.changed(rel, (size, stamp), current)


class ImageFiles:
    """Images in a DataStore, decoded on demand, standing in for an [N, C, H, W] array:
    ``x[i:j]`` decodes those rows (float32 in [0, 1], resized as at predict), ``x[index
    array]`` is a lazy subset, ``x.load(i)`` one image. Given the manifest's ``sizes``
    and ``stamps`` (and ``digests``, the sha256 of each), each file is checked as it is
    opened and read (DatasetError naming it)."""

    ndim = 4

    def __init__(
        self,
        root: str | Path | DataStore,
        paths: list[str],
        size: int,
        grayscale: bool,
        *,
        sizes: list[int] | None = None,
        stamps: list[int | str | None] | None = None,
        digests: Sequence[str] | np.ndarray | None = None,
    ):
        self.store = root if isinstance(root, DataStore) else LocalStore(str(root))
        self.paths = list(paths)
        self.sizes, self.stamps = sizes, stamps
        # Fixed-width bytes, not a million str objects (copied into every loader process).
        self.digests = None if digests is None else np.asarray(digests, dtype="S64")
        self.size, self.grayscale = size, grayscale
        self.num_workers = 0  # the worker sets its DataLoader processes

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 1 if self.grayscale else 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        rel = self.paths[i]
        if self.sizes is None or self.stamps is None:
            f = self.store.open(rel)
        else:
            f = self.store.open_checked(rel, self.sizes[i], self.stamps[i])
        try:
            with f:
                if self.digests is None:
                    return decode_image(f, self.size, self.grayscale, rel)
                data = self.store.check_content(rel, f.read(), self.digests[i].decode())
            return decode_image(io.BytesIO(data), self.size, self.grayscale, rel)
        except OSError as exc:  # e.g. the object changed between its head and its read
            raise DatasetError(f"dataset file {rel} under {self.store.uri}: {exc}") from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            rows = range(len(self))[key]
            if not rows:
                return np.zeros((0, *self.shape[1:]), np.float32)
            return np.stack([self.load(i) for i in rows])
        if isinstance(key, (int, np.integer)):
            return self.load(int(key))
        picked = [int(i) for i in np.asarray(key)]
        subset = ImageFiles(
            self.store,
            [self.paths[i] for i in picked],
            self.size,
            self.grayscale,
            sizes=None if self.sizes is None else [self.sizes[i] for i in picked],
            stamps=None if self.stamps is None else [self.stamps[i] for i in picked],
            digests=None if self.digests is None else self.digests[picked],
        )
        subset.num_workers = self.num_workers
        return subset

    def standardisation(self, limit: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std (C, 1, 1) over up to ``limit`` images, one at a time."""
        c = self.shape[1]
        rows = standardisation_rows(len(self), limit, seed)
        return channel_stats(self.load(int(i)).reshape(c, -1) for i in rows)


def split_images(
    store: DataStore, manifest: dict[str, Any], split: str, *, digests: bool
) -> ImageFiles:
    """One split of an image-folder manifest as ImageFiles on ``store``: each file's size
    and stamp (with ``digests``, also its sha256 where the manifest has one) checked
    against the manifest as it is opened."""
    cols = manifest["splits"][split]
    return ImageFiles(
        store,
        cols["paths"],
        manifest["image_size"],
        manifest["grayscale"],
        sizes=cols["sizes"],
        stamps=cols[store.stamps_key],
        digests=cols.get("sha256") if digests else None,
    )


def open_manifest(
    manifest: dict[str, Any],
    s3_endpoint_url: str | None = None,
    roots: Sequence[str | Path] = (),
) -> ArrayDataset:
    """The dataset a manifest describes, after check_manifest: an ``.npz`` is read
    whole (and its sha256 compared); an image folder becomes ImageFiles (decoded as
    training streams it, each file checked against the manifest as it is opened and
    read). On disk every open is confined to ``roots`` (the allowed dataset roots; the
    dataset's own folder when none is given)."""
    check_manifest(manifest, s3_endpoint_url)
    store = store_for_root(manifest["root"], s3_endpoint_url, roots)
    if manifest["format"] == "npz-ref":
        f = manifest["file"]
        with store.open_checked(f["path"], f["size"], f[store.stamp_key]) as opened:
            data = store.check_content(f["path"], opened.read(), f.get("sha256"))
        return load_dataset(data, "npz")
    arrays: dict[str, Any] = {}
    for split, cols in manifest["splits"].items():
        arrays[f"x_{split}"] = split_images(store, manifest, split, digests=True)
        arrays[f"y_{split}"] = np.asarray(cols["labels"], dtype=np.int64)
    return ArrayDataset(**arrays, class_names=list(manifest["class_names"]))
