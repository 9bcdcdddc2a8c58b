"""The paths that only run on a GPU, made to fail on a CPU where they would fail there.

``DeviceGuard`` (tests/support/device_guard.py) requires every draw from a generator to be
made on the generator's device and, on the ``meta`` device, every op's tensors to share a
device: the CUDA-only mistakes (a CUDA generator filling a CPU tensor; a tensor created
without ``device=``) fail here. docs/models.md "GPU readiness" lists what is checked how.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.dataset_files import ArrayDataset, validate
from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec
from models import train as train_module
from models.backbones import augment_images
from models.classifier import build_classifier
from models.heads import HetHead
from models.noise_report import noise_report
from models.train import TrainingLoss, predict_proba, train
from tests.support.device_guard import DeviceGuard, DeviceMismatch


def blobs(n=96, d=4, k=3, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + 3.0 * np.eye(k, d)[y]
    return validate(ArrayDataset(x, y, x_test=x[:24], y_test=y[:24]))


def spec_of(**head) -> RunSpec:
    head = {"num_factors": 2, "train_mc_samples": 8, "eval_mc_samples": 16} | head
    return RunSpec(
        head=HeadSpec(**head),
        backbone=BackboneSpec(hidden=[8]),
        train=TrainSpec(epochs=1, batch_size=32, seed=3, device="cpu"),
    )


def test_the_guard_catches_a_draw_without_its_generators_device():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(DeviceMismatch, match="without device"), DeviceGuard():
        torch.randint(0, 5, (3,), generator=gen)
    with pytest.raises(DeviceMismatch, match="draws on meta"), DeviceGuard():
        torch.randn(3, generator=gen, device="meta")
    with pytest.raises(DeviceMismatch, match="mixes"), DeviceGuard(same_device=True):
        torch.ones(2, device="meta") + torch.ones(2)


@pytest.mark.parametrize(
    "head",
    [
        {},  # QMC evaluation with noise shared by the batch: the defaults
        {"eval_noise": "mc"},
        {"share_samples_across_batch": False},  # per-example noise (a kernel seed on CPU)
    ],
)
def test_training_validation_and_predict_draw_on_the_generators_device(head):
    """A training run (its steps, each epoch's validation, the final evaluation) and
    predict_proba under the guard: every draw names its generator's device. Before the
    fix the QMC shifts were drawn with torch.randint(..., generator=g) on the CPU, which
    a CUDA generator refuses at the first validation."""
    guard = DeviceGuard()
    with guard:
        result = train(spec_of(**head), blobs())
        probs = predict_proba(result.model, blobs().x_test[:5])
    assert np.isfinite(result.metrics["val_nll"]) and probs.shape == (5, 3)
    assert "randperm" in guard.draws and len(guard.draws) > 3


def test_augmentation_and_the_noise_report_draw_on_the_generators_device():
    with DeviceGuard() as guard:
        x = torch.rand(4, 3, 8, 8)
        out = augment_images(x, hflip=True, generator=torch.Generator().manual_seed(0))
        model = build_classifier(spec_of(), [4], 3, np.zeros(4), np.ones(4)).eval()
        report = noise_report(model, blobs().x_test, num_samples=8)
    assert out.shape == x.shape and report
    assert {"randint", "rand", "randn"} <= set(guard.draws)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize("num_factors,parameter_efficient", [(0, False), (3, False), (3, True)])
@pytest.mark.parametrize("shared", [True, False])
def test_head_on_the_meta_device_creates_every_tensor_on_its_device(
    task, num_factors, parameter_efficient, shared
):
    """The HET head's torch path (the one CUDA runs) with its parameters and inputs on
    ``meta``: loss and backward, predict and moments (plain MC: the QMC shifts go through
    numpy, checked above), with no op mixing devices, so none creates a tensor on the
    CPU. Chunking is forced (chunk_elements) for the multilabel loss's checkpointing."""
    spec = HeadSpec(
        num_factors=num_factors,
        parameter_efficient=parameter_efficient,
        eval_noise="mc",
        share_samples_across_batch=shared,
        train_mc_samples=8,
        eval_mc_samples=8,
    )
    chunk = 64 if task == "multilabel" else None  # multiclass: one chunk (its rescale
    head = HetHead(spec, 6, 5, task, chunk_elements=chunk).to("meta")  # test reads a value)
    h = torch.randn(4, 6, device="meta", requires_grad=True)
    y = (
        torch.zeros(4, dtype=torch.long, device="meta")
        if task == "multiclass"
        else torch.zeros(4, 5, device="meta")
    )
    with DeviceGuard(same_device=True):
        head.train()
        head.loss(h, y).backward()
        head.eval()
        probs = head.predict(h)
        moments = head.moments(h)
        noise_free = head.noise_free_probs(h)
    assert h.grad.device.type == "meta" and probs.device.type == "meta"
    assert noise_free.device.type == "meta"
    assert all(v.device.type == "meta" for k, v in moments.items() if k != "num_samples")


def test_bf16_autocast_and_channels_last_step_keeps_the_head_in_float32():
    """The CUDA training step's precision regime (mixed_precision: bf16 autocast over the
    backbone, channels-last images), run under CPU autocast: the head gets float32
    features, the loss is float32 and finite, and every gradient is finite."""
    spec = RunSpec(
        head=HeadSpec(num_factors=1, train_mc_samples=8),
        backbone=BackboneSpec(kind="cnn"),
        train=TrainSpec(device="cpu"),
    )
    model = build_classifier(spec, [3, 8, 8], 4, np.zeros((3, 1, 1)), np.ones((3, 1, 1)))
    model.to(memory_format=torch.channels_last)
    seen = {}
    features = model.features

    def recorded(x):
        out = features(x)
        seen["dtype"] = out.dtype
        return out

    model.features = recorded
    step = TrainingLoss(model, torch.autocast("cpu", dtype=torch.bfloat16))
    x = torch.rand(6, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    loss = step(x, torch.arange(6) % 4, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert seen["dtype"] == torch.bfloat16  # the backbone did run under autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resume_loads_the_checkpoint_to_the_cpu(tmp_path, monkeypatch):
    """Generator states must be CPU byte tensors: a checkpoint loaded straight to a CUDA
    device would hand set_state a CUDA tensor on resume. torch.load must map to the CPU."""
    spec = spec_of()
    train(spec, blobs(), checkpoint_dir=tmp_path)
    locations = []
    real_load = torch.load

    def load(*args, **kwargs):
        locations.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(train_module.torch, "load", load)
    more = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 2})})
    train(more, blobs(), checkpoint_dir=tmp_path)
    assert locations == ["cpu"]


def test_every_ranks_noise_and_augmentation_streams_are_disjoint():
    """Under DDP each rank draws noise and augmentation from streams of its own: no two
    of the 4 ranks' 8 streams, nor the shared data order, start alike (rank r + 1's
    noise stream was rank r's augmentation stream: seed + 1 + rank vs seed + 2 + rank)."""
    from models.train import Ranks, run_generators

    firsts = set()
    for rank in range(4):
        gen, aug_gen, noise_gen = run_generators(7, Ranks(rank, 4), torch.device("cpu"))
        for g in (aug_gen, noise_gen) if rank else (gen, aug_gen, noise_gen):
            firsts.add(tuple(torch.randint(0, 2**62, (4,), generator=g, device="cpu").tolist()))
    assert len(firsts) == 1 + 2 * 4
    single = run_generators(7, Ranks(0, 1), torch.device("cpu"))
    assert single[1] is single[0]  # one process: augmentation follows the data order
