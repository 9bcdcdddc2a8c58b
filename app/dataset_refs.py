"""Datasets by reference: a ``file://`` URI under HETSERVE_DATASET_ROOTS, validated in
place (numpy + Pillow, models.data) and recorded as a manifest: every file's relative
path, label, size and mtime, so a worker can tell that the data changed under a job.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from app.schemas import DatasetReference
from app.settings import Settings
from models.data import DatasetError, NotAllowed, scan_reference


class ReferenceRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def local_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        raise ReferenceRefused(422, "s3:// needs the s3fs extra: not supported here")
    if parts.scheme != "file":
        raise ReferenceRefused(
            422, f"unsupported URI scheme {parts.scheme!r}: use file:///abs/path"
        )
    if parts.netloc not in ("", "localhost"):
        raise ReferenceRefused(
            422, f"file URI with a host ({parts.netloc!r}): use file:///abs/path"
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ReferenceRefused(422, "the file URI must hold an absolute path")
    return path


def scan_uri(ref: DatasetReference, settings: Settings) -> tuple[dict, bytes]:
    """(manifest, its canonical JSON bytes); ReferenceRefused with the HTTP status."""
    roots = settings.dataset_root_list
    if not roots:
        raise ReferenceRefused(
            403, "registration by reference is off (HETSERVE_DATASET_ROOTS unset)"
        )
    path = local_path(ref.uri)
    try:
        manifest = scan_reference(
            path,
            roots,
            image_size=ref.image_size,
            grayscale=ref.grayscale,
            sample=settings.dataset_sample_decode,
            max_expanded_bytes=settings.max_expanded_bytes,
        )
    except NotAllowed as exc:
        raise ReferenceRefused(403, str(exc)) from None
    except DatasetError as exc:
        raise ReferenceRefused(422, str(exc)) from None
    except OSError as exc:
        raise ReferenceRefused(422, f"cannot read {path}: {exc.strerror or exc}") from None
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return manifest, data
