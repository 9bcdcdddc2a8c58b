"""``hetserve up``: migrations, then the API and one worker as child processes on embedded
defaults, supervised until Ctrl-C (what ``make run`` runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from app.cli.arguments import Commands
from app.cli.connect import client_host
from app.cli.output import CliError
from app.settings import Settings

# docs/architecture.md entry points; `python -m` so the children use this interpreter's venv.
API_COMMAND = ["-m", "uvicorn", "app.main:app"]
WORKER_COMMAND = (
    "-m celery -A worker.celery_app:celery_app worker --pool=solo --concurrency=1 -Q train"
    " --loglevel=INFO"
).split()


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None when it can), checked the way uvicorn
    binds (SO_REUSEADDR: a port in TIME_WAIT is free, one with a listener is not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def api_process(
    settings: Settings, data_dir: Path, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the API child of ``up``: ``settings.resolved_api_workers``
    uvicorn processes; with more than one, /metrics sums them through their files in one
    folder (app/serving/metrics.py), ``<data_dir>/metrics``, emptied here for each start."""
    workers = settings.resolved_api_workers
    address = ["--host", settings.host, "--port", str(settings.port), "--workers", str(workers)]
    argv = [sys.executable, *API_COMMAND, *address]
    api_env = env | {"HETSERVE_AUTO_MIGRATE": "false"}  # up migrated, once
    if workers > 1 and not api_env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        api_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return argv, api_env


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, start the API (``HETSERVE_API_WORKERS`` processes) and one worker, print
    URL and key, stop both on a signal.

    The children run in their own process group, so a terminal's Ctrl-C reaches only this
    process, which then stops each child exactly once: SIGTERM (uvicorn: graceful; Celery:
    warm shutdown), after ``--stop-timeout`` SIGQUIT to Celery (cold: a running job is
    left to be redelivered and resumes from its checkpoint), then SIGKILL.

    A taken port is refused before anything starts: otherwise whatever already listens
    there (say another ``hetserve up``) would answer our health check.
    """
    from app import db
    from app.auth import load_or_create_keys

    env_settings = Settings()
    data_dir = env_settings.data_dir.resolve()
    settings = Settings(data_dir=data_dir)
    if reason := port_in_use(settings.host, settings.port):
        raise CliError(
            f"cannot listen on {settings.host}:{settings.port}: {reason}. Another process "
            "(another `hetserve up`?) holds the port: stop it, or choose another port with "
            "HETSERVE_PORT=<port>"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(settings)
    keys = load_or_create_keys(settings)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    child_env = os.environ | {"HETSERVE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    # SSE clients hold connections open; do not let them block a graceful stop forever.
    child_env.setdefault("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", str(max(1, args.stop_timeout // 2)))
    api_argv, api_env = api_process(settings, data_dir, child_env)
    children = {
        "api": _spawn(api_argv, api_env),
        "worker": _spawn([sys.executable, *WORKER_COMMAND], child_env),
    }
    url = f"http://{client_host(settings.host)}:{settings.port}"
    exit_code = 0
    try:
        if _wait_healthy(url, children, stop, args.start_timeout, keys[0]):
            key_origin = (
                "from HETSERVE_API_KEYS"
                if settings.api_keys
                else f"stored in {data_dir / 'api_key'}"
            )
            print(
                f"hetserve is up\n"
                f"  API      {url}   (OpenAPI: {url}/docs)\n"
                f"  API key  {keys[0]}   ({key_origin})\n"
                f"  data     {data_dir}\n"
                f"  try      hetserve demo   |   curl -H 'Authorization: Bearer <key>' {url}/v1/jobs\n"
                f"Ctrl-C stops the API and the worker.",
                flush=True,
            )
        elif not stop.is_set():
            exit_code = 1
        while exit_code == 0 and not stop.is_set():
            dead = [name for name, proc in children.items() if proc.poll() is not None]
            if dead:
                print(
                    f"hetserve: {dead[0]} exited with status {children[dead[0]].returncode}; "
                    "stopping",
                    file=sys.stderr,
                    flush=True,
                )
                exit_code = 1
                break
            stop.wait(0.2)
    finally:
        _stop_children(children, args.stop_timeout)
    if exit_code == 0:
        print("hetserve stopped", flush=True)
    return exit_code


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, process_group=0, preexec_fn=_die_with_parent
    )


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `hetserve up` itself is killed (no orphans)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_healthy(
    url: str,
    children: dict[str, subprocess.Popen],
    stop: threading.Event,
    timeout_s: float,
    key: str,
) -> bool:
    """True once our API answers /healthz and accepts our key; False (said on stderr)
    when a child dies first or the time is up."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        dead = [name for name, proc in children.items() if proc.poll() is not None]
        if dead:
            print(
                f"hetserve: {dead[0]} exited with status {children[dead[0]].returncode} "
                "before the API answered; stopping",
                file=sys.stderr,
                flush=True,
            )
            return False
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                # Whoever answers must be ours: a service with other keys is not.
                probe = httpx.get(
                    f"{url}/v1/aliases", timeout=5.0, headers={"Authorization": f"Bearer {key}"}
                )
                if probe.status_code == 200 and children["api"].poll() is None:
                    return True
        except httpx.HTTPError:
            pass
        stop.wait(0.2)
    if not stop.is_set():
        print(
            f"hetserve: the API did not answer {url}/healthz within {timeout_s:.0f} s",
            file=sys.stderr,
        )
    return False


def _stop_children(children: dict[str, subprocess.Popen], timeout_s: float) -> None:
    for proc in children.values():
        _signal(proc, signal.SIGTERM)
    for escalation in (signal.SIGQUIT, signal.SIGKILL):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(p.poll() is None for p in children.values()):
            time.sleep(0.1)
        for name, proc in children.items():
            if proc.poll() is None:
                print(f"hetserve: {name} still running, sending {escalation.name}", file=sys.stderr)
                _signal(proc, escalation)
        timeout_s = 5.0
    for proc in children.values():
        proc.wait()


def _signal(proc: subprocess.Popen, signum: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass


def add_commands(commands: Commands) -> None:
    up = commands.command(
        "up", "run the API and one worker on embedded defaults (make run)", cmd_up
    )
    up.add_argument("--stop-timeout", type=int, default=10, help="seconds per shutdown step")
    up.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds to wait for /healthz"
    )
