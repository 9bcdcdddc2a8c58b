"""Time and peak memory of ``models.noise_report`` at K = 1000.

One report over N = 2000 random inputs of a HET head (K = 1000, R = 15, D = 256) on a
bare linear backbone with random weights, S = 100 draws, batch 256, torch at 2 threads,
after a warm-up call on 8 rows. Prints the wall time, the growth of the process's peak
RSS over the call (VmHWM, reset by writing 5 to /proc/self/clear_refs; Linux only) and
the top class pair, and the CPU other processes used during the call (bench/quiet.py,
in cores; ``!`` when over its MAX_OTHER_CORES: the time is then not a quiet figure).

    PYTHONPATH=. .venv/bin/python bench/noise_report_speed.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.quiet import OtherCores, mark
from core.spec import HeadSpec
from models.backbones import MLP
from models.classifier import Classifier
from models.heads import HetHead
from models.noise_report import noise_report


def peak_rss_growth_kb(fn) -> tuple[object, int]:
    """fn()'s result and the growth of the process's peak RSS while it ran (Linux)."""

    def status_kb(field):
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith(field + ":")))

    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    before = status_kb("VmRSS")
    out = fn()
    return out, status_kb("VmHWM") - before


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    d, k, r, n, s = 256, 1000, 15, 2000, 100
    model = Classifier(MLP(d, []), HetHead(HeadSpec(num_factors=r), d, k), np.zeros(d), np.ones(d))
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    noise_report(model, x[:8], num_samples=2)  # warm up kernels and the allocator
    with OtherCores() as others:
        start = time.perf_counter()
        report, growth = peak_rss_growth_kb(lambda: noise_report(model, x, num_samples=s))
        seconds = time.perf_counter() - start
    print(
        f"K={k} R={r} D={d} N={n} S={s}: {seconds:.2f} s (others used {mark(others.cores)} "
        f"cores meanwhile), peak RSS growth {growth / 1024:.0f} MB, "
        f"top pair {report['class_pairs'][0]}"
    )


if __name__ == "__main__":
    main()
