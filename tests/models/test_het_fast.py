"""models/het_fast.py computes what the reference estimator in models/heads.py computes."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.heads import MULTICLASS, MULTILABEL, HetHead
from models.spec import HeadSpec

CASES = [
    {"task": task, "num_factors": r, "parameter_efficient": pe, "share_samples_across_batch": sh}
    for task, (r, pe), sh in itertools.product(
        (MULTICLASS, MULTILABEL), ((3, False), (3, True), (0, False)), (True, False)
    )
]


def case_id(case: dict) -> str:
    pe = "-pe" if case["parameter_efficient"] else ""
    shared = "" if case["share_samples_across_batch"] else "-per-example"
    return f"{case['task']}-R{case['num_factors']}{pe}{shared}"


def loss_and_grads(head: HetHead, h, y, noise):
    head.zero_grad()
    h = h.detach().requires_grad_()
    loss = head.loss(h, y, noise=noise)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    return loss.detach(), {**grads, "h": h.grad}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fast_path_equals_reference(case):
    """Same head, same noise: loss, every gradient, predict and moments, fast == reference,
    with one chunk or many and both layouts of the draws."""
    case = dict(case)
    task = case.pop("task")
    torch.manual_seed(0)
    k, b, s = 7, 4, 60
    spec = HeadSpec(temperature=1.3, **case)
    head = HetHead(spec, 5, k, task, fast=False).double()
    with torch.no_grad():  # a wide spread of draws, so every term matters
        head.diag.bias.fill_(0.5)
        head.loc.weight.mul_(3)
    h = torch.randn(b, 5, dtype=torch.double)
    y = torch.randint(0, k, (b,)) if task == MULTICLASS else torch.randint(0, 2, (b, k)).double()
    eps_r, eps_k = head.draw_noise(b, s, "cpu", torch.Generator().manual_seed(3))
    noise = (None if eps_r is None else eps_r.double(), eps_k.double())

    ref_loss, ref_grads = loss_and_grads(head, h, y, noise)
    ref_probs = head.predict(h, noise=noise)
    ref_moments = head.moments(h, noise=noise)
    assert all(g.abs().sum() > 0 for g in ref_grads.values())
    assert ref_moments["prob_std"].min() > 1e-3  # the draws really differ

    head.fast = True
    layouts = (False, True) if task == MULTICLASS else (False,)
    for chunk_elements, class_major in itertools.product((None, b * k * 7), layouts):
        # one chunk, or chunks of 7 draws (9 chunks); sample- or class-major
        head.chunk_elements, head.class_major = chunk_elements, class_major
        loss, grads = loss_and_grads(head, h, y, noise)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-8, atol=1e-10, msg=name)
        torch.testing.assert_close(head.predict(h, noise=noise), ref_probs, rtol=1e-10, atol=1e-12)
        m = head.moments(h, noise=noise)
        assert int(m["num_samples"]) == int(ref_moments["num_samples"]) == s
        for name in ("probs", "prob_std", "expected_entropy"):
            torch.testing.assert_close(m[name], ref_moments[name], rtol=1e-8, atol=1e-10, msg=name)
