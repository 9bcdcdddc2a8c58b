"""/readyz is 503 while the data folder takes no new file (read-only or full volume)."""

from __future__ import annotations

import errno
import os

from app import disk_space
from app.routers import health
from tests.support.service_client import client_for, make_settings


def test_readyz_is_503_while_the_data_folder_is_read_only(tmp_path, monkeypatch):
    settings = make_settings(tmp_path / "data")
    with client_for(settings) as client:
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["data_dir"] == "ok", r.text

        if os.geteuid() != 0:
            settings.data_dir.chmod(0o555)
        else:  # root writes through file modes: fail the way a read-only mount does

            def read_only(*_args, **_kwargs):
                raise OSError(errno.EROFS, "Read-only file system")

            monkeypatch.setattr(health.tempfile, "mkstemp", read_only)
        try:
            r = client.get("/readyz")
        finally:
            settings.data_dir.chmod(0o755)
            monkeypatch.undo()
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "unavailable" and "Read-only" in r.json()["data_dir"]
        assert client.get("/readyz").status_code == 200
        assert [p.name for p in settings.data_dir.iterdir() if p.name.startswith(".readyz")] == []


def test_readyz_reports_low_space_against_min_free_bytes(tmp_path):
    free = disk_space.free_bytes(tmp_path)
    settings = make_settings(tmp_path / "data", min_free_bytes=free + (1 << 40))
    with client_for(settings) as client:
        r = client.get("/readyz")
    assert r.status_code == 200, r.text  # predictions need no disk: still in rotation
    assert r.json()["disk_space"].startswith("low:"), r.json()
    assert "HETSERVE_MIN_FREE_BYTES" in r.json()["disk_space"]
    assert (settings.data_dir / disk_space.RESERVE_NAME).stat().st_size == disk_space.RESERVE_BYTES
    with client_for(make_settings(tmp_path / "data", min_free_bytes=0)) as client:
        assert client.get("/readyz").json()["disk_space"] == "ok"
