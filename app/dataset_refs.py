"""Datasets by reference: a ``file://`` URI (or ``s3://bucket/prefix`` with the s3 extra)
under HETSERVE_DATASET_ROOTS, validated in place (numpy + Pillow, core.dataset_scan,
listing through fsspec) and recorded as a manifest: every file's relative path, label, size and
stamp (mtime on disk, ETag in object storage), so a worker can tell that the data
changed under a job.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from app.schemas import DatasetReference
from app.settings import Settings
from core.dataset_files import DatasetError
from core.dataset_scan import scan_reference
from core.datastore import NotAllowed


class ReferenceRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def reference_location(uri: str) -> str:
    """What scan_reference reads: the absolute path of a ``file://`` URI, an ``s3://``
    URI as it is; ReferenceRefused (422) for anything else."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ReferenceRefused(422, "an s3 URI needs a bucket: s3://bucket/prefix")
        return uri
    if parts.scheme != "file":
        raise ReferenceRefused(
            422,
            f"unsupported URI scheme {parts.scheme!r}: use file:///abs/path or s3://bucket/prefix",
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
    location = reference_location(ref.uri)
    try:
        manifest = scan_reference(
            location,
            roots,
            image_size=ref.image_size,
            grayscale=ref.grayscale,
            sample=settings.dataset_sample_decode,
            max_expanded_bytes=settings.max_expanded_bytes,
            s3_endpoint_url=settings.s3_endpoint_url,
        )
    except NotAllowed as exc:
        raise ReferenceRefused(403, str(exc)) from None
    except DatasetError as exc:  # MissingExtra included
        raise ReferenceRefused(422, str(exc)) from None
    except OSError as exc:  # s3fs: PermissionError for denied credentials, etc.
        raise ReferenceRefused(422, f"cannot read {location}: {exc.strerror or exc}") from None
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return manifest, data
