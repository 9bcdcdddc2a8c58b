"""The training loop: resume, cancel, temperature selection, images, best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.dataset_files import ArrayDataset, validate
from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec
from models.backbones import augment_images
from models.train import Callbacks, Cancelled, select_temperature, train


def blobs(n=150, d=4, k=3, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + 3.0 * np.eye(k, d)[y]
    return validate(ArrayDataset(x, y, x_test=x[:30], y_test=y[:30]))


def tiny_spec(epochs=4, **head) -> RunSpec:
    head = {
        "kind": "het",
        "num_factors": 2,
        "temperature": 1.0,
        "train_mc_samples": 16,
        "eval_mc_samples": 32,
    } | head
    return RunSpec(
        head=HeadSpec(**head),
        backbone=BackboneSpec(hidden=[16]),
        train=TrainSpec(epochs=epochs, batch_size=32, lr=0.01, seed=7, device="cpu"),
    )


class Stop(Exception):
    pass


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path):
    data, spec = blobs(), tiny_spec(epochs=4)
    whole = train(spec, data, checkpoint_dir=tmp_path / "whole")
    last_whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]

    def stop_after_epoch_2(entry):
        if entry["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(
            spec, data, Callbacks(on_epoch_end=stop_after_epoch_2), checkpoint_dir=tmp_path / "cut"
        )
    resumed = train(spec, data, checkpoint_dir=tmp_path / "cut")
    last_resumed = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]

    assert resumed.resumed_from_epoch == 2 and whole.resumed_from_epoch == 0
    assert_bitwise_equal(last_whole, last_resumed)  # the final epoch's weights
    assert_bitwise_equal(weights(whole.model), weights(resumed.model))  # the kept (best) epoch
    assert resumed.best_epoch == whole.best_epoch
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert resumed.metrics == whole.metrics


def test_cancel_check_raises_between_steps_and_the_run_resumes(tmp_path):
    data, spec = blobs(), tiny_spec(epochs=3)
    calls = {"n": 0}

    def cancel_on_eighth_step():
        calls["n"] += 1
        return calls["n"] == 8  # 135 training rows = 5 steps per epoch: step 3 of epoch 2

    epochs_done = []
    with pytest.raises(Cancelled, match="epoch 2, step 3"):
        train(
            spec,
            data,
            Callbacks(
                should_cancel=cancel_on_eighth_step,
                on_epoch_end=lambda e: epochs_done.append(e["epoch"]),
            ),
            checkpoint_dir=tmp_path,
        )
    assert epochs_done == [1]
    resumed = train(spec, data, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == 3


def test_auto_temperature_keeps_the_best_validation_nll():
    grid = [0.3, 1.0, 3.0]
    result = train(tiny_spec(epochs=2, temperature="auto", temperature_grid=grid), blobs())
    assert [c["temperature"] for c in result.candidates] == grid
    nlls = [c["val_nll"] for c in result.candidates]
    best = grid[int(np.argmin(nlls))]
    assert len(set(nlls)) == 3  # the candidates really differ
    assert result.spec.head.temperature == best and result.metrics["temperature"] == pytest.approx(
        best
    )
    assert result.metrics["val_nll"] == pytest.approx(min(nlls))
    assert [c["chosen"] for c in result.candidates] == [t == best for t in grid]


def test_select_temperature_keeps_the_lowest_validation_nll_in_grid_order():
    best, table = select_temperature(
        [
            (0.5, {"val_nll": 0.9}),
            (1.0, {"val_nll": 0.4, "val_accuracy": 0.8}),
            (2.0, {"val_nll": 0.6}),
        ]
    )
    assert best == 1
    assert [row["temperature"] for row in table] == [0.5, 1.0, 2.0]
    assert [row["chosen"] for row in table] == [False, True, False]
    assert table[1] == {"temperature": 1.0, "val_nll": 0.4, "val_accuracy": 0.8, "chosen": True}
    with pytest.raises(ValueError):
        select_temperature([])


def test_learned_temperature_ends_within_bounds_and_is_recorded():
    result = train(
        tiny_spec(epochs=2, temperature="learned", temperature_bounds=(0.5, 2.0)), blobs()
    )
    tau = result.metrics["temperature"]
    assert 0.5 <= tau <= 2.0 and tau != 1.0  # it moved from its start
    assert result.spec.head.temperature == pytest.approx(tau)


def test_progress_and_best_epoch_and_baseline():
    steps, epochs = [], []
    result = train(
        tiny_spec(epochs=3),
        blobs(),
        Callbacks(on_step=steps.append, on_epoch_end=epochs.append, step_every=2),
    )
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[-1]["fraction"] == 1.0
    assert len(steps) == 6 and all(
        {"epoch", "step", "train_loss", "fraction"} <= s.keys() for s in steps
    )
    val_nlls = [e["val"]["nll"] for e in result.history]
    assert result.best_epoch == int(np.argmin(val_nlls)) + 1
    assert result.metrics["test_split"] == "test" and result.metrics["test_accuracy"] > 0.6
    baseline = train(tiny_spec(epochs=3).as_baseline(), blobs())
    assert baseline.metrics["test_accuracy"] > 0.6 and baseline.model.head.num_factors == 0
    check_noise_free_metrics(result, baseline)


def check_noise_free_metrics(het, baseline):
    """Both predictives are reported; for the softmax baseline they are the same numbers."""
    names = ("accuracy", "nll", "ece", "brier")
    for split in ("test", "val"):
        for name in names:
            key = f"{split}_{name}"
            assert baseline.metrics[f"noise_free_{key}"] == baseline.metrics[key], key
            assert np.isfinite(het.metrics[f"noise_free_{key}"]), key
    # the HET model's two predictives differ (it has learned noise)
    assert het.metrics["noise_free_test_nll"] != het.metrics["test_nll"]
    assert "noise_free_test_reliability" not in het.metrics
    # the test split's reliability diagrams of both predictives, bins of the ECE
    for result in (het, baseline):
        diagrams = result.metrics["reliability"]
        assert set(diagrams) == {"marginal", "noise_free"}
        for diagram in diagrams.values():
            assert len(diagram["bin_edges"]) == len(diagram["count"]) + 1
            assert sum(diagram["count"]) > 0
    assert (
        baseline.metrics["reliability"]["marginal"] == baseline.metrics["reliability"]["noise_free"]
    )


def test_images_train_through_the_cnn_with_augmentation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 48)
    x = rng.normal(size=(48, 1, 8, 8)) * 0.3
    x[y == 1, :, 2:6, 2:6] += 1.5  # a bright square marks class 1
    spec = RunSpec(
        head=HeadSpec(num_factors=1, train_mc_samples=8, eval_mc_samples=16),
        backbone=BackboneSpec(kind="cnn", augment=True, hflip=True),
        train=TrainSpec(epochs=2, batch_size=16, seed=0, device="cpu"),
    )
    result = train(spec, validate(ArrayDataset(x, y)))
    assert np.isfinite(result.metrics["test_nll"]) and result.model.input_mean.shape == (1, 1, 1)


def test_augment_images_crops_a_shifted_window_and_flips():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5) + 1
    out = augment_images(x, pad=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 5, dx : dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(augment_images(x, pad=0), x)
    flipped = augment_images(
        x.repeat(16, 1, 1, 1), pad=0, hflip=True, generator=torch.Generator().manual_seed(0)
    )
    is_flipped = [torch.equal(f, x[i % 2].flip(-1)) for i, f in enumerate(flipped)]
    assert 0 < sum(is_flipped) < 32
    assert all(
        f or torch.equal(o, x[i % 2])
        for i, (f, o) in enumerate(zip(is_flipped, flipped, strict=True))
    )


@pytest.mark.parametrize(
    "head",
    [
        {"temperature": -1.0},
        {"temperature": 0.0},
        {"temperature_grid": [1.0, 0.0]},
        {"temperature_bounds": (2.0, 1.0)},
        {"temperature": "learned", "temperature_bounds": (1.5, 3.0)},
        {"temperature": "hot"},
    ],
)
def test_head_spec_rejects_bad_temperatures(head):
    with pytest.raises(ValueError):
        HeadSpec(**head)


@pytest.mark.parametrize("kind", ["het", "softmax"])
def test_validation_nll_is_computed_in_log_space(kind):
    """The NLL that picks the epoch and temperature "auto"'s choice is -mean log p_hat(y|x)
    as the training loss computes it (logsumexp over the draws): a confident mistake
    (log p_hat(y|x) ~ -60) counts 60 nats, not the 27.6 of p_hat clipped at 1e-12; where
    nothing is clipped it equals -log p_hat_y of the same draws."""
    from models.classifier import build_classifier
    from models.metrics import evaluate
    from models.train import EVAL_SEED, evaluate_split, predict_proba

    spec = tiny_spec(kind=kind)
    model = build_classifier(spec, [4], 3, np.zeros(4), np.ones(4)).eval()
    x, y = blobs().x_test, blobs().y_test
    clipped = evaluate(predict_proba(model, x), y, "multiclass")["nll"]
    assert evaluate_split(model, x, y, "multiclass")["nll"] == pytest.approx(clipped, rel=1e-5)

    with torch.no_grad():
        model.head.loc.weight.zero_()
        model.head.loc.bias.copy_(torch.tensor([60.0, 0.0, 0.0]))
        if kind == "het":
            model.head.diag.weight.zero_()
            model.head.diag.bias.fill_(-100.0)
    wrong = np.ones(len(x), dtype=np.int64)  # every label is class 1: p_hat(1|x) ~ e^-60
    nll = evaluate_split(model, x, wrong, "multiclass")["nll"]
    assert nll > 50  # the clipped NLL cannot exceed -log(1e-12) = 27.6
    gen = torch.Generator().manual_seed(EVAL_SEED)
    with torch.no_grad():
        direct = -model.log_likelihood(
            torch.as_tensor(x), torch.as_tensor(wrong), generator=gen
        ).mean()
    assert nll == pytest.approx(float(direct), rel=1e-5)
