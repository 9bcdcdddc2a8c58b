"""The image names the deploy_engine tests build, and the wall times and image sizes they
record (printed by tests/deploy_engine/conftest.py at the end of the session)."""

from __future__ import annotations

import time

API_IMAGE = "hetserve-api:enginetest"
WORKER_IMAGE = "hetserve-worker:enginetest-cpu"
TIMES: dict[str, float] = {}  # phase -> seconds, printed at the end of the session
SIZES: dict[str, float] = {}  # image -> MB


class timed:
    def __init__(self, phase: str):
        self.phase = phase

    def __enter__(self):
        self.t0 = time.monotonic()

    def __exit__(self, *exc):
        TIMES[self.phase] = TIMES.get(self.phase, 0.0) + time.monotonic() - self.t0
        print(f"[deploy_engine] {self.phase}: {TIMES[self.phase]:.1f} s", flush=True)
