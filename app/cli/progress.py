"""Following a job to its end with a progress bar (``hetserve train``, ``jobs wait``,
``demo``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import hetserve
from core.statuses import JobStatus
from hetserve import Client


def follow_job(client: Client, job_id: str, out=None, quiet: bool = False) -> hetserve.Job:
    """Draw a progress bar while the job runs (server-sent events, polling if the stream
    breaks: ``Client.wait``); returns the final job (with history). ``quiet``: no bar."""
    bar = None if quiet else ProgressBar(out or sys.stderr, client, job_id)
    try:
        job = client.wait(job_id, on_progress=bar.draw if bar else None)
        if bar:
            bar.draw(job)
    finally:
        if bar:
            bar.close()
    return job


class ProgressBar:
    """The job's progress: a tqdm bar on a terminal; one line per change otherwise (logs,
    CI). Both show status, the unit being trained (model, baseline, or the
    auto-temperature sweep's tau=...), epoch, the last epoch's training loss, the time per
    epoch and the ETA (from the rate of progress so far)."""

    WIDTH = 30

    def __init__(self, out, client: Client | None = None, job_id: str | None = None) -> None:
        self.out, self.client, self.job_id = out, client, job_id
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.last: str | None = None
        self.tqdm: Any = None  # a tqdm bar (untyped library), on a terminal once drawn
        self.started: tuple[float, float] | None = None  # (time, fraction) at first running
        self.epoch_key: tuple | None = None
        self.loss: float | None = None
        self.sweep: list[str] = []
        self.epoch_times: list[float] = []

    def _history(self, job: hetserve.Job) -> None:
        """Loss and sweep units come from the job's history: fetched once per new epoch."""
        progress = job.get("progress") or {}
        key = (progress.get("phase"), progress.get("epoch"), job.get("status"))
        if key == self.epoch_key:
            return
        self.epoch_key = key
        history = job.get("history")
        if history is None and self.client is not None and self.job_id is not None:
            try:
                history = self.client.get_job(self.job_id).get("history")
            except hetserve.HetserveError:
                history = None
        if not history:
            return
        losses = [h["train_loss"] for h in history if isinstance(h.get("train_loss"), int | float)]
        self.loss = losses[-1] if losses else self.loss
        self.sweep = list(
            dict.fromkeys(h["phase"] for h in history if str(h.get("phase", "")).startswith("tau="))
        )
        if len(self.epoch_times) < len(history):
            self.epoch_times += [time.monotonic()] * (len(history) - len(self.epoch_times))

    def describe(self, job: hetserve.Job) -> tuple[float, str]:
        progress = job.get("progress") or {}
        fraction = min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0)
        if job["status"] == JobStatus.SUCCEEDED:
            fraction = 1.0
        parts = []
        phase = progress.get("phase")
        if phase and phase.startswith("tau="):
            units = self.sweep + ([phase] if phase not in self.sweep else [])
            parts.append(f"sweep unit {units.index(phase) + 1} {phase}")
        elif phase:
            parts.append(phase)
        if progress.get("epochs"):
            parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        now = time.monotonic()
        if job["status"] == JobStatus.RUNNING:
            if self.started is None:
                self.started = (now, fraction)
            t0, f0 = self.started
            if fraction > f0 and now > t0:
                eta = (1.0 - fraction) * (now - t0) / (fraction - f0)
                parts.append(f"eta {_duration(eta)}")
        if len(self.epoch_times) >= 2:
            per_epoch = (self.epoch_times[-1] - self.epoch_times[0]) / (len(self.epoch_times) - 1)
            parts.append(f"{per_epoch:.1f} s/epoch")
        return fraction, " ".join(parts)

    def draw(self, job: hetserve.Job) -> None:
        self._history(job)
        fraction, detail = self.describe(job)
        if self.tty:
            self._draw_tqdm(job, fraction, detail)
            return
        filled = round(fraction * self.WIDTH)
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%} {job['status']} {detail}".rstrip()
        if line == self.last:
            return
        self.last = line
        self.out.write(f"{line}\n")
        self.out.flush()

    def _draw_tqdm(self, job: hetserve.Job, fraction: float, detail: str) -> None:
        from tqdm import tqdm

        if self.tqdm is None:
            self.tqdm = tqdm(
                total=100,
                file=self.out,
                unit="%",
                dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
            )
        self.tqdm.set_description_str(job["status"], refresh=False)
        self.tqdm.set_postfix_str(detail, refresh=False)
        self.tqdm.update(round(fraction * 100) - self.tqdm.n)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
    )
