"""The HET head against the formulas of models/het_formula.py, checked within Monte Carlo error."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from core.spec import HeadSpec
from models.heads import HetHead, LinearHead, build_head
from models.het_formula import MULTICLASS, MULTILABEL, LogitGaussian

TUNING = ("fast", "chunk_elements", "initial_temperature", "min_scale")


def het(d, k, num_factors=4, task=MULTICLASS, **kw) -> HetHead:
    """HetHead(HeadSpec(num_factors, ...spec fields of kw), d, k, task, ...tuning of kw)."""
    tuning = {n: kw.pop(n) for n in TUNING if n in kw}
    return HetHead(HeadSpec(num_factors=num_factors, **kw), d, k, task, **tuning)


def make_head(d=6, k=5, r=3, **kw) -> HetHead:
    torch.manual_seed(0)
    return het(d, k, r, **kw)


def silence_noise(head: HetHead) -> None:
    """V = 0 and d at its floor: softplus(-100) + min_scale = min_scale."""
    with torch.no_grad():
        head.diag.weight.zero_()
        head.diag.bias.fill_(-100.0)
        if head.factor is not None:
            head.factor.weight.zero_()
            if head.factor.bias is not None:
                head.factor.bias.zero_()


def naive_log_likelihood(latent: LogitGaussian, y, eps_r, eps_k, tau, task=MULTICLASS):
    """The whole (B, S, K) tensor at once, autograd all the way: the reference."""
    u = latent.mu.unsqueeze(1) + latent.scale.unsqueeze(1) * eps_k
    v = latent.factor_matrix()
    if v is not None:
        u = (
            u + torch.einsum("bkr,...sr->bsk", v, eps_r)
            if eps_r.dim() == 2
            else u + torch.einsum("bkr,bsr->bsk", v, eps_r)
        )
    z = u / tau
    log_s = math.log(eps_k.shape[-2])
    if task == MULTICLASS:
        log_py = (
            torch.log_softmax(z, -1)
            .gather(-1, y.view(-1, 1, 1).expand(-1, z.shape[1], 1))
            .squeeze(-1)
        )
        return torch.logsumexp(log_py, 1) - log_s
    log_p = torch.logsumexp(F.logsigmoid(z), 1) - log_s
    log_q = torch.logsumexp(F.logsigmoid(-z), 1) - log_s
    return (y * log_p + (1 - y) * log_q).sum(-1)


# -- the Gaussian and its samples ---------------------------------------------------


@pytest.mark.parametrize("parameter_efficient", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_sample_covariance_matches_low_rank_plus_diagonal(parameter_efficient, shared):
    """Per entry, z = (empirical cov - (V V^T + diag d^2)) / its standard error.

    A draw with one diagonal scalar for all classes (edward2's JAX bug) would add
    d_i d_j off the diagonal and fail here by tens of standard errors.
    """
    head = make_head(
        d=4, k=4, r=2, parameter_efficient=parameter_efficient, share_samples_across_batch=shared
    )
    with torch.no_grad():
        head.diag.bias.fill_(0.5)  # d well above its floor, so the diagonal term matters
    h = torch.randn(2, 4)
    latent = head.latent(h)
    n = 100_000
    gen = torch.Generator().manual_seed(1)
    eps_r, eps_k = head.draw_noise(2, n, "cpu", gen)
    u = latent.sample(eps_r, eps_k).double()  # (2, n, K)
    sigma = latent.covariance().double()
    v = latent.factor_matrix()
    assert torch.allclose(
        latent.covariance(), v @ v.transpose(1, 2) + torch.diag_embed(latent.scale**2)
    )
    assert torch.allclose(latent.variance(), sigma.diagonal(dim1=1, dim2=2).float())
    for b in range(2):
        centred = u[b] - u[b].mean(0)
        emp = centred.T @ centred / (n - 1)
        # Var of a Gaussian sample covariance entry: (S_ii S_jj + S_ij^2) / n
        se = ((sigma[b].diagonal().outer(sigma[b].diagonal()) + sigma[b] ** 2) / n).sqrt()
        z = (emp - sigma[b]) / se
        assert z.abs().max() < 5, z
        z_mean = (u[b].mean(0) - latent.mu[b].double()) / (sigma[b].diagonal() / n).sqrt()
        assert z_mean.abs().max() < 5


def test_noise_is_drawn_per_class_not_one_scalar():
    head = make_head(k=5, r=0)
    eps_r, eps_k = head.draw_noise(3, 7, "cpu")
    assert eps_r is None and eps_k.shape == (7, 5)
    assert eps_k.std(-1).min() > 0  # distinct values across classes of one draw


def test_per_example_noise_option():
    h = torch.randn(1, 6).repeat(2, 1)  # two identical examples
    shared = make_head(share_samples_across_batch=True)
    own = make_head(share_samples_across_batch=False)
    eps_r, eps_k = own.draw_noise(2, 50, "cpu")
    assert eps_r.shape == (2, 50, 3) and eps_k.shape == (2, 50, 5)
    p_shared = shared.predict(h, 50, torch.Generator().manual_seed(0))
    p_own = own.predict(h, 50, torch.Generator().manual_seed(0))
    assert torch.allclose(p_shared[0], p_shared[1], atol=1e-6)  # the same draws for both rows
    assert (p_own[0] - p_own[1]).abs().max() > 1e-3  # independent draws per row


# -- the predictive ------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_no_noise_reduces_to_tempered_softmax(tau):
    head = make_head(temperature=tau)
    silence_noise(head)
    h = torch.randn(8, 6)
    m = head.moments(h, 400, torch.Generator().manual_seed(0))
    exact = torch.softmax(head.loc(h) / tau, -1)
    stderr = m["prob_std"] / 20
    # d = 1e-3 moves p by O(d^2 / tau^2) ~ 1e-6 at most on top of the MC error
    assert ((m["probs"] - exact).abs() <= 4 * stderr + 1e-5).all()
    assert not torch.allclose(exact, torch.softmax(head.loc(h), -1), atol=1e-3)  # tau matters


def test_mc_estimate_converges_to_large_sample_estimate():
    head = make_head(k=6, r=3, temperature=1.0)
    with torch.no_grad():
        head.diag.bias.fill_(1.0)
    h = torch.randn(16, 6)
    small = head.moments(h, 200, torch.Generator().manual_seed(0))
    large = head.moments(h, 100_000, torch.Generator().manual_seed(1))
    se_small = small["prob_std"] / math.sqrt(200)
    se_large = large["prob_std"] / math.sqrt(100_000)
    z = (small["probs"] - large["probs"]) / (se_small**2 + se_large**2).sqrt()
    assert se_small.min() > 1e-4  # the noise is real, so the test has teeth
    assert z.abs().max() < 4.5
    assert torch.allclose(small["probs"].sum(-1), torch.ones(16))


# -- the loss --------------------------------------------------------------------------


def test_log_space_loss_has_gradient_where_clipped_loss_has_none():
    head = make_head(d=3, k=4, r=1)
    silence_noise(head)
    with torch.no_grad():
        head.loc.weight.zero_()
        head.loc.bias.copy_(torch.tensor([60.0, -60.0, 0.0, 0.0]))
    h = torch.randn(1, 3, requires_grad=True)
    y = torch.tensor([1])  # confidently wrong: p_y ~ exp(-120)
    noise = head.draw_noise(1, 32, "cpu", torch.Generator().manual_seed(0))

    head.loss(h, y, noise=noise).backward()
    ours = head.loc.bias.grad.clone()
    assert torch.isfinite(ours).all() and ours.abs().sum() > 1.0

    head.zero_grad()
    z = head.latent(h).scaled(1 / head.temperature).sample(*noise)
    p_y = torch.softmax(z, -1).mean(1)[:, 1]
    clipped = -torch.log(p_y.clamp(1e-7, 1.0)).mean()  # edward2's loss
    clipped.backward()
    assert head.loc.bias.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "options",
    [
        {"num_factors": 3},
        {"num_factors": 0},
        {"num_factors": 3, "parameter_efficient": True},
        {"num_factors": 3, "share_samples_across_batch": False},
        {"num_factors": 2, "parameter_efficient": True, "share_samples_across_batch": False},
        {"num_factors": 3, "temperature": "learned"},
        {"num_factors": 3, "task": MULTILABEL},
        {"num_factors": 2, "task": MULTILABEL, "parameter_efficient": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_loss_and_gradients_equal_the_naive_formula_chunked_or_not(options):
    """The chunked custom backward = autograd through the whole (B, S, K) tensor."""
    task = options.get("task", MULTICLASS)
    torch.manual_seed(0)
    head = het(5, 7, **options).double()
    h = torch.randn(4, 5, dtype=torch.double)
    y = torch.randint(0, 7, (4,)) if task == MULTICLASS else torch.randint(0, 2, (4, 7)).double()
    eps_r, eps_k = head.draw_noise(4, 60, "cpu", torch.Generator().manual_seed(3))
    eps_r = None if eps_r is None else eps_r.double()
    noise = (eps_r, eps_k.double())

    def loss_and_grads(fn):
        head.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in head.named_parameters()}

    ref, ref_grads = loss_and_grads(
        lambda: -naive_log_likelihood(head.latent(h), y, *noise, head.temperature, task).mean()
    )
    layouts = (False, True) if task == MULTICLASS else (False,)
    for chunk_elements, class_major in itertools.product((10**9, 4 * 7 * 7), layouts):
        # one chunk, or chunks of 7 samples (9 chunks); draws sample- or class-major
        head.chunk_elements, head.class_major = chunk_elements, class_major
        loss, grads = loss_and_grads(lambda: head.loss(h, y, noise=noise))  # noqa: B023
        assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12)
        for name, g in grads.items():
            assert torch.allclose(g, ref_grads[name], rtol=1e-8, atol=1e-10), name
        assert all(g.abs().sum() > 0 for g in grads.values())


def test_sigmoid_head_probabilities_and_bce_limit():
    head = make_head(k=4, r=2, task=MULTILABEL, temperature=1.5)
    h = torch.randn(10, 6)
    p = head.predict(h, 300, torch.Generator().manual_seed(0))
    assert ((p > 0) & (p < 1)).all()
    silence_noise(head)
    y = torch.randint(0, 2, (10, 4)).float()
    loss = head.loss(h, y, num_samples=200, generator=torch.Generator().manual_seed(0))
    bce = F.binary_cross_entropy_with_logits(head.loc(h) / 1.5, y, reduction="none").sum(-1).mean()
    # d = 1e-3 moves the log-likelihood by O(d^2) per label; the rest is float32 rounding
    assert abs(float(loss.detach()) - float(bce.detach())) < 1e-4
    assert torch.allclose(head.predict(h, 200), torch.sigmoid(head.loc(h) / 1.5), atol=1e-4)


def test_learned_temperature_stays_within_bounds_and_learns():
    head = make_head(temperature="learned", temperature_bounds=(0.3, 3.0), initial_temperature=1.0)
    assert abs(head.temperature.item() - 1.0) < 1e-6
    h, y = torch.randn(32, 6), torch.randint(0, 5, (32,))
    head.loss(h, y, num_samples=20).backward()
    assert head.temperature_logit.grad.abs() > 0
    for logit, bound in ((1e4, 3.0), (-1e4, 0.3)):
        with torch.no_grad():
            head.temperature_logit.fill_(logit)
        assert 0.3 <= head.temperature.item() <= 3.0
        assert abs(head.temperature.item() - bound) < 1e-6
    with pytest.raises(ValueError):
        make_head(temperature="learned", initial_temperature=5.0)


def test_parameter_efficient_variant_structure():
    full = make_head(d=8, k=50, r=4)
    pe = make_head(d=8, k=50, r=4, parameter_efficient=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pe) < count(full)
    assert count(full) - count(pe) == (8 * 200 + 200) - (8 * 50 + 50 * 4)
    h = torch.randn(3, 8)
    latent = pe.latent(h)
    v = latent.factor_matrix()
    assert torch.allclose(v, pe.factor(h).unsqueeze(-1) * pe.factor_basis)  # V = diag(v(x)) J
    assert latent.factors is None and latent.num_factors == 4


def test_linear_head_is_the_plain_softmax_and_sigmoid():
    torch.manual_seed(0)
    h = torch.randn(5, 6)
    head = build_head(HeadSpec(kind="softmax"), 6, 4, MULTICLASS)
    y = torch.randint(0, 4, (5,))
    assert isinstance(head, LinearHead)
    assert torch.allclose(head.loss(h, y), F.cross_entropy(head.loc(h), y))
    assert torch.allclose(head.predict(h), torch.softmax(head.loc(h), -1))
    ml = build_head(HeadSpec(kind="softmax"), 6, 4, MULTILABEL)
    assert torch.allclose(ml.predict(h), torch.sigmoid(ml.loc(h)))
    with pytest.raises(ValueError):
        build_head(HeadSpec.model_construct(kind="bayes"), 6, 4, MULTICLASS)


@pytest.mark.parametrize("task", [MULTICLASS, MULTILABEL])
def test_predict_is_the_mean_of_moments_on_the_same_noise(task):
    head = make_head(k=5, r=2, task=task, temperature=0.7)
    h = torch.randn(4, 6)
    noise = head.draw_noise(4, 100, "cpu", torch.Generator().manual_seed(0))
    z = head.latent(h).scaled(1 / 0.7).sample(*noise)
    explicit = (torch.softmax(z, -1) if task == MULTICLASS else torch.sigmoid(z)).mean(1)
    assert torch.allclose(head.predict(h, noise=noise), explicit, atol=1e-6)
    assert torch.allclose(head.moments(h, noise=noise)["probs"], explicit, atol=1e-6)


@pytest.mark.parametrize(
    "task, shared, eval_noise",
    [(MULTICLASS, True, "qmc"), (MULTICLASS, False, "mc"), (MULTILABEL, True, "mc")],
)
def test_predict_with_log_likelihood_is_both_calls_from_one_generator_state(
    task, shared, eval_noise
):
    """The evaluation's one pass: the numbers of predict and log_likelihood drawn from the
    same generator state (per-example multiclass noise: the kernel's seed)."""
    head = make_head(k=5, r=2, task=task, share_samples_across_batch=shared, eval_noise=eval_noise)
    head.eval()
    h = torch.randn(4, 6)
    y = torch.tensor([0, 3, 1, 4]) if task == MULTICLASS else torch.randint(0, 2, (4, 5))
    probs, log_lik = head.predict_with_log_likelihood(h, y, 50, torch.Generator().manual_seed(3))
    assert torch.equal(probs, head.predict(h, 50, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        expected = head.log_likelihood(h, y, 50, torch.Generator().manual_seed(3))
    assert torch.equal(log_lik, expected)


def test_gradient_of_a_confidently_wrong_example_matches_the_naive_formula():
    """log p_s near -200 for every draw: the running-max sums must not underflow."""
    torch.manual_seed(0)
    head = het(3, 4, 2, chunk_elements=2 * 4 * 5).double()  # chunks of 5 draws
    with torch.no_grad():
        head.loc.bias.copy_(torch.tensor([100.0, -100.0, 0.0, 0.0], dtype=torch.double))
    h = torch.randn(2, 3, dtype=torch.double)
    y = torch.tensor([1, 1])
    eps_r, eps_k = head.draw_noise(2, 40, "cpu", torch.Generator().manual_seed(0))
    noise = (eps_r.double(), eps_k.double())
    loss = head.loss(h, y, noise=noise)
    assert loss.item() > 150
    loss.backward()
    ours = {n: p.grad.clone() for n, p in head.named_parameters()}
    head.zero_grad()
    (-naive_log_likelihood(head.latent(h), y, *noise, head.temperature).mean()).backward()
    for name, p in head.named_parameters():
        assert torch.allclose(ours[name], p.grad, rtol=1e-8, atol=1e-10), name
    assert ours["loc.bias"].abs().sum() > 1


def test_gradient_when_a_later_chunk_jumps_far_above_the_first():
    """The first chunk's draws give log p_y ~ -150, the second ~ -1.4: the running
    reference must be raised and the earlier sums rescaled."""
    head = het(3, 4, 0, chunk_elements=2 * 4 * 5).double()  # chunks of 5 draws, R = 0
    with torch.no_grad():
        head.loc.weight.zero_()
        head.loc.bias.zero_()
        head.diag.weight.zero_()
        head.diag.bias.fill_(50.0)  # d = softplus(50) + 1e-3 ~ 50
    h = torch.randn(2, 3, dtype=torch.double)
    y = torch.tensor([1, 2])
    eps_k = torch.zeros(10, 4, dtype=torch.double)
    eps_k[:5, 0] = 3.0  # draws 0-4: class 0 leads by ~150
    eps_k[5:] = 0.01 * torch.randn(5, 4, dtype=torch.double)
    noise = (None, eps_k)
    head.loss(h, y, noise=noise).backward()
    ours = {n: p.grad.clone() for n, p in head.named_parameters()}
    head.zero_grad()
    (-naive_log_likelihood(head.latent(h), y, *noise, head.temperature).mean()).backward()
    for name, p in head.named_parameters():
        assert torch.allclose(ours[name], p.grad, rtol=1e-8, atol=1e-12), name


# -- the noise-free predictive ------------------------------------------------------------


@pytest.mark.parametrize("parameter_efficient", [False, True])
def test_noise_free_equals_mc_predictive_when_the_noise_vanishes(parameter_efficient):
    """V = 0, d = 1e-6: the MC predictive collapses onto softmax(mu / tau)."""
    head = make_head(temperature=1.7, min_scale=1e-6, parameter_efficient=parameter_efficient)
    silence_noise(head)
    h = torch.randn(8, 6) * 2
    m = head.moments(h, 400, torch.Generator().manual_seed(0))
    free = head.noise_free_probs(h)
    assert ((m["probs"] - free).abs() <= 4 * m["prob_std"] / 20 + 1e-6).all()
    assert not torch.allclose(free, torch.softmax(head.loc(h), -1), atol=1e-3)  # tau matters


@pytest.mark.parametrize("temperature", [0.6, "learned"])
def test_noise_free_is_the_tempered_softmax_of_mu(temperature):
    head = make_head(temperature=temperature)
    h = torch.randn(8, 6)
    tau = head.temperature
    expected = torch.softmax(head.latent(h).mu / tau, -1)
    torch.testing.assert_close(head.noise_free_probs(h), expected, rtol=0, atol=1e-7)
    # the noisy predictive is something else: the noise is real in this head
    assert (head.predict(h, 400, torch.Generator().manual_seed(0)) - expected).abs().max() > 1e-2


def test_noise_free_is_the_tempered_sigmoid_of_mu_per_label():
    head = make_head(task=MULTILABEL, temperature=0.7, parameter_efficient=True)
    h = torch.randn(8, 6)
    expected = torch.sigmoid(head.latent(h).mu / 0.7)
    torch.testing.assert_close(head.noise_free_probs(h), expected, rtol=0, atol=1e-7)
    assert not torch.allclose(expected.sum(-1), torch.ones(8))  # per label, not a softmax


@pytest.mark.parametrize("task", [MULTICLASS, MULTILABEL])
def test_linear_head_noise_free_is_its_predict(task):
    torch.manual_seed(0)
    head = LinearHead(6, 5, task)
    h = torch.randn(8, 6)
    assert torch.equal(head.noise_free_probs(h), head.predict(h))
    logits = head.loc(h)
    plain = torch.softmax(logits, -1) if task == MULTICLASS else torch.sigmoid(logits)
    torch.testing.assert_close(head.noise_free_probs(h), plain)


def confident_latent(dtype=torch.float32, k=10, mu0=10.0, scale=0.01) -> LogitGaussian:
    """The review's case: mu = (mu0, 0, ..., 0), d = scale, R = 0: p_0 ~ 1 - 4e-4 with a
    spread of a few 1e-6, far below p_0's float32 spacing of p_0^2."""
    mu = torch.zeros(1, k, dtype=dtype)
    mu[0, 0] = mu0
    return LogitGaussian(mu, torch.full((1, k), scale, dtype=dtype))


def test_prob_std_of_a_confident_input_does_not_cancel_in_float32():
    """K = 10, mu0 = 10, d = 0.01, S = 1000: the float32 reference (what the
    export traces) gives the sample std of the same draws in float64 to 1e-3, and that
    is within MC error of the population std (float64, 2^20 draws). E[p^2] - E[p]^2 gave
    exactly 0 for class 0 here."""
    from models.het_formula import reference_moments

    num = 1000
    eps = torch.randn(num, 10, generator=torch.Generator().manual_seed(3))
    got = reference_moments(confident_latent(), None, eps, MULTICLASS)["prob_std"][0]
    exact = reference_moments(confident_latent(torch.float64), None, eps.double(), MULTICLASS)
    exact_std = exact["prob_std"][0]
    assert exact_std[0] > 1e-6  # the case is the one the review measured
    torch.testing.assert_close(got.double(), exact_std, rtol=1e-3, atol=0)

    big = torch.randn(1 << 20, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    truth = torch.softmax(confident_latent(torch.float64).sample(None, big)[0], -1).std(0)
    # the sample std of S near-Gaussian draws has a relative error ~ 1 / sqrt(2 (S - 1))
    assert ((got.double() - truth).abs() <= 5 * truth / math.sqrt(2 * (num - 1))).all()


@pytest.mark.parametrize("groups", [None, 8])
def test_mc_stderr_is_nan_from_one_draw(groups):
    """S = 1: no spread to measure, so the standard error is undefined (NaN, null in the
    API), not 0; prob_std stays its S = 1 value 0. The head's fast path agrees."""
    from models.het_formula import reference_moments

    latent = confident_latent(mu0=1.0, scale=1.0)
    eps = torch.randn(1, 10, generator=torch.Generator().manual_seed(5))
    m = reference_moments(latent, None, eps, MULTICLASS, groups)
    assert torch.isnan(m["mc_stderr"]).all()
    assert (m["prob_std"] == 0).all()
    two = reference_moments(latent, None, torch.cat([eps, -eps]), MULTICLASS, groups)
    assert torch.isfinite(two["mc_stderr"]).all() and (two["mc_stderr"] > 0).all()
    head = make_head(k=10, r=0, eval_noise="mc" if groups is None else "qmc")
    h = torch.randn(3, 6)
    assert torch.isnan(head.moments(h, 1)["mc_stderr"]).all()
    assert torch.isfinite(head.moments(h, 2)["mc_stderr"]).all()
