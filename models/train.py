"""The training loop: a plain function (no Celery, no HTTP).

    result = train(spec, dataset, callbacks=Callbacks(...), checkpoint_dir=...)

- AdamW (decay on matrices only) with a per-step cosine schedule.
- Seeded: one torch.Generator drives shuffling, augmentation and the MC noise, and its
  state is saved in every epoch's checkpoint, so on CPU a resumed run ends with the same
  weights as an uninterrupted one.
- Every epoch: validation metrics at the head's eval sample count (noise from a fixed
  seed, so epochs are compared on the same draws), a checkpoint, a progress callback.
  The model kept is the epoch with the best validation NLL.
- Cancellation is cooperative: ``should_cancel`` is polled between steps.
- ``temperature: "auto"`` trains one run per grid value and keeps the best validation NLL.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.backbones import augment_images
from models.classifier import Classifier, build_classifier
from models.data import ArrayDataset, ImageFiles, standardisation, with_validation_split
from models.metrics import evaluate, reliability_diagram
from models.spec import EVAL_BATCH_ROWS, RunSpec, temperature_label
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


def train(
    spec: RunSpec,
    data: ArrayDataset,
    callbacks: Callbacks | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train per spec; "auto" temperature sweeps spec.head.temperature_grid."""
    callbacks = callbacks or Callbacks()
    data = with_validation_split(data, spec.train.val_fraction, spec.train.seed)
    if not spec.auto_temperature:
        path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
        return train_run(spec, data, callbacks, path)

    grid = spec.head.temperature_grid
    results = []
    for i, tau in enumerate(grid):
        path = (
            Path(checkpoint_dir) / f"checkpoint_tau{temperature_label(tau)}.pt"
            if checkpoint_dir
            else None
        )
        r = train_run(spec.with_temperature(tau), data, callbacks, path, candidate=(i, len(grid)))
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


def train_run(
    spec: RunSpec,
    data: ArrayDataset,
    callbacks: Callbacks,
    checkpoint_path: Path | None = None,
    candidate: tuple[int, int] = (0, 1),
) -> TrainResult:
    """One training run at one (fixed or learned) temperature."""
    data = with_validation_split(data, spec.train.val_fraction, spec.train.seed)
    device = resolve_device(spec.train.device)
    cfg = spec.train
    torch.manual_seed(cfg.seed)  # parameter init and dropout
    streaming = isinstance(data.x_train, ImageFiles)
    if streaming:  # an image folder on disk: stats from a sample, batches streamed
        mean, std = data.x_train.standardisation(seed=cfg.seed)
    else:
        mean, std = standardisation(data.x_train)
    model = build_classifier(spec, data.input_shape, data.num_classes, mean, std).to(device)

    # A streamed folder is evaluated a training batch at a time: memory stays a few
    # batches whatever the size of the validation and test splits.
    eval_rows = cfg.batch_size if streaming else None
    if streaming:
        x_train, y_train = data.x_train, data.y_train
    else:
        x_train = torch.as_tensor(data.x_train, device=device)
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
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    images = x_train.ndim == 4
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )

    start_epoch, history = 0, []
    best = {"nll": math.inf, "epoch": -1, "state": None}
    if checkpoint_path is not None and checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["gen"])
        noise_gen.set_state(ckpt["noise_gen"].to(noise_gen.get_state().device))
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
    resumed_from = start_epoch

    idx, cand_total = candidate
    tau_label = spec.head.temperature if spec.head.kind == "het" else None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        if streaming:
            batches = streamed_batches(x_train, y_train, perm, cfg.batch_size, device)
        else:
            perm = perm.to(device)
            batches = (
                (x_train[b], y_train[b])
                for b in (
                    perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    for step in range(steps_per_epoch)
                )
            )
        running, seen = 0.0, 0
        for step, (xb, yb) in enumerate(batches):
            if callbacks.should_cancel and callbacks.should_cancel():
                raise Cancelled(f"cancelled at epoch {epoch + 1}, step {step + 1}")
            if images and spec.backbone.augment:
                xb = augment_images(xb, hflip=spec.backbone.hflip, generator=gen)
            with autocast:
                h = model.features(xb)
            loss = model.head.loss(h.float(), yb, generator=noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(yb)
            seen += len(yb)
            if callbacks.on_step and (step + 1) % callbacks.step_every == 0:
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

        val = evaluate_split(model, data.x_val, data.y_val, spec.task, batch_rows=eval_rows)
        val.pop("reliability")
        entry = _progress(
            epoch,
            cfg.epochs,
            steps_per_epoch,
            steps_per_epoch,
            idx,
            cand_total,
            running / seen,
            tau_label,
        )
        entry["val"] = val
        entry["temperature_value"] = model.head.temperature.item()
        history.append(entry)
        if val["nll"] < best["nll"]:
            best = {"nll": val["nll"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        if checkpoint_path is not None:
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "gen": gen.get_state(),
                    "noise_gen": noise_gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                },
                checkpoint_path,
            )
        if callbacks.on_epoch_end:
            callbacks.on_epoch_end(entry)

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
    model.eval()
    rows = batch_rows or EVAL_BATCH
    device = model.input_mean.device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, len(x), rows):
        xb = torch.as_tensor(x[start : start + rows], device=device)
        if noise_free:
            probs = model.noise_free_probs(xb)
        else:
            probs = model.predict(xb, num_samples, generator=gen)
        out.append(probs.float().cpu().numpy())
    return np.concatenate(out)


def evaluate_split(
    model: Classifier,
    x,
    y,
    task: str,
    num_samples: int | None = None,
    noise_free: bool = False,
    batch_rows: int | None = None,
) -> dict:
    probs = predict_proba(model, x, num_samples, noise_free=noise_free, batch_rows=batch_rows)
    return evaluate(probs, y, task)


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


def _save_atomic(obj, path: Path) -> None:
    # A worker killed mid-write must never leave a truncated checkpoint behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
