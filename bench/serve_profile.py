"""Where a single-row /predict request spends its CPU in the API process, under load.

    .venv/bin/python bench/serve_profile.py [--classes 10,100] [--seconds 5] [--pyinstrument]

For the HET MLP of bench/serve_load.py (S = 1000, batching on, onnxruntime 1 intra-op
thread), 32 concurrent single-row requests at a time, measured three ways in this
process (the event loop is this process's main thread, so ``time.thread_time`` is its
CPU alone; the other threads run onnxruntime and the per-batch row building):

- ``through uvicorn``: the real server (uvloop, httptools) on loopback, closed-loop load
  from a subprocess (bench/serve_load.py's client);
- ``app in-process``: the same ASGI app called directly, no sockets and no HTTP parsing;
- ``framework only``: the same, with the predict endpoint answering a fixed body at once
  (middleware, the gate, routing, metrics; no predict work).

Figures are CPU time, so a busy machine inflates them less than it does requests/s.

So: HTTP server = through uvicorn - app in-process; predict and batching = app in-process
- framework only. ``--pyinstrument`` (if installed) also samples the server's event loop
(warm-up included, after the measured runs) and prints the share of each package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import D, S, export_het_mlp  # noqa: E402  (after the path fix above)
from tests.support.model_serving import API_KEY, make_settings, register  # noqa: E402
from tests.support.waiting import free_port  # noqa: E402

CLIENTS = 32


def build_app(data: Path):
    from app.main import create_app

    return create_app(make_settings(data, ort_intra_op_threads=1, log_level="WARNING"))


@contextlib.contextmanager
def canned_predict(app):
    """The predict route answering a fixed body at once (framework cost only), while in
    the block (the route object is shared by every app built in this process)."""
    from starlette.responses import Response
    from starlette.routing import request_response

    async def fixed(request):
        return Response(b'{"predictions": []}', media_type="application/json")

    route = next(r for r in app.router.routes if getattr(r, "name", "") == "predict")
    saved = route.endpoint, route.app
    route.endpoint = fixed
    route.app = request_response(route.get_route_handler())
    try:
        yield
    finally:
        route.endpoint, route.app = saved


async def in_process(app, path: str, body: bytes, requests: int) -> tuple[float, float]:
    """(event-loop CPU, other threads' CPU) in seconds per request, app called directly."""
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {API_KEY}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]

    async def one() -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "app": app,
        }  # fmt: skip
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect

        status = []

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"HTTP {status}")

    async def client(count: int) -> None:
        for _ in range(count):
            await one()

    async with app.router.lifespan_context(app):
        await asyncio.gather(*(client(20) for _ in range(CLIENTS)))  # warm-up
        per_client = requests // CLIENTS
        loop0, process0 = time.thread_time(), time.process_time()
        await asyncio.gather(*(client(per_client) for _ in range(CLIENTS)))
        loop_cpu, process_cpu = time.thread_time() - loop0, time.process_time() - process0
    n = per_client * CLIENTS
    return loop_cpu / n, (process_cpu - loop_cpu) / n


def thread_cpu() -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def through_uvicorn(app, path: str, seconds: float, sampler) -> tuple[float, float, dict]:
    """(event-loop CPU, other threads' CPU) per request of the real server, and the
    client's figures."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    loop_tid = threading.get_native_id()
    load = (
        "import asyncio, json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from bench.serve_load import closed_loop, summarize\n"
        f"payload = json.loads({json.dumps(payload())!r})\n"
        f"args = ({port}, {path!r}, payload, {CLIENTS}, 10**9)\n"
        "asyncio.run(closed_loop(*args, 2.0, 0))\n"
        "print('warm', flush=True); sys.stdin.readline()\n"
        f"print(json.dumps(summarize(*asyncio.run(closed_loop(*args, {seconds}, 0)))))\n"
    )
    result: dict = {}

    def drive() -> None:
        try:
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            proc = subprocess.Popen([sys.executable, "-c", load], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert proc.stdout is not None and proc.stdin is not None
            proc.stdout.readline()
            before = thread_cpu()
            proc.stdin.write("\n")
            proc.stdin.flush()
            result["client"] = json.loads(proc.stdout.readline())
            after = thread_cpu()
            proc.wait()
            me = threading.get_native_id()
            result["loop"] = after[loop_tid] - before[loop_tid]
            result["others"] = sum(
                after[t] - before.get(t, 0.0) for t in after if t not in (loop_tid, me)
            )
        finally:
            server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    if sampler is not None:  # samples the thread that starts it: the event loop's
        sampler.start()
    server.run()
    if sampler is not None:
        sampler.stop()
    n = result["client"]["count"]
    return result["loop"] / n, result["others"] / n, result["client"]


def payload() -> dict:
    return {"inputs": np.random.default_rng(1).normal(size=(1, D)).round(4).tolist()}


def package_shares(session) -> list[tuple[str, float]]:
    """Self time per package (uvicorn, starlette, fastapi, app/..., the event loop)."""
    shares: Counter[str] = Counter()

    def walk(frame, path: str | None) -> None:
        path = frame.file_path or path
        own = frame.time - sum(child.time for child in frame.children)
        where = "other"
        if path:
            for name in ("uvicorn", "starlette", "fastapi", "pydantic", "numpy", "asyncio",
                         "prometheus_client"):  # fmt: skip
                if f"/{name}/" in path:
                    where = name
                    break
            else:
                if "/app/" in path:
                    where = "app/" + path.split("/app/")[-1]
                elif "<built-in>" in path:
                    where = "C functions called from Python"
        shares[where] += own
        for child in frame.children:
            walk(child, path)

    walk(session.root_frame(), None)
    total = sum(shares.values())
    return [(name, t / total) for name, t in shares.most_common(12)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=lambda s: [int(k) for k in s.split(",")],
                        default=[10, 100])  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=4000, help="in-process, per line")
    parser.add_argument("--pyinstrument", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hetserve-profile-"))
    lines = [
        f"One row per request, {CLIENTS} at a time, S = {S}, batching on, one API process, "
        f"onnxruntime 1 intra-op thread; CPU cores: {os.cpu_count()}. CPU µs per request:",
        "",
        "| K | event loop, through uvicorn | app in-process | framework only | HTTP server "
        "| predict and batching | other threads (onnxruntime, row building) | requests/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shares_lines = []
    body = json.dumps(payload()).encode()
    for k in args.classes:
        data = work / f"k{k}"
        model_id = register(make_settings(data), export_het_mlp(work / f"k{k}.onnx", k))
        path = f"/v1/models/{model_id}/predict"
        loop_http, others, client = through_uvicorn(build_app(data), path, args.seconds, None)
        loop_app, _ = asyncio.run(in_process(build_app(data), path, body, args.requests))
        canned = build_app(data)
        with canned_predict(canned):
            loop_framework, _ = asyncio.run(in_process(canned, path, body, args.requests))
        sampler = None
        if args.pyinstrument:  # a run of its own, last: sampling slows what it samples
            from pyinstrument import Profiler

            sampler = Profiler(interval=0.001, async_mode="disabled")
            through_uvicorn(build_app(data), path, args.seconds, sampler)
        us = 1e6
        lines.append(
            f"| {k} | {loop_http * us:.0f} | {loop_app * us:.0f} | {loop_framework * us:.0f} "
            f"| {(loop_http - loop_app) * us:.0f} | {(loop_app - loop_framework) * us:.0f} "
            f"| {others * us:.0f} | {client['rps']:.0f} |"
        )
        if sampler is not None and sampler.last_session is not None:
            shares = package_shares(sampler.last_session)
            shares_lines.append(
                f"- K = {k}: " + ", ".join(f"{name} {share:.0%}" for name, share in shares)
            )
    if shares_lines:
        lines += ["", "Event loop samples by package (self time, pyinstrument):", "", *shares_lines]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
