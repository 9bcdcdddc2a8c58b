"""docker/worker-entrypoint.py: one worker per GPU. Real processes and real flocks on a
temporary slots folder; the GPU list comes from WORKER_GPUS instead of nvidia-smi."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support.compose import REPO

ENTRYPOINT = REPO / "docker" / "worker-entrypoint.py"
# Stands in for the celery worker: report the GPU it was given, then live until killed.
PRINT_GPU = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'cpu'), flush=True); import time; time.sleep(60)"


def start(slots, gpus: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("WORKER_GPUS", "CUDA_VISIBLE_DEVICES")}
    env |= {"GPU_SLOTS_DIR": str(slots), "PATH": "/nonexistent"}  # no nvidia-smi on PATH
    if gpus is not None:
        env["WORKER_GPUS"] = gpus
    return subprocess.Popen([sys.executable, str(ENTRYPOINT), sys.executable, "-c", PRINT_GPU],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_each_worker_claims_its_own_gpu_and_extra_workers_wait(tmp_path, monkeypatch):
    workers = []
    try:
        workers = [start(tmp_path, "GPU-aaa,GPU-bbb") for _ in range(2)]
        given = {w: w.stdout.readline().strip() for w in workers}
        assert sorted(given.values()) == ["GPU-aaa", "GPU-bbb"]
        workers.append(start(tmp_path, "GPU-aaa,GPU-bbb"))
        # the third waits: all GPUs are held (it says so once on stderr)
        time.sleep(1.0)
        assert workers[2].poll() is None
        os.set_blocking(workers[2].stdout.fileno(), False)
        assert workers[2].stdout.readline() == ""
        # a worker ends (as a killed container would): its GPU goes to the waiting one
        workers[0].kill()
        workers[0].wait()
        os.set_blocking(workers[2].stdout.fileno(), True)
        assert workers[2].stdout.readline().strip() == given[workers[0]]
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert "waiting for one to free up" in workers[2].stderr.read()


def test_no_gpu_runs_the_command_unchanged(tmp_path):
    for gpus in ("", None):  # set empty (the CPU override), or nothing found (no nvidia-smi)
        w = start(tmp_path, gpus)
        try:
            assert w.stdout.readline().strip() == "cpu"
        finally:
            w.kill()
            w.wait()
    assert not list(tmp_path.iterdir())  # no GPU claimed
