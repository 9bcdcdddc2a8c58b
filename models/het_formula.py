"""The HET formula written out: the Gaussian on the logits (``LogitGaussian``), the
reference estimators over the whole (B, S, K) tensor of its draws, the standard errors of
an MC estimate, and the noise-free predictive. Plain torch functions, no parameters: the
heads (``models.heads``) hold the layers that produce the Gaussian; ``models.het_fast``
computes the reference's numbers with bounded memory; the export runs the reference (one
pass over S keeps S dynamic in the graph).

The HET head (Collier et al., CVPR 2021; edward2's ``MCSoftmaxDenseFA`` /
``MCSigmoidDenseFA``) puts a Gaussian on the logits of a backbone feature ``h``::

    mu(x) = W_mu h + b_mu                         K means
    V(x)  = reshape(W_V h + b_V, K x R)           R low-rank factors
          = diag(v(x)) J,  v(x) = W_v h           (parameter-efficient variant)
    d(x)  = softplus(W_d h + b_d) + min_scale     a standard deviation per class
    u     ~ N(mu, V V^T + diag(d^2)),  drawn as  u_s = mu + V eps_R,s + d * eps_K,s

    multiclass: p(y|x)  ~= 1/S sum_s softmax(u_s / tau)
    multilabel: p_k(x)  ~= 1/S sum_s sigmoid(u_s,k / tau)

The training loss stays in log space (no clipping of p before the log, unlike the
reference, whose clip at 1e-7 zeroes the gradient of confidently wrong examples)::

    log p_y = logsumexp_s( log_softmax(u_s / tau)_y ) - log S

By default one draw of eps is shared by every example of a batch (edward2's
``share_samples_across_batch``): each example's estimate stays unbiased and the
random numbers drop B-fold.

``reference_log_likelihood`` and ``reference_moments`` below are these formulas written
out over the whole (B, S, K) tensor of draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"


@dataclass
class LogitGaussian:
    """The per-example Gaussian over logits: u ~ N(mu, V V^T + diag(scale^2)).

    ``factors`` is V, shape (B, K, R), or None when R = 0. For the parameter-efficient
    variant ``factor_scale`` holds v(x) (B, K) and ``factor_basis`` J (K, R), and
    ``factors`` is None (``factor_matrix()`` forms v[..., None] * J when asked for).
    """

    mu: torch.Tensor  # (B, K)
    scale: torch.Tensor  # (B, K); zeros for a deterministic head
    factors: torch.Tensor | None = None  # (B, K, R)
    factor_scale: torch.Tensor | None = None  # (B, K), parameter-efficient only
    factor_basis: torch.Tensor | None = None  # (K, R), parameter-efficient only

    @property
    def num_factors(self) -> int:
        if self.factor_basis is not None:
            return self.factor_basis.shape[1]
        return 0 if self.factors is None else self.factors.shape[-1]

    def factor_matrix(self) -> torch.Tensor | None:
        """V(x) as an explicit (B, K, R) tensor."""
        if self.factor_basis is not None:
            assert self.factor_scale is not None  # set together with factor_basis
            return self.factor_scale.unsqueeze(-1) * self.factor_basis
        return self.factors

    def covariance(self) -> torch.Tensor:
        """Sigma(x) = V V^T + diag(d^2), (B, K, K). Exact, no sampling."""
        cov = torch.diag_embed(self.scale.square())
        v = self.factor_matrix()
        if v is not None:
            cov = cov + v @ v.transpose(-1, -2)
        return cov

    def variance(self) -> torch.Tensor:
        """diag Sigma(x), (B, K), without forming the K x K matrix."""
        var = self.scale * self.scale  # Mul, not Pow, in an exported graph (faster)
        v = self.factor_matrix()
        if v is not None:
            var = var + (v * v).sum(-1)
        return var

    def scaled(self, factor) -> LogitGaussian:
        """The Gaussian of factor * u: mu, d and V scaled (J, input independent, is not).

        Folds 1/tau into these (B, K) tensors instead of the B x S x K samples."""

        def mul(t):
            return None if t is None else t * factor

        return LogitGaussian(
            self.mu * factor,
            self.scale * factor,
            mul(self.factors),
            mul(self.factor_scale),
            self.factor_basis,
        )

    def sample(self, eps_r: torch.Tensor | None, eps_k: torch.Tensor) -> torch.Tensor:
        """u = mu + V eps_R + d * eps_K for S draws, (B, S, K); a fresh tensor.

        eps_k is (S, K) when shared across the batch, (B, S, K) per example; eps_r
        likewise (S, R) or (B, S, R), or None when R = 0.
        """
        mu, scale = self.mu.unsqueeze(1), self.scale.unsqueeze(1)
        if eps_r is None or self.num_factors == 0:
            return torch.addcmul(mu, scale, eps_k)
        if self.factor_basis is not None:  # diag(v) J eps_R = v * (J eps_R)
            assert self.factor_scale is not None  # set together with factor_basis
            u = torch.addcmul(mu, scale, eps_k)
            return u.addcmul_(self.factor_scale.unsqueeze(1), eps_r @ self.factor_basis.T)
        # mu + V eps_R as one GEMM, [1, eps_R] @ [mu; V^T] (faster in onnxruntime than a
        # product and a sum), then d * eps_K in place.
        assert self.factors is not None  # num_factors > 0 without a basis
        ones = eps_r.new_ones(*eps_r.shape[:-1], 1)
        loc_and_factors = torch.cat([mu, self.factors.transpose(1, 2)], 1)  # (B, 1 + R, K)
        u = torch.matmul(torch.cat([ones, eps_r], -1), loc_and_factors)
        return u.addcmul_(scale, eps_k)


# -- the reference estimator ---------------------------------------------------------


def reference_log_likelihood(
    latent: LogitGaussian, y: torch.Tensor, eps_r, eps_k, task: str
) -> torch.Tensor:
    """log p_hat(y|x) per example, (B,), with latent the Gaussian of z = u / tau.

    multiclass: logsumexp_s log_softmax(z_s)_y - log S
    multilabel: sum_k [y_k log p_k + (1 - y_k) log(1 - p_k)], with
                log p_k = logsumexp_s logsigmoid(z_s,k) - log S and
                log(1 - p_k) = logsumexp_s logsigmoid(-z_s,k) - log S
    """
    z = latent.sample(eps_r, eps_k)  # (B, S, K)
    log_s = math.log(z.shape[1])
    if task == MULTICLASS:
        label = y.view(-1, 1, 1).expand(-1, z.shape[1], 1)
        log_p_y = torch.log_softmax(z, -1).gather(-1, label).squeeze(-1)  # (B, S)
        return torch.logsumexp(log_p_y, 1) - log_s
    log_p = torch.logsumexp(F.logsigmoid(z), 1) - log_s
    log_not_p = torch.logsumexp(F.logsigmoid(-z), 1) - log_s
    y = y.to(log_p.dtype)
    return (y * log_p + (1 - y) * log_not_p).sum(-1)


def reference_moments(
    latent: LogitGaussian, eps_r, eps_k, task: str, groups: int | None = None
) -> dict[str, torch.Tensor]:
    """MC moments of the sampled probabilities p_s = softmax(z_s) (sigmoid per label)::

    probs            = mean_s p_s                                        (B, K)
    prob_std         = sqrt( sum_s (p_s - probs)^2 / (S - 1) )           (B, K)
    expected_entropy = mean_s H[p_s]                       (B,); (B, K) per label
    mc_stderr        = prob_std / sqrt(S)  (independent draws, groups None)
                     = grouped_stderr over the groups s mod M  (groups = M: RQMC noise)
                     = NaN when S < 2 (undefined: one draw says nothing of its error)

    Computed in two passes, the corrected two-pass form around c = mean_s p_s as float32
    sums it (off by ~sqrt(S) ulps): with e_s = p_s - c and o = mean_s e_s, probs = c + o
    and (S - 1) prob_std^2 = sum_s e_s^2 - S o^2, the group means likewise from the e_s.
    The one-pass mean_s p_s^2 - probs^2 cancels in float32 when the spread is far below
    p (a confident input's prob_std came out exactly 0).
    """
    z = latent.sample(eps_r, eps_k)  # (B, S, K)
    if task == MULTICLASS:
        log_p = torch.log_softmax(z, -1)
        p = log_p.exp()
        expected_entropy = -(p * log_p).sum(-1).mean(1)
    else:
        p = torch.sigmoid(z)
        expected_entropy = binary_entropy_from_logits(z).mean(1)
    num = torch.ones_like(z[:, :, :1]).sum(1)  # S as a tensor, (B, 1): stays symbolic in export
    centre = p.mean(1)
    # the corrected two-pass form: a float32 sum of S values near 1 is off by ~sqrt(S) ulps,
    # so centre is not the exact mean; the deviations' own mean corrects both moments
    deviation = p - centre.unsqueeze(1)  # (B, S, K)
    offset = deviation.sum(1) / num
    probs = centre + offset
    var = ((deviation * deviation).sum(1) - num * offset * offset) / (num - 1).clamp_min(1)
    prob_std = var.clamp_min(0).sqrt()
    undefined = torch.full_like(num, math.nan)
    if groups is None:
        stderr = torch.where(num > 1, prob_std / num.sqrt(), undefined)
    else:
        # group g = rows s mod M: strided slices (S stays symbolic in export; a GEMM with
        # the (S, M) indicator measured ~3x slower in onnxruntime)
        index = torch.arange(z.shape[1], device=z.device)
        member = (index % groups).unsqueeze(1) == torch.arange(groups, device=z.device)
        counts = member.to(p.dtype).sum(0)  # (M,)
        sums = torch.stack([deviation[:, g::groups].sum(1) for g in range(groups)], 1)
        # m_g - centre per group (B, M, K), against probs - centre = offset
        group_offsets = sums / counts.clamp_min(1).view(-1, 1)
        stderr = grouped_stderr(group_offsets, counts, offset)
    return {
        "probs": probs,
        "prob_std": prob_std,
        "expected_entropy": expected_entropy,
        "mc_stderr": stderr,
    }


def grouped_stderr(
    group_means: torch.Tensor, counts: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """The standard error of p_hat from M independent groups of draws (models/qmc.py)::

    se = sqrt( G / (G - 1) * sum_g (n_g / S)^2 (m_g - p_hat)^2 ),   G = #{g : n_g > 0}

    group_means (B, M, K) with m_g = 0 for an empty group, counts n_g (M,), probs p_hat
    (B, K). Equal groups: the std of the M group means over sqrt(M). NaN when G < 2
    (S = 1: no spread to measure, the error is undefined, not 0)."""
    total = counts.sum()
    filled = (counts > 0).to(probs.dtype).sum()
    weights = (counts / total).view(-1, 1)  # (M, 1)
    spread = (weights * (group_means - probs.unsqueeze(1))).square().sum(1)
    stderr = (spread * (filled / (filled - 1).clamp_min(1))).sqrt()
    return torch.where(filled > 1, stderr, torch.full_like(stderr, math.nan))


def independent_stderr(prob_std: torch.Tensor, num_samples: int) -> torch.Tensor:
    """prob_std / sqrt(S): the standard error of p_hat from S independent draws; NaN at
    S < 2, where it is undefined (reference_moments' formula, for an integer S)."""
    if num_samples < 2:
        return torch.full_like(prob_std, math.nan)
    return prob_std / math.sqrt(num_samples)


def noise_free_from_logits(z: torch.Tensor, task: str) -> torch.Tensor:
    """softmax(z) (sigmoid per label for multilabel), with z = mu / tau: the noise-free
    predictive. One function for the heads and the export core, so both compute it alike."""
    if task == MULTICLASS:
        return torch.softmax(z, -1)
    return torch.sigmoid(z)


def noise_free_log_likelihood(z: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """log p(y|x) under noise_free_from_logits(z), in log space, (B,): multiclass
    log_softmax(z)_y; multilabel sum_k [y_k logsigmoid(z_k) + (1 - y_k) logsigmoid(-z_k)]."""
    if task == MULTICLASS:
        return torch.log_softmax(z, -1).gather(-1, y.view(-1, 1)).squeeze(-1)
    y = y.to(z.dtype)
    return (y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).sum(-1)


def binary_entropy_from_logits(z: torch.Tensor) -> torch.Tensor:
    """H[Bernoulli(sigmoid(z))] = softplus(z) - z * sigmoid(z), stable for large |z|."""
    return F.softplus(z) - z * torch.sigmoid(z)
