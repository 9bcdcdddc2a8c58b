"""The CPU the machine's *other* processes use while a benchmark runs, and what a
benchmark does with it: the one home of the check every timing in bench/ carries.

others, in cores = (busy CPU seconds of the whole machine over an interval
                    - CPU seconds of this process tree over it) / wall seconds

- the machine's busy time: the first line of /proc/stat, every CPU together: user, nice,
  system, irq, softirq and steal (a co-tenant VM's use of our cores); not idle or
  iowait, and not guest, which user and nice already hold;
- this process tree's: this process and every descendant (loader workers, an anchor's
  worker process, a server the bench started, wrk), plus the trees of any further roots
  a bench names (a server it did not start itself), from /proc/<pid>/stat: each live
  process's own time and its reaped children's (utime, stime, cutime, cstime), so a
  child that has exited and been waited for still counts, and no process counts twice.
  A descendant that exits unreaped, or that leaves the tree (daemonises), counts as
  "other" from then on.

Both clocks tick at SC_CLK_TCK (100 Hz: 10 ms), and the machine's is sampled at each
tick: over a short interval the figure is noise. A round shorter than ``MIN_WINDOW_S``
is therefore measured together with the rounds after it until the window has lasted
that long, and each round of a window gets the window's figure (``RoundWindows``).

A round where others used more than ``MAX_OTHER_CORES`` is *busy*: it is marked ``!``
and left out of the medians when a quiet round of the same line exists
(``quiet_rounds``, which also says how many it left out). Over several runs, a table
gives the min / median / max of the run medians (``Spread``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_OTHER_CORES = 0.2  # over this, a round is busy: other work disturbed it
MIN_WINDOW_S = 0.5  # ~100 ticks on 2 CPUs: a tick of error is ~0.02 core
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot, every CPU together (/proc/stat:
    user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) * TICK_S


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
    return parents


def tree_pids(*roots: int) -> set[int]:
    """The processes ``roots`` and all their descendants (/proc)."""
    parents = _parents()
    tree, grew = set(roots), True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def tree_cpu_s(*roots: int) -> float:
    """CPU seconds so far of the processes in ``roots``' trees: each live one's own time
    and its reaped children's (/proc/<pid>/stat utime, stime, cutime, cstime)."""
    ticks = 0
    for pid in tree_pids(*roots):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile (its parent's cutime holds it once reaped)
            continue
        ticks += sum(int(v) for v in fields[11:15])
    return ticks * TICK_S


@dataclass(frozen=True)
class Reading:
    """What the machine did over one interval."""

    wall_s: float
    ours_s: float  # CPU seconds of this process tree (and the named roots' trees)
    others_s: float  # the machine's busy seconds less ours, not below 0

    @property
    def cores(self) -> float:
        """Others' CPU seconds per wall second."""
        return self.others_s / self.wall_s if self.wall_s > 0 else 0.0


class OtherCores:
    """A meter of the CPU the machine's other processes use, started on creation (or
    ``start()``); ``read()`` gives the Reading since. As a context manager, ``.cores``
    and ``.reading`` hold the interval's figure after the block.

    ``roots``: pids whose trees count as ours besides this process's (a server started
    elsewhere, or one that may have left this tree)."""

    def __init__(self, *roots: int):
        self.roots = (os.getpid(), *roots)
        self.reading: Reading | None = None
        self.start()

    def start(self) -> None:
        self._wall = time.monotonic()
        self._machine = machine_busy_s()
        self._ours = tree_cpu_s(*self.roots)

    def read(self) -> Reading:
        ours = tree_cpu_s(*self.roots) - self._ours
        machine = machine_busy_s() - self._machine
        wall = time.monotonic() - self._wall
        return Reading(wall_s=wall, ours_s=ours, others_s=max(0.0, machine - ours))

    @property
    def cores(self) -> float:
        assert self.reading is not None, "read after the block"
        return self.reading.cores

    def __enter__(self) -> OtherCores:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.reading = self.read()


class RoundWindows:
    """Others' cores for each of a run of rounds, however short: call ``round_ended()``
    after each round; once the open window has lasted ``min_window_s`` it closes, and
    every round in it gets its figure. ``round_ended`` returns the figures it just gave
    (none while the window stays open); ``finish()`` closes the last window and returns
    every round's figure, in order."""

    def __init__(self, *roots: int, min_window_s: float = MIN_WINDOW_S):
        self.meter = OtherCores(*roots)
        self.min_window_s = min_window_s
        self.cores: list[float] = []
        self.open_rounds = 0
        self._opened = time.monotonic()

    def round_ended(self) -> list[float]:
        self.open_rounds += 1
        if time.monotonic() - self._opened < self.min_window_s:
            return []
        return self._close()

    def finish(self) -> list[float]:
        if self.open_rounds:
            self._close()
        return self.cores

    def _close(self) -> list[float]:
        figure = [self.meter.read().cores] * self.open_rounds
        self.cores += figure
        self.open_rounds = 0
        self.meter.start()
        self._opened = time.monotonic()
        return figure


def is_busy(cores: float, max_cores: float = MAX_OTHER_CORES) -> bool:
    return cores > max_cores


def mark(cores: float, max_cores: float = MAX_OTHER_CORES) -> str:
    """``0.05`` for a quiet round, ``0.35!`` for a busy one."""
    return f"{cores:.2f}{'!' if is_busy(cores, max_cores) else ''}"


@dataclass(frozen=True)
class QuietRounds:
    """Which rounds of a line the medians are over: the quiet ones, or every round when
    none is quiet."""

    kept: list[int]  # round indices
    busy: int  # rounds over the threshold
    total: int

    def pick(self, values: Sequence) -> list:
        return [values[i] for i in self.kept]

    def note(self) -> str:
        if not self.busy:
            return f"{self.total} rounds, none busy"
        if self.busy < self.total:
            return f"{self.busy} of {self.total} rounds busy, left out"
        return f"all {self.total} rounds busy, none left out"


def quiet_rounds(others: Sequence[float], max_cores: float = MAX_OTHER_CORES) -> QuietRounds:
    """Split rounds by their others' cores: ``kept`` are the quiet ones (every round when
    all are busy, so a line always has a median; ``note()`` says which happened)."""
    quiet = [i for i, cores in enumerate(others) if not is_busy(cores, max_cores)]
    return QuietRounds(
        kept=quiet or list(range(len(others))), busy=len(others) - len(quiet), total=len(others)
    )


def others_summary(others: Sequence[float], max_cores: float = MAX_OTHER_CORES) -> str:
    """``0.04 / 0.31 (1 of 7 rounds busy, left out)``: median / max of others' cores per
    round, and what the medians left out."""
    if not others:
        return "no rounds"
    return (
        f"{statistics.median(others):.2f} / {max(others):.2f} "
        f"({quiet_rounds(others, max_cores).note()})"
    )


@dataclass(frozen=True)
class Spread:
    """Min / median / max of a figure's medians over runs."""

    low: float
    median: float
    high: float
    runs: int

    @classmethod
    def of(cls, run_medians: Sequence[float]) -> Spread:
        if not run_medians:
            raise ValueError("no runs")
        return cls(
            min(run_medians), statistics.median(run_medians), max(run_medians), len(run_medians)
        )

    def format(self, spec: str = ".2f", unit: str = "") -> str:
        """``4.38 / 4.43 / 4.65x`` (min / median / max)."""
        return f"{self.low:{spec}} / {self.median:{spec}} / {self.high:{spec}}{unit}"

    def as_dict(self) -> dict[str, float | int]:
        return {"min": self.low, "median": self.median, "max": self.high, "runs": self.runs}
