"""``hetserve train`` (a job spec from --spec and flags, submitted and followed) and
``hetserve jobs``: list, show, follow, cancel and delete jobs; the job and metrics
tables they print.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import hetserve
from app.cli.arguments import Commands
from app.cli.connect import client_from
from app.cli.output import CliError, print_json
from app.cli.progress import follow_job
from core.spec import BackboneSpec
from core.statuses import TERMINAL_STATUSES, JobStatus
from hetserve import Client


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
        print(
            f"\nstopped following; job {job_id} goes on (hetserve jobs cancel {job_id})",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print_json(job)
    elif args.quiet:
        if job["status"] == JobStatus.SUCCEEDED:
            print(job["model_id"])
        else:
            print(
                f"hetserve: job {job_id} {job['status']}: {job.get('error') or ''}", file=sys.stderr
            )
    else:
        print_job(job)
    return 0 if job["status"] == JobStatus.SUCCEEDED else 1


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


def parse_temperature(value: str) -> float | str:
    """A ``--temperature`` value: a number, ``auto`` or ``learned``."""
    if value in ("auto", "learned"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, 'auto' or 'learned', not {value!r}") from None


def add_commands(commands: Commands) -> None:
    """``train``, then the ``jobs`` group."""
    client, quiet = commands.client, commands.quiet
    train = commands.command(
        "train",
        "submit a training job and follow it with a progress bar",
        cmd_train,
        parents=[client, quiet],
    )
    train.add_argument("--dataset", required=True, help="dataset id")
    train.add_argument("--spec", help="job spec as JSON, or @file.json; flags override it")
    train.add_argument("--head", choices=["het", "softmax"], help="classifier head")
    train.add_argument("--num-factors", type=int, help="R, the rank of the noise covariance")
    train.add_argument("--temperature", type=parse_temperature, help="a number, auto or learned")
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
    train.add_argument(
        "--compare-baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train the softmax baseline on the same data and budget",
    )
    train.add_argument("--no-wait", action="store_true", help="submit and return")
    train.epilog = (
        "With -q, prints only the model id once the job succeeds (the job id with --no-wait)."
    )

    jobs = commands.group("jobs", "list, show, follow, cancel and delete jobs")
    ls = commands.subcommand(
        jobs, "ls", "list jobs, newest first", cmd_jobs_ls, parents=[client, quiet]
    )
    ls.add_argument("--status", choices=list(JobStatus), help="only jobs in this status")
    ls.add_argument("--limit", type=int, default=20, help="at most this many")
    for name, func, text, parents in (
        ("show", cmd_jobs_show, "show a job: status, progress, metrics, model ids", [client]),
        ("wait", cmd_jobs_wait, "follow a job to its end with a progress bar", [client, quiet]),
        (
            "cancel",
            cmd_jobs_cancel,
            "ask a job to stop (the worker stops within about a second)",
            [client],
        ),
    ):
        commands.subcommand(jobs, name, text, func, parents=parents).add_argument(
            "job_id", help="job id"
        )
    rm = commands.subcommand(
        jobs,
        "rm",
        "delete an ended job, its history and checkpoints",
        cmd_jobs_rm,
        parents=[client],
    )
    rm.add_argument("job_id", help="job id")
    rm.add_argument(
        "--models",
        action="store_true",
        help="also delete its models (refused while an alias points at one)",
    )
