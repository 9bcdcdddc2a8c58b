"""The dataset-level noise report: flip rates, averaged correlations, bounded memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.spec import HeadSpec
from models.backbones import MLP
from models.classifier import Classifier
from models.heads import HetHead, LinearHead
from models.noise_report import NoNoiseModel, UnsupportedTask, noise_report


def classifier(head, d: int) -> Classifier:
    """A bare linear model: h = x (an MLP with no hidden layer), no standardisation."""
    return Classifier(MLP(d, []), head, np.zeros(d), np.ones(d))


def negative_pair_model(k: int = 6, a: float = 3.0, margin: float = 3.0) -> Classifier:
    """mu(x) = margin * x; V = a (e_1 - e_3), input independent; d tiny.

    Classes 1 and 3 are perfectly anti-correlated: an input of class 1 flips to 3 when
    margin + 2 a eps < 0, probability Phi(-margin / (2 a)), and to no other class.
    """
    head = HetHead(HeadSpec(num_factors=1, temperature=2.0), k, k)
    with torch.no_grad():
        head.loc.weight.copy_(margin * torch.eye(k))
        head.loc.bias.zero_()
        head.diag.weight.zero_()
        head.diag.bias.fill_(-8.0)  # d = softplus(-8) + 1e-3, about 1.3e-3
        head.factor.weight.zero_()
        v = torch.zeros(k)
        v[1], v[3] = a, -a
        head.factor.bias.copy_(v)
    return classifier(head, k)


def test_strong_negative_pair_ranks_first_with_its_flip_rate():
    k, a, margin = 6, 3.0, 3.0
    model = negative_pair_model(k, a, margin)
    x = np.repeat(np.eye(k, dtype=np.float32), 20, axis=0)  # 20 inputs per class
    report = noise_report(model, x, num_samples=2000, batch_size=32, seed=0)

    assert report["num_examples"] == len(x)
    first = report["class_pairs"][0]
    assert first["classes"] == [1, 3]
    assert first["correlation"] == pytest.approx(-1.0, abs=1e-3)
    expected = 0.5 * math.erfc(margin / (2 * a) / math.sqrt(2))  # Phi(-margin / 2a) = 0.3085
    assert first["flip_rate"] == pytest.approx(expected, abs=0.02)
    f = np.array(report["flip_matrix"])
    assert f.shape == (k, k)
    assert f[1, 3] == pytest.approx(expected, abs=0.02)
    assert f[3, 1] == pytest.approx(expected, abs=0.02)
    assert f[1].sum() == pytest.approx(f[1, 3])  # class 1 flips to 3 and nowhere else
    assert np.all(np.diag(f) == 0)
    # class 2 flips to 1 when a eps > margin, to 3 when -a eps > margin: Phi(-1) each
    side = 0.5 * math.erfc(margin / a / math.sqrt(2))
    assert f[2, 1] == pytest.approx(side, abs=0.02) and f[2, 3] == pytest.approx(side, abs=0.02)
    assert np.all(f[:, [0, 2, 4, 5]] == 0)  # nothing ever flips into a noiseless class
    std = report["noise_std_by_class"]
    assert std[1] == pytest.approx(a, rel=1e-3) and std[3] == pytest.approx(a, rel=1e-3)
    assert std[0] < 0.01


def test_same_seed_same_report_other_seed_other_draws():
    model = negative_pair_model()
    x = np.repeat(np.eye(6, dtype=np.float32), 5, axis=0)
    one = noise_report(model, x, num_samples=200, seed=3)
    assert one == noise_report(model, x, num_samples=200, seed=3)
    assert one["flip_matrix"] != noise_report(model, x, num_samples=200, seed=4)["flip_matrix"]


@pytest.mark.parametrize(
    "spec",
    [
        HeadSpec(num_factors=3),
        HeadSpec(num_factors=3, parameter_efficient=True),
        HeadSpec(num_factors=0),
    ],
    ids=["full", "parameter-efficient", "diagonal"],
)
def test_correlation_and_noise_std_match_the_averaged_covariance(spec):
    torch.manual_seed(0)
    k, d, n = 5, 7, 45
    head = HetHead(spec, d, k)
    model = classifier(head, d)
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    report = noise_report(
        model, x, num_samples=4, batch_size=8, top_pairs=k * (k - 1) // 2
    )  # 6 uneven batches

    with torch.no_grad():
        latent = head.latent(torch.as_tensor(x))
        sigma = latent.covariance().double().mean(0)
        std = latent.variance().double().sqrt().mean(0)
    rho = sigma / torch.outer(sigma.diagonal().sqrt(), sigma.diagonal().sqrt())
    assert len(report["class_pairs"]) == 10
    for pair in report["class_pairs"]:
        i, j = pair["classes"]
        assert i < j
        assert pair["correlation"] == pytest.approx(rho[i, j].item(), abs=1e-5)
    assert report["noise_std_by_class"] == pytest.approx(std.tolist(), rel=1e-5)
    if spec.num_factors == 0:
        assert all(p["correlation"] == 0 for p in report["class_pairs"])
    else:
        assert max(abs(p["correlation"]) for p in report["class_pairs"]) > 0.05
    rates = [p["flip_rate"] for p in report["class_pairs"]]
    assert rates == sorted(rates, reverse=True)


def test_pairs_that_never_flip_rank_by_most_negative_correlation():
    model = negative_pair_model(k=6, a=0.01, margin=10.0)  # no draw ever flips
    x = np.repeat(np.eye(6, dtype=np.float32), 3, axis=0)
    report = noise_report(model, x, num_samples=50, top_pairs=3)
    assert all(p["flip_rate"] == 0 for p in report["class_pairs"])
    assert report["class_pairs"][0]["classes"] == [1, 3]
    assert report["class_pairs"][0]["correlation"] < -0.9
    assert len(report["class_pairs"]) == 3


PEAK_RSS_SCRIPT = r"""
import json, numpy as np, torch
from models.backbones import MLP
from models.classifier import Classifier
from models.heads import HetHead
from models.noise_report import noise_report
from core.spec import HeadSpec

torch.set_num_threads(1)
torch.manual_seed(0)
d, k, r, n = 16, 1000, 15, 64
model = Classifier(MLP(d, []), HetHead(HeadSpec(num_factors=r), d, k), np.zeros(d), np.ones(d))
x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
noise_report(model, x[:4], num_samples=2)
def status_kb(field):
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status_kb("VmRSS")
report = noise_report(model, x, num_samples=8, batch_size=64)
growth = status_kb("VmHWM") - before
print(json.dumps({"growth_kb": growth, "matrix": report["flip_matrix"] is None,
                  "stds": len(report["noise_std_by_class"]), "pairs": len(report["class_pairs"])}))
"""


def test_thousand_classes_run_in_bounded_memory():
    """K = 1000, one batch of 64: a (B, K, K) covariance would be 256 MB on its own."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["matrix"]  # K over the cap: no K x K matrix in the answer
    assert result["stds"] == 1000 and result["pairs"] == 20
    assert result["growth_kb"] < 100_000


def test_softmax_baseline_has_no_noise_model():
    model = classifier(LinearHead(4, 3), 4)
    with pytest.raises(NoNoiseModel, match="no noise model"):
        noise_report(model, np.zeros((2, 4), np.float32))


def test_multilabel_is_refused_with_a_clear_message():
    model = classifier(HetHead(HeadSpec(), 4, 3, task="multilabel"), 4)
    with pytest.raises(UnsupportedTask, match="multiclass"):
        noise_report(model, np.zeros((2, 4), np.float32))
