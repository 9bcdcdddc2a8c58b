"""Do the docs' timing ratios reproduce? Run every ratio-bearing bench once, as its table's
command gives it, and compare each ratio with the runs recorded before.

    .venv/bin/python bench/reproduce.py run docs/bench-runs/<date>-vm-<boot id>  # ~18 min, quiet
    .venv/bin/python bench/reproduce.py check docs/bench-runs/<new> --against docs/bench-runs/*
    .venv/bin/python bench/reproduce.py spread docs/bench-runs/* > docs/bench-runs/README.md

A run directory holds one record per bench (bench/run_record.py: every ratio the bench's
tables print, the date, the VM's boot id and bench/calibrate.py's reading) and the
bench's printed tables beside it (<bench>.md). `check` counts a new run's ratios inside
the recorded runs' min-max (the spread the docs' tables state) beside the count expected
of exchangeable runs, (n - 1) / (n + 1) per ratio: a min-max of a few runs is no promise
about the next one. What a table can promise is the 90 % interval for a new run
(`prediction_interval`), and `check` counts the ratios inside it too
(docs/benchmarks.md, "Do the tables reproduce?").
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import calibrate, run_record  # noqa: E402
from bench.quiet import Spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Each bench as the docs' tables run it (--json is added).
BENCHES: dict[str, list[str]] = {
    "head_speed": ["bench/head_speed.py", "--contention", "--runs", "1", "--no-memory"],
    "export_speed": ["bench/export_speed.py", "--repeats", "11"],
    "noise_free_speed": ["bench/noise_free_speed.py", "--repeats", "201"],
    "data_loading": ["bench/data_loading.py", "--images", "2000", "--rounds", "3"],
    "serve_load": ["bench/serve_load.py", "--passes", "3"],
}


def run(out: Path, only: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in only:
        command = [sys.executable, *BENCHES[name], "--json", str(out / f"{name}.json")]
        print(f"{time.strftime('%H:%M:%S')} {' '.join(command[1:])}", flush=True)
        with open(out / f"{name}.md", "w") as tables:
            subprocess.run(command, cwd=ROOT, env=env, stdout=tables, check=True)


def records(directory: Path) -> dict[str, list[dict[str, float]]]:
    """{bench: [each run's ratios]} of a run directory (a record with --runs N holds N
    runs)."""
    found: dict[str, list[dict[str, float]]] = {}
    for path in sorted(directory.glob("*.json")):
        record = run_record.read(path)
        found.setdefault(record["bench"], []).extend(
            record.get("ratios_per_run") or [record["ratios"]]
        )
    return found


def pooled(directories: list[Path]) -> dict[str, dict[str, list[float]]]:
    """{bench: {ratio: [value per run]}} over every run in the directories."""
    pool: dict[str, dict[str, list[float]]] = {}
    for directory in directories:
        for bench, runs in records(directory).items():
            for ratios in runs:
                for name, value in ratios.items():
                    pool.setdefault(bench, {}).setdefault(name, []).append(value)
    return pool


# Student's t, 95th percentile (a two-sided 90 % interval), by degrees of freedom; past
# these, 1.645 + 1.6 / df is within 0.01 of it
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833}


def t95(df: int) -> float:
    return T95.get(df, 1.645 + 1.6 / df)


def prediction_interval(values: list[float]) -> tuple[float, float] | None:
    """Where a new run's ratio should land, 9 times in 10, if runs are exchangeable: in
    log (a ratio's spread is multiplicative), mean +- t * sd * sqrt(1 + 1/n) over the n
    recorded runs. Runs, not VMs, are the unit: on 7 December two quiet runs 20 minutes
    apart on one VM differed as much as runs on two VMs (docs/benchmarks.md), so a VM
    is not the thing that varies. None below two runs."""
    n = len(values)
    if n < 2:
        return None
    logs = [math.log(v) for v in values]
    half = t95(n - 1) * statistics.stdev(logs) * math.sqrt(1 + 1 / n)
    mean = statistics.fmean(logs)
    return math.exp(mean - half), math.exp(mean + half)


def machines(directory: Path) -> list[dict]:
    return [run_record.read(path)["machine"] for path in sorted(directory.glob("*.json"))]


def speed_line(directory: Path) -> str:
    found = machines(directory)
    if not found:
        return f"{directory}: no records"
    speeds = [m["speed"] for m in found]
    median = {key: statistics.median(s[key] for s in speeds) for key in speeds[0]}
    dates = sorted(m["date"] for m in found)
    cpus = " / ".join(sorted({m["cpu"] for m in found}))
    return f"{directory} ({dates[0]} .. {dates[-1]}; {cpus}): {calibrate.line(median)}"


def check(new: Path, against: list[Path]) -> int:
    """Print every ratio of ``new`` against the recorded runs; the number outside their
    min-max.

    Min-max is what the docs' tables state, but it is no promise: a new run exchangeable
    with n recorded ones falls inside their min-max with probability (n - 1) / (n + 1)
    (1/2 for three runs), so some ratios fall outside however well the tables were made;
    the expected share is printed beside the observed one, and, from two recorded runs on, how
    many fall inside the 90 % prediction interval for a new run."""
    stated = pooled(against)
    # An interval from one CPU generation covered ~80 % of a run on another, not 90 %
    # (docs/benchmarks.md, "Checked across VMs"): the CPUs compared are printed.
    print("CPU and calibration (median over each directory's records):")
    for directory in [*against, new]:
        print(f"  {speed_line(directory)}")
    outside_total = 0
    for bench, runs in records(new).items():
        inside = expected = in_interval = with_interval = total = 0
        rows = []
        for name, value in runs[-1].items():
            values = stated.get(bench, {}).get(name)
            if not values:
                rows.append(f"  {name}: {value:.3f} (no recorded run)")
                continue
            total += 1
            spread = Spread.of(values)
            ok = spread.low <= value <= spread.high
            inside += ok
            expected += (len(values) - 1) / (len(values) + 1)
            interval = prediction_interval(values)
            note = ""
            if interval:
                with_interval += 1
                in_interval += interval[0] <= value <= interval[1]
                note = f"; 90 % interval for a new run {interval[0]:.3f}-{interval[1]:.3f}"
            if not ok:
                rows.append(
                    f"  {name}: {value:.3f} outside {spread.format('.3f')} "
                    f"({len(values)} runs{note})"
                )
        outside_total += total - inside
        line = (
            f"{bench}: {inside} of {total} ratios inside the recorded min-max "
            f"(expected if runs were exchangeable: {expected:.1f})"
        )
        if with_interval:
            line += f"; {in_interval} of {with_interval} inside the 90 % interval for a new run"
        print(line)
        if rows:
            print("\n".join(rows))
    return outside_total


def spread(directories: list[Path]) -> None:
    """Markdown: the runs recorded, then every ratio's spread over them (what
    docs/bench-runs/README.md holds)."""
    print("# Recorded benchmark runs\n")
    print(
        "Generated by `.venv/bin/python bench/reproduce.py spread docs/bench-runs/*` from the "
        "run records in this folder (bench/run_record.py); each run's printed tables are "
        "beside its records (`<bench>.md`). Spread: min / median / max of each run's ratio "
        "of its own medians; the 90 % interval is where a new run should land if runs are "
        "exchangeable (bench/reproduce.py, `prediction_interval`).\n"
    )
    print(
        "| run | VM (boot id) | CPU | started | machine speed at the start (bench/calibrate.py) |"
    )
    print("|---|---|---|---|---|")
    for directory in directories:
        found = machines(directory)
        if not found:
            continue
        first = min(found, key=lambda m: m["date"])
        print(
            f"| {directory.name} | {first['boot_id'][:8]} | {first['cpu']} | {first['date']} "
            f"| {calibrate.line(first['speed']).split(': ', 1)[1]} |"
        )
    for bench, ratios in pooled(directories).items():
        print(f"\n## {bench}\n")
        print("| ratio | min / median / max | runs | 90 % interval, new run |")
        print("|---|---|---:|---|")
        for name, values in ratios.items():
            interval = prediction_interval(values)
            shown = f"{interval[0]:.3g}–{interval[1]:.3g}×" if interval else ""
            print(
                f"| {name} | {Spread.of(values).format('.3g', unit='×')} | {len(values)} "
                f"| {shown} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run every bench into a directory")
    run_p.add_argument("out", type=Path)
    run_p.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    check_p = sub.add_parser("check", help="a new run against the recorded runs' spread")
    check_p.add_argument("new", type=Path)
    check_p.add_argument("--against", type=Path, nargs="+", required=True)
    spread_p = sub.add_parser("spread", help="each ratio's spread over the recorded runs")
    spread_p.add_argument("directories", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "run":
        run(args.out, args.only)
    elif args.command == "check":
        # Exit 0 whatever the count: ratios outside a min-max are expected (check's doc).
        check(
            args.new, [d for d in args.against if d.is_dir() and d.resolve() != args.new.resolve()]
        )
    else:
        spread(sorted(d for d in args.directories if d.is_dir()))


if __name__ == "__main__":
    main()
