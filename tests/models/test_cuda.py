"""The CUDA-only paths on a GPU (marked ``cuda``: skipped without one; bench/gpu_check.py
runs them with ``-m cuda`` on a lent GPU). What a CPU can check of them is checked in
tests/models/test_devices.py; this file is what only a GPU can say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.dataset_files import ArrayDataset, validate
from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec
from models import het_kernel
from models.classifier import build_classifier
from models.export import export_onnx
from models.heads import HetHead
from models.noise_report import noise_report
from models.train import TrainingLoss, mixed_precision, predict_proba, train
from tests.support.device_guard import DeviceGuard

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="not run: no GPU"),
]


def blobs(n=160, d=5, k=3, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(n, d)) + 2.0 * np.eye(k, d)[y]).astype(np.float32)
    return validate(ArrayDataset(x, y, x_test=x[:40], y_test=y[:40]))


def spec_of(epochs=2, devices=1, **head) -> RunSpec:
    head = {"num_factors": 2, "train_mc_samples": 16, "eval_mc_samples": 64} | head
    return RunSpec(
        head=HeadSpec(**head),
        backbone=BackboneSpec(hidden=[16]),
        train=TrainSpec(epochs=epochs, batch_size=32, seed=1, device="cuda", devices=devices),
    )


@pytest.mark.parametrize("head", [{}, {"eval_noise": "mc"}, {"share_samples_across_batch": False}])
def test_training_validation_and_qmc_predict_on_cuda(head):
    """Issue 21's crash: the first validation of a CUDA run drew the QMC shifts on the CPU
    from a CUDA generator. The whole run, under the guard, then predict_proba."""
    with DeviceGuard():
        result = train(spec_of(**head), blobs())
    assert next(result.model.parameters()).device.type == "cuda"
    probs = predict_proba(result.model, blobs().x_test)
    assert np.isfinite(result.metrics["val_nll"]) and np.allclose(probs.sum(-1), 1, atol=1e-5)


def test_resume_on_cuda(tmp_path):
    """The checkpoint (generator states included) written on CUDA resumes on CUDA."""

    class Stop(Exception):
        pass

    def stop_after_first(entry):
        if entry["epoch"] == 1:
            raise Stop

    from models.train import Callbacks

    with pytest.raises(Stop):
        train(spec_of(), blobs(), Callbacks(on_epoch_end=stop_after_first), tmp_path)
    resumed = train(spec_of(), blobs(), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1 and np.isfinite(resumed.metrics["val_nll"])


def test_kernel_falls_back_to_the_torch_path_and_matches_the_reference():
    """On CUDA the fused CPU kernel does not apply: the chunked torch path runs, and equals
    the reference estimator on the same noise (loss, gradient, moments)."""
    h = torch.randn(8, 6, device="cuda", requires_grad=True)
    assert not het_kernel.applies(h)
    torch.manual_seed(0)
    head = HetHead(HeadSpec(num_factors=3, eval_noise="mc"), 6, 10).cuda()
    reference = HetHead(HeadSpec(num_factors=3, eval_noise="mc"), 6, 10, fast=False).cuda()
    reference.load_state_dict(head.state_dict())
    y = torch.randint(0, 10, (8,), device="cuda")
    noise = head.draw_noise(8, 200, "cuda", torch.Generator("cuda").manual_seed(0))
    fast_loss = head.loss(h, y, noise=noise)
    (fast_grad,) = torch.autograd.grad(fast_loss, h)
    ref_loss = reference.loss(h, y, noise=noise)
    (ref_grad,) = torch.autograd.grad(ref_loss, h)
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_grad, ref_grad, rtol=1e-3, atol=1e-5)
    got, want = head.moments(h.detach(), noise=noise), reference.moments(h.detach(), noise=noise)
    for name in ("probs", "prob_std", "expected_entropy"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)


def test_bf16_channels_last_resnet18_cifar_step():
    """mixed_precision's CUDA branch: bf16 autocast over the backbone, channels-last; the
    head gets float32 features, one AdamW step leaves every parameter finite."""
    spec = RunSpec(
        head=HeadSpec(num_factors=4, train_mc_samples=32),
        backbone=BackboneSpec(kind="resnet18_cifar"),
        train=TrainSpec(device="cuda"),
    )
    model = build_classifier(spec, [3, 32, 32], 10, np.zeros((3, 1, 1)), np.ones((3, 1, 1)))
    model = model.cuda()
    autocast, layout = mixed_precision(torch.device("cuda"), images=True)
    assert layout == torch.channels_last
    model.to(memory_format=layout)
    step = TrainingLoss(model, autocast)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(16, 3, 32, 32, device="cuda").contiguous(memory_format=layout)
    y = torch.randint(0, 10, (16,), device="cuda")
    loss = step(x, y, generator=torch.Generator("cuda").manual_seed(0))
    loss.backward()
    optimizer.step()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_noise_report_and_export_of_a_cuda_model(tmp_path):
    """The job's last steps from a model trained on CUDA: the noise report (drawn on the
    GPU) and the export (a CPU copy, parity checked)."""
    data = blobs()
    result = train(spec_of(epochs=1), data)
    report = noise_report(result.model, data.x_test, num_samples=32)
    assert report["num_examples"] == len(data.x_test)
    meta = export_onnx(
        result.model,
        tmp_path / "m.onnx",
        class_names=["a", "b", "c"],
        parity_inputs=data.x_test,
    )
    assert meta["parity"]["passed"]
    assert next(result.model.parameters()).device.type == "cuda"  # the caller's model stays


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl DDP needs two GPUs")
def test_two_nccl_ranks():
    result = train(spec_of(devices=2), blobs())
    assert np.isfinite(result.metrics["val_nll"])
