"""Registration by reference: ``scan_reference`` walks and validates an image folder or
an ``.npz`` where it is (on disk or in object storage, through a ``core.datastore``
store) and returns its manifest (``core.manifest``): every file with its size and stamp,
and the sha256 of what a backend's stamp does not pin down (an ``.npz``, and each image
of a folder on disk). The API calls it (``app/dataset_refs.py``); the layout rules are
written once, against ``DataStore.listdir``, for both backends. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.dataset_files import (
    IMAGE_SUFFIXES,
    MAX_EXPANDED_BYTES,
    MAX_IMAGE_SIZE,
    SPLITS,
    DatasetError,
    TooLarge,
    decode_image,
    from_arrays,
    read_npz,
)
from core.datastore import DataStore, LocalStore, content_digest, locate
from core.manifest import MANIFEST_VERSION

DEFAULT_SAMPLE_DECODE = 32
MAX_FOLDER_FILES = 10_000_000


def scan_reference(
    path: str | Path,
    roots: Sequence[str | Path],
    *,
    image_size: int = 32,
    grayscale: bool = False,
    sample: int = DEFAULT_SAMPLE_DECODE,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
    s3_endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Validate a dataset in place and return its manifest: an image-folder tree
    (``train/<class>/*.png|jpg``, optional ``val/`` and ``test/``) or an ``.npz`` file,
    a local path or an ``s3://bucket/prefix`` URI. ``roots`` may hold both kinds.
    NotAllowed (403) for a path outside ``roots`` or a symlink leading out of them;
    DatasetError (422) for a bad layout or an undecodable sample image; MissingExtra
    (422) for s3:// without s3fs."""
    store, name = locate(path, roots, s3_endpoint_url)
    if name is not None:
        if not name.lower().endswith(".npz"):
            raise DatasetError(f"{path} is a file but not a .npz: give a .npz or a folder")
        return _scan_npz(store, name, max_expanded_bytes)
    return _scan_folder(store, image_size, grayscale, sample)


def _scan_npz(store: DataStore, name: str, max_expanded_bytes: int) -> dict[str, Any]:
    entry = store.info(name)  # before the read: a change after it fails the job, never passes
    if entry.size > max_expanded_bytes:  # refused from its size, never read
        raise TooLarge(
            f"{name} is {entry.size} bytes, at most {max_expanded_bytes} are accepted "
            "(HETSERVE_MAX_EXPANDED_BYTES)"
        )
    with store.open(name) as f:
        data = f.read()
    ds = from_arrays(*read_npz(data, max_expanded_bytes=max_expanded_bytes))
    return {
        "version": MANIFEST_VERSION,
        "format": "npz-ref",
        "root": store.uri,
        "file": {
            "path": name,
            "size": entry.size,
            store.stamp_key: entry.stamp,
            "sha256": content_digest(data),
        },
        "class_names": ds.class_names,
        "task": ds.task,
        "input_shape": ds.input_shape,
        "counts": ds.counts(),
    }


def _scan_folder(store: DataStore, size: int, grayscale: bool, sample: int) -> dict[str, Any]:
    if not 4 <= size <= MAX_IMAGE_SIZE:
        raise DatasetError(f"image_size must be between 4 and {MAX_IMAGE_SIZE}, got {size}")
    top = {e.name: e for e in store.listdir("")}
    if "train" not in top or top["train"].kind != "directory":
        raise DatasetError(f"{store.uri} has no train/ folder (train/<class>/*.png|jpg)")
    unknown = sorted(set(top) - set(SPLITS))
    if unknown:
        raise DatasetError(f"{store.uri} holds {unknown}: only train/, val/ and test/ are read")
    splits: dict[str, dict[str, Any]] = {}
    total = 0
    # On disk an mtime can be set back (os.utime): each image's sha256 is recorded, one
    # read of the folder (no decode) at registration. In object storage the ETag, which
    # every read is made conditional on (If-Match), stands for the content.
    hashed = isinstance(store, LocalStore)
    class_names: list[str] = []
    for split in SPLITS:
        if split not in top:
            continue
        if top[split].kind != "directory":
            raise DatasetError(f"{split} is not a folder")
        classes = store.listdir(split)
        for e in classes:
            if e.kind != "directory":
                raise DatasetError(
                    f"{split}/{e.name} is not a class folder (<split>/<class>/<image>)"
                )
        if split == "train":
            class_names = [e.name for e in classes]
            if len(class_names) < 2:
                raise DatasetError(f"need at least 2 classes, train/ has {len(class_names)}")
        index = {name: i for i, name in enumerate(class_names)}
        cols: dict[str, list[Any]] = {"paths": [], "labels": [], "sizes": [], store.stamps_key: []}
        if hashed:
            cols["sha256"] = []
        for e in classes:
            if e.name not in index:
                raise DatasetError(f"{split}/ has a class not in train/: {e.name!r}")
            images = store.listdir(f"{split}/{e.name}")
            if not images and split == "train":
                raise DatasetError(f"train/{e.name}/ holds no images")
            for image in images:
                rel = f"{split}/{e.name}/{image.name}"
                if image.kind != "file":
                    raise DatasetError(f"{rel} is not <split>/<class>/<image> (a folder?)")
                if not image.name.lower().endswith(IMAGE_SUFFIXES):
                    raise DatasetError(f"{rel} is not a .png or .jpg image")
                cols["paths"].append(rel)
                cols["labels"].append(index[e.name])
                cols["sizes"].append(image.size)
                cols[store.stamps_key].append(image.stamp)
                if hashed:
                    with store.open(rel) as f:
                        cols["sha256"].append(content_digest(f.read()))
        total += len(cols["paths"])
        if total > MAX_FOLDER_FILES:
            raise DatasetError(f"more than {MAX_FOLDER_FILES} images: not accepted")
        if cols["paths"]:
            splits[split] = cols
    manifest = {
        "version": MANIFEST_VERSION,
        "format": "imagefolder",
        "root": store.uri,
        "image_size": size,
        "grayscale": grayscale,
        "class_names": class_names,
        "task": "multiclass",
        "input_shape": [1 if grayscale else 3, size, size],
        "counts": {f"num_{s}": len(splits.get(s, {"paths": []})["paths"]) for s in SPLITS},
        "splits": splits,
    }
    # A sample spread over every split must decode, as training will decode it.
    everything = [p for s in splits.values() for p in s["paths"]]
    for i in np.unique(
        np.linspace(0, len(everything) - 1, min(sample, len(everything))).astype(int)
    ):
        with store.open(everything[i]) as f:
            decode_image(f, size, grayscale, everything[i])
    return manifest
