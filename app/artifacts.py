"""Content-addressed files under ``data_dir``.

    data_dir/artifacts/<sha256[:2]>/<sha256><suffix>   datasets (.npz), models (.onnx)
    data_dir/checkpoints/<job_id>/                     training checkpoints

A file is written to a temporary name in the same folder and renamed into place, so a
reader (or a process killed mid-write) never sees half a file; equal content is stored
once. The store keeps paths relative to data_dir (``resolve`` turns them back).

Storing bytes that are already there refreshes the file's modification time: garbage
collection (app/retention/gc.py) leaves a file no row refers to alone until it is older than
``gc_grace_s``, and an upload or export in flight writes (or re-writes) its file before
its row commits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

CHUNK = 1 << 20
TMP_PREFIX = ".tmp-"  # a file being written (renamed into place when complete)
ASIDE_PREFIX = ".del-"  # a file set aside, deleted once its delete commits


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir).resolve()
        self.root = self.data_dir / "artifacts"

    def relative_path(self, sha256: str, suffix: str) -> str:
        return f"artifacts/{sha256[:2]}/{sha256}{suffix}"

    def resolve(self, relative: str) -> Path:
        return self.data_dir / relative

    def put_bytes(self, data: bytes, suffix: str) -> tuple[str, str]:
        """Store bytes; return (relative path, sha256)."""
        sha256 = hashlib.sha256(data).hexdigest()
        relative = self.relative_path(sha256, suffix)
        target = self.resolve(relative)
        if not self._touch(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return relative, sha256

    def put_file(self, source: Path, suffix: str) -> tuple[str, str]:
        """Copy a file in (the source stays); return (relative path, sha256)."""
        sha256 = sha256_file(source)
        relative = self.relative_path(sha256, suffix)
        target = self.resolve(relative)
        if not self._touch(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return relative, sha256

    @staticmethod
    def _touch(target: Path) -> bool:
        """Refresh an existing file's modification time; False when it is not there."""
        try:
            os.utime(target)
        except FileNotFoundError:
            return False
        except PermissionError:  # a read-only copy (someone else's file): still there
            return target.exists()
        return True

    def remove(self, relative: str) -> None:
        self.resolve(relative).unlink(missing_ok=True)

    def set_aside(self, relative: str) -> Path | None:
        """Rename a file out of its content address (to delete once the transaction
        that dropped its last reference committed); None if it was not there."""
        target = self.resolve(relative)
        aside = target.with_name(f"{ASIDE_PREFIX}{os.getpid()}-{os.urandom(4).hex()}-{target.name}")
        try:
            os.replace(target, aside)
        except FileNotFoundError:
            return None
        return aside

    def put_back(self, aside: Path | None, relative: str) -> None:
        """Undo set_aside (the transaction rolled back)."""
        if aside is not None:
            os.replace(aside, self.resolve(relative))

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.data_dir / "checkpoints" / job_id
