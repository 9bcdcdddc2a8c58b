"""bench/quiet.py: a busy process this process started counts as ours and one it did
not start as the machine's others', whatever else runs on the machine (lower bounds
only, against the spinner's own CPU time, never against the wall clock alone); the
quiet / busy split and the spread of run medians."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench import quiet
from bench.quiet import (
    TICK_S,
    OtherCores,
    QuietRounds,
    RoundWindows,
    Spread,
    machine_busy_s,
    mark,
    others_summary,
    quiet_rounds,
    tree_cpu_s,
    tree_pids,
)

SPIN = [sys.executable, "-c", "while True: pass"]
SPUN_S = 0.3  # CPU seconds the spinner must get before a reading (however loaded the box)
# sampling of /proc/stat (a tick per CPU at each end) and per-process rounding to ticks
SLACK_S = 4 * TICK_S * (os.cpu_count() or 1) + 0.05


def spin_until(pid: int, cpu_s: float, timeout_s: float = 60) -> float:
    """Wait until process ``pid`` has used ``cpu_s`` more CPU seconds; return them."""
    start = tree_cpu_s(pid)
    deadline = time.monotonic() + timeout_s
    while (spun := tree_cpu_s(pid) - start) < cpu_s:
        assert time.monotonic() < deadline, f"the spinner got {spun:.2f} s of CPU"
        time.sleep(0.05)
    return spun


def started_elsewhere() -> int:
    """A spinner that is not a descendant of this process: started by a shell that
    exits at once, so that it is re-parented to init (or a subreaper above us)."""
    out = subprocess.run(
        ["sh", "-c", f"{' '.join(SPIN[:2])} '{SPIN[2]}' >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_busy_child_is_ours_even_in_its_own_session():
    child = subprocess.Popen(SPIN, start_new_session=True)  # as serve_load starts a server
    try:
        assert child.pid in tree_pids(os.getpid())
        machine = machine_busy_s()
        meter = OtherCores()
        spun = spin_until(child.pid, SPUN_S)
        reading = meter.read()
        machine = machine_busy_s() - machine  # over a window holding the meter's
    finally:
        child.kill()
        child.wait()
    # Were the child left out of our tree, ours would be the test's own few ms.
    assert reading.ours_s >= spun - SLACK_S
    # ... and others are what the machine did less the child, whatever else ran
    assert reading.others_s <= machine - spun + SLACK_S


def test_a_reaped_child_still_counts_as_ours():
    meter = OtherCores()
    child = subprocess.Popen(SPIN)
    try:
        spun = spin_until(child.pid, SPUN_S)
    finally:
        child.kill()
        child.wait()  # reaped: its time is now in our cutime, not in /proc/<pid>
    assert child.pid not in tree_pids(os.getpid())
    assert meter.read().ours_s >= spun - SLACK_S


def test_a_process_started_elsewhere_is_others():
    pid = started_elsewhere()
    try:
        assert pid not in tree_pids(os.getpid())
        meter = OtherCores()
        spun = spin_until(pid, SPUN_S)
        reading = meter.read()
    finally:
        stop(pid)
    assert reading.others_s >= spun - SLACK_S
    # counted as ours, our share would hold the spinner's time
    assert reading.ours_s < spun / 2
    # a spinner (or, on a loaded box, the load that slowed it) is over half a core
    assert reading.cores > 0.5


def test_a_named_root_is_ours():
    pid = started_elsewhere()
    try:
        meter = OtherCores(pid)  # as serve_load names its server
        spun = spin_until(pid, SPUN_S)
        reading = meter.read()
    finally:
        stop(pid)
    assert reading.ours_s >= spun - SLACK_S


def test_others_are_the_machine_less_our_tree(monkeypatch):
    machine, ours = iter([100.0, 103.5]), iter([20.0, 21.0])
    monkeypatch.setattr(quiet, "machine_busy_s", lambda: next(machine))
    monkeypatch.setattr(quiet, "tree_cpu_s", lambda *roots: next(ours))
    reading = quiet.OtherCores().read()
    assert reading.ours_s == 1.0 and reading.others_s == 2.5
    # ticks are counted apart: ours may run a tick ahead of the machine's count
    machine, ours = iter([100.0, 100.0]), iter([20.0, 20.01])
    assert quiet.OtherCores().read().others_s == 0.0


def test_context_manager_reads_the_block():
    with OtherCores() as others:
        time.sleep(0.01)
    assert others.reading is not None and others.reading.wall_s >= 0.01
    assert others.cores >= 0


def test_short_rounds_share_a_window_long_ones_have_their_own():
    windows = RoundWindows(min_window_s=3600)
    assert [windows.round_ended() for _ in range(3)] == [[], [], []]
    cores = windows.finish()
    assert len(cores) == 3 and len(set(cores)) == 1

    each = RoundWindows(min_window_s=0)
    given = [each.round_ended() for _ in range(3)]
    assert [len(g) for g in given] == [1, 1, 1]
    assert each.finish() == [g[0] for g in given]


def test_busy_rounds_are_left_out_unless_every_round_is_busy():
    split = quiet_rounds([0.05, 0.31, 0.2, 0.9])
    assert split == QuietRounds(kept=[0, 2], busy=2, total=4)
    assert split.pick(["a", "b", "c", "d"]) == ["a", "c"]
    assert split.note() == "2 of 4 rounds busy, left out"

    everything = quiet_rounds([0.5, 0.4])
    assert everything.kept == [0, 1] and everything.busy == 2
    assert everything.note() == "all 2 rounds busy, none left out"
    assert quiet_rounds([0.1], max_cores=0.05).busy == 1
    assert quiet_rounds([0.0, 0.1]).note() == "2 rounds, none busy"

    assert mark(0.2) == "0.20" and mark(0.21) == "0.21!"
    assert others_summary([0.1, 0.05, 0.4]) == "0.10 / 0.40 (1 of 3 rounds busy, left out)"


def test_spread_of_run_medians():
    spread = Spread.of([4.65, 4.38, 4.43])
    assert (spread.low, spread.median, spread.high, spread.runs) == (4.38, 4.43, 4.65, 3)
    assert spread.format(unit="x") == "4.38 / 4.43 / 4.65x"
    assert spread.format(".1f") == "4.4 / 4.4 / 4.7"
    assert spread.as_dict() == {"min": 4.38, "median": 4.43, "max": 4.65, "runs": 3}
    assert Spread.of([2.0, 1.0]).median == 1.5
    with pytest.raises(ValueError):
        Spread.of([])
