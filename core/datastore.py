"""Datasets by reference: image folders and ``.npz`` files that stay where they are, on
local disk or in object storage (``s3://``, the s3 extra), read through one filesystem
interface (``DataStore``: fsspec's local or S3 filesystem under a root).

Why one module of ~700 lines: the layout walk, the manifest and the checked reads are
one contract for both backends (local and s3); each check is where the read it guards is.

``scan_reference`` walks and validates a reference once and returns its manifest (every
file with its size and stamp, and the sha256 of what a backend's stamp does not pin down:
an ``.npz``, and each image of a folder on disk); ``check_manifest`` tells whether the
files changed since; ``open_manifest`` opens it as an ``ArrayDataset`` whose image splits
are ``ImageFiles``, decoded on access with ``core.dataset_files.decode_image``. On disk
every open is confined to the allowed roots again (``LocalStore.open``): a file swapped
for a symlink after registration is refused, not read. The API (registration,
``app/dataset_refs.py``) and the worker (training) share these functions. numpy, Pillow
and fsspec only: no torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.dataset_files import (
    IMAGE_SUFFIXES,
    MAX_EXPANDED_BYTES,
    MAX_IMAGE_SIZE,
    SPLITS,
    ArrayDataset,
    DatasetError,
    TooLarge,
    channel_stats,
    decode_image,
    from_arrays,
    load_dataset,
    read_npz,
    standardisation_rows,
)

# 2: the sha256 of an .npz ("file"), and of every image of a folder on disk (the split's
# "sha256" column); a version-1 manifest has neither and is checked by size and stamp only.
MANIFEST_VERSION = 2
DEFAULT_SAMPLE_DECODE = 32
MAX_FOLDER_FILES = 10_000_000
# check_manifest in object storage: a HEAD per object up to this many, else one listing
HEAD_AT_MOST = 8
S3_EXTRA = "s3:// datasets need the s3 extra: install hetserve[s3] (s3fs)"


class NotAllowed(DatasetError):
    """The path is outside the allowed roots (or a symlink leads outside them): HTTP 403."""


class MissingExtra(DatasetError):
    """The URI needs an optional extra that is not installed (HTTP 422)."""


def within_roots(path: str | Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)


def resolve_reference(path: str | Path, roots: Sequence[str | Path]) -> Path:
    """The real path of a dataset reference; NotAllowed unless it lies under one of
    ``roots`` (after following every symlink, the roots' own included)."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not within_roots(path, real_roots):
        raise NotAllowed(f"{path} is outside the allowed dataset roots")
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class Entry:
    """One name in a listed folder: kind "file", "directory" or "other"; a file's
    size and stamp (what tells that it changed: mtime_ns on disk, the ETag of an object)."""

    name: str
    kind: str
    size: int = 0
    stamp: int | str | None = None


def content_digest(data: bytes) -> str:
    """What a manifest records of a file's bytes: their sha256, hex."""
    return hashlib.sha256(data).hexdigest()


class DataStore:
    """A dataset by reference's folder (or the folder of its ``.npz``) through an fsspec
    filesystem, so that the layout rules, the manifest and its checks are written once
    for every backend: ``LocalStore`` (fsspec's LocalFileSystem) and ``S3Store`` (s3fs).
    Paths below ``root`` are relative, '/'-separated; ``stamp_key`` names a file's stamp
    in the manifest (``stamps_key`` the column of an image folder's split)."""

    stamp_key = "mtime_ns"
    stamps_key = "mtimes_ns"

    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"

    @property
    def fs(self) -> Any:
        raise NotImplementedError

    @property
    def uri(self) -> str:
        """The manifest's ``root``: what ``store_for_root`` opens again."""
        return self.root

    def full(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def entry(self, name: str, info: dict[str, Any]) -> Entry:
        """The Entry of one fsspec ``info`` dict."""
        raise NotImplementedError

    def listdir(self, rel: str) -> list[Entry]:
        """The visible names of a folder (a leading '.' is hidden), sorted."""
        base = self.full(rel)
        entries = []
        for info in self.fs.ls(base, detail=True):
            full = str(info["name"]).rstrip("/")
            name = full.rsplit("/", 1)[-1]
            if full == base.rstrip("/") or not name or name.startswith("."):
                continue  # the folder itself (an object store's folder marker), hidden
            entries.append(self.entry(name, info))
        return sorted(entries, key=lambda e: e.name)

    def info(self, rel: str) -> Entry:
        return self.entry(rel.rsplit("/", 1)[-1], self.fs.info(self.full(rel)))

    def open(self, rel: str) -> IO[bytes]:
        return self.fs.open(self.full(rel), "rb")  # type: ignore[no-any-return]

    def now(self, f: Any) -> tuple[int, int | str | None]:
        """(size, stamp) of an opened file, as it is being read."""
        raise NotImplementedError

    def open_checked(self, rel: str, size: int, stamp: int | str | None) -> IO[bytes]:
        """``open``, or DatasetError naming ``rel`` if it is missing or its size or stamp
        is no longer the manifest's."""
        try:
            f = self.open(rel)
        except FileNotFoundError:
            raise self.missing(rel) from None
        try:
            now = self.now(f)
        except BaseException:
            f.close()
            raise
        if now != (size, stamp):
            f.close()
            raise self.changed(rel, (size, stamp), now)
        return f

    def stamps(self, rels: list[str]) -> dict[str, tuple[int, int | str | None] | None]:
        """(size, stamp) of each of ``rels`` now; None for a missing one."""
        raise NotImplementedError

    def missing(self, rel: str) -> DatasetError:
        return DatasetError(
            f"dataset file {rel} is missing under {self.uri} since the dataset was registered"
        )

    def changed(
        self, rel: str, then: tuple[int, int | str | None], now: tuple[int, int | str | None]
    ) -> DatasetError:
        return DatasetError(
            f"dataset file {rel} under {self.uri} changed since the dataset was registered "
            f"(size {then[0]} -> {now[0]}, {self.stamp_key} {then[1]} -> {now[1]}): "
            "register it again"
        )

    def check_content(self, rel: str, data: bytes, digest: str | None) -> bytes:
        """``data``, or DatasetError naming ``rel`` if its sha256 is not ``digest`` (None:
        the manifest recorded none, nothing to compare)."""
        if digest is not None and content_digest(data) != digest:
            raise DatasetError(
                f"dataset file {rel} under {self.uri} changed since the dataset was registered "
                "(same size and stamp, different content: its sha256 is not the manifest's): "
                "register it again"
            )
        return data


def opened_path(fd: int, path: str) -> str | None:
    """The real path of the file open as ``fd`` (opened by ``path``): on Linux the
    kernel's (``/proc/self/fd``: one readlink, no window between the open and the
    answer); elsewhere ``realpath(path)`` if it is still the opened file (same device
    and inode), else None (replaced meanwhile)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    real = os.path.realpath(path)
    opened = os.fstat(fd)
    try:
        there = os.stat(real)
    except FileNotFoundError:
        return None
    return real if (there.st_dev, there.st_ino) == (opened.st_dev, opened.st_ino) else None


class LocalStore(DataStore):
    """A folder on disk: fsspec's LocalFileSystem lists it; a file's stamp is its
    mtime_ns; a symlink is followed only if it stays within ``roots`` (the real paths of
    the allowed roots; by default the folder itself), else NotAllowed, when it is listed
    and again whenever a file is opened."""

    def __init__(self, root: str, roots: list[Path] | None = None):
        super().__init__(root)
        self.roots = roots if roots is not None else [Path(os.path.realpath(self.root))]

    def open(self, rel: str) -> IO[bytes]:
        """The file, opened and then confined: NotAllowed naming ``rel`` unless the real
        path of what was opened lies under ``roots``. Checked after the open, on the
        opened file, so a symlink swapped in before, during or after the check cannot be
        read; a symlink that stays within the roots (as registration allows) still opens."""
        path = self.full(rel)
        f = open(path, "rb")  # noqa: SIM115 (returned open; closed here on refusal)
        try:
            real = opened_path(f.fileno(), path)
            if real is None:
                raise NotAllowed(
                    f"dataset file {rel} under {self.uri} was replaced as it was opened"
                )
            if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in self._roots):
                raise NotAllowed(
                    f"dataset file {rel} under {self.uri} now leads to {real}, outside the "
                    "allowed dataset roots (replaced by a symlink since it was registered?)"
                )
        except BaseException:
            f.close()
            raise
        return f

    @property
    def _roots(self) -> list[str]:
        return [str(r) for r in self.roots or ()]

    @property
    def fs(self) -> Any:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()

    def entry(self, name: str, info: dict[str, Any]) -> Entry:
        path = str(info["name"])
        if info.get("islink") and self.roots is not None and not within_roots(path, self.roots):
            rel = os.path.relpath(path, self.root)
            raise NotAllowed(f"{rel} is a symlink leading outside the allowed roots")
        st = os.stat(path)  # follows a symlink: the size and mtime_ns of what is read
        kind = (
            "directory"
            if stat.S_ISDIR(st.st_mode)
            else "file"
            if stat.S_ISREG(st.st_mode)
            else "other"
        )
        return Entry(name, kind, int(st.st_size), int(st.st_mtime_ns))

    def now(self, f: Any) -> tuple[int, int | str | None]:
        st = os.fstat(f.fileno())
        return int(st.st_size), int(st.st_mtime_ns)

    def stamps(self, rels: list[str]) -> dict[str, tuple[int, int | str | None] | None]:
        out: dict[str, tuple[int, int | str | None] | None] = {}
        for rel in rels:  # one stat per file, nothing read
            try:
                st = os.stat(self.full(rel))
            except FileNotFoundError:
                out[rel] = None
            else:
                out[rel] = (int(st.st_size), int(st.st_mtime_ns))
        return out


class S3Store(DataStore):
    """A prefix in an S3 bucket (``root`` is "bucket/prefix") through s3fs, imported only
    here; credentials from the standard AWS variables, ``endpoint_url`` for MinIO and
    the like. A file's stamp is the object's ETag. The filesystem is made anew in each
    process (s3fs is not fork-safe: the DataLoader's processes each open their own)."""

    stamp_key = "etag"
    stamps_key = "etags"

    def __init__(self, root: str, endpoint_url: str | None = None):
        super().__init__(root)
        self.endpoint_url = endpoint_url
        self._fs: Any = None
        self._pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_fs": None, "_pid": 0}

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._pid = s3_filesystem(self.endpoint_url), os.getpid()
        return self._fs

    @property
    def uri(self) -> str:
        return f"s3://{self.root}"

    @staticmethod
    def etag(info: dict[str, Any]) -> str | None:
        etag = info.get("ETag")
        return None if etag is None else str(etag).strip('"')

    def entry(self, name: str, info: dict[str, Any]) -> Entry:
        kind = {"file": "file", "directory": "directory"}.get(info.get("type", ""), "other")
        return Entry(name, kind, int(info.get("size") or 0), self.etag(info))

    def now(self, f: Any) -> tuple[int, int | str | None]:
        # s3fs heads the object when it opens it and reads it with If-Match on that ETag:
        # what is compared here is what is read.
        return int(f.details["size"]), self.etag(f.details)

    def stamps(self, rels: list[str]) -> dict[str, tuple[int, int | str | None] | None]:
        out: dict[str, tuple[int, int | str | None] | None] = {}
        if len(rels) <= HEAD_AT_MOST:  # an .npz: its root is a folder that may hold much else
            for rel in rels:
                try:
                    info = self.fs.info(self.full(rel))
                except FileNotFoundError:
                    out[rel] = None
                else:
                    out[rel] = (int(info["size"]), self.etag(info))
            return out
        listing = self.fs.find(self.root, detail=True)  # one LIST per 1000 objects
        for rel in rels:
            info = listing.get(self.full(rel))
            out[rel] = None if info is None else (int(info["size"]), self.etag(info))
        return out


def s3_filesystem(endpoint_url: str | None) -> Any:
    """An s3fs filesystem, uncached (a changed object must be seen): MissingExtra
    without the s3 extra."""
    try:
        import s3fs
    except ImportError:
        raise MissingExtra(S3_EXTRA) from None
    return s3fs.S3FileSystem(
        endpoint_url=endpoint_url, skip_instance_cache=True, use_listings_cache=False
    )


def s3_key(uri: str) -> str:
    """The "bucket/prefix" of ``s3://bucket/prefix``; DatasetError for one that a key
    comparison could misread (no bucket, an empty, '.' or '..' segment)."""
    parts = uri.removeprefix("s3://").rstrip("/").split("/")
    if not parts[0] or any(p in ("", ".", "..") for p in parts):
        raise DatasetError(f"{uri} is not s3://bucket/prefix (no empty, '.' or '..' part)")
    return "/".join(parts)


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def store_for_root(
    root: str, s3_endpoint_url: str | None = None, roots: Sequence[str | Path] = ()
) -> DataStore:
    """The store of a manifest's ``root``; on disk confined to the local ``roots`` (the
    allowed dataset roots), or to ``root`` itself when none is given."""
    if is_s3(root):
        return S3Store(s3_key(root), s3_endpoint_url)
    local = [Path(os.path.realpath(r)) for r in roots if not is_s3(r)]
    return LocalStore(root, local or None)


def locate(
    path: str | Path, roots: Sequence[str | Path], s3_endpoint_url: str | None
) -> tuple[DataStore, str | None]:
    """(the store of a folder, None), or (the store of its folder, name) for a file.
    NotAllowed outside every root; DatasetError if it does not exist."""
    if is_s3(path):
        key = s3_key(str(path))
        s3_roots = [s3_key(str(r)) for r in roots if is_s3(r)]
        if not any(key == r or key.startswith(r + "/") for r in s3_roots):
            raise NotAllowed(f"{path} is outside the allowed dataset roots")
        store = S3Store(key, s3_endpoint_url)
        try:
            info = store.fs.info(key)
        except FileNotFoundError:
            raise DatasetError(f"{path} does not exist") from None
        if info.get("type") == "file":
            parent, name = key.rsplit("/", 1)
            return S3Store(parent, s3_endpoint_url), name
        return store, None
    real_roots = [Path(os.path.realpath(r)) for r in roots if not is_s3(r)]
    if not os.path.lexists(path):
        raise DatasetError(f"{path} does not exist")
    real = resolve_reference(path, real_roots)
    if real.is_file():
        return LocalStore(str(real.parent), real_roots), real.name
    if not real.is_dir():
        raise DatasetError(f"{path} is neither a folder nor a .npz file")
    return LocalStore(str(real), real_roots), None


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
