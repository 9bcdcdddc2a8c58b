"""Classification heads: the heteroscedastic (HET) head and the linear baseline.

Why one module of ~650 lines: the formula, its reference estimator and both heads are
read together (the fast estimators live apart, in het_fast.py).

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
out over the whole (B, S, K) tensor of draws. ``models.het_fast`` computes the same
numbers with bounded memory, through a fused C kernel on a CPU (per-example noise then
drawn inside it from a seed) or in chunks of S with a hand-written backward;
``HetHead`` uses it unless built with ``fast=False``. The export
uses the reference (one pass over S keeps S dynamic in the graph).

Both heads follow ``Head`` (``latent``, ``loss``, ``log_likelihood``, ``predict``,
``moments``, ``noise_free_probs``, ``temperature``, ``task``) so training, evaluation and
export do not care which head they hold.

Two predictives: ``predict`` is the MC predictive above, which models the noisy labels
an annotator gives; ``noise_free_probs`` is ``softmax(mu(x) / tau)`` (sigmoid per label),
the predictive with the learned label noise set to zero, which answers "which class is
it?". It is exact and costs what a softmax head costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.spec import HeadSpec
from models import het_fast, qmc
from models.generators import generator_device

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"

Noise = tuple[torch.Tensor | None, torch.Tensor]  # (eps_R, eps_K)


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


# -- the heads --------------------------------------------------------------------------


class Head(Protocol):
    """What training, evaluation and export use of a head (HetHead and LinearHead).

    ``h`` is a batch of backbone features (B, D); ``y`` class indices (B,) or 0/1 labels
    (B, K). Sample counts, generators and noise are ignored by a deterministic head.
    """

    kind: Literal["het", "softmax"]
    task: str
    num_classes: int
    num_factors: int
    eval_mc_samples: int
    parameter_efficient: bool
    learned_temperature: bool

    @property
    def temperature(self) -> torch.Tensor: ...

    def latent(self, h: torch.Tensor) -> LogitGaussian: ...

    def loss(self, h, y, num_samples=None, generator=None, noise=None) -> torch.Tensor: ...

    def log_likelihood(
        self, h, y, num_samples=None, generator=None, noise=None
    ) -> torch.Tensor: ...

    def predict(self, h, num_samples=None, generator=None, noise=None) -> torch.Tensor: ...

    def predict_with_log_likelihood(
        self, h, y, num_samples=None, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def moments(
        self, h, num_samples=None, generator=None, noise=None
    ) -> dict[str, torch.Tensor]: ...

    def noise_free_probs(self, h) -> torch.Tensor: ...


class HetHead(nn.Module):
    """Heteroscedastic last layer over any backbone feature of size ``in_features``.

    From the spec: num_factors (R >= 0; R = 0 keeps only the diagonal d(x)),
    parameter_efficient (V(x) = diag(v(x)) J, J (K x R) input independent), temperature
    (a fixed tau, or "learned": tau = lo + (hi - lo) * sigmoid(t) within
    temperature_bounds; "auto" is resolved by the training loop), train_mc_samples,
    eval_mc_samples, share_samples_across_batch (one eps draw per step for the batch).

    Args:
        task: "multiclass" (softmax) or "multilabel" (sigmoid).
        fast: estimate with ``models.het_fast`` (chunked, bounded memory); False: with
            the reference estimator over the whole (B, S, K) tensor.
        dynamic_dense: fast path: the dense layers (mu, d and V from h) as GEMM tasks
            the threads take dynamically (``het_fast.dense_layers``; float32 on a CPU
            with torch's MKL), forward and backward; False: torch's own GEMMs, split
            statically over the threads (slower beside a busy process).
        chunk_elements: fast path: cap on B x C x K elements processed at once. None:
            about a million (4 MB) on a CPU, where that keeps a chunk in cache and larger
            chunks are slower, and 16 million (64 MB) on a GPU, where fewer, larger
            kernels win. (The fused CPU kernel works in blocks of 8 draws and ignores it.)
        initial_temperature: where a learned temperature starts.
        min_scale: the floor of d(x).
    """

    kind: Literal["het", "softmax"] = "het"
    fast = True
    dynamic_dense = True
    # buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not
    temperature_bounds: torch.Tensor  # (lo, hi), a learned temperature only
    fixed_temperature: torch.Tensor

    def __init__(
        self,
        spec: HeadSpec,
        in_features: int,
        num_classes: int,
        task: str = MULTICLASS,
        *,
        fast: bool = True,
        dynamic_dense: bool = True,
        chunk_elements: int | None = None,
        initial_temperature: float = 1.0,
        min_scale: float = 1e-3,
    ):
        super().__init__()
        if task not in (MULTICLASS, MULTILABEL):
            raise ValueError(f"task must be {MULTICLASS!r} or {MULTILABEL!r}, got {task!r}")
        if spec.temperature == "auto":
            raise ValueError('temperature "auto" is resolved by train(), not by the model')
        num_factors = spec.num_factors
        self.spec = spec
        self.num_classes = num_classes
        self.num_factors = num_factors
        self.task = task
        self.parameter_efficient = spec.parameter_efficient and num_factors > 0
        self.train_mc_samples = spec.train_mc_samples
        self.eval_mc_samples = spec.eval_mc_samples
        # RQMC needs Sobol direction numbers for every column of the noise
        wide = num_classes + num_factors > qmc.SOBOL_MAX_DIM
        self.eval_noise = "mc" if wide else spec.eval_noise
        self.share_samples_across_batch = spec.share_samples_across_batch
        self.min_scale = min_scale
        self.fast = fast
        self.dynamic_dense = dynamic_dense
        self.chunk_elements = chunk_elements
        # Multiclass draws are laid out class-major with few classes (faster there).
        self.class_major = task == MULTICLASS and num_classes <= het_fast.CLASS_MAJOR_MAX_CLASSES

        self.loc = nn.Linear(in_features, num_classes)
        self.diag = nn.Linear(in_features, num_classes)
        if num_factors == 0:
            self.factor = None
        elif self.parameter_efficient:
            self.factor = nn.Linear(in_features, num_classes, bias=False)  # v(x)
            self.factor_basis = nn.Parameter(
                torch.randn(num_classes, num_factors) / math.sqrt(num_factors)
            )
        else:
            self.factor = nn.Linear(in_features, num_classes * num_factors)

        self.learned_temperature = spec.temperature == "learned"
        if self.learned_temperature:
            lo, hi = spec.temperature_bounds
            if not 0 < lo < initial_temperature < hi:
                raise ValueError(f"initial temperature {initial_temperature} outside ({lo}, {hi})")
            frac = (initial_temperature - lo) / (hi - lo)
            self.register_buffer("temperature_bounds", torch.tensor([lo, hi]))
            self.temperature_logit = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))
        else:
            tau = float(spec.temperature)
            if not tau > 0:
                raise ValueError(f"temperature must be > 0, got {spec.temperature!r}")
            self.register_buffer("fixed_temperature", torch.tensor(tau))

    @property
    def temperature(self) -> torch.Tensor:
        if self.learned_temperature:
            lo, hi = self.temperature_bounds
            return lo + (hi - lo) * torch.sigmoid(self.temperature_logit)
        return self.fixed_temperature

    def latent(self, h: torch.Tensor) -> LogitGaussian:
        layers = [self.loc, self.diag] + ([] if self.factor is None else [self.factor])
        if self.fast and self.dynamic_dense and het_fast.dense_applies(h, layers):
            # the same GEMMs as tasks the threads take dynamically (see het_fast.dense_layers)
            mu, pre_scale, *factor = het_fast.dense_layers(h, layers)
        else:
            mu, pre_scale, *factor = (layer(h) for layer in layers)
        scale = F.softplus(pre_scale) + self.min_scale
        if not factor:
            return LogitGaussian(mu, scale)
        if self.parameter_efficient:
            return LogitGaussian(mu, scale, factor_scale=factor[0], factor_basis=self.factor_basis)
        factors = factor[0].view(h.shape[0], self.num_classes, self.num_factors)
        return LogitGaussian(mu, scale, factors=factors)

    forward = latent

    def draw_noise(
        self,
        batch: int,
        num_samples: int,
        device,
        generator: torch.Generator | None = None,
        mode: str = "mc",
    ) -> Noise:
        """(eps_R, eps_K): (S, R) and (S, K) shared by the batch, else (B, S, R), (B, S, K).

        mode "mc": independent normals (torch.randn); "qmc": randomized Sobol normals
        (models/qmc.py), the M random shifts drawn from ``generator``."""
        lead = () if self.share_samples_across_batch else (batch,)
        if mode == "qmc":
            width = self.num_classes + self.num_factors
            table = qmc.sobol_table(width)
            shape = (*lead, qmc.num_shifts(num_samples, len(table)), width)
            # drawn where the generator lives (a CUDA generator cannot fill a CPU tensor)
            shifts = torch.randint(
                0, 1 << qmc.DIGITS, shape, generator=generator, device=generator_device(generator)
            )
            digits = shifts.cpu().numpy().astype(np.uint32)
            eps = qmc.normals_from_shifts(table, digits, num_samples)
            noise = torch.from_numpy(eps).to(device)  # [eps_K | eps_R], as the export's
            eps_r = noise[..., self.num_classes :].contiguous() if self.num_factors else None
            return eps_r, noise[..., : self.num_classes].contiguous()
        if mode != "mc":
            raise ValueError(f'noise mode must be "mc" or "qmc", got {mode!r}')
        eps_k = torch.randn(
            (*lead, num_samples, self.num_classes), device=device, generator=generator
        )
        eps_r = None
        if self.num_factors:
            eps_r = torch.randn(
                (*lead, num_samples, self.num_factors), device=device, generator=generator
            )
        return eps_r, eps_k

    def _tempered(
        self, h, num_samples, generator, noise, training
    ) -> tuple[LogitGaussian, Noise | het_fast.SeededNoise]:
        """The Gaussian of z = u / tau and the noise to draw it with (drawn if not given:
        plain MC in training and for per-example noise, the head's eval_noise otherwise).

        Plain-MC per-example noise for the fused CPU kernel is a seed it draws from
        itself (het_fast.SeededNoise), not a B x S x (K + R) tensor."""
        latent = self.latent(h).scaled(1.0 / self.temperature)
        if noise is None:
            num = num_samples or (self.train_mc_samples if training else self.eval_mc_samples)
            # QMC points are drawn for noise shared by the batch (the default, and what the
            # ONNX graph does); per-example draws stay plain MC, drawn in the kernel: a
            # B x S x (K + R) QMC tensor would cost GBs at K = 1000 for little gain.
            qmc_ok = not training and self.share_samples_across_batch
            mode = self.eval_noise if qmc_ok else "mc"
            if (
                mode == "mc"
                and self.fast
                and not self.share_samples_across_batch
                and het_fast.kernel_draws_noise(self.task == MULTICLASS, h)
            ):
                return latent, het_fast.SeededNoise.draw(num, generator)
            noise = self.draw_noise(h.shape[0], num, h.device, generator, mode)
        return latent, noise

    def _chunk(self, h: torch.Tensor) -> int:
        return het_fast.chunk_size(h.shape[0], self.num_classes, self.chunk_elements, h.device)

    def loss(self, h, y, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        """Mean negative log-likelihood of the MC predictive, computed in log space."""
        return -self.log_likelihood(h, y, num_samples, generator, noise).mean()

    def log_likelihood(self, h, y, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        """log p_hat(y|x) per example, (B,): see reference_log_likelihood.

        S defaults to train_mc_samples in training mode, eval_mc_samples otherwise."""
        z, noise = self._tempered(h, num_samples, generator, noise, self.training)
        return self._log_likelihood(z, y, noise, h)

    def _log_likelihood(self, z, y, noise, h) -> torch.Tensor:
        if isinstance(noise, het_fast.SeededNoise):
            return het_fast.seeded_log_likelihood(z, y, noise)
        eps_r, eps_k = noise
        if self.fast:
            multiclass = self.task == MULTICLASS
            return het_fast.log_likelihood(
                z, y, eps_r, eps_k, multiclass, self._chunk(h), self.class_major
            )
        return reference_log_likelihood(z, y, eps_r, eps_k, self.task)

    @torch.no_grad()
    def predict(self, h, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        """p_hat = 1/S sum_s softmax(z_s) (sigmoid for multilabel), (B, K); S: eval_mc_samples."""
        z, noise = self._tempered(h, num_samples, generator, noise, training=False)
        return self._predict(z, noise, h)

    @torch.no_grad()
    def predict_with_log_likelihood(
        self, h, y, num_samples=None, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predict, log_likelihood) in evaluation on the same draws: the tempered Gaussian
        and the noise formed once, each estimator then run over them (the numbers of the
        two calls from one generator state)."""
        z, noise = self._tempered(h, num_samples, generator, None, training=False)
        return self._predict(z, noise, h), self._log_likelihood(z, y, noise, h)

    def _predict(self, z, noise, h) -> torch.Tensor:
        if isinstance(noise, het_fast.SeededNoise):
            return het_fast.seeded_moments(z, noise, second=False)["probs"]
        eps_r, eps_k = noise
        if self.fast:
            multiclass = self.task == MULTICLASS
            return het_fast.predict(z, eps_r, eps_k, multiclass, self._chunk(h), self.class_major)
        return reference_moments(z, eps_r, eps_k, self.task)["probs"]

    @torch.no_grad()
    def moments(self, h, num_samples=None, generator=None, noise=None) -> dict[str, torch.Tensor]:
        """probs, prob_std, expected_entropy, mc_stderr (see reference_moments) and
        num_samples; S defaults to eval_mc_samples. With eval_noise "qmc" the noise is
        read as M = qmc.QMC_GROUPS independent groups (rows s mod M) and mc_stderr comes
        from the spread of the group means (``grouped_stderr``)."""
        z, noise = self._tempered(h, num_samples, generator, noise, training=False)
        if isinstance(noise, het_fast.SeededNoise):  # plain MC drawn inside the kernel
            m = het_fast.seeded_moments(z, noise)
            m["mc_stderr"] = independent_stderr(m["prob_std"], noise.num_samples)
            return {**m, "num_samples": torch.tensor(noise.num_samples)}
        eps_r, eps_k = noise
        num = eps_k.shape[-2]
        groups = qmc.QMC_GROUPS if self.eval_noise == "qmc" else None
        if not self.fast:
            m = reference_moments(z, eps_r, eps_k, self.task, groups)
        elif groups is None:
            m = het_fast.moments(z, eps_r, eps_k, *self._fast_args(h))
            m["mc_stderr"] = independent_stderr(m["prob_std"], num)
        else:
            m = self._grouped_moments(z, eps_r, eps_k, groups, h)
        return {**m, "num_samples": torch.tensor(num)}

    def _fast_args(self, h) -> tuple[bool, int, bool]:
        return self.task == MULTICLASS, self._chunk(h), self.class_major

    def _grouped_moments(self, z, eps_r, eps_k, groups: int, h) -> dict[str, torch.Tensor]:
        """reference_moments(..., groups) by the fast path, one call per group g (rows
        s mod M = g), combined: probs and expected_entropy as n_g-weighted means, prob_std
        by the law of total variance (within + between sums of squares, no cancellation)."""
        num = eps_k.shape[-2]
        parts, counts = [], []
        for g in range(min(groups, num)):
            rows = slice(g, None, groups)
            part_r = None if eps_r is None else eps_r[..., rows, :].contiguous()
            parts.append(
                het_fast.moments(z, part_r, eps_k[..., rows, :].contiguous(), *self._fast_args(h))
            )
            counts.append(len(range(g, num, groups)))
        n = z.mu.new_tensor(counts)  # (G,)
        means = torch.stack([p["probs"] for p in parts], 1)  # (B, G, K)
        probs = (means * (n / num).view(-1, 1)).sum(1)
        within = sum((c - 1) * p["prob_std"].square() for c, p in zip(counts, parts, strict=True))
        between = (n.view(-1, 1) * (means - probs.unsqueeze(1)).square()).sum(1)
        prob_std = ((within + between) / max(num - 1, 1)).sqrt()
        entropy = sum(c * p["expected_entropy"] for c, p in zip(counts, parts, strict=True)) / num
        return {
            "probs": probs,
            "prob_std": prob_std,
            "expected_entropy": entropy,
            "mc_stderr": grouped_stderr(means, n, probs),
        }

    @torch.no_grad()
    def noise_free_probs(self, h) -> torch.Tensor:
        """softmax(mu(x) / tau) (sigmoid per label), (B, K): the predictive with the label
        noise set to zero. Exact, no sampling; mu / tau as the export core forms it."""
        z = self.latent(h).scaled(1.0 / self.temperature).mu
        return noise_free_from_logits(z, self.task)


class LinearHead(nn.Module):
    """The baseline: a plain linear softmax (sigmoid) head, same interface as HetHead.

    It is deterministic: sample counts are accepted and ignored, and the latent
    Gaussian has zero scale, so the uncertainty outputs degrade to their exact values.
    """

    kind: Literal["het", "softmax"] = "softmax"
    fixed_temperature: torch.Tensor  # a buffer (register_buffer)
    num_factors = 0
    parameter_efficient = False
    learned_temperature = False
    train_mc_samples = eval_mc_samples = 1

    def __init__(self, in_features: int, num_classes: int, task: str = MULTICLASS):
        super().__init__()
        if task not in (MULTICLASS, MULTILABEL):
            raise ValueError(f"task must be {MULTICLASS!r} or {MULTILABEL!r}, got {task!r}")
        self.num_classes = num_classes
        self.task = task
        self.loc = nn.Linear(in_features, num_classes)
        self.register_buffer("fixed_temperature", torch.tensor(1.0))

    @property
    def temperature(self) -> torch.Tensor:
        return self.fixed_temperature

    def latent(self, h: torch.Tensor) -> LogitGaussian:
        mu = self.loc(h)
        return LogitGaussian(mu, torch.zeros_like(mu))

    forward = latent

    def log_likelihood(self, h, y, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        logits = self.loc(h)
        if self.task == MULTICLASS:
            return -F.cross_entropy(logits, y, reduction="none")
        return -F.binary_cross_entropy_with_logits(
            logits, y.to(logits.dtype), reduction="none"
        ).sum(-1)

    def loss(self, h, y, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        return -self.log_likelihood(h, y).mean()

    @torch.no_grad()
    def predict(self, h, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        return self.moments(h)["probs"]

    @torch.no_grad()
    def predict_with_log_likelihood(
        self, h, y, num_samples=None, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(h), self.log_likelihood(h, y)

    @torch.no_grad()
    def noise_free_probs(self, h) -> torch.Tensor:
        """The head's own softmax (sigmoid): it has no noise, so this is ``predict``."""
        return self.moments(h)["probs"]

    @torch.no_grad()
    def moments(self, h, num_samples=None, generator=None, noise=None) -> dict[str, torch.Tensor]:
        logits = self.loc(h)
        if self.task == MULTICLASS:
            logp = torch.log_softmax(logits, -1)
            probs = logp.exp()
            ent = -(probs * logp).sum(-1)
        else:
            probs = torch.sigmoid(logits)
            ent = binary_entropy_from_logits(logits)
        return {
            "probs": probs,
            "prob_std": torch.zeros_like(probs),
            "expected_entropy": ent,
            "mc_stderr": torch.zeros_like(probs),
            "num_samples": torch.tensor(1),
        }


def build_head(
    spec: HeadSpec, in_features: int, num_classes: int, task: str, **tuning
) -> HetHead | LinearHead:
    """``spec.kind`` "het", or "softmax" (the linear baseline; sigmoid for multilabel).
    ``tuning``: HetHead's keyword-only knobs (fast, chunk_elements, ...)."""
    if spec.kind == "het":
        return HetHead(spec, in_features, num_classes, task, **tuning)
    if spec.kind == "softmax":
        return LinearHead(in_features, num_classes, task)
    raise ValueError(f"unknown head kind {spec.kind!r}")
