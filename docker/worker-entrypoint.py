#!/usr/bin/env python3
"""Worker container entrypoint: claim one GPU of this host, then exec the worker on it.

`docker compose up --scale worker=N` starts N identical containers, and a Docker device
request cannot tell them apart: with ``count: 1`` every replica would get the *same* first
GPU. So the compose file hands each worker all of the host's GPUs and each worker claims
one for itself: it takes an exclusive ``flock`` on ``<slots dir>/<gpu uuid>`` (a volume
local to the host, shared by its workers), keeps the lock's file descriptor open across
``exec`` so the lock lives exactly as long as the worker process (the kernel drops it
however the process ends), sets ``CUDA_VISIBLE_DEVICES=<gpu uuid>`` and execs the command.
One training process per GPU: CUDA in a forked child breaks when the parent touched it.

- No GPU visible (the CPU override, no NVIDIA runtime): exec the command unchanged.
- More workers than GPUs: the extra ones wait until a GPU frees up.
- ``WORKER_GPUS=uuid,uuid`` replaces discovery through ``nvidia-smi`` (set and empty:
  no GPU);
  ``GPU_SLOTS_DIR`` the lock folder (default /var/lib/hetserve/gpu-slots).

Stdlib only: it runs before anything else in the container.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time

DEFAULT_SLOTS_DIR = "/var/lib/hetserve/gpu-slots"
RETRY_S = 1.0


def visible_gpus() -> list[str]:
    override = os.environ.get("WORKER_GPUS")
    if override is not None:  # set, even empty: no discovery
        return [gpu.strip() for gpu in override.split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        say(f"nvidia-smi failed ({listed.stderr.strip()}); starting without a GPU")
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def claim_gpu(gpus: list[str], slots_dir: str) -> tuple[str, int]:
    """Block until one GPU's lock is ours; return its uuid and the lock's descriptor."""
    os.makedirs(slots_dir, exist_ok=True)
    waiting = False
    while True:
        for gpu in gpus:
            fd = os.open(os.path.join(slots_dir, gpu), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return gpu, fd
        if not waiting:
            say(f"all {len(gpus)} GPUs of this host have a worker; waiting for one to free up")
            waiting = True
        time.sleep(RETRY_S)


def say(message: str) -> None:
    print(f"worker-entrypoint: {message}", file=sys.stderr, flush=True)


def main(command: list[str]) -> None:
    if not command:
        sys.exit("usage: worker-entrypoint.py COMMAND [ARG...]")
    gpus = visible_gpus()
    if gpus:
        gpu, fd = claim_gpu(gpus, os.environ.get("GPU_SLOTS_DIR", DEFAULT_SLOTS_DIR))
        os.set_inheritable(fd, True)  # the lock must outlive exec
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        say(f"using GPU {gpu}")
    else:
        say("no GPU visible: training runs on the CPU")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
