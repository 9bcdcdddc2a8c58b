"""Datasets by reference, where they are: one filesystem interface (``DataStore``:
fsspec's local or S3 filesystem under a root) for image folders and ``.npz`` files on
local disk or in object storage (``s3://``, the s3 extra).

A store lists a folder (``listdir``, the layout walk's one primitive), gives each file's
size and stamp (mtime_ns on disk, the ETag of an object), opens a file checked against
what a manifest recorded (``open_checked``, ``check_content``) and, on disk, confines
every open to the allowed roots again (``LocalStore.open``): a file swapped for a symlink
after registration is refused, not read. ``locate`` and ``store_for_root`` give the
store of a reference and of a manifest's root.

Built on it: ``core.dataset_scan`` (a reference walked and validated into its manifest)
and ``core.manifest`` (a manifest checked and opened as a dataset). numpy, Pillow and
fsspec only: no torch.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.dataset_files import DatasetError

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
