"""Training over several local processes: ``train.devices: N`` > 1 as DDP ranks.

train() (models.train) checks the device count (check_devices) and hands the run to
train_run_ddp, which spawns N ranks from this process: nccl, one GPU per rank, on CUDA;
gloo on CPU (at most MAX_CPU_DEVICES). Each rank runs models.train.train_run on its share
of every global batch of ``batch_size`` rows and draws its own noise; rank 0 validates,
checkpoints (with every rank's generator states, so a resumed run continues each rank's
streams) and reports. This process stays the one the callbacks run in.

This module imports models.train (the loop each rank runs); models.train imports it only
inside train(), when a run asks for several devices.
"""

from __future__ import annotations

import os
import pickle
import queue
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.dataset_files import ArrayDataset
from core.spec import MAX_CPU_DEVICES, RunSpec
from models.train import Callbacks, Ranks, TrainResult, resolve_device, save_atomic, train_run


class DeviceError(ValueError):
    """train.devices asks for more devices than this worker has."""


def check_devices(devices: int, device: torch.device) -> None:
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if devices > available:
            raise DeviceError(
                f"train.devices={devices} but this worker sees {available} GPU(s): run the job "
                "on a worker with that many GPUs, or lower train.devices"
            )
    elif devices > MAX_CPU_DEVICES:
        raise DeviceError(
            f"train.devices={devices} on CPU: at most {MAX_CPU_DEVICES} processes (gloo)"
        )


def train_run_ddp(
    spec: RunSpec,
    data: ArrayDataset,
    callbacks: Callbacks,
    checkpoint_path: Path | None = None,
    candidate: tuple[int, int] = (0, 1),
) -> TrainResult:
    """train_run over ``train.devices`` local ranks with DDP (nccl on CUDA, one GPU per
    rank; gloo on CPU), spawned from this process, which stays the one the callbacks
    run in: rank 0's progress comes back through a queue, and a cancel (or any
    exception the callbacks raise) reaches every rank through a shared event. Rank 0's
    result comes back through a file; an exception on any rank stops the others and is
    raised here."""
    world = spec.train.devices
    ctx = mp.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory(prefix="hetserve-ddp-") as tmp:
        result_path = Path(tmp) / "result.pt"
        rendezvous = f"file://{Path(tmp) / 'rendezvous'}"
        job = RankJob(
            world, rendezvous, spec, data, checkpoint_path, candidate, events, stop,
            result_path, callbacks.step_every,
        )  # fmt: skip
        procs = mp.start_processes(
            _rank_main,
            args=(job,),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        try:
            while not procs.join(timeout=0.1):
                _relay(events, callbacks)
                if callbacks.should_cancel and callbacks.should_cancel():
                    stop.set()
            _relay(events, callbacks)
        except BaseException:
            stop.set()
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()
            for p in procs.processes:
                p.join(10)
            raise
        return torch.load(result_path, weights_only=False)


def _relay(events, callbacks: Callbacks) -> None:
    """Rank 0's progress to this process's callbacks; a rank's exception raised here."""
    while True:
        try:
            kind, payload = events.get_nowait()
        except queue.Empty:
            return
        if kind == "raised":
            raise payload
        handler = callbacks.on_step if kind == "step" else callbacks.on_epoch_end
        if handler:
            handler(payload)


@dataclass(frozen=True)
class RankJob:
    """What every rank is handed (pickled to the spawned processes): the run, where the
    ranks meet, and the channels back to this process."""

    world: int
    rendezvous: str  # file:// URL of torch.distributed's rendezvous file
    spec: RunSpec
    data: ArrayDataset
    checkpoint_path: Path | None
    candidate: tuple[int, int]
    events: Any  # an mp Queue: rank 0's ("step" | "epoch" | "raised", payload)
    stop: Any  # an mp Event: a cancel, or a failure on any rank
    result_path: Path  # rank 0's TrainResult
    step_every: int


def _rank_main(rank: int, job: RankJob) -> None:
    world, spec, events, stop = job.world, job.spec, job.events, job.stop
    device = resolve_device(spec.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(rank)
    else:  # the ranks share the machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=job.rendezvous,
        rank=rank,
        world_size=world,
        # Rank 0 validates alone at each epoch's end while the others wait for it.
        timeout=timedelta(hours=2),
    )
    if rank == 0:
        callbacks = Callbacks(
            on_step=lambda p: events.put(("step", p)),
            on_epoch_end=lambda p: events.put(("epoch", p)),
            should_cancel=stop.is_set,
            step_every=job.step_every,
        )
    else:
        callbacks = Callbacks(should_cancel=stop.is_set)
    try:
        result = train_run(
            spec, job.data, callbacks, job.checkpoint_path, job.candidate, Ranks(rank, world)
        )
        if result is not None:
            save_atomic(result, job.result_path)
        # Every rank leaves the group together: a rank that tears gloo down while rank 0
        # still evaluates and saves can abort a peer's gloo threads.
        dist.barrier()
    except BaseException as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"rank {rank}: {type(exc).__name__}: {exc}")
        events.put(("raised", exc))
    finally:
        dist.destroy_process_group()
    # A spawned child would now finalise the interpreter, and with it C++ statics that
    # gloo's threads may still touch ("terminate called without an active exception",
    # SIGABRT, seen about once in ten runs). Flush what rank 0 queued and leave without it.
    events.close()
    events.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
