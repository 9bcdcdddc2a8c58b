"""``hetserve demo`` (noisy digits: upload, train HET and the softmax baseline, one
prediction) and ``hetserve demo-data`` (the benchmark as an uploadable .npz).

The benchmark's noise model lives in models/ (training side: sklearn, numpy), which
the app package never imports: it is built by a child interpreter.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from app.cli.arguments import Commands
from app.cli.connect import client_from
from app.cli.datasets import dataset_line
from app.cli.jobs import parse_temperature, print_job
from app.cli.output import CliError
from app.cli.predict import prediction_summary
from app.cli.progress import follow_job
from core.statuses import JobStatus

DEMO_DATASET_COMMAND = ["-m", "models.benchmarks", "noisy_digits"]


def write_demo_data(path: Path, seed: int) -> None:
    made = subprocess.run(
        [sys.executable, *DEMO_DATASET_COMMAND, str(path), "--seed", str(seed)],
        capture_output=True,
        text=True,
    )
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
    print(dataset_line(dataset))
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
    print(
        f"one test image (true class {y_example}) through the served model, "
        f"S={result.mc_samples} samples:"
    )
    print(prediction_summary(result.rows[0]))
    return 0


def add_commands(commands: Commands) -> None:
    demo = commands.command(
        "demo",
        "noisy digits: HET vs softmax, one prediction",
        cmd_demo,
        parents=[commands.client],
    )
    demo.add_argument("--epochs", type=int, default=30, help="epochs per model")
    demo.add_argument("--seed", type=int, default=0, help="data and training seed")
    demo.add_argument("--temperature", type=parse_temperature, default=2.0, help="HET temperature")
    demo_data = commands.command(
        "demo-data",
        "write the noisy-digits benchmark as an uploadable .npz (needs the training extra)",
        cmd_demo_data,
    )
    demo_data.add_argument("out", help="the .npz to write, e.g. digits.npz")
    demo_data.add_argument("--seed", type=int, default=0, help="noise seed")
