"""train.devices: one job over several DDP ranks (gloo, 2 CPU processes here), checked
against one process on the same data order; and the precision each device gets."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from core.dataset_files import ArrayDataset, validate
from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec
from models.classifier import build_classifier
from models.ddp import DeviceError, check_devices
from models.train import Callbacks, TrainingLoss, mixed_precision, train


def blobs(n, d=5, k=3, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + 2.0 * np.eye(k, d)[y]
    xv = rng.normal(size=(30, d)) + 2.0 * np.eye(k, d)[y[:30]]
    return validate(ArrayDataset(x, y, x_val=xv, y_val=y[:30]))


def spec(devices: int, epochs: int) -> RunSpec:
    # A softmax head and no dropout: the step is deterministic, so the ranks' averaged
    # gradients of half batches equal the one process's gradient of the whole batch.
    return RunSpec(
        head=HeadSpec(kind="softmax"),
        backbone=BackboneSpec(hidden=[16, 16]),
        train=TrainSpec(
            epochs=epochs, batch_size=32, lr=0.02, seed=3, device="cpu", devices=devices
        ),
    )


def assert_close_params(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


def test_two_gloo_ranks_take_the_same_steps_as_one_process(tmp_path):
    # One step: 32 rows, the same order; each rank gets 16 of them.
    data = blobs(32)
    one = train(spec(1, 1), data)
    two = train(spec(2, 1), data)
    torch.manual_seed(3)  # the initialisation train() starts from
    start = build_classifier(spec(1, 1), [5], 3, np.zeros(5), np.ones(5))
    moved = [
        float((p - q).detach().abs().max())
        for p, q in zip(one.model.parameters(), start.parameters(), strict=True)
    ]
    assert min(moved) > 1e-3, moved  # the step moved every parameter: there is something to compare
    assert_close_params(two.model, one.model, atol=1e-6)

    # A few epochs of 4 steps (the last global batch of 8 rows: 4 per rank): the same
    # loss curve and validation NLL, and rank 0's checkpoint in the job's folder.
    data = blobs(104)
    one = train(spec(1, 3), data)
    steps, epochs = [], []
    progress = Callbacks(on_step=steps.append, on_epoch_end=epochs.append, step_every=1)
    two = train(spec(2, 3), data, progress, checkpoint_dir=tmp_path)
    # Rank 0's progress reached this process's callbacks: every step, every epoch.
    assert [(p["epoch"], p["step"]) for p in steps] == [
        (e, k) for e in (1, 2, 3) for k in range(1, 5)
    ]
    assert [e["train_loss"] for e in epochs] == [h["train_loss"] for h in two.history]
    np.testing.assert_allclose(
        [h["train_loss"] for h in two.history], [h["train_loss"] for h in one.history], rtol=1e-4
    )
    np.testing.assert_allclose(
        [h["val"]["nll"] for h in two.history], [h["val"]["nll"] for h in one.history], rtol=1e-4
    )
    assert_close_params(two.model, one.model, atol=1e-4)
    assert (tmp_path / "checkpoint.pt").exists()
    states = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["rank_states"]
    assert len(states) == 2 and not torch.equal(states[0][0], states[1][0])  # own noise each


def test_device_counts_a_worker_cannot_run_are_clear_errors():
    with pytest.raises(DeviceError, match="at most 2"):
        check_devices(3, torch.device("cpu"))
    with pytest.raises(DeviceError, match=r"train.devices=2 but this worker sees \d GPU"):
        if torch.cuda.device_count() >= 2:
            pytest.skip("this machine has two GPUs")
        check_devices(2, torch.device("cuda"))
    with pytest.raises(ValueError, match="at most 2 devices on CPU"):
        TrainSpec(device="cpu", devices=4)


def test_mixed_precision_is_cuda_only_and_the_head_gets_float32():
    autocast, layout = mixed_precision(torch.device("cpu"), images=True)
    assert isinstance(autocast, nullcontext) and layout == torch.contiguous_format

    # The CUDA branch's cast, exercised with CPU autocast: the backbone computes in
    # bf16, the head still receives float32 features.
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(4, 3)

        def features(self, x):
            h = self.backbone(x)
            seen["backbone"] = h.dtype
            return h

    probe = Probe()
    probe.head = type("Head", (), {})()
    probe.head.loss = lambda h, y, generator=None: (seen.__setitem__("head", h.dtype), h.sum())[1]
    loss = TrainingLoss(probe, torch.autocast("cpu", dtype=torch.bfloat16))
    loss(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))
    assert seen == {"backbone": torch.bfloat16, "head": torch.float32}
