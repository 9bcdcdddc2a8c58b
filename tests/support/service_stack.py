"""A REAL uvicorn process and REAL Celery worker processes on one data_dir, started with
the exact commands of docs/architecture.md (the e2e, browser and client tests' service)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.settings import Settings
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
API_KEY = "e2e-key-0123456789"
START_TIMEOUT_S = 120


@dataclass
class Stack:
    """One API process, its workers, and the settings they share."""

    backend: str
    env: dict[str, str]
    data_dir: Path
    port: int
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        """The same settings the processes read from their environment."""
        prefixed = {
            k.removeprefix("HETSERVE_").lower(): v
            for k, v in self.env.items()
            if k.startswith("HETSERVE_")
        }
        return Settings(**prefixed)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.data_dir.parent / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            return subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def start_api(self) -> None:
        argv = [
            str(BIN / "uvicorn"),
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.api = self._spawn("api", argv)

        def ready():
            if self.api.poll() is not None:
                raise AssertionError(
                    f"API exited with {self.api.returncode}: {self.logs[-1].read_text()[-3000:]}"
                )
            try:
                return (
                    httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200
                )
            except httpx.HTTPError:
                return False

        wait_until(ready, START_TIMEOUT_S, "the API's /readyz")

    def start_worker(self) -> subprocess.Popen:
        argv = [
            str(BIN / "celery"), "-A", "worker.celery_app:celery_app", "worker",
            "--pool=solo", "--concurrency=1", "-Q", "train", "--loglevel=INFO",
            "--hostname", f"e2e-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        worker = self._spawn("worker", argv)
        log = self.logs[-1]
        self.workers.append(worker)

        def ready():
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited with {worker.returncode}: {log.read_text()[-3000:]}"
                )
            return " ready." in log.read_text(errors="replace")

        wait_until(ready, START_TIMEOUT_S, "the worker to be ready")
        return worker

    def kill_worker(self, worker: subprocess.Popen) -> None:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)

    @contextmanager
    def running(self) -> Iterator[Stack]:
        """The API and one worker started; everything stopped on the way out."""
        try:
            self.start_api()
            self.start_worker()
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.api]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
