"""The ``hetserve`` command.

Two kinds of subcommands:

- local processes: ``up`` (what ``make run`` runs: migrations, then the API and one
  worker as child processes on embedded defaults, until Ctrl-C), ``migrate``, ``gc``,
  ``backup`` and ``restore`` (against the store and data folder the settings name);
- HTTP clients of a running service, all through the Python client ``hetserve.Client``:
  ``datasets``, ``train``, ``jobs``, ``models``, ``aliases``, ``predict``, ``demo``. They
  find the service at ``--url`` / ``HETSERVE_URL`` (default: HETSERVE_HOST:HETSERVE_PORT)
  and authenticate with ``--key=KEY`` / ``HETSERVE_API_KEY``, else the first of
  ``HETSERVE_API_KEYS``, else the key file the service wrote into the data folder.

Stdlib, httpx and tqdm at import: no torch, so the command starts fast and works from
the API image. ``demo`` and ``demo-data`` alone need the training side (sklearn's
digits, models/) and run it in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import httpx

import hetserve
from app.settings import Settings
from core.spec import BackboneSpec
from core.statuses import TERMINAL_STATUSES, JobStatus
from hetserve import Client

# docs/architecture.md entry points; `python -m` so the children use this interpreter's venv.
API_COMMAND = ["-m", "uvicorn", "app.main:app"]
WORKER_COMMAND = [
    "-m", "celery", "-A", "worker.celery_app:celery_app", "worker",
    "--pool=solo", "--concurrency=1", "-Q", "train", "--loglevel=INFO",
]  # fmt: skip
HTTP_TIMEOUT_S = 60.0


class CliError(Exception):
    """A problem to report in one line and exit 1 (no traceback)."""


# --------------------------------------------------------------------------- up / migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from app import db  # SQLAlchemy + Alembic: only the commands that touch the store pay for it

    settings = Settings()
    db.migrate(settings)
    print(f"migrated {_redact(settings.resolved_database_url)} to head")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from app.retention import collect_garbage

    report = collect_garbage(Settings(), dry_run=args.dry_run)
    if args.json:
        print_json(report.to_dict())
        return 0
    for label, items in (("artifact", report.artifacts), ("checkpoints of job", report.checkpoints),
                         ("temporary", report.temporary)):  # fmt: skip
        for item in items:
            print(f"{'would remove' if report.dry_run else 'removed'} {label} {item}")
    print(report.summary())
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from app.retention import BackupError, backup

    settings = Settings()
    try:
        manifest = backup(settings, Path(args.dir))
    except BackupError as exc:
        raise CliError(str(exc)) from None
    print(f"backed up {_redact(settings.resolved_database_url)} ({manifest['store']}, revision "
          f"{manifest['revision']}) and {manifest['artifact_files']} artifact file(s), "
          f"{manifest['artifact_bytes']} bytes, to {args.dir}")  # fmt: skip
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from app.retention import BackupError, restore

    settings = Settings()
    try:
        result = restore(settings, Path(args.dir), force=args.force)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    print(f"restored {_redact(settings.resolved_database_url)} from {args.dir} (backup of "
          f"{result['created_at']}) and {result['restored_artifact_files']} artifact file(s) "
          f"into {settings.data_dir}")  # fmt: skip
    if result["missing_artifacts"]:
        print(f"hetserve: {len(result['missing_artifacts'])} file(s) the store refers to are "
              f"missing: {', '.join(result['missing_artifacts'][:5])}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


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
    argv = [sys.executable, *API_COMMAND, "--host", settings.host, "--port", str(settings.port),
            "--workers", str(workers)]  # fmt: skip
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
    url = f"http://{_client_host(settings.host)}:{settings.port}"
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
            print(f"hetserve: {dead[0]} exited with status {children[dead[0]].returncode} "
                  "before the API answered; stopping", file=sys.stderr, flush=True)  # fmt: skip
            return False
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                # Whoever answers must be ours: a service with other keys is not.
                probe = httpx.get(f"{url}/v1/aliases", timeout=5.0,
                                  headers={"Authorization": f"Bearer {key}"})  # fmt: skip
                if probe.status_code == 200 and children["api"].poll() is None:
                    return True
        except httpx.HTTPError:
            pass
        stop.wait(0.2)
    if not stop.is_set():
        print(f"hetserve: the API did not answer {url}/healthz within {timeout_s:.0f} s",
              file=sys.stderr)  # fmt: skip
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
                print(f"hetserve: {name} still running, sending {escalation.name}",
                      file=sys.stderr)  # fmt: skip
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


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def _redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{location}"


# --------------------------------------------------------------------------- the client

KEY_HELP = (
    "API key. Use --key=KEY (with '=') when the key starts with '-'. Default: "
    "HETSERVE_API_KEY, else the first of HETSERVE_API_KEYS, else <data folder>/api_key "
    "(HETSERVE_DATA_DIR, default ./var), the file `hetserve up` writes"
)


def client_from(args: argparse.Namespace) -> Client:
    """The hetserve.Client for --url/--key, or the defaults the module docstring lists."""
    settings = Settings()
    url = args.url or os.environ.get("HETSERVE_URL")
    url = url or f"http://{_client_host(settings.host)}:{settings.port}"
    key, source = (args.key, "--key") if args.key else _default_key(settings)
    args.key_source = source
    return Client(url, key or "", timeout=HTTP_TIMEOUT_S)


def _default_key(settings: Settings) -> tuple[str | None, str]:
    """(key, where it came from)."""
    if key := os.environ.get("HETSERVE_API_KEY"):
        return key, "HETSERVE_API_KEY"
    if settings.api_keys:
        return settings.api_keys.split(",")[0].strip(), "HETSERVE_API_KEYS"
    key_file = settings.data_dir / "api_key"
    if key_file.exists():
        return key_file.read_text().strip(), str(key_file.resolve())
    return None, f"nowhere: no --key, HETSERVE_API_KEY, HETSERVE_API_KEYS or {key_file}"


def auth_hint(args: argparse.Namespace) -> str:
    source = getattr(args, "key_source", None) or "nowhere"
    data_dir = Settings().data_dir
    return (
        f"the service refused the API key (key taken from {source}).\n"
        f"  `hetserve up` prints its key and stores it in <data folder>/api_key "
        f"(here {data_dir / 'api_key'}; the folder is HETSERVE_DATA_DIR); with "
        "HETSERVE_API_KEYS set, the keys are those.\n"
        "  Pass it as --key=KEY (the '=' form also works for keys starting with '-') or "
        "export HETSERVE_API_KEY=KEY."
    )


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --------------------------------------------------------------------------- datasets


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    dataset = client_from(args).upload_dataset(
        path, name=args.name, image_size=args.image_size, grayscale=args.grayscale
    )
    _print_dataset(args, dataset)
    return 0


def cmd_datasets_register(args: argparse.Namespace) -> int:
    uri = args.uri if "://" in args.uri else Path(args.uri).resolve().as_uri()
    _print_dataset(args, client_from(args).register_dataset(uri))
    return 0


def _print_dataset(args: argparse.Namespace, dataset: hetserve.Dataset) -> None:
    if args.json:
        print_json(dataset)
    elif args.quiet:
        print(dataset["id"])
    else:
        print(_dataset_line(dataset))


def cmd_datasets_ls(args: argparse.Namespace) -> int:
    datasets = client_from(args).list_datasets(limit=args.limit)
    if args.json:
        print_json(datasets)
    for dataset in [] if args.json else datasets:
        print(_dataset_line(dataset))
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    dataset = client_from(args).get_dataset(args.dataset_id)
    if args.json:
        print_json(dataset)
        return 0
    print(_dataset_line(dataset))
    print(f"  classes  {', '.join(dataset['class_names'])}")
    print(
        f"  format   {dataset['format']}, {dataset['size_bytes']} bytes, sha256 {dataset['sha256']}"
    )
    print(f"  created  {dataset['created_at']}")
    return 0


def cmd_datasets_rm(args: argparse.Namespace) -> int:
    client_from(args).delete_dataset(args.dataset_id)
    print(f"dataset {args.dataset_id} removed")
    return 0


def _dataset_line(d: hetserve.Dataset) -> str:
    return (
        f"{d['id']}  {d['name']}  {d['task']}  x{d['input_shape']}  {d['num_classes']} classes  "
        f"train/val/test {d['num_train']}/{d['num_val']}/{d['num_test']}"
    )


# --------------------------------------------------------------------------- train / jobs


def build_spec(args: argparse.Namespace) -> dict:
    """The job spec: --spec (JSON text or @file) as the base, then each flag given on top."""
    spec: dict = {}
    if args.spec:
        text = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"--spec is not valid JSON: {exc}") from None
    spec["dataset_id"] = args.dataset
    flags = {
        ("head", "kind"): args.head,
        ("head", "num_factors"): args.num_factors,
        ("head", "temperature"): args.temperature,
        ("head", "train_mc_samples"): args.train_mc_samples,
        ("head", "eval_mc_samples"): args.eval_mc_samples,
        ("backbone", "kind"): args.backbone,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("train", "lr"): args.lr,
        ("train", "seed"): args.seed,
        ("train", "device"): args.device,
    }
    for (section, field), value in flags.items():
        if value is not None:
            spec.setdefault(section, {})[field] = value
    if args.compare_baseline is not None:
        spec["compare_baseline"] = args.compare_baseline
    return spec


def _temperature(value: str) -> float | str:
    if value in ("auto", "learned"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, 'auto' or 'learned', not {value!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    client = client_from(args)
    job = client.submit_job(build_spec(args))
    if not args.quiet:
        print(f"job {job['id']} {job['status']}", flush=True)
    if args.no_wait:
        if args.quiet:
            print(job["id"])
        return 0
    return _follow_and_report(client, job["id"], args)


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    return _follow_and_report(client_from(args), args.job_id, args)


def _follow_and_report(client: Client, job_id: str, args: argparse.Namespace) -> int:
    try:
        job = follow_job(client, job_id, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on (hetserve jobs cancel {job_id})",
              file=sys.stderr)  # fmt: skip
        return 130
    if args.json:
        print_json(job)
    elif args.quiet:
        if job["status"] == JobStatus.SUCCEEDED:
            print(job["model_id"])
        else:
            print(f"hetserve: job {job_id} {job['status']}: {job.get('error') or ''}",
                  file=sys.stderr)  # fmt: skip
    else:
        print_job(job)
    return 0 if job["status"] == JobStatus.SUCCEEDED else 1


def follow_job(client: Client, job_id: str, out=None, quiet: bool = False) -> hetserve.Job:
    """Draw a progress bar while the job runs (server-sent events, polling if the stream
    breaks: ``Client.wait``); returns the final job (with history). ``quiet``: no bar."""
    bar = None if quiet else ProgressBar(out or sys.stderr, client, job_id)
    try:
        job = client.wait(job_id, on_progress=bar.draw if bar else None)
        if bar:
            bar.draw(job)
    finally:
        if bar:
            bar.close()
    return job


class ProgressBar:
    """The job's progress: a tqdm bar on a terminal; one line per change otherwise (logs,
    CI). Both show status, the unit being trained (model, baseline, or the
    auto-temperature sweep's tau=...), epoch, the last epoch's training loss, the time per
    epoch and the ETA (from the rate of progress so far)."""

    WIDTH = 30

    def __init__(self, out, client: Client | None = None, job_id: str | None = None) -> None:
        self.out, self.client, self.job_id = out, client, job_id
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.last: str | None = None
        self.tqdm: Any = None  # a tqdm bar (untyped library), on a terminal once drawn
        self.started: tuple[float, float] | None = None  # (time, fraction) at first running
        self.epoch_key: tuple | None = None
        self.loss: float | None = None
        self.sweep: list[str] = []
        self.epoch_times: list[float] = []

    def _history(self, job: hetserve.Job) -> None:
        """Loss and sweep units come from the job's history: fetched once per new epoch."""
        progress = job.get("progress") or {}
        key = (progress.get("phase"), progress.get("epoch"), job.get("status"))
        if key == self.epoch_key:
            return
        self.epoch_key = key
        history = job.get("history")
        if history is None and self.client is not None and self.job_id is not None:
            try:
                history = self.client.get_job(self.job_id).get("history")
            except hetserve.HetserveError:
                history = None
        if not history:
            return
        losses = [h["train_loss"] for h in history if isinstance(h.get("train_loss"), int | float)]
        self.loss = losses[-1] if losses else self.loss
        self.sweep = list(
            dict.fromkeys(h["phase"] for h in history if str(h.get("phase", "")).startswith("tau="))
        )
        if len(self.epoch_times) < len(history):
            self.epoch_times += [time.monotonic()] * (len(history) - len(self.epoch_times))

    def describe(self, job: hetserve.Job) -> tuple[float, str]:
        progress = job.get("progress") or {}
        fraction = min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0)
        if job["status"] == JobStatus.SUCCEEDED:
            fraction = 1.0
        parts = []
        phase = progress.get("phase")
        if phase and phase.startswith("tau="):
            units = self.sweep + ([phase] if phase not in self.sweep else [])
            parts.append(f"sweep unit {units.index(phase) + 1} {phase}")
        elif phase:
            parts.append(phase)
        if progress.get("epochs"):
            parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        now = time.monotonic()
        if job["status"] == JobStatus.RUNNING:
            if self.started is None:
                self.started = (now, fraction)
            t0, f0 = self.started
            if fraction > f0 and now > t0:
                eta = (1.0 - fraction) * (now - t0) / (fraction - f0)
                parts.append(f"eta {_duration(eta)}")
        if len(self.epoch_times) >= 2:
            per_epoch = (self.epoch_times[-1] - self.epoch_times[0]) / (len(self.epoch_times) - 1)
            parts.append(f"{per_epoch:.1f} s/epoch")
        return fraction, " ".join(parts)

    def draw(self, job: hetserve.Job) -> None:
        self._history(job)
        fraction, detail = self.describe(job)
        if self.tty:
            self._draw_tqdm(job, fraction, detail)
            return
        filled = round(fraction * self.WIDTH)
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%} {job['status']} {detail}".rstrip()
        if line == self.last:
            return
        self.last = line
        self.out.write(f"{line}\n")
        self.out.flush()

    def _draw_tqdm(self, job: hetserve.Job, fraction: float, detail: str) -> None:
        from tqdm import tqdm

        if self.tqdm is None:
            self.tqdm = tqdm(total=100, file=self.out, unit="%", dynamic_ncols=True,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")  # fmt: skip
        self.tqdm.set_description_str(job["status"], refresh=False)
        self.tqdm.set_postfix_str(detail, refresh=False)
        self.tqdm.update(round(fraction * 100) - self.tqdm.n)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
    )


def print_job(job: hetserve.Job) -> None:
    print(f"job {job['id']}: {job['status']}")
    progress = job.get("progress") or {}
    if job["status"] not in TERMINAL_STATUSES and progress.get("epochs"):
        phase = f" ({progress['phase']})" if progress.get("phase") else ""
        print(
            f"  epoch {progress.get('epoch', 0)}/{progress['epochs']}{phase}, {progress.get('fraction', 0):.0%}"
        )
    if job.get("error"):
        print(f"  error: {job['error']}")
    for role in ("model_id", "baseline_model_id"):
        if job.get(role):
            print(f"  {role}: {job[role]}")
    if metrics := job.get("metrics"):
        print(metrics_table(metrics))


def metrics_table(metrics: dict) -> str:
    """Markdown table, one column per trained model (HET, baseline) of job.metrics."""
    columns = {name: m for name, m in metrics.items() if isinstance(m, dict) and _scalars(m)}
    if not columns:  # flat metrics: one model
        columns = {"model": metrics}
    names = [
        k
        for k in next(iter(columns.values()))
        if isinstance(next(iter(columns.values()))[k], int | float)
    ]
    lines = [
        "| metric | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in names:
        cells = [_fmt(column.get(name)) for column in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scalars(d: dict) -> bool:
    return any(isinstance(v, int | float) and not isinstance(v, bool) for v in d.values())


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")


def cmd_jobs_ls(args: argparse.Namespace) -> int:
    jobs = client_from(args).list_jobs(status=args.status, limit=args.limit)
    if args.json:
        print_json(jobs)
        return 0
    for job in jobs:
        if args.quiet:
            print(job["id"])
            continue
        progress = job.get("progress") or {}
        print(
            f"{job['id']}  {job['status']:<9}  {progress.get('fraction', 0):4.0%}  "
            f"dataset {job['dataset_id']}  created {job['created_at']}"
        )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = client_from(args).get_job(args.job_id)
    if args.json:
        print_json(job)
    else:
        print_job(job)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = client_from(args).cancel_job(args.job_id)
    print(f"job {job['id']}: cancel requested (status {job['status']})")
    return 0


def cmd_jobs_rm(args: argparse.Namespace) -> int:
    client_from(args).delete_job(args.job_id, models=args.models)
    print(f"job {args.job_id} removed" + (" with its models" if args.models else ""))
    return 0


# --------------------------------------------------------------------------- models / aliases


def cmd_models_ls(args: argparse.Namespace) -> int:
    models = client_from(args).list_models(role=args.role, limit=args.limit)
    if args.json:
        print_json(models)
        return 0
    for m in models:
        accuracy = (m.get("metrics") or {}).get("test_accuracy")
        acc = f"  test_accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        print(f"{m['id']}  {m['role']:<8}  {m['head']:<7}  {m['task']}  x{m['input_shape']}  "
              f"{m['num_classes']} classes{acc}  job {m['job_id']}")  # fmt: skip
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    m = client_from(args).get_model(args.model_id)
    if args.json:
        print_json(m)
        return 0
    print(f"model {m['id']}  ({m['role']}, head {m['head']}, {m['task']})")
    print(f"  job      {m['job_id']}")
    print(
        f"  input    {m['input_shape']}, {m['num_classes']} classes: {', '.join(m['class_names'])}"
    )
    print(f"  onnx     sha256 {m['onnx_sha256']}")
    if m.get("baseline_model_id"):
        print(f"  baseline {m['baseline_model_id']}")
    columns = {"model": m.get("metrics") or {}}
    if baseline := m.get("baseline_metrics"):
        columns["baseline"] = baseline
    if columns["model"]:
        print(metrics_table(columns))
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    path = client_from(args).download_onnx(args.model_id, args.out)
    print(path)
    return 0


def cmd_models_noise(args: argparse.Namespace) -> int:
    report = client_from(args).noise(args.model_id)
    if args.json:
        print_json(report)
        return 0
    print(f"model {report['model_id']}: label noise over {report['num_examples']} training inputs")
    pairs = report.get("class_pairs") or []
    if pairs:
        print("| classes | flip rate | latent correlation |")
        print("|---|---:|---:|")
        for pair in pairs[: args.top]:
            names = " ↔ ".join(pair.get("class_names") or [str(c) for c in pair["classes"]])
            print(f"| {names} | {pair['flip_rate']:.4f} | {pair['correlation']:+.4f} |")
    stds = report.get("noise_std_by_class")
    if stds:
        print("noise std by class: " + ", ".join(f"{s:.3f}" for s in stds))
    return 0


def cmd_models_label_issues(args: argparse.Namespace) -> int:
    found = client_from(args).label_issues(args.model_id, limit=args.limit)
    if args.json:
        print_json(found)
        return 0
    print(f"model {found['model_id']} (dataset {found['dataset_id']}): {found['num_flagged']} of "
          f"{found['num_examples']} training rows flagged, most likely mislabeled first")  # fmt: skip
    issues = found.get("issues") or []
    if issues:
        print("| x_train row | given | suggested | score |")
        print("|---:|---:|---:|---:|")
        for issue in issues:
            print(f"| {issue['index']} | {issue['given_label']} | {issue['suggested_label']} | "
                  f"{issue['score']:.4f} |")  # fmt: skip
    return 0


def cmd_aliases_set(args: argparse.Namespace) -> int:
    alias = client_from(args).set_alias(args.name, args.model_id)
    print_json(alias) if args.json else print(f"{alias['name']} -> {alias['model_id']}")
    return 0


def cmd_aliases_ls(args: argparse.Namespace) -> int:
    aliases = client_from(args).list_aliases()
    if args.json:
        print_json(aliases)
        return 0
    for alias in aliases:
        print(f"{alias['name']}  -> {alias['model_id']}  (updated {alias['updated_at']})")
    return 0


def cmd_aliases_rm(args: argparse.Namespace) -> int:
    client_from(args).delete_alias(args.name)
    print(f"alias {args.name} removed")
    return 0


# --------------------------------------------------------------------------- predict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_inputs(paths: list[str], rows: int | None, array: str | None) -> tuple[str, Any]:
    """("inputs", rows) from a .npy, .npz or .csv file, or ("images", paths) for image files."""
    if all(p.lower().endswith(IMAGE_SUFFIXES) for p in paths):
        return "images", [Path(p) for p in paths]
    if len(paths) != 1:
        raise CliError("give one .npy, .npz or .csv file, or image files (.png, .jpg)")
    import numpy as np

    path = Path(paths[0])
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                name = array or next(
                    (n for n in ("x_test", "x_val", "x_train", "x") if n in arrays), None
                )
                if name is None or name not in arrays:
                    raise CliError(
                        f"{path}: no array {name or 'x_test'} (has {', '.join(arrays.files)}); choose one with --array"
                    )
                x = arrays[name]
        elif suffix == ".csv":
            x = _read_csv(path)
        else:
            raise CliError(f"{path}: predict reads .npy, .npz, .csv or image files")
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if x.ndim == 1:
        x = x[None, :]
    return "inputs", x[:rows] if rows else x


def _read_csv(path: Path):
    """Numeric rows; a header line is skipped, and its ``label`` column dropped (so a
    training .csv can be fed back)."""
    import numpy as np

    with path.open() as f:
        first = f.readline().strip().split(",")
    try:
        [float(v) for v in first]
        header = None
    except ValueError:
        header = [h.strip() for h in first]
    x = np.loadtxt(path, delimiter=",", skiprows=0 if header is None else 1, ndmin=2)
    if header is not None and "label" in header:
        x = np.delete(x, header.index("label"), axis=1)
    return x.astype(np.float32)


def cmd_predict(args: argparse.Namespace) -> int:
    kind, values = read_inputs(args.files, args.rows, args.array)
    options = {"mc_samples": args.mc_samples, "seed": args.seed, "predictive": args.predictive,
               "top_k": args.top_k, "correlated_pairs": args.correlated_pairs}  # fmt: skip
    client = client_from(args)
    if kind == "images":
        result = client.predict(args.model_id, images=values, **options)
    else:
        result = client.predict(args.model_id, values, **options)
    if args.json:
        print_json({"model_id": result.model_id, "mc_samples": result.mc_samples,
                    "predictive": result.predictive, "predictions": result.rows})  # fmt: skip
        return 0
    how = ("noise-free predictive" if result.predictive == "noise_free"
           else f"S={result.mc_samples} samples")  # fmt: skip
    print(f"model {result.model_id}, {how}:")
    for i, row in enumerate(result.rows):
        print(f"row {i}:")
        print(prediction_summary(row))
    return 0


# --------------------------------------------------------------------------- demo

# The benchmark's noise model lives in models/ (training side: sklearn, numpy), which
# the app package never imports: it is built by a child interpreter.
DEMO_DATASET_COMMAND = ["-m", "models.benchmarks", "noisy_digits"]


def write_demo_data(path: Path, seed: int) -> None:
    made = subprocess.run(
        [sys.executable, *DEMO_DATASET_COMMAND, str(path), "--seed", str(seed)],
        capture_output=True, text=True,
    )  # fmt: skip
    if made.returncode != 0:
        raise CliError(
            f"could not build the noisy-digits benchmark (it needs the training extra, "
            f"pip install 'hetserve[train]'): {made.stderr.strip()[-500:]}"
        )


def cmd_demo_data(args: argparse.Namespace) -> int:
    import numpy as np

    path = Path(args.out)
    write_demo_data(path, args.seed)
    with np.load(path) as arrays:
        sizes = {k: arrays[k].shape for k in arrays.files if k.startswith("x_")}
    shapes = ", ".join(f"{k} {list(v)}" for k, v in sizes.items())
    print(f"wrote {path}: noisy digits (64 features, 10 classes; {shapes})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    client = client_from(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noisy_digits.npz"
        write_demo_data(path, args.seed)
        dataset = client.upload_dataset(path, name="noisy-digits")
        with np.load(path) as arrays:
            x_example, y_example = arrays["x_test"][:1], int(arrays["y_test"][0])
    print(_dataset_line(dataset))
    spec = {
        "dataset_id": dataset["id"],
        "head": {"kind": "het", "num_factors": 4, "temperature": args.temperature},
        "backbone": {"kind": "mlp"},
        "train": {"epochs": args.epochs, "seed": args.seed},
        "compare_baseline": True,
    }
    job = client.submit_job(spec)
    print(
        f"job {job['id']}: HET (R=4) and the softmax baseline, {args.epochs} epochs each",
        flush=True,
    )
    job = follow_job(client, job["id"])
    print_job(job)
    if job["status"] != JobStatus.SUCCEEDED:
        return 1
    model_id = job["model_id"]
    assert model_id is not None  # a succeeded job has its model
    result = client.predict(model_id, x_example, seed=0, top_k=3, correlated_pairs=True)
    print(f"one test image (true class {y_example}) through the served model, "
          f"S={result.mc_samples} samples:")  # fmt: skip
    print(prediction_summary(result.rows[0]))
    return 0


def prediction_summary(row: dict) -> str:
    """A few lines for a person; the full row (probs, prob_std, mc_stderr, noise_std per
    class) is what the API returns (--json)."""
    lines = [
        f"  predicted {row['class_name']} (class {row['label']}), confidence {row['confidence']:.3f}"
    ]
    entropy, expected = row.get("entropy"), row.get("expected_entropy")
    if isinstance(entropy, float) and isinstance(expected, float):
        lines.append(f"  entropy {entropy:.3f}, expected entropy {expected:.3f}")
    elif isinstance(entropy, float):
        lines.append(f"  entropy {entropy:.3f}")
    if row.get("top_k"):
        top = ", ".join(f"{t['class_name']} {t['prob']:.3f}" for t in row["top_k"])
        lines.append(f"  top {len(row['top_k'])}: {top}")
    if row.get("correlated_pairs"):
        pairs = ", ".join(
            f"{tuple(p['classes'])} {p['correlation']:+.2f}" for p in row["correlated_pairs"]
        )
        lines.append(f"  latent correlation of likely class pairs: {pairs}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetserve",
        description="Train heteroscedastic (HET) classifiers and serve them with uncertainty. "
        "`hetserve up` runs the service; the other commands talk to a running one.",
        epilog="The service is found at --url / HETSERVE_URL (default "
        "http://HETSERVE_HOST:HETSERVE_PORT, 127.0.0.1:8000). "
        + KEY_HELP.replace("API key. ", "The API key: ")
        + ".",
    )
    parser.add_argument("--version", action="version", version=f"hetserve {hetserve.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, help: str, func: Callable | None = None, **kwargs):
        p = parent.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                              **kwargs)  # fmt: skip
        if func is not None:
            p.set_defaults(func=func)
        return p

    def group(name: str, help: str):
        return command(sub, name, help).add_subparsers(
            dest=f"{name}_command", required=True, metavar="SUBCOMMAND"
        )

    up = command(sub, "up", "run the API and one worker on embedded defaults (make run)", cmd_up)
    up.add_argument("--stop-timeout", type=int, default=10, help="seconds per shutdown step")
    up.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds to wait for /healthz"
    )
    command(sub, "migrate", "bring the store's schema to head", cmd_migrate)
    gc = command(sub, "gc", "remove unreferenced artifacts, checkpoints of ended jobs and "
                 "stale temporary files from the data folder (runs locally)", cmd_gc)  # fmt: skip
    gc.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.epilog = "Files no row refers to are removed once older than HETSERVE_GC_GRACE_S."
    backup_cmd = command(sub, "backup", "back up the store, then the artifacts, into a new "
                         "folder (runs locally; PostgreSQL needs pg_dump)", cmd_backup)  # fmt: skip
    backup_cmd.add_argument("dir", help="the folder to create (or an empty one)")
    restore_cmd = command(sub, "restore", "restore a backup folder into the store and data "
                          "folder (stop the service first)", cmd_restore)  # fmt: skip
    restore_cmd.add_argument("dir", help="a folder `hetserve backup` wrote")
    restore_cmd.add_argument("--force", action="store_true",
                             help="replace an existing store")  # fmt: skip

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", help="service URL (HETSERVE_URL; default http://HETSERVE_HOST:HETSERVE_PORT)"
    )
    client.add_argument("--key", metavar="KEY", help=KEY_HELP)
    client.add_argument("--json", action="store_true", help="print the API's JSON answer")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q", "--quiet", action="store_true", help="print only the id (for $(...) in scripts)"
    )
    with_client = {"parents": [client]}

    datasets = group("datasets", "upload, register, list, show and remove datasets")
    upload = command(datasets, "upload", "upload a .npz, .csv or .zip of image folders",
                     cmd_datasets_upload, parents=[client, quiet])  # fmt: skip
    upload.add_argument("file", help="the dataset file")
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument("--image-size", type=int, default=32, help=".zip: resize images to N×N")
    upload.add_argument("--grayscale", action="store_true", help=".zip: decode as one channel")
    register = command(datasets, "register", "register a dataset that stays where it is "
                       "(under the service's HETSERVE_DATASET_ROOTS)", cmd_datasets_register,
                       parents=[client, quiet])  # fmt: skip
    register.add_argument("uri", help="file:///... URI or a path on the service's machine")
    ls = command(datasets, "ls", "list datasets, newest first", cmd_datasets_ls, **with_client)
    ls.add_argument("--limit", type=int, default=100, help="at most this many")
    for name, func, text in (("show", cmd_datasets_show, "show one dataset"),
                             ("rm", cmd_datasets_rm, "remove a dataset no job uses")):  # fmt: skip
        command(datasets, name, text, func, **with_client).add_argument(
            "dataset_id", help="dataset id"
        )

    train = command(sub, "train", "submit a training job and follow it with a progress bar",
                    cmd_train, parents=[client, quiet])  # fmt: skip
    train.add_argument("--dataset", required=True, help="dataset id")
    train.add_argument("--spec", help="job spec as JSON, or @file.json; flags override it")
    train.add_argument("--head", choices=["het", "softmax"], help="classifier head")
    train.add_argument("--num-factors", type=int, help="R, the rank of the noise covariance")
    train.add_argument("--temperature", type=_temperature, help="a number, auto or learned")
    train.add_argument("--train-mc-samples", type=int, help="MC samples per training step")
    train.add_argument("--eval-mc-samples", type=int, help="MC samples at evaluation and serving")
    train.add_argument(
        "--backbone",
        choices=get_args(BackboneSpec.model_fields["kind"].annotation),
        help="feature extractor",
    )
    train.add_argument("--epochs", type=int, help="epochs per trained model")
    train.add_argument("--batch-size", type=int, help="examples per step")
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--seed", type=int, help="training seed")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the worker trains")
    train.add_argument("--compare-baseline", action=argparse.BooleanOptionalAction, default=None,
                       help="also train the softmax baseline on the same data and budget")  # fmt: skip
    train.add_argument("--no-wait", action="store_true", help="submit and return")
    train.epilog = (
        "With -q, prints only the model id once the job succeeds (the job id with --no-wait)."
    )

    jobs = group("jobs", "list, show, follow, cancel and delete jobs")
    ls = command(jobs, "ls", "list jobs, newest first", cmd_jobs_ls, parents=[client, quiet])
    ls.add_argument("--status", choices=list(JobStatus), help="only jobs in this status")
    ls.add_argument("--limit", type=int, default=20, help="at most this many")
    for name, func, text, parents in (
        ("show", cmd_jobs_show, "show a job: status, progress, metrics, model ids", [client]),
        ("wait", cmd_jobs_wait, "follow a job to its end with a progress bar", [client, quiet]),
        ("cancel", cmd_jobs_cancel, "ask a job to stop (the worker stops within about a second)",
         [client]),
    ):  # fmt: skip
        command(jobs, name, text, func, parents=parents).add_argument("job_id", help="job id")
    rm = command(jobs, "rm", "delete an ended job, its history and checkpoints", cmd_jobs_rm,
                 **with_client)  # fmt: skip
    rm.add_argument("job_id", help="job id")
    rm.add_argument("--models", action="store_true",
                    help="also delete its models (refused while an alias points at one)")  # fmt: skip

    models = group("models", "list and inspect trained models, their noise and label issues")
    ls = command(models, "ls", "list models, newest first", cmd_models_ls, **with_client)
    ls.add_argument("--role", choices=["model", "baseline"], help="only this role")
    ls.add_argument("--limit", type=int, default=20, help="at most this many")
    command(models, "show", "show a model (id or alias) and its test metrics", cmd_models_show,
            **with_client).add_argument("model_id")  # fmt: skip
    download = command(models, "download", "save the model's ONNX file", cmd_models_download,
                       **with_client)  # fmt: skip
    download.add_argument("model_id")
    download.add_argument("out", nargs="?", default=".", help="file or folder (default: .)")
    noise = command(models, "noise", "the model's label-noise report: most confused class "
                    "pairs, flip rates, latent correlations", cmd_models_noise, **with_client)  # fmt: skip
    noise.add_argument("model_id")
    noise.add_argument("--top", type=int, default=10, help="class pairs to list")
    issues = command(models, "label-issues", "training rows the model thinks are mislabeled",
                     cmd_models_label_issues, **with_client)  # fmt: skip
    issues.add_argument("model_id")
    issues.add_argument("--limit", type=int, default=20, help="issues to list")

    aliases = group("aliases", "name models (production, staging, ...)")
    alias_set = command(aliases, "set", "point an alias at a model (create or move)",
                        cmd_aliases_set, **with_client)  # fmt: skip
    alias_set.add_argument("name")
    alias_set.add_argument("model_id")
    command(aliases, "ls", "list aliases", cmd_aliases_ls, **with_client)
    command(aliases, "rm", "remove an alias (the model stays)", cmd_aliases_rm,
            **with_client).add_argument("name")  # fmt: skip

    predict = command(sub, "predict", "predict with uncertainty from a .npy, .npz or .csv file, "
                      "or image files", cmd_predict, **with_client)  # fmt: skip
    predict.add_argument("model_id", help="model id or alias")
    predict.add_argument("files", nargs="+", metavar="FILE",
                         help=".npy [N, ...], .npz (x_test, or --array), .csv (rows of features; "
                         "a header's label column is dropped) or .png/.jpg images")  # fmt: skip
    predict.add_argument("--array", help=".npz: the array to read (default x_test)")
    predict.add_argument("--rows", type=int, help="only the first N rows")
    predict.add_argument("--mc-samples", type=int, help="S, Monte-Carlo samples")
    predict.add_argument("--seed", type=int, help="reproducible draws")
    predict.add_argument("--predictive", choices=["marginal", "noise_free"],
                         help="marginal: the MC predictive (default); noise_free: softmax of "
                         "the mean logits, no sampling")  # fmt: skip
    predict.add_argument("--top-k", type=int, help="list the k most probable classes")
    predict.add_argument("--correlated-pairs", action="store_true",
                         help="list each row's most correlated class pairs")  # fmt: skip

    demo = command(sub, "demo", "noisy digits: HET vs softmax, one prediction", cmd_demo,
                   **with_client)  # fmt: skip
    demo.add_argument("--epochs", type=int, default=30, help="epochs per model")
    demo.add_argument("--seed", type=int, default=0, help="data and training seed")
    demo.add_argument("--temperature", type=_temperature, default=2.0, help="HET temperature")
    demo_data = command(sub, "demo-data", "write the noisy-digits benchmark as an uploadable "
                        ".npz (needs the training extra)", cmd_demo_data)  # fmt: skip
    demo_data.add_argument("out", help="the .npz to write, e.g. digits.npz")
    demo_data.add_argument("--seed", type=int, default=0, help="noise seed")
    return parser


def _join_key(argv: list[str]) -> list[str]:
    """``--key -abc`` as ``--key=-abc``: --key always takes a value, so the next word is it
    even when it starts with '-' (which argparse would take for an option)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--key" and i + 1 < len(argv):
            out.append(f"--key={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_key(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `hetserve jobs show ID | head`: the reader left. Exit quietly; stdout goes to
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a tool killed by the signal
    except hetserve.AuthenticationError as exc:
        print(f"hetserve: {exc}\nhetserve: {auth_hint(args)}", file=sys.stderr)
        return 1
    except hetserve.ConnectionFailed as exc:
        print(f"hetserve: {exc} (is `hetserve up` running? the URL is --url / HETSERVE_URL)",
              file=sys.stderr)  # fmt: skip
        return 1
    except (CliError, hetserve.HetserveError, FileNotFoundError) as exc:
        print(f"hetserve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
