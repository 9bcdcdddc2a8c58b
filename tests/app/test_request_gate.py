"""The request gate against a real uvicorn: the key and the body limit are checked before
the body is read, and nothing larger than the limit is ever spooled to disk."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.model_serving import AUTH, live_server, settings_env

MAX_UPLOAD = 2 * 1024 * 1024
MAX_JSON = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("gate")
    spool = tmp_path_factory.mktemp("spool")
    env = settings_env(data, max_upload_bytes=MAX_UPLOAD, max_json_body_bytes=MAX_JSON)
    env["TMPDIR"] = str(spool)  # where Starlette's multipart parser spools file parts
    with live_server(env) as url:
        port = int(url.rsplit(":", 1)[1])
        yield {"url": url, "port": port, "spool": spool, "pid": server_pid(port)}


def server_pid(port: int) -> int:
    """The uvicorn process listening on ``port`` (one worker: one process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(port).encode() in cmdline and any(b"uvicorn" in part for part in cmdline):
            return int(entry.name)
    raise AssertionError(f"no uvicorn process on port {port}")


def spooled_bytes(pid: int, folder: Path) -> int:
    """Bytes in the files under ``folder`` the process holds open (deleted or not:
    TemporaryFile has no name on Linux)."""
    total = 0
    fds = Path(f"/proc/{pid}/fd")
    for fd in list(fds.iterdir()) if fds.exists() else []:
        try:
            if os.readlink(fd).startswith(str(folder)):
                total += os.stat(fd).st_size
        except OSError:
            continue
    return total


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, str]:
    """Send ``head`` (and ``body``), then read the response: (status, raw text)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n")
        if body:
            try:
                sock.sendall(body)
            except OSError:
                pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 40:
                    text = b"".join(chunks).decode(errors="replace")
                    if '"detail"' in text:
                        break
        except (ConnectionResetError, TimeoutError):
            pass
    text = b"".join(chunks).decode(errors="replace")
    assert text.startswith("HTTP/1.1 "), text
    return int(text.split()[1]), text


def upload_head(port: int, length: int, key: str | None) -> str:
    lines = [
        "POST /v1/datasets HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: multipart/form-data; boundary=xyz",
        f"Content-Length: {length}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return "\r\n".join(lines) + "\r\n"


def test_no_key_and_a_huge_declared_body_is_401_at_once_with_nothing_spooled(server):
    start = time.monotonic()
    part = b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.npz\r\n\r\n"
    status, text = raw_request(
        server["port"], upload_head(server["port"], 3 * 1024**3, None), part + b"\0" * (1 << 20)
    )
    assert status == 401 and "missing API key" in text
    assert time.monotonic() - start < 3
    assert spooled_bytes(server["pid"], server["spool"]) == 0
    assert sum(p.stat().st_size for p in server["spool"].rglob("*") if p.is_file()) < 4096


def test_key_and_an_over_limit_declared_body_is_413_before_the_body_is_sent(server):
    key = AUTH["Authorization"].split()[1]
    start = time.monotonic()
    status, text = raw_request(server["port"], upload_head(server["port"], 1536 * 1024**2, key))
    assert status == 413 and str(MAX_UPLOAD) in text
    assert time.monotonic() - start < 3


def test_a_chunked_upload_is_cut_off_at_the_limit_and_never_spooled_past_it(server):
    stop, peak = threading.Event(), [0]

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], spooled_bytes(server["pid"], server["spool"]))
            time.sleep(0.002)

    def body():  # 16 MB without a Content-Length, slowly enough to be watched
        yield b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.npz\r\n\r\n"
        for _ in range(64):
            yield b"\0" * (256 * 1024)
            time.sleep(0.005)
        yield b"\r\n--xyz--\r\n"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = httpx.post(
            f"{server['url']}/v1/datasets",
            content=body(),
            headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"},
            timeout=30,
        )
    finally:
        stop.set()
        watcher.join()
    assert r.status_code == 413, r.text
    assert peak[0] <= MAX_UPLOAD + 64 * 1024, peak[0]


def test_a_20_mb_json_body_is_413_quickly_declared_or_chunked(server):
    big = json.dumps({"dataset_id": "x", "pad": "y" * (20 * 1024 * 1024)}).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    start = time.monotonic()
    r = httpx.post(f"{server['url']}/v1/jobs", content=big, headers=headers, timeout=30)
    assert r.status_code == 413 and r.json()["detail"].endswith(f"{MAX_JSON} bytes"), r.text
    assert time.monotonic() - start < 3

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    r = httpx.post(f"{server['url']}/v1/jobs", content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413 and r.json()["detail"].startswith("request body exceeds"), r.text


def test_healthz_stays_responsive_while_a_large_allowed_body_is_handled(server):
    # Just under the limit, many small values: the slowest kind of JSON to parse.
    body = json.dumps({"dataset_id": "x", "pad": [0.5] * (MAX_JSON // 6)}).encode()
    assert len(body) < MAX_JSON
    headers = {**AUTH, "Content-Type": "application/json"}
    latencies, done = [], threading.Event()

    def poll():
        with httpx.Client(base_url=server["url"], timeout=10) as client:
            while not done.is_set():
                start = time.monotonic()
                assert client.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - start)
                time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        for _ in range(3):
            r = httpx.post(f"{server['url']}/v1/jobs", content=body, headers=headers, timeout=30)
            assert r.status_code in (422, 400), r.text  # no such dataset / not a job spec
            assert len(r.content) < 4096  # the error echoes an excerpt, not the body
    finally:
        done.set()
        poller.join()
    assert latencies and max(latencies) < 1.0, max(latencies)
