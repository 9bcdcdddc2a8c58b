"""How fast this machine is right now: three fixed workloads timed beside a benchmark run,
so that runs on different VMs (or one VM at different hours) can be told apart.

    gemm    float32 256 x 256 x 256 matrix products on one torch thread     GFLOP/s
    copy    a 64 MiB float32 array copied (read + write, past the caches)   GB/s
    python  a pure-Python loop of integer additions                         M steps/s

Medians of ``REPEATS`` timings each. Why: bench/quiet.py sees other processes and the
hypervisor's steal time, but not a co-tenant on the same physical core or memory bus,
which slows every call without taking our CPU time; on 7 December two quiet sessions on
VMs of the same kind measured every timing table 1.3-2.2x apart, memory-bound calls
more than GEMMs (docs/benchmarks.md, the reproduction check). A run's figures are
comparable with another's only as far as these three agree.
"""

from __future__ import annotations

import statistics
import time

REPEATS = 5
GEMM_N = 256
GEMM_CALLS = 40  # ~1.3 GFLOP a timing: tens of ms on one core
COPY_BYTES = 64 << 20
PYTHON_STEPS = 1_000_000


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, page faults, BLAS start-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(repeats: int = REPEATS) -> dict[str, float]:
    """{"gemm_gflops": …, "copy_gb_s": …, "python_msteps": …}; torch's thread count is
    left as it was."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
        out = torch.empty(GEMM_N, GEMM_N)

        def gemm() -> None:
            for _ in range(GEMM_CALLS):
                torch.mm(a, b, out=out)

        gemm_s = _median_s(gemm, repeats)
    finally:
        torch.set_num_threads(threads)

    src = np.ones(COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy_s = _median_s(lambda: np.copyto(dst, src), repeats)

    def loop() -> None:
        total = 0
        for i in range(PYTHON_STEPS):
            total += i

    python_s = _median_s(loop, repeats)
    return {
        "gemm_gflops": 2 * GEMM_N**3 * GEMM_CALLS / gemm_s / 1e9,
        "copy_gb_s": 2 * COPY_BYTES / copy_s / 1e9,
        "python_msteps": PYTHON_STEPS / python_s / 1e6,
    }


def line(speed: dict[str, float]) -> str:
    """One line for a bench's header."""
    return (
        f"machine speed now (bench/calibrate.py): 1-thread sgemm {speed['gemm_gflops']:.0f} "
        f"GFLOP/s, memory copy {speed['copy_gb_s']:.1f} GB/s, Python "
        f"{speed['python_msteps']:.0f} M loop steps/s"
    )


if __name__ == "__main__":
    print(line(measure()))
