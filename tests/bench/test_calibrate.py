"""bench/calibrate.py: the machine-speed figures are the work done over the time taken
(checked on a clock that advances a fixed step per reading), and measuring leaves
torch's thread count as it found it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench import calibrate

STEP_S = 0.005


def test_figures_are_work_over_time_on_a_fixed_clock(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: next(ticks) * STEP_S)
    speed = calibrate.measure(repeats=3)
    # every timing reads the clock twice, one step apart
    assert speed["gemm_gflops"] == pytest.approx(2 * 256**3 * 40 / STEP_S / 1e9)
    assert speed["copy_gb_s"] == pytest.approx(2 * (64 << 20) / STEP_S / 1e9)
    assert speed["python_msteps"] == pytest.approx(1_000_000 / STEP_S / 1e6)
    line = calibrate.line(speed)
    assert f"sgemm {speed['gemm_gflops']:.0f} GFLOP/s" in line
    assert f"copy {speed['copy_gb_s']:.1f} GB/s" in line


def test_a_real_measurement_is_finite_and_restores_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        speed = calibrate.measure(repeats=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert set(speed) == {"gemm_gflops", "copy_gb_s", "python_msteps"}
    assert all(math.isfinite(v) and v > 0 for v in speed.values()), speed
