"""How a closed-loop client's keep-alive connections split over hetserve's API processes.

`hetserve up` as shipped (2 uvicorn processes on 2 cores) serving the K = 10 HET MLP of
bench/serve_load.py; each try runs wrk (32 connections, 4 s, one-row requests) and, 2 s
in, counts the established connections per process with `ss`. Each process accepts
whatever connections are pending when it wakes, so a burst of connects can land unevenly;
the split holds for the whole run, since the connections are kept alive.

    .venv/bin/python bench/connection_split.py [--tries 6] [--env UV_TCP_SINGLE_ACCEPT=1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_load  # noqa: E402

CLIENTS = 32


def connections_per_process(port: int) -> list[int]:
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=6)
    parser.add_argument("--env", action="append", default=[], metavar="VAR=VALUE")
    args = parser.parse_args()
    extra = dict(a.split("=", 1) for a in args.env)
    work = Path(tempfile.mkdtemp(prefix="hetserve-connections-"))
    model = serve_load.export_het_mlp(work / "het_k10.onnx", 10)
    knobs = argparse.Namespace(
        hetserve_variants={"hetserve": (serve_load.ROOT, extra)},
        intra_op_threads=1,
        anchor_delay_ms=0.0,
    )
    rows = [[0.1] * serve_load.D]
    print(f"hetserve up, extra environment {extra or 'none'}; wrk {CLIENTS} connections, 4 s")
    print("| try | connections per API process | requests/s | p99 ms |")
    print("|---:|---|---:|---:|")
    try:
        split_runs(model, knobs, rows, work, args.tries)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def split_runs(model: Path, knobs: argparse.Namespace, rows: list, work: Path, tries: int) -> None:
    with serve_load.start("hetserve", model, knobs, work) as target:
        port = int(target.url.rsplit(":", 1)[1])
        for i in range(tries):
            got: dict = {}
            run = threading.Thread(
                target=lambda got=got: got.update(serve_load.wrk(target, rows, CLIENTS, 4, work))
            )
            run.start()
            time.sleep(2)
            split = connections_per_process(port)
            run.join()
            shown = " / ".join(map(str, split + [0] * (target.processes - len(split))))
            print(f"| {i + 1} | {shown} | {got['rps']:.0f} | {got['p99']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
