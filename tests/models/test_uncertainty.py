"""predictive_uncertainty: every per-example field against its definition."""

from __future__ import annotations

import math

import pytest
import torch

from core.onnx_contract import rank_pairs
from core.spec import HeadSpec
from models.heads import HetHead, LinearHead
from models.het_formula import MULTICLASS, MULTILABEL
from models.uncertainty import predictive_uncertainty, top_correlations


def het(d, k, r, task=MULTICLASS, **spec) -> HetHead:
    return HetHead(HeadSpec(num_factors=r, **spec), d, k, task)


def het_head(**kw) -> HetHead:
    torch.manual_seed(0)
    head = het(6, 12, 3, temperature=1.3, **kw)
    with torch.no_grad():
        head.diag.bias.fill_(0.5)
        head.factor.weight.mul_(4)
    return head


def test_fields_follow_their_definitions():
    head = het_head()
    h = torch.randn(5, 6)
    out = predictive_uncertainty(head, h, 300, torch.Generator().manual_seed(0))
    probs = out["probs"]
    assert out["num_samples"] == 300
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert torch.allclose(out["entropy"], -(probs * probs.log()).sum(-1))
    # QMC eval noise: the spread of 8 independently shifted groups (tests/models/test_qmc.py),
    # which is below the plain-MC bar prob_std / sqrt(S) on the whole
    assert out["mc_stderr"].mean() < (out["prob_std"] / math.sqrt(300)).mean()
    head.eval_noise = "mc"  # independent draws: the plain bar
    mc = predictive_uncertainty(head, h, 300, torch.Generator().manual_seed(0))
    assert torch.allclose(mc["mc_stderr"], mc["prob_std"] / math.sqrt(300))
    head.eval_noise = "qmc"
    # H[mean p] >= mean H[p] (concavity of entropy), strictly when the draws differ
    assert (out["entropy"] > out["expected_entropy"]).all()
    latent = head.latent(h)
    assert torch.allclose(out["noise_std"], latent.covariance().diagonal(dim1=1, dim2=2).sqrt())


@pytest.mark.parametrize("class_major", [False, True])
def test_prob_std_and_expected_entropy_match_explicit_samples(class_major):
    head = het_head()
    head.class_major = class_major
    h = torch.randn(3, 6)
    noise = head.draw_noise(3, 200, "cpu", torch.Generator().manual_seed(0))
    out = predictive_uncertainty(head, h, noise=noise)
    z = head.latent(h).scaled(1 / head.temperature).sample(*noise)
    p = torch.softmax(z, -1)
    assert torch.allclose(out["probs"], p.mean(1), atol=1e-6)
    assert torch.allclose(out["prob_std"], p.std(1), atol=1e-5)
    assert torch.allclose(out["expected_entropy"], -(p * p.log()).sum(-1).mean(1), atol=1e-5)


def test_correlated_pairs_are_the_largest_latent_correlations_among_top_classes():
    head = het_head()
    h = torch.randn(4, 6)
    out = predictive_uncertainty(head, h, 100, torch.Generator().manual_seed(0), max_pairs=3)
    sigma = head.latent(h).covariance()
    std = sigma.diagonal(dim1=1, dim2=2).sqrt()
    rho = sigma / (std.unsqueeze(-1) * std.unsqueeze(-2))
    for b in range(4):
        top = out["probs"][b].topk(10).indices.tolist()
        assert out["top_classes"][b].tolist() == top
        expected = sorted(
            ((i, j) for n, i in enumerate(top) for j in top[n + 1 :]),
            key=lambda ij: -abs(rho[b, ij[0], ij[1]]),
        )[:3]
        pairs = out["correlated_pairs"][b]
        assert [tuple(p["classes"]) for p in pairs] == expected
        for p in pairs:
            assert abs(p["correlation"] - rho[b, p["classes"][0], p["classes"][1]]) < 1e-5


def test_diagonal_models_report_no_pairs():
    torch.manual_seed(0)
    h = torch.randn(2, 6)
    for head in (het(6, 5, 0), LinearHead(6, 5)):
        out = predictive_uncertainty(head, h, 50)
        assert out["correlated_pairs"] == [[], []]
    baseline = predictive_uncertainty(LinearHead(6, 5), h)
    assert torch.equal(baseline["noise_std"], torch.zeros(2, 5))
    assert torch.allclose(baseline["entropy"], baseline["expected_entropy"], atol=1e-6)


def test_multilabel_fields_are_per_label():
    torch.manual_seed(0)
    head = het(6, 4, 2, task=MULTILABEL)
    out = predictive_uncertainty(head, torch.randn(3, 6), 200)
    p = out["probs"]
    assert out["entropy"].shape == (3, 4) and out["expected_entropy"].shape == (3, 4)
    assert torch.allclose(out["entropy"], -(p * p.log() + (1 - p) * (1 - p).log()))
    assert (out["entropy"] >= out["expected_entropy"] - 1e-6).all()


def test_rank_pairs_orders_by_absolute_correlation():
    classes = torch.tensor([7, 3, 5])
    rho = torch.tensor([[1.0, -0.9, 0.2], [-0.9, 1.0, 0.5], [0.2, 0.5, 1.0]])
    assert rank_pairs(classes.numpy(), rho.numpy(), max_pairs=2) == [
        {"classes": [7, 3], "correlation": -0.8999999761581421},
        {"classes": [3, 5], "correlation": 0.5},
    ]
    latent = het_head().latent(torch.randn(1, 6))
    classes, rho = top_correlations(latent, torch.rand(1, 12), top=4)
    assert classes.shape == (1, 4) and torch.allclose(
        rho.diagonal(dim1=1, dim2=2), torch.ones(1, 4)
    )
