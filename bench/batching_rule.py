"""The batcher alone: the adaptive rule against a fixed queue delay, closed-loop clients.

    .venv/bin/python bench/batching_rule.py [--old PATH/batching.py] [--seconds 4]

``--clients`` coroutines each send one row through ``DynamicBatcher.run``, spend
``--client-us`` of event-loop CPU (what parsing and answering a request costs the API
process), and send the next (closed loop). The batched ``fn`` sleeps ``a + b n`` (an
onnxruntime call releases the GIL like a sleep; a = 0.3 ms, b = 0.15 ms per row: the HET
MLP at K = 10, S = 1000 on this machine's runtime). Prints requests/s, p50, p99 and
rows per call for the adaptive rule (this tree's app/serving/batching.py) and, with
``--old``, for another tree's batcher at the same settings (e.g. a fixed 5 ms delay).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.serving.batching import DynamicBatcher  # noqa: E402  (after the path fix above)

A_S, B_S = 0.3e-3, 0.15e-3


def fn(x: np.ndarray) -> dict:
    time.sleep(A_S + B_S * len(x))
    return {"y": x}


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def closed_loop(batcher, clients: int, client_s: float, seconds: float) -> dict:
    latencies: list[float] = []
    calls: list[int] = []
    x = np.ones((1, 4), np.float32)

    def counted(rows: np.ndarray) -> dict:
        calls.append(len(rows))
        return fn(rows)

    async def client(stop: float) -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await batcher.run("k", "bench", counted, x)
            busy(client_s)  # the answer's share of the event loop
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0)

    await asyncio.gather(*(client(time.perf_counter() + 1.0) for _ in range(clients)))  # warm
    latencies.clear()
    calls.clear()
    start = time.perf_counter()
    await asyncio.gather(*(client(start + seconds) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "rps": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "rows_per_call": sum(calls) / max(len(calls), 1),
    }


def load(path: Path):
    spec = importlib.util.spec_from_file_location("other_batching", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.DynamicBatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="another batching.py to compare")
    parser.add_argument(
        "--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16]
    )
    parser.add_argument("--client-us", type=float, default=150.0)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved")
    args = parser.parse_args()
    batchers = {"adaptive (this tree)": DynamicBatcher}
    if args.old:
        batchers[f"{args.old}"] = load(args.old)
    print(
        f"fn = sleep({A_S * 1e3:g} ms + {B_S * 1e3:g} ms x rows), {args.client_us:g} µs of "
        f"event loop per answer, max_queue_delay {args.delay_ms:g} ms, max batch 64, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s (medians)\n"
    )
    print("| clients | batcher | requests/s | p50 ms | p99 ms | rows per call |")
    print("|---|---|---|---|---|---|")
    for clients in args.clients:
        got: dict[str, list[dict]] = {name: [] for name in batchers}
        for _ in range(args.rounds):
            for name, cls in batchers.items():
                batcher = cls(ThreadPoolExecutor(4), 64, args.delay_ms)
                got[name].append(
                    asyncio.run(closed_loop(batcher, clients, args.client_us / 1e6, args.seconds))
                )
        for name, rounds in got.items():
            med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
            print(
                f"| {clients} | {name} | {med['rps']:.0f} | {med['p50']:.2f} | {med['p99']:.2f} "
                f"| {med['rows_per_call']:.1f} |"
            )


if __name__ == "__main__":
    main()
