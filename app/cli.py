"""The ``hetserve`` command.

Two kinds of subcommands:

- local processes: ``up`` (what ``make run`` runs: migrations, then the API and one
  worker as child processes on embedded defaults, until Ctrl-C) and ``migrate``;
- HTTP clients of a running service: ``datasets``, ``train``, ``jobs``, ``demo``. They
  find the service at ``--url`` / ``HETSERVE_URL`` (default: HETSERVE_HOST:HETSERVE_PORT)
  and authenticate with ``--key`` / ``HETSERVE_API_KEY``, else the first of
  ``HETSERVE_API_KEYS``, else the key file the service wrote into the data folder.

Stdlib and httpx only at import: no torch, so the command starts fast and works from the
API image. ``demo`` alone needs the training side (sklearn's digits, models/) and runs
it in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from app.settings import Settings
from app.statuses import TERMINAL_STATUSES, JobStatus

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


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, start the API and one worker, print URL and key, stop both on a signal.

    The children run in their own process group, so a terminal's Ctrl-C reaches only this
    process, which then stops each child exactly once: SIGTERM (uvicorn: graceful; Celery:
    warm shutdown), after ``--stop-timeout`` SIGQUIT to Celery (cold: a running job is
    left to be redelivered and resumes from its checkpoint), then SIGKILL.
    """
    from app import db
    from app.auth import load_or_create_keys

    env_settings = Settings()
    data_dir = env_settings.data_dir.resolve()
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(settings)
    keys = load_or_create_keys(settings)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    child_env = os.environ | {"HETSERVE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    # SSE clients hold connections open; do not let them block a graceful stop forever.
    child_env.setdefault("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", str(max(1, args.stop_timeout // 2)))
    api_args = ["--host", settings.host, "--port", str(settings.port)]
    children = {
        "api": _spawn([sys.executable, *API_COMMAND, *api_args], child_env),
        "worker": _spawn([sys.executable, *WORKER_COMMAND], child_env),
    }
    url = f"http://{_client_host(settings.host)}:{settings.port}"
    exit_code = 0
    try:
        if _wait_healthy(url, children, stop, args.start_timeout):
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
        while not stop.is_set():
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
    url: str, children: dict[str, subprocess.Popen], stop: threading.Event, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in children.values()):
            return False
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
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


# --------------------------------------------------------------------------- HTTP client


class Api:
    """A thin httpx client: JSON in and out, errors turned into CliError with the detail."""

    def __init__(self, url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_S)

    def request(self, method: str, path: str, **kwargs) -> dict | list:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach {self.url}: {exc} (is `hetserve up` running?)") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise CliError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response.json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, job) pairs from GET /v1/jobs/{id}/events until the stream ends."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise CliError(
                    f"events of job {job_id}: HTTP {response.status_code}: {response.text}"
                )
            event, data = "message", []
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    yield event, json.loads("\n".join(data))
                    event, data = "message", []


def api_from(args: argparse.Namespace) -> Api:
    settings = Settings()
    url = args.url or os.environ.get("HETSERVE_URL")
    url = url or f"http://{_client_host(settings.host)}:{settings.port}"
    return Api(url, args.key or _default_key(settings))


def _default_key(settings: Settings) -> str | None:
    if key := os.environ.get("HETSERVE_API_KEY"):
        return key
    if settings.api_keys:
        return settings.api_keys.split(",")[0].strip()
    key_file = settings.data_dir / "api_key"
    return key_file.read_text().strip() if key_file.exists() else None


# --------------------------------------------------------------------------- datasets


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    dataset = upload_dataset(
        api_from(args), Path(args.file), args.name, args.image_size, args.grayscale
    )
    print(json.dumps(dataset, indent=2) if args.json else _dataset_line(dataset))
    return 0


def upload_dataset(api: Api, path: Path, name: str | None = None, image_size: int = 32,
                   grayscale: bool = False) -> dict:  # fmt: skip
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    form = {"image_size": str(image_size), "grayscale": str(grayscale).lower()}
    if name:
        form["name"] = name
    with path.open("rb") as f:
        return api.request("POST", "/v1/datasets", files={"file": (path.name, f)}, data=form)


def cmd_datasets_ls(args: argparse.Namespace) -> int:
    datasets = api_from(args).request("GET", "/v1/datasets")
    if args.json:
        print(json.dumps(datasets, indent=2))
    for dataset in [] if args.json else datasets:
        print(_dataset_line(dataset))
    return 0


def _dataset_line(d: dict) -> str:
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
    api = api_from(args)
    job = api.request("POST", "/v1/jobs", json=build_spec(args))
    print(f"job {job['id']} {job['status']}", flush=True)
    if args.no_wait:
        return 0
    try:
        job = follow_job(api, job["id"])
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job['id']} goes on (hetserve jobs cancel {job['id']})",
              file=sys.stderr)  # fmt: skip
        return 130
    print_job(job)
    return 0 if job["status"] == JobStatus.SUCCEEDED else 1


def follow_job(api: Api, job_id: str, out=sys.stderr) -> dict:
    """Draw a progress bar from the job's server-sent events until it ends; if the stream
    breaks, poll GET /v1/jobs/{id} instead. Returns the final job (with history)."""
    bar = ProgressBar(out)
    try:
        for event, job in api.events(job_id):
            bar.draw(job)
            if event == "end" or job["status"] in TERMINAL_STATUSES:
                break
    except (httpx.HTTPError, CliError):
        pass  # stream unavailable or cut: polling below still gets us to the end
    while True:
        job = api.request("GET", f"/v1/jobs/{job_id}")
        bar.draw(job)
        if job["status"] in TERMINAL_STATUSES:
            bar.close()
            return job
        time.sleep(1.0)


class ProgressBar:
    """One redrawn line on a terminal; one line per change otherwise (logs, CI)."""

    WIDTH = 30

    def __init__(self, out) -> None:
        self.out, self.last = out, None
        self.tty = hasattr(out, "isatty") and out.isatty()

    def draw(self, job: dict) -> None:
        progress = job.get("progress") or {}
        fraction = min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0)
        if job["status"] == JobStatus.SUCCEEDED:
            fraction = 1.0
        filled = round(fraction * self.WIDTH)
        phase = f" {progress['phase']}" if progress.get("phase") else ""
        epochs = (
            f" epoch {progress.get('epoch', 0)}/{progress['epochs']}"
            if progress.get("epochs")
            else ""
        )
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%} {job['status']}{phase}{epochs}"
        if line == self.last:
            return
        self.last = line
        self.out.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def print_job(job: dict) -> None:
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
    if job.get("metrics"):
        print(metrics_table(job["metrics"]))


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
    params = {"limit": args.limit} | ({"status": args.status} if args.status else {})
    jobs = api_from(args).request("GET", "/v1/jobs", params=params)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for job in jobs:
        progress = job.get("progress") or {}
        print(
            f"{job['id']}  {job['status']:<9}  {progress.get('fraction', 0):4.0%}  "
            f"dataset {job['dataset_id']}  created {job['created_at']}"
        )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = api_from(args).request("GET", f"/v1/jobs/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print_job(job)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = api_from(args).request("POST", f"/v1/jobs/{args.job_id}/cancel")
    print(f"job {job['id']}: cancel requested (status {job['status']})")
    return 0


# --------------------------------------------------------------------------- demo

# The benchmark's noise model lives in models/ (training side: sklearn, numpy), which
# the app package never imports: it is built by a child interpreter.
DEMO_DATASET_COMMAND = ["-m", "models.benchmarks", "noisy_digits"]


def cmd_demo(args: argparse.Namespace) -> int:
    api = api_from(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noisy_digits.npz"
        made = subprocess.run(
            [sys.executable, *DEMO_DATASET_COMMAND, str(path), "--seed", str(args.seed)],
            capture_output=True, text=True,
        )  # fmt: skip
        if made.returncode != 0:
            raise CliError(
                f"could not build the noisy-digits benchmark: {made.stderr.strip()[-500:]}"
            )
        dataset = upload_dataset(api, path, name="noisy-digits")
        with np.load(path) as arrays:
            x_example, y_example = arrays["x_test"][0].tolist(), int(arrays["y_test"][0])
    print(_dataset_line(dataset))
    spec = {
        "dataset_id": dataset["id"],
        "head": {"kind": "het", "num_factors": 4, "temperature": args.temperature},
        "backbone": {"kind": "mlp"},
        "train": {"epochs": args.epochs, "seed": args.seed},
        "compare_baseline": True,
    }
    job = api.request("POST", "/v1/jobs", json=spec)
    print(
        f"job {job['id']}: HET (R=4) and the softmax baseline, {args.epochs} epochs each",
        flush=True,
    )
    job = follow_job(api, job["id"])
    print_job(job)
    if job["status"] != JobStatus.SUCCEEDED:
        return 1
    request = {"inputs": [x_example], "seed": 0, "top_k": 3, "correlated_pairs": True}
    prediction = api.request("POST", f"/v1/models/{job['model_id']}/predict", json=request)
    row = prediction["predictions"][0]
    print(f"one test image (true class {y_example}) through the served model, "
          f"S={prediction['mc_samples']} samples:")  # fmt: skip
    print(prediction_summary(row))
    return 0


def prediction_summary(row: dict) -> str:
    """A few lines for a person; the full row (probs, prob_std, mc_stderr, noise_std per
    class) is what the API returns."""
    lines = [
        f"  predicted {row['class_name']} (class {row['label']}), confidence {row['confidence']:.3f}",
        f"  entropy {row['entropy']:.3f}, expected entropy {row['expected_entropy']:.3f}",
    ]
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
        description="Train heteroscedastic (HET) classifiers and serve them with uncertainty.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the API and one worker on embedded defaults (make run)")
    up.add_argument("--stop-timeout", type=int, default=10, help="seconds per shutdown step")
    up.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds to wait for /healthz"
    )
    up.set_defaults(func=cmd_up)
    sub.add_parser("migrate", help="bring the store's schema to head").set_defaults(
        func=cmd_migrate
    )

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", help="service URL (HETSERVE_URL; default HETSERVE_HOST:HETSERVE_PORT)"
    )
    client.add_argument(
        "--key", help="API key (HETSERVE_API_KEY; default the data folder's key file)"
    )
    client.add_argument("--json", action="store_true", help="print raw JSON")

    datasets = sub.add_parser("datasets", help="upload and list datasets").add_subparsers(
        dest="datasets_command", required=True
    )
    upload = datasets.add_parser("upload", parents=[client], help="upload a .npz, .csv or .zip")
    upload.add_argument("file")
    upload.add_argument("--name")
    upload.add_argument("--image-size", type=int, default=32, help=".zip: resize images to N×N")
    upload.add_argument("--grayscale", action="store_true", help=".zip: decode as one channel")
    upload.set_defaults(func=cmd_datasets_upload)
    datasets.add_parser("ls", parents=[client]).set_defaults(func=cmd_datasets_ls)

    train = sub.add_parser("train", parents=[client], help="submit a job and follow it")
    train.add_argument("--dataset", required=True, help="dataset id")
    train.add_argument("--spec", help="job spec as JSON, or @file.json; flags override it")
    train.add_argument("--head", choices=["het", "softmax"])
    train.add_argument("--num-factors", type=int, help="R")
    train.add_argument("--temperature", type=_temperature, help="a number, auto or learned")
    train.add_argument("--train-mc-samples", type=int)
    train.add_argument("--eval-mc-samples", type=int)
    train.add_argument("--backbone", choices=["mlp", "cnn", "resnet18"])
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    train.add_argument("--compare-baseline", action=argparse.BooleanOptionalAction, default=None)
    train.add_argument("--no-wait", action="store_true", help="submit and return")
    train.set_defaults(func=cmd_train)

    jobs = sub.add_parser("jobs", help="list, show and cancel jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    ls = jobs.add_parser("ls", parents=[client])
    ls.add_argument("--status", choices=list(JobStatus))
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_jobs_ls)
    for name, func in (("show", cmd_jobs_show), ("cancel", cmd_jobs_cancel)):
        command = jobs.add_parser(name, parents=[client])
        command.add_argument("job_id")
        command.set_defaults(func=func)

    demo = sub.add_parser(
        "demo", parents=[client], help="noisy digits: HET vs softmax, one prediction"
    )
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--temperature", type=_temperature, default=2.0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"hetserve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
