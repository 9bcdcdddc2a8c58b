"""Classification heads: the heteroscedastic (HET) head and the linear baseline.

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

Samples are processed in chunks of S (about a million logits each, so a chunk stays
in cache), and the B x S x K tensor never exists whole. The multiclass loss has its
own backward (``_MulticlassLogLikelihood``) that redraws each chunk from the same noise
instead of keeping an autograd graph per chunk; the multilabel loss recomputes its
chunks through activation checkpointing. Peak memory is one chunk either way.

By default one draw of eps is shared by every example of a batch (edward2's
``share_samples_across_batch``): each example's estimate stays unbiased and the
random numbers drop B-fold.

Both heads share one interface (``latent``, ``loss``, ``predict``, ``moments``) so
training, evaluation and export do not care which head they hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"
CLASS_MAJOR_MAX_CLASSES = 32
CPU_CHUNK_ELEMENTS = 1 << 20
GPU_CHUNK_ELEMENTS = 1 << 24
RESCALE_MARGIN = 30.0  # nats a draw's log p_s may exceed the reference m before rescaling


@dataclass
class LogitGaussian:
    """The per-example Gaussian over logits: u ~ N(mu, V V^T + diag(scale^2)).

    ``factors`` is V, shape (B, K, R), or None when R = 0. For the parameter-efficient
    variant ``factor_scale`` holds v(x) (B, K) and ``factor_basis`` J (K, R), and
    ``factors`` is v[..., None] * J (materialised lazily only when asked for).
    """

    mu: torch.Tensor  # (B, K)
    scale: torch.Tensor  # (B, K); zeros for a deterministic head
    factors: torch.Tensor | None = None  # (B, K, R)
    factor_scale: torch.Tensor | None = None  # (B, K), parameter-efficient only
    factor_basis: torch.Tensor | None = None  # (K, R), parameter-efficient only
    _loc_and_factors: torch.Tensor | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _loc_and_factors_t: torch.Tensor | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def num_factors(self) -> int:
        if self.factor_basis is not None:
            return self.factor_basis.shape[1]
        return 0 if self.factors is None else self.factors.shape[-1]

    def factor_matrix(self) -> torch.Tensor | None:
        """V(x) as an explicit (B, K, R) tensor."""
        if self.factor_basis is not None:
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
        var = self.scale.square()
        v = self.factor_matrix()
        if v is not None:
            var = var + v.square().sum(-1)
        return var

    def scaled(self, factor) -> LogitGaussian:
        """The Gaussian of factor * u: mu, d and V scaled (J, input independent, is not)."""

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
        """u = mu + V eps_R + d * eps_K for a chunk of C draws, (B, C, K).

        eps_k is (C, K) when shared across the batch, (B, C, K) per example;
        eps_r likewise (C, R) or (B, C, R). The result is a fresh tensor the caller
        may overwrite.
        """
        mu, scale = self.mu.unsqueeze(1), self.scale.unsqueeze(1)
        if eps_r is None or self.num_factors == 0:
            return torch.addcmul(mu, scale, eps_k)
        if self.factor_basis is not None:
            # diag(v) J eps = v * (eps J^T): one (C, K) product shared by the batch
            # when eps is shared, instead of a B x C x K x R contraction.
            u = torch.addcmul(mu, scale, eps_k)
            return u.addcmul_(self.factor_scale.unsqueeze(1), eps_r @ self.factor_basis.T)
        # mu + V eps_R as one GEMM: [1, eps_R] @ [mu; V^T], then d * eps_K in place.
        ones = eps_r.new_ones(*eps_r.shape[:-1], 1)
        u = torch.matmul(torch.cat([ones, eps_r], -1), self.loc_and_factors())
        return u.addcmul_(scale, eps_k)

    def sample_class_major(
        self, eps_r_t: torch.Tensor | None, eps_k_t: torch.Tensor
    ) -> torch.Tensor:
        """The same draws laid out class-major, (B, K, C): sample(eps_r, eps_k).transpose(1, 2).

        Takes the noise transposed too: eps_k_t (K, C) or (B, K, C), eps_r_t (R, C) or
        (B, R, C). With few classes a reduction over K is then a vectorised reduction
        across rows instead of many tiny per-row reductions.
        """
        mu, scale = self.mu.unsqueeze(-1), self.scale.unsqueeze(-1)
        if eps_r_t is None or self.num_factors == 0:
            return torch.addcmul(mu, scale, eps_k_t)
        if self.factor_basis is not None:
            u = torch.addcmul(mu, scale, eps_k_t)
            return u.addcmul_(self.factor_scale.unsqueeze(-1), self.factor_basis @ eps_r_t)
        ones = eps_r_t.new_ones(*eps_r_t.shape[:-2], 1, eps_r_t.shape[-1])
        if self._loc_and_factors_t is None:
            self._loc_and_factors_t = torch.cat(
                [self.mu.unsqueeze(-1), self.factors], -1
            )  # (B, K, 1 + R)
        u = torch.matmul(self._loc_and_factors_t, torch.cat([ones, eps_r_t], -2))
        return u.addcmul_(scale, eps_k_t)

    def loc_and_factors(self) -> torch.Tensor:
        """[mu; V^T] stacked as (B, 1 + R, K), built once and reused by every chunk."""
        if self._loc_and_factors is None:
            self._loc_and_factors = torch.cat(
                [self.mu.unsqueeze(1), self.factors.transpose(1, 2)], 1
            )
        return self._loc_and_factors


def _noise_shape(batch: int, num: int, dim: int, shared: bool) -> tuple[int, ...]:
    return (num, dim) if shared else (batch, num, dim)


def chunk_slices(num_samples: int, chunk: int) -> list[slice]:
    """[0, S) cut into consecutive slices of at most ``chunk`` samples."""
    return [slice(start, min(start + chunk, num_samples)) for start in range(0, num_samples, chunk)]


class _Draws:
    """Chunks of z = latent.sample(eps) in one of two layouts.

    sample-major (B, C, K), classes in dim 2, fast for many classes; class-major
    (B, K, C), classes in dim 1, fast for few. ``class_dim`` and ``sample_dim`` say
    which is which; noise is transposed once, up front, for the class-major layout.
    """

    def __init__(self, latent: LogitGaussian, eps_r, eps_k, chunk: int, class_major: bool):
        self.latent, self.chunk, self.class_major = latent, chunk, class_major
        self.class_dim, self.sample_dim = (1, 2) if class_major else (2, 1)
        if class_major:
            eps_k = eps_k.transpose(-1, -2).contiguous()
            eps_r = None if eps_r is None else eps_r.transpose(-1, -2).contiguous()
        self.eps_r, self.eps_k = eps_r, eps_k
        self.num_samples = eps_k.shape[-1] if class_major else eps_k.shape[-2]

    def __iter__(self):
        """(slice, eps_r chunk, eps_k chunk, z chunk), z a fresh tensor the caller may overwrite."""
        for sl in chunk_slices(self.num_samples, self.chunk):
            if self.class_major:
                er = None if self.eps_r is None else self.eps_r[..., sl]
                ek = self.eps_k[..., sl]
                yield sl, er, ek, self.latent.sample_class_major(er, ek)
            else:
                er = None if self.eps_r is None else self.eps_r[..., sl, :]
                ek = self.eps_k[..., sl, :]
                yield sl, er, ek, self.latent.sample(er, ek)

    def label_index(self, y: torch.Tensor, num: int) -> torch.Tensor:
        """y broadcast for gather/scatter along the class dim of a chunk of num draws."""
        return (
            y.view(-1, 1, 1).expand(-1, 1, num)
            if self.class_major
            else y.view(-1, 1, 1).expand(-1, num, 1)
        )


def _softmax_and_logsumexp(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(z) and logsumexp(z) along dim with a single exp pass.

    The softmax at the argmax is exp(max - lse) = 1 / sum_k exp(z_k - max) >= 1/K, so
    lse = max - log(softmax at the argmax) is exact and never underflows.
    """
    probs = torch.softmax(z, dim)
    return probs, z.amax(dim) - probs.amax(dim).log()


class _MulticlassLogLikelihood(torch.autograd.Function):
    """L = logsumexp_s log_softmax(z_s)_y per example, z_s = u_s / tau, chunk by chunk.

    The gradient is accumulated in the same pass over the chunks as the value, so the
    (B, S, K) logits are neither kept nor drawn twice. With w_s = exp(log p_s - L) the
    posterior weight of draw s,

        dL/dz_s,k = w_s (1[k = y] - softmax(z_s)_k),
        d mu = sum_s dz_s,   d d = sum_s dz_s * eps_K,s,   d V = sum_s dz_s eps_R,s^T

    (and for the parameter-efficient V = diag(v) J: d v = sum_s dz_s * (J eps_R,s),
    d J = sum_s (dz_s * v) eps_R,s^T). L is only known after the last chunk, so the
    sums use exp(log p_s - m) with m a reference per example (the first chunk's max of
    log p_s, raised and the sums rescaled when a draw exceeds it by 30 nats) and are
    divided by exp(L - m) at the end: nothing underflows even when every log p_s is far
    below -100 (a confidently wrong example). Each chunk's work stays in cache, which
    on a CPU is what makes the head fast; peak memory is one chunk plus gradient-sized
    sums. The one sum larger than its gradient is J's in the parameter-efficient
    variant: it is kept per example, (B, K, R) like V(x) itself, because the upstream
    gradient that weighs each example is known only in backward.
    """

    @staticmethod
    def forward(
        ctx,
        y,
        chunk,
        class_major,
        with_grad,
        eps_r,
        eps_k,
        mu,
        scale,
        factors,
        factor_scale,
        factor_basis,
    ):
        draws = _Draws(
            LogitGaussian(mu, scale, factors, factor_scale, factor_basis),
            eps_r,
            eps_k,
            chunk,
            class_major,
        )
        cd, sd, cm = draws.class_dim, draws.sample_dim, draws.class_major
        b = mu.shape[0]
        log_p = mu.new_empty(b, draws.num_samples)
        if with_grad:
            running_max = None  # per example: the reference m of the weights exp(log p_s - m)
            sums = {"mu": torch.zeros_like(mu), "scale": torch.zeros_like(scale)}
            if (
                factors is not None
            ):  # (B, K, R) class-major, (B, R, K) as the GEMM gives it otherwise
                r = factors.shape[2]
                sums["factors"] = factors.new_zeros(
                    (b, mu.shape[1], r) if cm else (b, r, mu.shape[1])
                )
            if factor_basis is not None:  # per example: the upstream gradient weighs each one
                sums["factor_scale"] = torch.zeros_like(factor_scale)
                sums["factor_basis"] = mu.new_zeros(b, *factor_basis.shape)
        for sl, er, ek, z in draws:
            idx = draws.label_index(y, z.shape[sd])
            probs, lse = _softmax_and_logsumexp(z, cd)
            log_p_chunk = z.gather(cd, idx).squeeze(cd) - lse  # log softmax(z_s)_y, (B, C)
            log_p[:, sl] = log_p_chunk
            if not with_grad:
                continue
            chunk_max = log_p_chunk.amax(1)
            if running_max is None:
                running_max = chunk_max
            elif (grown := chunk_max > running_max + RESCALE_MARGIN).any():
                # Rescale only on a large jump: weights up to e^30 per draw stay far from
                # float32 overflow, and most chunks then skip this pass over the sums.
                new_max = torch.where(grown, chunk_max, running_max)
                rescale = torch.exp(running_max - new_max)
                for t in sums.values():
                    t.mul_(rescale.view(-1, *([1] * (t.dim() - 1))))
                running_max = new_max
            w = torch.exp(log_p_chunk - running_max.unsqueeze(1)).unsqueeze(cd)
            dz = probs.mul_(-w).scatter_add_(cd, idx, w)  # w (onehot_y - softmax)
            sums["mu"] += dz.sum(sd)
            if factors is not None:
                sums["factors"] += dz @ er.transpose(-1, -2) if cm else er.transpose(-1, -2) @ dz
            if factor_basis is not None:
                a = factor_basis @ er if cm else er @ factor_basis.T  # J eps_R per draw
                sums["factor_scale"] += (dz * a).sum(sd)
                dz_v = dz * factor_scale.unsqueeze(sd)
                sums["factor_basis"] += (
                    dz_v @ er.transpose(-1, -2) if cm else dz_v.transpose(-1, -2) @ er
                )
            sums["scale"] += dz.mul_(ek).sum(sd)
        total = torch.logsumexp(log_p, 1)
        ctx.with_grad = with_grad
        if with_grad:
            if factors is not None and not cm:
                sums["factors"] = sums["factors"].transpose(1, 2)
            ctx.names = list(sums)
            # divide by sum_s exp(log p_s - m) = exp(L - m) to turn the sums into w_s-weighted ones
            ctx.save_for_backward(torch.exp(running_max - total), *sums.values())
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if not ctx.with_grad:
            raise RuntimeError("the HET log-likelihood was computed without gradients")
        inv_norm, *sums = ctx.saved_tensors
        g = grad * inv_norm  # (B,)
        out = {}
        for name, t in zip(ctx.names, sums, strict=True):
            weighted = t * g.view(-1, *([1] * (t.dim() - 1)))
            out[name] = weighted.sum(0) if name == "factor_basis" else weighted
        return (None, None, None, None, None, None) + tuple(
            out.get(n) for n in ("mu", "scale", "factors", "factor_scale", "factor_basis")
        )


class HetHead(nn.Module):
    """Heteroscedastic last layer over any backbone feature of size ``in_features``.

    Args:
        num_factors: R >= 0; R = 0 keeps only the diagonal d(x).
        task: "multiclass" (softmax) or "multilabel" (sigmoid).
        parameter_efficient: V(x) = diag(v(x)) J with J (K x R) input independent.
        temperature: a fixed tau, or "learned": tau = lo + (hi - lo) * sigmoid(t).
        share_samples_across_batch: one eps draw per step for the whole batch.
        chunk_elements: cap on B x C x K elements processed at once. None: about a
            million (4 MB) on a CPU, where that keeps a chunk in cache and larger chunks
            are slower, and 16 million (64 MB) on a GPU, where fewer, larger kernels win.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_factors: int = 4,
        task: str = MULTICLASS,
        parameter_efficient: bool = False,
        temperature: float | str = 1.0,
        temperature_bounds: tuple[float, float] = (0.3, 3.0),
        initial_temperature: float = 1.0,
        train_mc_samples: int = 200,
        eval_mc_samples: int = 1000,
        share_samples_across_batch: bool = True,
        min_scale: float = 1e-3,
        chunk_elements: int | None = None,
    ):
        super().__init__()
        if task not in (MULTICLASS, MULTILABEL):
            raise ValueError(f"task must be {MULTICLASS!r} or {MULTILABEL!r}, got {task!r}")
        if num_factors < 0:
            raise ValueError(f"num_factors must be >= 0, got {num_factors}")
        if train_mc_samples < 1 or eval_mc_samples < 1:
            raise ValueError("train_mc_samples and eval_mc_samples must be >= 1")
        self.num_classes = num_classes
        self.num_factors = num_factors
        self.task = task
        self.parameter_efficient = parameter_efficient and num_factors > 0
        self.train_mc_samples = train_mc_samples
        self.eval_mc_samples = eval_mc_samples
        self.share_samples_across_batch = share_samples_across_batch
        self.min_scale = min_scale
        self.chunk_elements = chunk_elements
        # Multiclass draws are laid out class-major below this many classes (faster there).
        self.class_major = task == MULTICLASS and num_classes <= CLASS_MAJOR_MAX_CLASSES

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

        self.learned_temperature = temperature == "learned"
        if self.learned_temperature:
            lo, hi = temperature_bounds
            if not 0 < lo < initial_temperature < hi:
                raise ValueError(f"initial temperature {initial_temperature} outside ({lo}, {hi})")
            frac = (initial_temperature - lo) / (hi - lo)
            self.register_buffer("temperature_bounds", torch.tensor([lo, hi]))
            self.temperature_logit = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))
        else:
            tau = float(temperature)
            if not tau > 0:
                raise ValueError(f"temperature must be > 0, got {temperature!r}")
            self.register_buffer("fixed_temperature", torch.tensor(tau))

    @property
    def temperature(self) -> torch.Tensor:
        if self.learned_temperature:
            lo, hi = self.temperature_bounds
            return lo + (hi - lo) * torch.sigmoid(self.temperature_logit)
        return self.fixed_temperature

    def latent(self, h: torch.Tensor) -> LogitGaussian:
        mu = self.loc(h)
        scale = F.softplus(self.diag(h)) + self.min_scale
        if self.factor is None:
            return LogitGaussian(mu, scale)
        if self.parameter_efficient:
            return LogitGaussian(
                mu, scale, factor_scale=self.factor(h), factor_basis=self.factor_basis
            )
        factors = self.factor(h).view(h.shape[0], self.num_classes, self.num_factors)
        return LogitGaussian(mu, scale, factors=factors)

    forward = latent

    # -- noise ---------------------------------------------------------------

    def draw_noise(
        self, batch: int, num_samples: int, device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        shared = self.share_samples_across_batch
        eps_k = torch.randn(
            _noise_shape(batch, num_samples, self.num_classes, shared),
            device=device,
            generator=generator,
        )
        eps_r = None
        if self.num_factors:
            eps_r = torch.randn(
                _noise_shape(batch, num_samples, self.num_factors, shared),
                device=device,
                generator=generator,
            )
        return eps_r, eps_k

    def chunk_size(self, batch: int, device=None) -> int:
        """Samples per chunk so that one chunk holds at most chunk_elements logits."""
        elements = self.chunk_elements
        if elements is None:
            on_gpu = device is not None and torch.device(device).type == "cuda"
            elements = GPU_CHUNK_ELEMENTS if on_gpu else CPU_CHUNK_ELEMENTS
        return max(1, elements // max(1, batch * self.num_classes))

    def _scaled_latent_and_noise(self, h, num_samples, generator, noise):
        """The Gaussian of z = u / tau and the noise to draw it with."""
        latent = self.latent(h).scaled(1.0 / self.temperature)
        if noise is None:
            s = num_samples or (self.train_mc_samples if self.training else self.eval_mc_samples)
            noise = self.draw_noise(h.shape[0], s, h.device, generator)
        return latent, noise

    # -- training loss -------------------------------------------------------

    def loss(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        noise: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mean negative log-likelihood of the MC predictive, computed in log space."""
        return -self.log_likelihood(h, y, num_samples, generator, noise).mean()

    def log_likelihood(self, h, y, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        """log p_hat(y|x) per example, (B,), accumulated chunk by chunk over the samples.

        multiclass: logsumexp_s log_softmax(z_s)_y - log S
        multilabel: sum_k [y_k log p_k + (1 - y_k) log(1 - p_k)], with
                    log p_k = logsumexp_s logsigmoid(z_s,k) - log S and
                    log(1 - p_k) = logsumexp_s logsigmoid(-z_s,k) - log S
        """
        latent, (eps_r, eps_k) = self._scaled_latent_and_noise(h, num_samples, generator, noise)
        num = eps_k.shape[-2]
        chunk = self.chunk_size(h.shape[0], h.device)
        if self.task == MULTICLASS:
            parts = (
                latent.mu,
                latent.scale,
                latent.factors,
                latent.factor_scale,
                latent.factor_basis,
            )
            with_grad = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in parts
            )
            total = _MulticlassLogLikelihood.apply(
                y, chunk, self.class_major, with_grad, eps_r, eps_k, *parts
            )
            return total - math.log(num)
        slices = chunk_slices(num, chunk)
        pos, neg = [], []
        for sl in slices:
            args = (latent, None if eps_r is None else eps_r[..., sl, :], eps_k[..., sl, :])
            if len(slices) > 1 and torch.is_grad_enabled():
                # Recompute this chunk in backward instead of keeping its B x C x K graph.
                p, n = checkpoint(_multilabel_chunk_loglik, *args, use_reentrant=False)
            else:
                p, n = _multilabel_chunk_loglik(*args)
            pos.append(p)
            neg.append(n)
        log_p = torch.logsumexp(torch.stack(pos, 0), 0) - math.log(num)
        log_not_p = torch.logsumexp(torch.stack(neg, 0), 0) - math.log(num)
        y = y.to(log_p.dtype)
        return (y * log_p + (1 - y) * log_not_p).sum(-1)

    # -- prediction ------------------------------------------------------------

    @torch.no_grad()
    def predict(self, h, num_samples=None, generator=None, noise=None) -> torch.Tensor:
        """p_hat = 1/S sum_s softmax(z_s) (sigmoid for multilabel), (B, K); the mean only."""
        if noise is None:
            noise = self.draw_noise(
                h.shape[0], num_samples or self.eval_mc_samples, h.device, generator
            )
        latent, (eps_r, eps_k) = self._scaled_latent_and_noise(h, None, generator, noise)
        draws = _Draws(
            latent, eps_r, eps_k, self.chunk_size(h.shape[0], h.device), self.class_major
        )
        total = torch.zeros_like(latent.mu)
        for _, _, _, z in draws:
            p = torch.softmax(z, draws.class_dim) if self.task == MULTICLASS else z.sigmoid_()
            total += p.sum(draws.sample_dim)
        return total / draws.num_samples

    @torch.no_grad()
    def moments(self, h, num_samples=None, generator=None, noise=None) -> dict[str, torch.Tensor]:
        """MC moments of the sampled probabilities, accumulated chunk by chunk.

        Returns probs (mean), prob_std (per-class std over samples, with S - 1),
        expected_entropy (mean per-sample entropy; per label for multilabel) and
        num_samples. The sample count defaults to eval_mc_samples.
        """
        if noise is None:
            noise = self.draw_noise(
                h.shape[0], num_samples or self.eval_mc_samples, h.device, generator
            )
        latent, (eps_r, eps_k) = self._scaled_latent_and_noise(h, None, generator, noise)
        num = eps_k.shape[-2]
        # Sums of p - p_0 with p_0 the noise-free prediction: E[p^2] - E[p]^2 in float32
        # cancels catastrophically when the spread is far below p, shifted sums do not.
        shift = (
            torch.softmax(latent.mu, -1) if self.task == MULTICLASS else torch.sigmoid(latent.mu)
        )
        total = torch.zeros_like(latent.mu)
        total_sq = torch.zeros_like(latent.mu)
        ent_shape = (h.shape[0],) if self.task == MULTICLASS else latent.mu.shape
        total_ent = torch.zeros(ent_shape, device=h.device, dtype=latent.mu.dtype)
        draws = _Draws(
            latent, eps_r, eps_k, self.chunk_size(h.shape[0], h.device), self.class_major
        )
        cd, sd = draws.class_dim, draws.sample_dim
        for _, _, _, z in draws:
            if self.task == MULTICLASS:
                p = torch.softmax(z, cd)
                # H = -sum_k p_k log p_k = lse - sum_k p_k z_k; shifted by max z (so both
                # terms stay small for a confident draw): -log p_max - sum_k p_k (z_k - max z)
                z.sub_(z.amax(cd, keepdim=True))
                total_ent -= (p.amax(cd).log() + torch.linalg.vecdot(p, z, dim=cd)).sum(-1)
            else:
                p = torch.sigmoid(z)
                total_ent += _binary_entropy_from_logits(z).sum(sd)
            p.sub_(shift.unsqueeze(sd))
            total += p.sum(sd)
            total_sq += p.square_().sum(sd)
        mean_shifted = total / num
        var = (total_sq / num - mean_shifted.square()).clamp_min(0) * (num / max(num - 1, 1))
        return {
            "probs": shift + mean_shifted,
            "prob_std": var.sqrt(),
            "expected_entropy": total_ent / num,
            "num_samples": torch.tensor(num),
        }


def _binary_entropy_from_logits(z: torch.Tensor) -> torch.Tensor:
    """H[Bernoulli(sigmoid(z))] = softplus(z) - z * sigmoid(z), stable for large |z|."""
    return F.softplus(z) - z * torch.sigmoid(z)


def _multilabel_chunk_loglik(latent: LogitGaussian, eps_r, eps_k):
    """logsumexp_s logsigmoid(+-z_s) over one chunk of draws: two (B, K) tensors."""
    z = latent.sample(eps_r, eps_k)  # (B, C, K)
    return torch.logsumexp(F.logsigmoid(z), 1), torch.logsumexp(F.logsigmoid(-z), 1)


class LinearHead(nn.Module):
    """The baseline: a plain linear softmax (sigmoid) head, same interface as HetHead.

    It is deterministic: sample counts are accepted and ignored, and the latent
    Gaussian has zero scale, so the uncertainty outputs degrade to their exact values.
    """

    num_factors = 0
    parameter_efficient = False
    learned_temperature = False

    def __init__(self, in_features: int, num_classes: int, task: str = MULTICLASS, **_ignored):
        super().__init__()
        if task not in (MULTICLASS, MULTILABEL):
            raise ValueError(f"task must be {MULTICLASS!r} or {MULTILABEL!r}, got {task!r}")
        self.num_classes = num_classes
        self.task = task
        self.train_mc_samples = self.eval_mc_samples = 1
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
    def moments(self, h, num_samples=None, generator=None, noise=None) -> dict[str, torch.Tensor]:
        logits = self.loc(h)
        if self.task == MULTICLASS:
            logp = torch.log_softmax(logits, -1)
            probs = logp.exp()
            ent = -(probs * logp).sum(-1)
        else:
            probs = torch.sigmoid(logits)
            ent = _binary_entropy_from_logits(logits)
        return {
            "probs": probs,
            "prob_std": torch.zeros_like(probs),
            "expected_entropy": ent,
            "num_samples": torch.tensor(1),
        }


def build_head(kind: str, in_features: int, num_classes: int, task: str, **options) -> nn.Module:
    """``kind`` is "het" or "softmax" (the linear baseline; sigmoid for multilabel)."""
    if kind == "het":
        return HetHead(in_features, num_classes, task=task, **options)
    if kind == "softmax":
        return LinearHead(in_features, num_classes, task=task)
    raise ValueError(f"unknown head kind {kind!r}")
