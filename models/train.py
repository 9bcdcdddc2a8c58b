"""The training loop: a plain function (no Celery, no HTTP).

Why one module of ~600 lines: one training run's steps (split, seed, loop, validation,
checkpoint, temperature sweep) share its state; split apart they would pass it around.
Spawning and relaying for several processes is models.ddp's.

    result = train(spec, dataset, callbacks=Callbacks(...), checkpoint_dir=...)

- AdamW (decay on matrices only) with a per-step cosine schedule.
- Seeded: one torch.Generator drives shuffling, augmentation and the MC noise, and its
  state is saved in every epoch's checkpoint, so on CPU a resumed run ends with the same
  weights as an uninterrupted one.
- Every epoch: validation metrics at the head's eval sample count (noise from a fixed
  seed, so epochs are compared on the same draws), a checkpoint, a progress callback.
  The model kept is the epoch with the best validation NLL.
- A registered image folder whose decoded pixels fit in memory is decoded once, as uint8
  (models.image_cache), and batched, cropped and flipped as uint8; one that does not fit
  is streamed (models.streaming).
- Cancellation is cooperative: ``should_cancel`` is polled between steps.
- ``temperature: "auto"`` trains one run per grid value and keeps the best validation NLL.
- CUDA: the backbone under bf16 autocast, image backbones channels-last; the head's
  sampling in float32 (mixed_precision, TrainingLoss).
- ``train.devices: N`` > 1: DDP over N local ranks spawned from this process
  (models.ddp.train_run_ddp), each running train_run on its share of every global
  batch; rank 0 validates, checkpoints and reports.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.dataset_files import ArrayDataset, standardisation, with_validation_split
from core.manifest import ImageFiles
from core.spec import EVAL_BATCH_ROWS, RunSpec, temperature_label
from models.backbones import augment_images
from models.classifier import Classifier, build_classifier
from models.het_formula import MULTICLASS, noise_free_log_likelihood
from models.image_cache import DecodedImages, decode_once
from models.metrics import evaluate, reliability_diagram
from models.streaming import streamed_batches

EVAL_SEED = 12345
EVAL_BATCH = EVAL_BATCH_ROWS  # the noise-memory check sizes evaluation draws by it


class Cancelled(Exception):
    """Raised out of train() when should_cancel() returned True."""


class TrainingDiverged(RuntimeError):
    """No epoch ended with a finite validation NLL."""


@dataclass
class Callbacks:
    # on_progress receives {"epoch", "epochs", "step", "steps", "fraction", "train_loss",
    # "val": {...}, "temperature", "candidate"}; on_epoch_end also gets it, once per epoch.
    on_step: Callable[[dict], None] | None = None
    on_epoch_end: Callable[[dict], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    step_every: int = 10


@dataclass
class TrainResult:
    model: Classifier
    spec: RunSpec  # with the temperature actually used
    # test_* (on x_test, or on the validation split when there is none) and val_* of the MC
    # predictive; noise_free_test_* and noise_free_val_* of the noise-free one
    metrics: dict
    reliability: list[dict]
    history: list[dict]
    best_epoch: int
    candidates: list[dict] = field(default_factory=list)  # temperature "auto" only
    resumed_from_epoch: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def _lead_result(result: TrainResult | None) -> TrainResult:
    """A run's result in this process, the lead (rank 0): only other ranks return None."""
    if result is None:
        raise RuntimeError("the lead process of a training run returned no result")
    return result


def train(
    spec: RunSpec,
    data: ArrayDataset,
    callbacks: Callbacks | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train per spec; "auto" temperature sweeps spec.head.temperature_grid."""
    callbacks = callbacks or Callbacks()
    # An image folder that fits in memory is decoded once here, for every run below.
    data = decode_once(with_validation_split(data, spec.train.val_fraction, spec.train.seed))
    run: Callable[..., TrainResult | None] = train_run
    if spec.train.devices > 1:
        # imported here: models.ddp imports this module (its ranks run train_run)
        from models.ddp import check_devices, train_run_ddp

        check_devices(spec.train.devices, resolve_device(spec.train.device))
        run = train_run_ddp
    if not spec.auto_temperature:
        path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
        return _lead_result(run(spec, data, callbacks, path))

    grid = spec.head.temperature_grid
    results = []
    for i, tau in enumerate(grid):
        path = (
            Path(checkpoint_dir) / f"checkpoint_tau{temperature_label(tau)}.pt"
            if checkpoint_dir
            else None
        )
        r = _lead_result(
            run(spec.with_temperature(tau), data, callbacks, path, candidate=(i, len(grid)))
        )
        results.append(r)
    best, table = select_temperature(
        [(tau, r.metrics) for tau, r in zip(grid, results, strict=True)]
    )
    chosen = results[best]
    chosen.candidates = table
    return chosen


def select_temperature(candidates: list[tuple[float, dict]]) -> tuple[int, list[dict]]:
    """Temperature "auto"'s choice among runs at each grid temperature: the lowest
    validation NLL. ``candidates`` is [(temperature, metrics)]; returns the index of
    the best and the table the job reports: [{temperature, val_nll, val_accuracy,
    chosen}] in grid order. train() and the worker's fanned-out units both use it."""
    if not candidates:
        raise ValueError("no temperature candidates to choose from")
    best = min(range(len(candidates)), key=lambda i: candidates[i][1]["val_nll"])
    table = [
        {
            "temperature": tau,
            "val_nll": metrics["val_nll"],
            "val_accuracy": metrics.get("val_accuracy"),
            "chosen": i == best,
        }
        for i, (tau, metrics) in enumerate(candidates)
    ]
    return best, table


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (train.devices): rank r of N."""

    rank: int = 0
    world: int = 1


# The purposes a run draws random numbers for, each its own stream (stream_seed).
STREAMS = ("noise", "augment")


def stream_seed(seed: int, purpose: str, rank: int) -> int:
    """The seed of rank ``rank``'s ``purpose`` stream (one of STREAMS) in a run seeded
    ``seed``: 64 bits of numpy's SeedSequence([seed, purpose index, rank]), a hash, so no
    two (purpose, rank) pairs, nor the data order (seeded ``seed`` itself), share a
    stream, as consecutive seeds per purpose and rank would."""
    words = np.random.SeedSequence([seed, STREAMS.index(purpose), rank]).generate_state(
        1, np.uint64
    )
    return int(words[0])


def run_generators(
    seed: int, ranks: Ranks, device: torch.device
) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """(data order, augmentation, noise) generators of this rank.

    The data order is seeded ``seed``, the same on every rank; augmentation draws from it
    too in a single process, from a stream of each rank's own under DDP (ranks' shares
    of a batch may differ in size, and the order must not drift apart). The noise is a
    generator on ``device`` (drawn there) with a stream of each rank's own."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    aug_gen = gen
    if ranks.world > 1:
        aug_gen = torch.Generator().manual_seed(stream_seed(seed, "augment", ranks.rank))
    noise_gen = torch.Generator(device=device).manual_seed(stream_seed(seed, "noise", ranks.rank))
    return gen, aug_gen, noise_gen


def mixed_precision(device: torch.device, images: bool):
    """(autocast context for the backbone, memory format of images and model).

    CUDA: bf16 autocast, and channels-last for an image backbone (the layout its
    convolutions run fastest in under bf16); the head still gets float32 features (see
    TrainingLoss). Anywhere else: float32 in the default layout."""
    if device.type == "cuda":
        layout = torch.channels_last if images else torch.contiguous_format
        return torch.autocast("cuda", dtype=torch.bfloat16), layout
    return nullcontext(), torch.contiguous_format


class TrainingLoss(nn.Module):
    """loss(x, y) = head.loss(float32(backbone(x))): one training step's forward, as a
    module so DDP can wrap it (its gradient hooks need the forward to go through it).
    The backbone runs under ``autocast``; the HET head's sampling always in float32."""

    def __init__(self, model: Classifier, autocast):
        super().__init__()
        self.model, self.autocast = model, autocast

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator=None) -> torch.Tensor:
        with self.autocast:
            h = self.model.features(x)
        return self.model.head.loss(h.float(), y, generator=generator)


def train_run(
    spec: RunSpec,
    data: ArrayDataset,
    callbacks: Callbacks,
    checkpoint_path: Path | None = None,
    candidate: tuple[int, int] = (0, 1),
    ranks: Ranks = Ranks(),
) -> TrainResult | None:
    """One training run at one (fixed or learned) temperature.

    Under DDP (``ranks.world`` > 1, a process group set up by models.ddp.train_run_ddp)
    each rank trains on its share of every global batch of ``train.batch_size`` rows (DDP
    averages the gradients), draws its own noise, and rank 0 alone validates, checkpoints
    and reports; it returns the result, the other ranks None."""
    data = with_validation_split(data, spec.train.val_fraction, spec.train.seed)
    device = resolve_device(spec.train.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.rank)
    lead = ranks.rank == 0
    cfg = spec.train
    torch.manual_seed(cfg.seed)  # parameter init (the same on every rank) and dropout
    x_images = data.x_train if isinstance(data.x_train, ImageFiles) else None
    streaming = x_images is not None
    x_decoded = data.x_train if isinstance(data.x_train, DecodedImages) else None
    decoded = x_decoded is not None  # uint8 pixels, batched as uint8
    if x_images is not None:  # an image folder on disk: stats from a sample, batches streamed
        mean, std = x_images.standardisation(seed=cfg.seed)
    elif x_decoded is not None:
        mean, std = x_decoded.standardisation(seed=cfg.seed)
    else:
        mean, std = standardisation(data.x_train)
    model = build_classifier(spec, data.input_shape, data.num_classes, mean, std).to(device)
    if ranks.rank:  # dropout masks of their own
        torch.manual_seed(cfg.seed + 7919 * ranks.rank)

    # A streamed folder is evaluated a training batch at a time: memory stays a few
    # batches whatever the size of the validation and test splits.
    eval_rows = cfg.batch_size if streaming else None
    x_train: np.ndarray | torch.Tensor
    y_train: np.ndarray | torch.Tensor
    if streaming:
        x_train, y_train = data.x_train, data.y_train
    else:
        pixels = x_decoded.pixels if x_decoded is not None else data.x_train
        x_train = torch.as_tensor(pixels, device=device)
        y_train = torch.as_tensor(data.y_train, device=device)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    trained = [p for p in model.parameters() if p.requires_grad]  # a frozen backbone's are not
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    gen, aug_gen, noise_gen = run_generators(cfg.seed, ranks, device)
    images = x_train.ndim == 4
    autocast, layout = mixed_precision(device, images)
    model.to(memory_format=layout)  # type: ignore[call-overload]  # torch's stub of Module.to omits memory_format
    step_loss: nn.Module = TrainingLoss(model, autocast)
    if ranks.world > 1:
        step_loss = DistributedDataParallel(
            step_loss, device_ids=[device.index] if device.type == "cuda" else None
        )

    start_epoch, history = 0, []
    best: dict[str, Any] = {"nll": math.inf, "epoch": -1, "state": None}
    if checkpoint_path is not None and checkpoint_path.exists():
        # to the CPU: generator states must be CPU byte tensors (a CUDA copy is refused);
        # load_state_dict copies weights and optimizer state to the model's device
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["gen"])
        # (A checkpoint from before DDP holds one rank's noise and RNG under these names.)
        states = ckpt.get("rank_states") or [(ckpt["noise_gen"], None, ckpt["torch_rng"])]
        noise_state, aug_state, rng_state = states[ranks.rank]
        noise_gen.set_state(noise_state.to(noise_gen.get_state().device))
        if aug_gen is not gen:
            aug_gen.set_state(aug_state)
        torch.set_rng_state(rng_state)
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
    resumed_from = start_epoch

    idx, cand_total = candidate
    tau_label = spec.head.temperature if spec.head.kind == "het" else None
    for epoch in range(start_epoch, cfg.epochs):
        step_loss.train()
        perm = torch.randperm(n, generator=gen, device=gen.device)
        # This rank's share of each global batch; under DDP a last batch with fewer rows
        # than ranks is left out (every rank must take every step).
        shares = [
            batch.tensor_split(ranks.world)[ranks.rank]
            for batch in perm.split(cfg.batch_size)
            if len(batch) >= ranks.world
        ]
        if x_images is not None:
            batches = streamed_batches(x_images, data.y_train, shares, device)
        else:
            batches = ((x_train[b], y_train[b]) for b in (share.to(device) for share in shares))
        running, seen = 0.0, 0
        for step, (xb, yb) in enumerate(batches):
            if _should_stop(callbacks, ranks, device):
                raise Cancelled(f"cancelled at epoch {epoch + 1}, step {step + 1}")
            if images and spec.backbone.augment:
                xb = augment_images(xb, hflip=spec.backbone.hflip, generator=aug_gen)
            if decoded:  # crop and flip move uint8 pixels; the float copy is made here
                xb = xb.float().div_(255)
            loss = step_loss(xb.contiguous(memory_format=layout), yb, generator=noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(yb)
            seen += len(yb)
            if lead and callbacks.on_step and (step + 1) % callbacks.step_every == 0:
                callbacks.on_step(
                    _progress(
                        epoch,
                        cfg.epochs,
                        step + 1,
                        steps_per_epoch,
                        idx,
                        cand_total,
                        running / seen,
                        tau_label,
                    )
                )

        if ranks.world > 1:  # the epoch's loss over every rank's rows; every rank's RNGs
            totals = torch.tensor([running, seen], dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            running, seen = float(totals[0]), int(totals[1])
            rank_states: list = [None] * ranks.world
            dist.all_gather_object(rank_states, _rng_states(noise_gen, aug_gen))
        else:
            rank_states = [_rng_states(noise_gen, aug_gen)]
        if not lead:
            continue
        val = evaluate_split(model, data.x_val, data.y_val, spec.task, batch_rows=eval_rows)
        val.pop("reliability")
        entry = _progress(
            epoch,
            cfg.epochs,
            steps_per_epoch,
            steps_per_epoch,
            idx,
            cand_total,
            running / max(seen, 1),
            tau_label,
        )
        entry["val"] = val
        entry["temperature_value"] = model.head.temperature.item()
        history.append(entry)
        if val["nll"] < best["nll"]:
            best = {"nll": val["nll"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        if checkpoint_path is not None:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "gen": gen.get_state(),
                    "rank_states": rank_states,
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                },
                checkpoint_path,
            )
        if callbacks.on_epoch_end:
            callbacks.on_epoch_end(entry)

    if not lead:
        return None
    if best["state"] is None:
        # Every epoch's validation NLL was NaN (or inf): nothing is worth keeping.
        raise TrainingDiverged(
            f"training diverged: no epoch reached a finite validation NLL (lr={cfg.lr})"
        )
    model.load_state_dict(best["state"])
    model.eval()
    val = evaluate_split(model, data.x_val, data.y_val, spec.task, batch_rows=eval_rows)
    x_eval, y_eval = (
        (data.x_test, data.y_test) if data.x_test is not None else (data.x_val, data.y_val)
    )
    test = evaluate_split(model, x_eval, y_eval, spec.task, batch_rows=eval_rows)
    reliability = test.pop("reliability")
    val.pop("reliability")
    metrics = {f"test_{k}": v for k, v in test.items()} | {f"val_{k}": v for k, v in val.items()}
    # The noise-free predictive softmax(mu / tau) of the same model, beside the MC one
    # (equal for the softmax baseline, whose predictive has no noise).
    nf_test = evaluate_split(
        model, x_eval, y_eval, spec.task, noise_free=True, batch_rows=eval_rows
    )
    nf_val = evaluate_split(
        model, data.x_val, data.y_val, spec.task, noise_free=True, batch_rows=eval_rows
    )
    nf_reliability = nf_test.pop("reliability")
    nf_val.pop("reliability")
    metrics |= {f"noise_free_test_{k}": v for k, v in nf_test.items()}
    # The reliability diagrams of the test split, both predictives (the ECEs' bins).
    metrics["reliability"] = {
        "marginal": reliability_diagram(reliability),
        "noise_free": reliability_diagram(nf_reliability),
    }
    metrics |= {f"noise_free_val_{k}": v for k, v in nf_val.items()}
    metrics["test_split"] = "test" if data.x_test is not None else "val"
    metrics["temperature"] = model.head.temperature.item()
    if spec.head.kind == "het" and spec.head.temperature == "learned":
        spec = spec.with_temperature(round(metrics["temperature"], 6))
    return TrainResult(
        model,
        spec,
        metrics,
        reliability,
        history,
        best["epoch"] + 1,
        resumed_from_epoch=resumed_from,
    )


@torch.no_grad()
def predict_proba(
    model: Classifier,
    x: np.ndarray,
    num_samples: int | None = None,
    seed: int = EVAL_SEED,
    noise_free: bool = False,
    batch_rows: int | None = None,
) -> np.ndarray:
    """Predictive probabilities for a whole array, in batches (``batch_rows``, default
    EVAL_BATCH), with seeded noise. ``x`` may be ImageFiles: each batch is decoded then.

    noise_free: the noise-free predictive softmax(mu / tau) instead (no sampling)."""
    return _predictive(model, x, None, num_samples, seed, noise_free, batch_rows)[0]


@torch.no_grad()
def _predictive(
    model: Classifier, x, y, num_samples, seed: int, noise_free: bool, batch_rows: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(probs as predict_proba gives them, and for labels ``y`` the per-example
    log p_hat(y|x) on the same draws, in log space as the training loss computes it:
    logsumexp over the draws, never log of a clipped p_hat; None without y)."""
    model.eval()
    head = model.head
    rows = batch_rows or EVAL_BATCH
    device = model.input_mean.device
    gen = torch.Generator(device=device).manual_seed(seed)
    out, log_lik = [], []
    for start in range(0, len(x), rows):
        xb = torch.as_tensor(x[start : start + rows], device=device)
        h = model.features(xb)
        if y is None:
            probs = head.noise_free_probs(h) if noise_free else head.predict(h, num_samples, gen)
            out.append(probs.float().cpu().numpy())
            continue
        yb = torch.as_tensor(np.asarray(y[start : start + rows]), device=device)
        if head.task == MULTICLASS:
            yb = yb.long()
        if noise_free:
            probs = head.noise_free_probs(h)
            z = head.latent(h).scaled(1.0 / head.temperature).mu
            ll = noise_free_log_likelihood(z, yb, head.task)
        else:
            # one draw of the noise for both (the head forms the Gaussian and the noise once)
            probs, ll = head.predict_with_log_likelihood(h, yb, num_samples, gen)
        out.append(probs.float().cpu().numpy())
        log_lik.append(ll.double().cpu().numpy())
    return np.concatenate(out), (np.concatenate(log_lik) if y is not None else None)


def evaluate_split(
    model: Classifier,
    x,
    y,
    task: str,
    num_samples: int | None = None,
    noise_free: bool = False,
    batch_rows: int | None = None,
) -> dict:
    """models.metrics.evaluate of the predictive on (x, y), its nll = -mean log p_hat(y|x)
    from the head in log space (as the training loss; evaluate's clips p_hat at 1e-12,
    capping a confident mistake at 27.6 nats): the validation NLL picks the epoch kept
    and temperature "auto"'s choice."""
    probs, log_lik = _predictive(model, x, y, num_samples, EVAL_SEED, noise_free, batch_rows)
    assert log_lik is not None  # labels were given
    metrics = evaluate(probs, y, task)
    metrics["nll"] = float(-log_lik.mean())
    return metrics


def _progress(epoch, epochs, step, steps, idx, total, train_loss, tau) -> dict:
    done = (idx + (epoch + step / steps) / epochs) / total
    return {
        "epoch": epoch + 1,
        "epochs": epochs,
        "step": step,
        "steps": steps,
        "fraction": round(done, 6),
        "train_loss": train_loss,
        "candidate": idx,
        "temperature": tau,
    }


def _rng_states(noise_gen: torch.Generator, aug_gen: torch.Generator) -> tuple:
    return noise_gen.get_state().cpu(), aug_gen.get_state(), torch.get_rng_state()


def _should_stop(callbacks: Callbacks, ranks: Ranks, device: torch.device) -> bool:
    """should_cancel(), agreed by every rank under DDP (all stop at the same step, or
    the others would wait for the missing one's gradients forever)."""
    stop = bool(callbacks.should_cancel and callbacks.should_cancel())
    if ranks.world > 1:
        flag = torch.tensor([float(stop)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def save_atomic(obj, path: Path) -> None:
    # A worker killed mid-write must never leave a truncated checkpoint behind. Written
    # through a Python file: a full disk is then OSError ENOSPC (torch's own writer says
    # only "unexpected pos"), and the partial file is removed.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
