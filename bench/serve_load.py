"""Closed-loop load on hetserve as shipped and on the servers users would pick instead.

    .venv/bin/python bench/serve_load.py [--seconds 6] [--passes 3] [--json var/serve_load.json]
    .venv/bin/python bench/serve_load.py --from-json var/serve_load.json [same knobs]

For a HET MLP model at K = 10 and K = 100 (S = 1000 samples per prediction, fresh draws
on every call), on one exported ONNX file per K, these servers run one at a time on
loopback, started afresh for each K in each pass, the passes interleaved (each pass
visits the servers in another order), at 1 and 16 rows per request:

- ``hetserve``: ``hetserve up`` exactly as ``make run`` starts it (its API processes, its
  worker, no tuning variable; only the data dir, port and API key are set), predicting
  through ``POST /v1/models/{id}/predict`` with every uncertainty field per row;
- the anchors of bench/serve_anchors.py, same file, same onnxruntime session options
  and the same number of processes / model instances as hetserve's API processes:
  ``triton`` (Triton's C++ front end and dynamic batcher through PyTriton), ``litserve``,
  ``bentoml`` (adaptive batching), each installed on first use into its own virtualenv
  under var/bench-venvs/<name> (a benchmark-only step, like bench/head_speed.py's
  edward2), and ``fastapi``: FastAPI + onnxruntime, one call per request, in this venv;
- with ``--baseline-tree DIR`` also ``hetserve up`` from another checkout (e.g. ``git
  archive main``), as shipped there; ``--hetserve-env NAME:VAR=V,...`` adds hetserve
  with those settings (e.g. ``ort-per-core:HETSERVE_ORT_INTRA_OP_THREADS=2``).

Every anchor gets the onnxruntime intra-op threads that hetserve's default picks on this
machine (app/serving/runtime.py: ``max(1, cores // API processes - 1)``).

Load: wrk (``apt-get install -y wrk``), ``--clients`` connections, each sending a request
and waiting for its answer (closed loop), ``--warmup`` seconds unmeasured, then
``--seconds`` measured. Per round it records requests/s, p50 and p99 (wrk's), the
server's CPU per request (its whole process tree, from /proc) and the CPU the *other*
processes of the machine used meanwhile (bench/quiet.py: busy time from /proc/stat less
the server's, wrk's and this script's, in cores); a round where others used more than
``--max-other-cores`` (bench/quiet.py's MAX_OTHER_CORES, 0.2) is flagged (!) and left
out of the medians when a clean round of that line exists. Prints one markdown table per
K and request size, and the ratio of hetserve's requests/s to the best anchor's, with
both p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import calibrate, run_record  # noqa: E402
from bench.quiet import (  # noqa: E402
    MAX_OTHER_CORES,
    OtherCores,
    Spread,
    mark,
    quiet_rounds,
    tree_cpu_s,
    tree_pids,
)

D = 64  # input features (the size of sklearn's digits)
HIDDEN = [256, 256]
FACTORS = {10: 4, 100: 10}  # R per K (R = 10 at K = 100: the cost example of docs/models.md)
S = 1000  # the model's eval S, and the num_samples every anchor passes
MAX_ROWS = 64  # rows per batched call, every server (hetserve's HETSERVE_MAX_BATCH_SIZE)
API_KEY = "bench-serve-load-key"
VENVS = ROOT / "var" / "bench-venvs"
ANCHOR_REQUIREMENTS = {  # with this venv's onnxruntime
    "triton": ["nvidia-pytriton==0.7.0"],
    "litserve": ["litserve==0.2.19"],
    "bentoml": ["bentoml==1.4.40"],
}
ANCHORS = ("triton", "litserve", "bentoml", "fastapi")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- models ---------------------------------------------------------------------------


def export_het_mlp(path: Path, num_classes: int) -> Path:
    import torch

    from core.spec import BackboneSpec, HeadSpec, RunSpec
    from models.classifier import build_classifier
    from models.export import export_onnx

    torch.manual_seed(0)
    spec = RunSpec(
        head=HeadSpec(
            kind="het", num_factors=FACTORS[num_classes], temperature=1.5, eval_mc_samples=S
        ),
        backbone=BackboneSpec(hidden=HIDDEN),
    )
    model = build_classifier(
        spec, [D], num_classes, np.zeros(D, np.float32), np.ones(D, np.float32)
    )
    parity = np.random.default_rng(0).normal(size=(4, D)).astype(np.float32)
    export_onnx(
        model.eval(), path, class_names=[str(k) for k in range(num_classes)], parity_inputs=parity
    )
    return path


# -- the load ---------------------------------------------------------------------------


async def one_client(
    port: int, request: bytes, deadline: float, budget: list[int], latencies: list[float]
):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def closed_loop(
    port: int, path: str, payload: dict, clients: int, requests: int, seconds: float, warmup: float
) -> tuple[list[float], float]:
    """Latencies (s) of up to ``requests`` answers within ``seconds``, and the time taken."""
    body = json.dumps(payload).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def phase(budget: int, duration: float) -> tuple[list[float], float]:
        latencies: list[float] = []
        start = time.perf_counter()
        remaining = [budget]
        await asyncio.gather(
            *(
                one_client(port, request, start + duration, remaining, latencies)
                for _ in range(clients)
            )
        )
        return latencies, time.perf_counter() - start

    if warmup > 0:
        await phase(10**9, warmup)
    return await phase(requests, seconds)


def summarize(latencies: list[float], elapsed: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {
        "count": len(ms),
        "rps": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


# -- the servers ------------------------------------------------------------------------


@dataclass
class Target:
    """A running server: where to send what, and the root of its process tree."""

    url: str
    path: str
    body: object  # rows (list of lists) -> bytes
    pid: int
    processes: int
    headers: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None  # hetserve: /metrics tells its rows per onnxruntime call


def ensure_venv(name: str) -> Path:
    """The python of var/bench-venvs/<name>, holding the anchor and this venv's
    onnxruntime, created on first use."""
    import onnxruntime

    path = VENVS / name
    python, marker = path / "bin" / "python", path / ".installed"
    wanted = [*ANCHOR_REQUIREMENTS[name], f"onnxruntime=={onnxruntime.__version__}"]
    if python.exists() and marker.exists() and marker.read_text() == "\n".join(wanted):
        return python
    log(f"installing {' '.join(wanted)} into {path} (once)")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
    marker.write_text("\n".join(wanted))
    return python


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_rows(rows: list) -> bytes:
    return json.dumps({"inputs": rows}).encode()


def kserve_rows(rows: list) -> bytes:
    data = [v for row in rows for v in row]
    tensor = {"name": "input", "shape": [len(rows), D], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], ready_url: str, cwd: Path, timeout: float):
    """Start ``argv`` in its own process group; yield its pid once ``ready_url`` answers
    200; stop the whole group after."""
    import httpx

    out = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe stalls it
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out.seek(0)
                raise RuntimeError(
                    f"{argv[:3]} exited with {proc.returncode}:\n{out.read()[-3000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[:3]} not ready in {timeout:.0f} s")
            time.sleep(0.3)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(0.5)  # let the group's other processes go before the next server
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()


def hetserve_target(tree: Path, model: Path, extra_env: dict[str, str], work: Path):
    """``hetserve up`` from ``tree`` with the model registered; (context, model id)."""
    from tests.support.model_serving import make_settings, register

    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    model_id = register(make_settings(data), model)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    env.update(
        PYTHONPATH=str(tree),
        HETSERVE_DATA_DIR=str(data),
        HETSERVE_PORT=str(port),
        HETSERVE_API_KEYS=API_KEY,
        HETSERVE_LOG_LEVEL="WARNING",
        **extra_env,
    )
    hetserve = Path(sys.executable).parent / "hetserve"
    url = f"http://127.0.0.1:{port}"
    return url, model_id, process([str(hetserve), "up"], env, f"{url}/healthz", tree, 120)


@contextlib.contextmanager
def start(name: str, model: Path, args, work: Path):
    """Yield a Target for server ``name`` serving ``model``."""
    from app.settings import default_api_workers

    processes = default_api_workers()
    if name.startswith("hetserve"):
        tree, extra = args.hetserve_variants[name]
        url, model_id, ctx = hetserve_target(tree, model, extra, work)
        with ctx as pid:
            yield Target(
                url,
                f"/v1/models/{model_id}/predict",
                json_rows,
                pid,
                processes,
                {"Authorization": f"Bearer {API_KEY}"},
                model_id,
            )
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HETSERVE_", "BENCH_"))}
    env.update(
        BENCH_MODEL_PATH=str(model),
        BENCH_INTRA_OP_THREADS=str(args.intra_op_threads),
        BENCH_NUM_SAMPLES=str(S),
        BENCH_WORKERS=str(processes),
        BENCH_MAX_ROWS=str(MAX_ROWS),
        BENCH_DELAY_MS=str(args.anchor_delay_ms),
        BENCH_PORT=str(port),
        PYTHONPATH=str(ROOT),
    )
    anchors = ROOT / "bench" / "serve_anchors.py"
    if name == "fastapi":
        argv = [sys.executable, "-m", "uvicorn", "bench.serve_anchors:fastapi_app", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(processes),
                "--log-level", "warning"]  # fmt: skip
        ready, path, body = f"{url}/docs", "/predict", json_rows
    elif name == "triton":
        python = ensure_venv(name)
        # Its Python backend stub loads libpython: the venv interpreter's, not the system's.
        env["LD_LIBRARY_PATH"] = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        argv = [str(python), str(anchors), "triton"]
        ready, path, body = f"{url}/v2/models/het/ready", "/v2/models/het/infer", kserve_rows
    elif name == "litserve":
        argv = [str(ensure_venv(name)), str(anchors), "litserve"]
        ready, path, body = f"{url}/health", "/predict", json_rows
    elif name == "bentoml":
        bentoml = ensure_venv(name).parent / "bentoml"
        argv = [str(bentoml), "serve", "bench.serve_anchors:HetBento", "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
        ready, path, body = f"{url}/readyz", "/predict", json_rows
    else:
        raise ValueError(f"unknown server {name!r}")
    # PyTriton's second model instance waits 1 s for the first one's handshake and fails
    # to load past it (often, on a busy machine): three tries, then one instance.
    tries = [processes] * 3 + ([1] if name == "triton" and processes > 1 else [])
    for attempt, workers in enumerate(tries):
        env["BENCH_WORKERS"] = str(workers)
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
        env["BENCH_WORKSPACE"] = str(scratch / "workspace")  # must not exist yet (PyTriton)
        ctx = process(argv, env, ready, ROOT, 180)
        try:
            try:
                pid = ctx.__enter__()
            except RuntimeError as exc:
                if attempt == len(tries) - 1:
                    raise
                log(f"{name} failed to start, retrying: {str(exc)[-300:]}")
                continue
            try:
                yield Target(url, path, body, pid, workers)
            finally:
                ctx.__exit__(None, None, None)
            return
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


# -- CPU accounting: bench/quiet.py; the server's own wait for a CPU here ----------------


def tree_runqueue_wait_s(root: int) -> float:
    """Seconds the threads of ``root``'s process tree have spent runnable but waiting for
    a CPU (/proc/<pid>/task/<tid>/schedstat, second field): what a busy machine costs it."""
    waited = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    waited += int(f.read().split()[1])
    return waited / 1e9


# -- the load: wrk ------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = io.open(os.getenv("BENCH_BODY_FILE"), "rb"):read()
wrk.headers["Content-Type"] = "application/json"
{headers}
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(target: Target, rows: list, clients: int, seconds: float, work: Path) -> dict:
    body, script = work / "body.json", work / "post.lua"
    body.write_bytes(target.body(rows))
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
    script.write_text(WRK_SCRIPT.format(headers=headers))
    argv = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "10s", "-s", str(script), target.url + target.path]  # fmt: skip
    out = subprocess.run(
        argv, env={**os.environ, "BENCH_BODY_FILE": str(body)}, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    text = out.stdout

    def latency(pct: str) -> float:
        found = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(found[1]) * UNITS[found[2]] if found else math.nan  # no answer at all

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),
        "p50": latency("50"),
        "p99": latency("99"),
        "requests": int(re.search(r"(\d+) requests in", text)[1]),
        "non_2xx": int(bad[1]) if bad else 0,
        "socket_errors": errors[1].strip() if errors else "",
    }


def batch_rows(target: Target) -> tuple[float, float]:
    """hetserve's (rows, onnxruntime calls) so far for the model, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{target.url}/metrics", headers=target.headers, timeout=10).text
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("hetserve_batch_rows_sum", "hetserve_batch_rows_count")
        and sample.labels.get("model") == target.model_id
    }
    return values.get("hetserve_batch_rows_sum", 0.0), values.get("hetserve_batch_rows_count", 0.0)


def measured_round(target: Target, rows: list, args, work: Path) -> dict:
    """One measured wrk run with the machine's, the server's and our own CPU around it."""
    calls = batch_rows(target) if target.model_id else None
    waited = tree_runqueue_wait_s(target.pid)
    server = tree_cpu_s(target.pid)
    # ours: this script, wrk (a reaped child) and the server's tree, named in case a
    # server's processes leave this one's
    with OtherCores(target.pid) as others:
        result = wrk(target, rows, args.clients, args.seconds, work)
    server = tree_cpu_s(target.pid) - server
    result["server_cpu_ms_per_request"] = server * 1000 / max(result["requests"], 1)
    result["other_cores"] = others.cores
    result["server_cores"] = server / others.reading.wall_s
    # threads that exited meanwhile drop out of the sum: a lower bound
    waited = max(0.0, tree_runqueue_wait_s(target.pid) - waited)
    result["runqueue_wait_ms_per_request"] = waited * 1000 / max(result["requests"], 1)
    if calls is not None:
        after = batch_rows(target)
        result["rows_per_call"] = (after[0] - calls[0]) / max(after[1] - calls[1], 1)
    return result


# -- the run ------------------------------------------------------------------------------


def run(args) -> dict:
    """{(K, rows): {server: [round results]}} over ``args.passes`` interleaved passes."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="hetserve-serve-load-"))
    models = {k: export_het_mlp(work / f"het_k{k}.onnx", k) for k in args.classes}
    rng = np.random.default_rng(1)
    payloads = {n: rng.normal(size=(n, D)).round(4).tolist() for n in args.rows}
    results: dict = {}
    try:
        names = [*args.hetserve_variants, *args.anchors]
        for pass_ in range(args.passes):
            order = names[pass_ % len(names) :] + names[: pass_ % len(names)]
            for k in args.classes:
                for name in order:
                    log(f"pass {pass_ + 1}/{args.passes}, K = {k}: {name}")
                    with start(name, models[k], args, work) as target:
                        for n in args.rows:
                            warm = wrk(target, payloads[n], args.clients, args.warmup, work)
                            if warm["non_2xx"]:  # (none at all: slower than the warm-up)
                                raise RuntimeError(f"{name} answered {warm} during the warm-up")
                            got = measured_round(target, payloads[n], args, work)
                            got["processes"] = target.processes
                            results.setdefault((k, n), {}).setdefault(name, []).append(got)
                            log(f"  {n:>2} rows: {json.dumps(got)}")
                            if args.json:  # after every round: a run cut short keeps its rounds
                                save(results, args)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save(results: dict, args) -> None:
    """The run's record (bench/run_record.py): hetserve / best anchor per K and request
    size, and every round under "rounds" (what --from-json reads back)."""
    ratios = {}
    for (k, n), servers in sorted(results.items()):
        versus = versus_best_anchor(servers, args.anchors, args.max_other_cores)
        if versus:
            ratios[f"K={k} rows={n}: hetserve / best anchor req/s"] = versus.ratio
    rounds = {f"K={k} rows={n}": v for (k, n), v in results.items()}
    run_record.write(args.json, "serve_load", args.machine, ratios, rounds=rounds)


def load(path: Path) -> dict:
    """{(K, rows): {server: [rounds]}} from a --json record (or an older bare dump)."""
    saved = json.loads(path.read_text())
    saved = saved["rounds"] if "bench" in saved else saved  # older runs: the rounds alone
    return {
        tuple(int(part.split("=")[1]) for part in key.split()): rounds
        for key, rounds in saved.items()
    }


def median_of(rounds: list[dict], key: str, max_other: float) -> float:
    """The median of ``key`` over the quiet rounds (all of them if none is quiet)."""
    kept = quiet_rounds([r["other_cores"] for r in rounds], max_other)
    return statistics.median(kept.pick([r[key] for r in rounds]))


@dataclass(frozen=True)
class VersusBest:
    """hetserve against the anchor with the most requests/s (medians over clean passes)."""

    best: str
    ratio: float
    p99: float
    best_p99: float
    per_pass: Spread  # each pass's hetserve req/s over that same pass's best anchor's


def versus_best_anchor(servers: dict, anchors: list[str], flag: float) -> VersusBest | None:
    timed = {a: servers[a] for a in anchors if a in servers}
    if "hetserve" not in servers or not timed:
        return None
    best = max(timed, key=lambda a: median_of(timed[a], "rps", flag))
    # Per pass: hetserve against the best anchor of that same pass (the passes are the
    # runs whose spread the docs quote).
    passes = min(len(rounds) for rounds in (servers["hetserve"], *timed.values()))
    return VersusBest(
        best,
        median_of(servers["hetserve"], "rps", flag) / median_of(timed[best], "rps", flag),
        median_of(servers["hetserve"], "p99", flag),
        median_of(timed[best], "p99", flag),
        Spread.of(
            [
                servers["hetserve"][i]["rps"] / max(a[i]["rps"] for a in timed.values())
                for i in range(passes)
            ]
        ),
    )


def report(results: dict, args) -> str:
    import onnxruntime

    from app.settings import default_api_workers

    flag = args.max_other_cores
    lines = [
        f"Closed loop (wrk, {args.clients} connections) on loopback, HET MLP "
        f"{D}-{'-'.join(map(str, HIDDEN))}-K, S = {S}, fresh draws per call, "
        f"{args.passes} interleaved passes of {args.warmup:.0f} s warm-up + "
        f"{args.seconds:.0f} s per line, each server alone; {os.cpu_count()} CPU cores, "
        f"{default_api_workers()} processes / instances per server, onnxruntime "
        f"{onnxruntime.__version__} with {args.intra_op_threads} intra-op thread(s) per call "
        f"for the anchors, batches of at most {MAX_ROWS} rows (LitServe: requests), anchors' "
        f"batching delay {args.anchor_delay_ms:g} ms (their default). Per pass: requests/s, "
        f"p99 ms, and the CPU other processes used meanwhile, in cores (! over {flag}); "
        "medians over the clean passes (all, if none is clean).",
    ]
    for (k, n), servers in sorted(results.items()):
        lines += [
            "",
            f"K = {k}, {n} row(s) per request:",
            "",
            "| server | processes | requests/s per pass | p99 ms per pass | others' CPU (cores) per pass "
            "| median requests/s | median p99 ms | server CPU ms per request "
            "| waited for a CPU, ms per request | rows per onnxruntime call |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, rounds in servers.items():
            errors = sum(r["non_2xx"] for r in rounds)
            procs = " / ".join(sorted({str(r["processes"]) for r in rounds}))
            waited = (
                f"{median_of(rounds, 'runqueue_wait_ms_per_request', flag):.2f}"
                if all("runqueue_wait_ms_per_request" in r for r in rounds)
                else ""
            )
            per_call = " / ".join(
                f"{r['rows_per_call']:.1f}" for r in rounds if "rows_per_call" in r
            )
            rps = " / ".join(f"{r['rps']:.0f}" for r in rounds)
            p99 = " / ".join(f"{r['p99']:.1f}" for r in rounds)
            others = " / ".join(mark(r["other_cores"], flag) for r in rounds)
            lines.append(
                f"| {name}{f' ({errors} non-2xx)' if errors else ''} | {procs} | {rps} | {p99} "
                f"| {others} "
                f"| {median_of(rounds, 'rps', flag):.0f} | {median_of(rounds, 'p99', flag):.1f} "
                f"| {median_of(rounds, 'server_cpu_ms_per_request', flag):.2f} | {waited} "
                f"| {per_call} |"
            )
        versus = versus_best_anchor(servers, args.anchors, flag)
        if versus:
            lines += [
                "",
                f"hetserve / best anchor ({versus.best}): {versus.ratio:.2f}x requests/s, "
                f"p99 {versus.p99:.1f} vs {versus.best_p99:.1f} ms; per pass against that "
                f"pass's best anchor, min / median / max over {versus.per_pass.runs}: "
                f"{versus.per_pass.format(unit='x')}.",
            ]
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    return f"hetserve, {name}", dict(a.split("=", 1) for a in assignments.split(",") if a)


def main() -> None:
    from app.settings import default_api_workers, default_ort_intra_op_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured, per line")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes")
    parser.add_argument(
        "--classes", type=lambda s: [int(k) for k in s.split(",")], default=[10, 100]
    )
    parser.add_argument("--rows", type=lambda s: [int(n) for n in s.split(",")], default=[1, 16])
    parser.add_argument(
        "--anchors", type=lambda s: [a for a in s.split(",") if a], default=list(ANCHORS)
    )
    parser.add_argument("--anchor-delay-ms", type=float, default=0.0)
    parser.add_argument("--baseline-tree", type=Path, help="also `hetserve up` from this checkout")
    parser.add_argument("--hetserve-env", action="append", default=[], metavar="NAME:VAR=V,...")
    parser.add_argument("--max-other-cores", type=float, default=MAX_OTHER_CORES)
    parser.add_argument("--json", type=Path, help="also write every round here")
    parser.add_argument(
        "--from-json", type=Path, help="print the tables of a run's --json (give its knobs)"
    )
    args = parser.parse_args()
    args.intra_op_threads = default_ort_intra_op_threads(os.cpu_count() or 1, default_api_workers())
    args.hetserve_variants = {"hetserve": (ROOT, {})}
    if args.baseline_tree:
        args.hetserve_variants[f"hetserve @ {args.baseline_tree.name}"] = (
            args.baseline_tree.resolve(),
            {},
        )
    for text in args.hetserve_env:
        name, extra = parse_variant(text)
        args.hetserve_variants[name] = (ROOT, extra)
    if args.from_json:
        print(report(load(args.from_json), args))
        return
    args.machine = run_record.machine()
    print(calibrate.line(args.machine["speed"]))
    print(report(run(args), args))


if __name__ == "__main__":
    main()
