"""models/qmc.py and the HET head's QMC eval noise: the inverse normal CDF, the layout of
points and shifts, the grouped fast path against the reference, and an honest mc_stderr."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.spec import HeadSpec
from models import qmc
from models.heads import HetHead
from models.het_formula import reference_moments


def test_normal_quantile_is_within_2e6_of_the_exact_one_on_the_whole_grid():
    """u = (d + 1/2) / 2^23 as the sampler makes it (every 5th d, every d in both tails):
    PPND7 in float32 vs ndtri in float64 (torch's Cephes port)."""
    digits = np.r_[
        0:4096, 4096 : (1 << qmc.DIGITS) - 4096 : 5, (1 << qmc.DIGITS) - 4096 : 1 << qmc.DIGITS
    ]
    u = (digits.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-qmc.DIGITS)
    got = qmc.normal_quantile(u).astype(np.float64)
    exact = torch.special.ndtri(torch.from_numpy(u.astype(np.float64))).numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - exact).max() <= 2e-6
    assert got[0] < -5.29 and got[-1] > 5.29  # the tails are reached (Phi^-1(2^-24) = -5.2947)
    np.testing.assert_array_equal(got, -got[::-1])


def test_table_covers_the_width_within_its_byte_bound():
    for width, points in ((14, 1024), (1015, 1024), (5000, 128)):
        assert qmc.table_points(width) == points
        assert points * width * 4 <= qmc.QMC_TABLE_BYTES
    table = qmc.sobol_table(14)
    assert table.shape == (1024, 14) and table.dtype == np.uint32
    assert table.max() < 1 << qmc.DIGITS
    # a (0, m, 1)-net per coordinate: the first 2^m points fill the 2^m strata of [0, 1)
    for m in (3, 6, 10):
        strata = table[: 1 << m] >> (qmc.DIGITS - m)
        assert all(len(np.unique(strata[:, c])) == 1 << m for c in range(14))
    with pytest.raises(ValueError, match="21201"):
        qmc.sobol_table(qmc.SOBOL_MAX_DIM + 1)


def test_layout_groups_walk_the_points_each_under_its_own_shift():
    points, num = 16, 300  # past M * N = 128 rows: new shifts of the same points
    point, shift = qmc.layout(num, points)
    assert qmc.num_shifts(num, points) == 8 * 3 == shift.max() + 1
    for g in range(qmc.QMC_GROUPS):
        rows = np.arange(g, num, qmc.QMC_GROUPS)
        # in order through the table, one shift per pass
        np.testing.assert_array_equal(point[rows], np.arange(len(rows)) % points)
        np.testing.assert_array_equal(
            shift[rows], g + qmc.QMC_GROUPS * (np.arange(len(rows)) // points)
        )
    # shifts are never shared between groups (the groups are independent)
    owners = {int(j): int(s % qmc.QMC_GROUPS) for s, j in zip(range(num), shift, strict=True)}
    assert all(owners[j] == j % qmc.QMC_GROUPS for j in owners)
    # a larger S extends a smaller S
    small = qmc.layout(40, points)
    np.testing.assert_array_equal(small[0], point[:40])
    np.testing.assert_array_equal(small[1], shift[:40])


def make_head(k=6, r=3, shared=True, seed=0) -> tuple[HetHead, torch.Tensor]:
    torch.manual_seed(seed)
    spec = HeadSpec(num_factors=r, share_samples_across_batch=shared, eval_mc_samples=64)
    head = HetHead(spec, 5, k).eval()
    with torch.no_grad():
        head.loc.weight.mul_(3)
    return head, torch.randn(12, 5)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("num", [5, 64, 77])
def test_grouped_fast_moments_equal_the_reference(shared, num):
    """HetHead.moments (fast path, one call per group, combined) = reference_moments with
    groups on the same QMC noise, S below, at and off a multiple of M."""
    head, h = make_head(shared=shared)
    assert head.eval_noise == "qmc"
    noise = head.draw_noise(len(h), num, "cpu", torch.Generator().manual_seed(1), mode="qmc")
    assert noise[1].shape == ((num, 6) if shared else (12, num, 6))
    got = head.moments(h, noise=noise)
    z = head.latent(h).scaled(1.0 / head.temperature)
    ref = reference_moments(z, *noise, head.task, groups=qmc.QMC_GROUPS)
    for name in ("probs", "prob_std", "expected_entropy", "mc_stderr"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)
    assert (got["mc_stderr"] > 0).any() == (num > 1)


def test_reported_stderr_matches_the_observed_error():
    """Over 200 independent QMC estimates at S = 64, the RMS error of p_hat against a
    2^15-draw reference over the RMS of the reported mc_stderr is ~1 (the grouped
    variance estimate is unbiased). Its sampling error: 200 repetitions of 12 x 6
    probabilities, a few % relative; the range [0.8, 1.25] still fails prob_std / sqrt(S),
    which overstates the QMC error here by ~1.5x."""
    head, h = make_head()
    gen = torch.Generator().manual_seed(7)
    ref = head.predict(h, 1 << 15, gen)
    z = head.latent(h).scaled(1.0 / head.temperature)
    sq_err = sq_se = sq_mc = 0.0
    for _ in range(200):  # the reference estimator (= the fast one: test above), cheaper here
        noise = head.draw_noise(len(h), 64, "cpu", gen, mode="qmc")
        m = reference_moments(z, *noise, head.task, groups=qmc.QMC_GROUPS)
        sq_err += float((m["probs"] - ref).square().mean())
        sq_se += float(m["mc_stderr"].square().mean())
        sq_mc += float(m["prob_std"].square().mean()) / 64
    ratio = math.sqrt(sq_err / sq_se)
    assert 0.8 <= ratio <= 1.25, ratio
    assert math.sqrt(sq_err / sq_mc) < 0.8  # QMC beats the plain-MC error bar


def test_training_draws_stay_plain_mc():
    head, h = make_head()
    head.train()
    _, noise = head._tempered(h, 64, torch.Generator().manual_seed(0), None, training=True)
    expected = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise[1], expected)


def test_per_example_eval_draws_stay_plain_mc(monkeypatch):
    """QMC is for noise shared by the batch; a per-example head's eval draws are plain MC
    (the torch path: exactly torch.randn's draws; the kernel draws its own from a seed)."""
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "torch")
    head, h = make_head(shared=False)
    _, noise = head._tempered(h, 64, torch.Generator().manual_seed(0), None, training=False)
    expected = torch.randn(12, 64, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise[1], expected)
