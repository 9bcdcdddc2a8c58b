"""Closed-loop load on /predict: dynamic batching on and off against a minimal endpoint.

    .venv/bin/python bench/serve_load.py [--clients 32] [--requests 3000] [--max-seconds 15]

For a HET MLP model at K = 10 and K = 100 (S = 1000 samples per prediction, one row per
request, fresh draws), servers on loopback, each uvicorn serving one exported model,
measured in interleaved rounds:

- ``minimal``: the baseline, a bare endpoint that runs one onnxruntime call per request
  (``OnnxModel.run`` in a thread) and returns the probabilities;
- ``hetserve, batching off``: the real API (auth, store lookup, validation, every uncertainty
  field), one onnxruntime call per request;
- ``hetserve, batching on``: the same with dynamic batching (settings defaults);
- with ``--workers N`` (default 2) also batching-on hetserve and the minimal endpoint as
  N uvicorn processes each (``hetserve up`` starts ``HETSERVE_API_WORKERS``, by default
  one per two cores: the header line says how many that is here).

``--clients`` connections each send a request, wait for the answer, send the next
(closed loop), until ``--requests`` answers or ``--max-seconds`` have passed, after a
short warm-up. Prints a markdown table: requests/s, p50 and p99 latency, their ratios
to the minimal endpoint with the same number of processes measured in the same run, the
mean rows per onnxruntime call, and the server's CPU time per request (all its processes
and threads, from /proc: what bounds requests/s on a machine whose cores are all busy).
The load generator is a few lines of raw HTTP/1.1 over asyncio streams, so the client
costs little of the shared CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import default_api_workers  # noqa: E402  (after the path fix above)
from tests.app.serving_support import (  # noqa: E402  (after the path fix above)
    API_KEY,
    live_server,
    make_settings,
    register,
    settings_env,
)

D = 64  # input features (the size of sklearn's digits)
HIDDEN = [256, 256]
FACTORS = {10: 4, 100: 10}  # R per K (R = 10 at K = 100: the cost example of docs/models.md)
S = 1000  # stated, not the model's default: both sides of every line run this S
WARMUP_S = 2.0
MINIMAL = "minimal (1 onnxruntime call per request)"


# -- the baseline server ------------------------------------------------------------------


def minimal_app():
    """One onnxruntime call per request, nothing else (uvicorn --factory)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from app.serving.onnx_model import OnnxModel

    model = OnnxModel(
        os.environ["BENCH_MODEL_PATH"], intra_op_threads=int(os.environ["BENCH_INTRA_OP_THREADS"])
    )

    async def predict(request):
        x = np.asarray((await request.json())["inputs"], dtype=np.float32)
        outputs = await run_in_threadpool(model.run, x)
        return JSONResponse({"probs": outputs["probs"].tolist()})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


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


def mean_batch_rows(url: str, model_id: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    # Per-model series need the key (app/serving/metrics.py).
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name.startswith("hetserve_batch_rows_")
                and sample.labels.get("model") == model_id
            ):
                values[sample.name] = sample.value
    return values.get("hetserve_batch_rows_sum", 0) / max(
        values.get("hetserve_batch_rows_count", 0), 1
    )


def server_cpu_seconds(port: int) -> float:
    """CPU time (user + system) so far of the uvicorn listening on ``port`` and of every
    process under it (its workers), from /proc."""
    stats, root = {}, None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, ticks
        if b"--port" in argv and argv[argv.index(b"--port") + 1 :][:1] == [str(port).encode()]:
            root = int(entry)
    tree, ticks = {root}, 0
    for _ in range(4):  # workers are children of the parent (or of its spawn helper)
        tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
    ticks = sum(stats[pid][1] for pid in tree if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


# -- models -----------------------------------------------------------------------------


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


def onnxruntime_rows_per_second(path: Path, batch: int, intra_op_threads: int) -> float:
    """The runtime alone, in this process: rows/s of OnnxModel.run at one batch size."""
    from app.serving.onnx_model import OnnxModel

    model = OnnxModel(path, intra_op_threads=intra_op_threads)
    x = np.random.default_rng(2).normal(size=(batch, D)).astype(np.float32)
    for _ in range(3):
        model.run(x)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        model.run(x)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def run(args) -> str:
    work = Path(tempfile.mkdtemp(prefix="hetserve-bench-"))
    row = np.random.default_rng(1).normal(size=(1, D)).round(4).tolist()
    lines = [
        f"Closed loop, {args.clients} clients on loopback, one row per request, S = {S}, "
        f"HET MLP {D}-{'-'.join(map(str, HIDDEN))}-K, onnxruntime intra-op threads "
        f"{args.intra_op_threads}; per line up to {args.requests} requests or "
        f"{args.max_seconds:.0f} s, measured in {args.rounds} interleaved rounds after "
        f"{WARMUP_S:.0f} s warm-up; CPU cores: {os.cpu_count()} (`hetserve up` starts "
        f"{default_api_workers()} API process(es) here). Ratios: to the minimal endpoint "
        "with the same number of processes.",
        "",
        "| K | server | processes | requests/s | p50 ms | p99 ms | throughput vs minimal "
        "| p99 vs minimal | mean rows per onnxruntime call | server CPU ms per request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    runtime_lines = []
    for k in args.classes:
        path = export_het_mlp(work / f"het_k{k}.onnx", k)
        minimal_env = {
            "BENCH_MODEL_PATH": str(path),
            "BENCH_INTRA_OP_THREADS": str(args.intra_op_threads),
        }
        with contextlib.ExitStack() as servers:
            # name -> (url, predict path, model id or None, processes); all up at once,
            # measured in interleaved rounds so a change in background load hits each alike.
            minimal_url = servers.enter_context(
                live_server(minimal_env, app=["bench.serve_load:minimal_app", "--factory"])
            )
            targets = {MINIMAL: (minimal_url, "/predict", None, 1)}
            variants = [(False, 1), (True, 1)] + (
                [(True, args.workers)] if args.workers > 1 else []
            )
            for batching, workers in variants:
                data = work / f"data_k{k}_{batching}_{workers}"
                model_id = register(make_settings(data), path)
                env = settings_env(
                    data, batching=batching, ort_intra_op_threads=args.intra_op_threads
                )
                if workers > 1:  # /metrics then sums the processes
                    (data / "prometheus").mkdir()
                    env["PROMETHEUS_MULTIPROC_DIR"] = str(data / "prometheus")
                url = servers.enter_context(live_server(env, workers=workers))
                name = f"hetserve, batching {'on' if batching else 'off'}"
                if workers > 1:
                    name += f", {workers} processes"
                targets[name] = (url, f"/v1/models/{model_id}/predict", model_id, workers)
            if args.workers > 1:
                url = servers.enter_context(
                    live_server(
                        minimal_env,
                        workers=args.workers,
                        app=["bench.serve_load:minimal_app", "--factory"],
                    )
                )
                targets[f"minimal, {args.workers} processes"] = (
                    url,
                    "/predict",
                    None,
                    args.workers,
                )
            latencies = {name: [] for name in targets}
            elapsed = dict.fromkeys(targets, 0.0)
            cpu = dict.fromkeys(targets, 0.0)
            for round_ in range(args.rounds):
                for name, (url, predict_path, _, _) in targets.items():
                    port = int(url.rsplit(":", 1)[1])
                    if round_ == 0:  # the warm-up is not counted
                        asyncio.run(
                            closed_loop(
                                port,
                                predict_path,
                                {"inputs": row},
                                args.clients,
                                10**9,
                                WARMUP_S,
                                0,
                            )
                        )
                    cpu_before = server_cpu_seconds(port)
                    got, seconds = asyncio.run(
                        closed_loop(
                            int(url.rsplit(":", 1)[1]),
                            predict_path,
                            {"inputs": row},
                            args.clients,
                            args.requests // args.rounds,
                            args.max_seconds / args.rounds,
                            0.0,
                        )
                    )
                    cpu[name] += server_cpu_seconds(port) - cpu_before
                    latencies[name] += got
                    elapsed[name] += seconds
            results = {
                name: (
                    summarize(latencies[name], elapsed[name]),
                    None if model_id is None else mean_batch_rows(url, model_id),
                    processes,
                    cpu[name] * 1000 / max(len(latencies[name]), 1),
                )
                for name, (url, _, model_id, processes) in targets.items()
            }
        single = onnxruntime_rows_per_second(path, 1, args.intra_op_threads)
        batched = onnxruntime_rows_per_second(path, args.clients, args.intra_op_threads)
        runtime_lines.append(f"| {k} | {single:.0f} | {batched:.0f} | {batched / single:.1f}x |")
        minimal = {  # the minimal endpoint per number of processes
            processes: stats
            for name, (stats, _, processes, _) in results.items()
            if name.startswith("minimal")
        }
        for name, (stats, rows, processes, cpu_ms) in results.items():
            base = minimal[processes]
            lines.append(
                f"| {k} | {name} | {processes} | {stats['rps']:.0f} | {stats['p50']:.1f} | "
                f"{stats['p99']:.1f} | {stats['rps'] / base['rps']:.2f}x | "
                f"{stats['p99'] / base['p99']:.2f}x | {'' if rows is None else f'{rows:.1f}'} | "
                f"{cpu_ms:.2f} |"
            )
            print(f"K={k} {name}: {stats}, {cpu_ms:.2f} ms CPU", file=sys.stderr, flush=True)
    lines += [
        "",
        f"The runtime alone (OnnxModel.run in this process, no HTTP), rows/s at batch 1 "
        f"and {args.clients}:",
        "",
        f"| K | rows/s, batch 1 | rows/s, batch {args.clients} | gain |",
        "|---|---|---|---|",
        *runtime_lines,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument(
        "--classes", type=lambda s: [int(k) for k in s.split(",")], default=[10, 100]
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per server")
    parser.add_argument(
        "--workers", type=int, default=2, help="also both servers with this many processes"
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="onnxruntime threads per call, all servers (0: one per core, spin-waiting)",
    )
    print(run(parser.parse_args()))


if __name__ == "__main__":
    main()
