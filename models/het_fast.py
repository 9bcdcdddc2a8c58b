"""The HET head's fast estimators: the same numbers as the reference in ``models.het_formula``.

``log_likelihood``, ``predict`` and ``moments`` here compute exactly what
``models.het_formula.reference_log_likelihood`` and ``reference_moments`` compute from the same
tempered Gaussian and the same noise (to floating-point rounding; gradients included).
``tests/models/test_het_fast.py`` checks it for both paths below: the torch path in
float64 (multiclass and multilabel, parameter-efficient or not, R = 0, shared or
per-example noise, one chunk or many, both layouts), the kernel in float32 against the
float64 reference (K = 10 and 100, shared, per-example and seeded noise, a confidently
wrong example whose log p is far below -100).

Two paths, under one ``if`` in each function:

**The fused CPU kernel** (``models/het_kernel.c``, compiled at first use by
``models.het_kernel``): the multiclass head in float32 on a CPU, any R, the
parameter-efficient V = diag(v) J passed as the explicit (B, K, R) V (autograd maps its
gradient back to v and J). One thread owns one example at a time and, per block of 8
draws, forms z = mu + V eps_R + d * eps_K, its max, exp, logsumexp, the label's log p,
the posterior weight and the gradient sums (d mu, d d, d V) while they sit in L1: the
same math and the same running reference as ``_MulticlassLogLikelihood`` below, returning
the per-example gradients with the value. With few classes (K <= 24) the 8 draws go
across the vector lanes instead (class-major), so no lane is padding. One parallel
region per call, on torch's own OpenMP threads (the kernel binds to the libgomp torch
loaded, so no second pool competes with torch's), with examples handed out by an atomic
counter: a thread whose core is shared with another process takes fewer examples
instead of holding the others at a join. Per-example noise is drawn inside the kernel (counter-based SplitMix64 +
Box-Muller) from a seed (``SeededNoise``), so the B x S x (K + R) noise tensor is never
formed; ``SeededNoise.materialise`` gives the same numbers as tensors for the reference.

**The torch path** for everything else (multilabel, float64, CUDA, or
``HETSERVE_HET_KERNEL=torch``, or no C compiler on the machine):

- **Chunks.** The S draws are processed in chunks of about a million logits (in cache on
  a CPU; 16 million on a GPU, where fewer, larger kernels win), so the B x S x K tensor
  never exists whole. Peak memory is one chunk.
- **Multiclass backward.** ``_MulticlassLogLikelihood`` accumulates the gradient in the
  same pass over the chunks as the value (no autograd graph per chunk, no second draw),
  against a running per-example reference so that nothing underflows when every
  log p_s is far below -100. The multilabel loss recomputes its chunks through
  activation checkpointing instead.
- **Layout.** With few classes the draws are laid out class-major, (B, K, C), so a
  reduction over K is a vectorised reduction across rows rather than many tiny ones.
- **One GEMM.** mu + V eps_R is ``[1, eps_R] @ [mu; V^T]``, the stacked matrix built once
  and reused by every chunk; the parameter-efficient diag(v) J eps_R is v * (J eps_R).

**The dense layers** (mu, d and V from the feature h; ``dense_layers``, used by
``HetHead.latent`` where the kernel applies and torch carries MKL): the same GEMMs as
``nn.Linear``'s, forward and backward, cut into blocks of rows or columns that torch's
threads take from an atomic counter (``het_kernel.gemm_blocks``), each block one
single-threaded MKL sgemm. A 2-thread BLAS GEMM splits statically, so beside a busy
process the thread on the free core waits for the one on the busy core; here it takes
more blocks instead.

Both: **stable moments.** The std of the sampled probabilities is summed around the
noise-free prediction softmax(mu / tau), so E[p^2] - E[p]^2 does not cancel in float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models import het_kernel
from models.generators import generator_device

CLASS_MAJOR_MAX_CLASSES = 32  # multiclass draws are laid out class-major up to this many classes
CPU_CHUNK_ELEMENTS = 1 << 20
GPU_CHUNK_ELEMENTS = 1 << 24
RESCALE_MARGIN = 30.0  # nats a draw's log p_s may exceed the reference m before rescaling


def chunk_slices(num_samples: int, chunk: int) -> list[slice]:
    """[0, S) cut into consecutive slices of at most ``chunk`` samples."""
    return [slice(start, min(start + chunk, num_samples)) for start in range(0, num_samples, chunk)]


def chunk_size(batch: int, num_classes: int, chunk_elements: int | None, device=None) -> int:
    """Samples per chunk so that one chunk holds at most ``chunk_elements`` logits
    (None: CPU_CHUNK_ELEMENTS on a CPU, GPU_CHUNK_ELEMENTS on a GPU)."""
    if chunk_elements is None:
        on_gpu = device is not None and torch.device(device).type == "cuda"
        chunk_elements = GPU_CHUNK_ELEMENTS if on_gpu else CPU_CHUNK_ELEMENTS
    return max(1, chunk_elements // max(1, batch * num_classes))


class _Draws:
    """Chunks of z = latent.sample(eps) in one of two layouts.

    sample-major (B, C, K), classes in dim 2, fast for many classes; class-major
    (B, K, C), classes in dim 1, fast for few. ``class_dim`` and ``sample_dim`` say
    which is which; noise is transposed once, up front, for the class-major layout.
    """

    def __init__(self, latent, eps_r, eps_k, chunk: int, class_major: bool):
        self.latent, self.chunk, self.class_major = latent, chunk, class_major
        self.class_dim, self.sample_dim = (1, 2) if class_major else (2, 1)
        if latent.num_factors == 0:
            eps_r = None
        if class_major:
            eps_k = eps_k.transpose(-1, -2).contiguous()
            eps_r = None if eps_r is None else eps_r.transpose(-1, -2).contiguous()
        self.eps_r, self.eps_k = eps_r, eps_k
        self.num_samples = eps_k.shape[-1] if class_major else eps_k.shape[-2]
        self._stacked: torch.Tensor | None = (
            None  # [mu; V^T] (B, 1 + R, K), or [mu, V] (B, K, 1 + R) class-major
        )

    def sample(self, eps_r, eps_k) -> torch.Tensor:
        """latent.sample(eps_r, eps_k) for one chunk, in this layout; a fresh tensor.

        Class-major, the noise comes transposed: eps_k (K, C) or (B, K, C), eps_r (R, C)
        or (B, R, C).
        """
        lat, cm = self.latent, self.class_major
        sample_dim = -1 if cm else 1
        mu, scale = lat.mu.unsqueeze(sample_dim), lat.scale.unsqueeze(sample_dim)
        if eps_r is None:
            return torch.addcmul(mu, scale, eps_k)
        if lat.factor_basis is not None:
            # diag(v) J eps = v * (J eps): one (C, K) product shared by the batch when eps
            # is shared, instead of a B x C x K x R contraction.
            u = torch.addcmul(mu, scale, eps_k)
            if cm:
                return u.addcmul_(lat.factor_scale.unsqueeze(-1), lat.factor_basis @ eps_r)
            return u.addcmul_(lat.factor_scale.unsqueeze(1), eps_r @ lat.factor_basis.T)
        # mu + V eps_R as one GEMM with the stacked [mu; V^T], then d * eps_K in place.
        if cm:
            if self._stacked is None:
                self._stacked = torch.cat([lat.mu.unsqueeze(-1), lat.factors], -1)
            ones = eps_r.new_ones(*eps_r.shape[:-2], 1, eps_r.shape[-1])
            u = torch.matmul(self._stacked, torch.cat([ones, eps_r], -2))
        else:
            if self._stacked is None:
                self._stacked = torch.cat([lat.mu.unsqueeze(1), lat.factors.transpose(1, 2)], 1)
            ones = eps_r.new_ones(*eps_r.shape[:-1], 1)
            u = torch.matmul(torch.cat([ones, eps_r], -1), self._stacked)
        return u.addcmul_(scale, eps_k)

    def __iter__(self):
        """(slice, eps_r chunk, eps_k chunk, z chunk), z a fresh tensor the caller may overwrite."""
        for sl in chunk_slices(self.num_samples, self.chunk):
            if self.class_major:
                er = None if self.eps_r is None else self.eps_r[..., sl]
                ek = self.eps_k[..., sl]
            else:
                er = None if self.eps_r is None else self.eps_r[..., sl, :]
                ek = self.eps_k[..., sl, :]
            yield sl, er, ek, self.sample(er, ek)

    def label_index(self, y: torch.Tensor, num: int) -> torch.Tensor:
        """y broadcast for gather/scatter along the class dim of a chunk of num draws."""
        return (
            y.view(-1, 1, 1).expand(-1, 1, num)
            if self.class_major
            else y.view(-1, 1, 1).expand(-1, num, 1)
        )


# -- noise drawn inside the kernel ----------------------------------------------------


class SeededNoise(NamedTuple):
    """Per-example noise the fused kernel draws itself, from ``seed``: S draws of
    (eps_R, eps_K) per example, never materialised as a B x S x (K + R) tensor
    (``materialise`` gives the same numbers as tensors, for the reference)."""

    seed: int
    num_samples: int

    @classmethod
    def draw(cls, num_samples: int, generator: torch.Generator | None = None) -> SeededNoise:
        """A fresh seed from torch's generator (``generator``, else the global one), so
        torch.manual_seed and seeded generators reproduce the draws as before."""
        device = generator_device(generator)
        seed = int(
            torch.randint(
                -(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator, device=device
            )
        )
        return cls(seed, num_samples)

    def materialise(self, batch: int, num_classes: int, num_factors: int):
        """(eps_R (B, S, R) or None, eps_K (B, S, K)): the noise the kernel draws."""
        return het_kernel.normals(self.seed, batch, self.num_samples, num_classes, num_factors)


def kernel_draws_noise(multiclass: bool, h: torch.Tensor) -> bool:
    """Whether the fused kernel takes this head's estimates (and can draw their noise)."""
    return multiclass and het_kernel.applies(h)


def seeded_log_likelihood(latent, y, noise: SeededNoise) -> torch.Tensor:
    """= log_likelihood(latent, y, *noise.materialise(...), multiclass=True, ...)."""
    factors = latent.factor_matrix() if latent.num_factors else None
    total = _KernelLogLikelihood.apply(
        latent.mu, latent.scale, factors, None, None, y, _needs_grad(latent, factors), noise
    )
    return total - math.log(noise.num_samples)


def seeded_moments(latent, noise: SeededNoise, second: bool = True) -> dict[str, torch.Tensor]:
    """= moments(latent, *noise.materialise(...), multiclass=True, ...); probs only unless
    ``second``."""
    factors = latent.factor_matrix() if latent.num_factors else None
    shift = torch.softmax(latent.mu, -1) if second else None
    sums = het_kernel.moment_sums(
        latent.mu, latent.scale, factors, None, None, shift, second, noise.seed, noise.num_samples
    )
    total, total_sq, total_ent = sums
    if not second:
        return {"probs": total / noise.num_samples}
    return _finish_moments(shift, total, total_sq, total_ent, noise.num_samples)


def _needs_grad(latent, factors) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (latent.mu, latent.scale, factors)
    )


# -- the log-likelihood ---------------------------------------------------------------


def log_likelihood(
    latent, y, eps_r, eps_k, multiclass: bool, chunk: int, class_major: bool
) -> torch.Tensor:
    """= reference_log_likelihood(latent, y, eps_r, eps_k, task), chunk by chunk; (B,).

    ``latent`` is the LogitGaussian of z = u / tau; ``chunk`` draws at a time."""
    num = eps_k.shape[-2]
    if multiclass and het_kernel.applies(latent.mu, eps_r, eps_k):
        factors = latent.factor_matrix() if latent.num_factors else None
        total = _KernelLogLikelihood.apply(
            latent.mu, latent.scale, factors, eps_r if factors is not None else None, eps_k, y,
            _needs_grad(latent, factors), None,
        )  # fmt: skip
        return total - math.log(num)
    if multiclass:
        parts = (latent.mu, latent.scale, latent.factors, latent.factor_scale, latent.factor_basis)
        with_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in parts
        )
        total = _MulticlassLogLikelihood.apply(
            latent, y, chunk, class_major, with_grad, eps_r, eps_k, *parts
        )
        return total - math.log(num)
    draws = _Draws(latent, eps_r, eps_k, chunk, class_major=False)
    slices = chunk_slices(num, chunk)
    pos, neg = [], []
    for sl in slices:
        args = (draws, None if draws.eps_r is None else draws.eps_r[..., sl, :], eps_k[..., sl, :])
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


def _multilabel_chunk_loglik(draws: _Draws, eps_r, eps_k):
    """logsumexp_s logsigmoid(+-z_s) over one chunk of draws: two (B, K) tensors."""
    z = draws.sample(eps_r, eps_k)  # (B, C, K)
    return torch.logsumexp(F.logsigmoid(z), 1), torch.logsumexp(F.logsigmoid(-z), 1)


def _softmax_and_logsumexp(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(z) and logsumexp(z) along dim with a single exp pass.

    The softmax at the argmax is exp(max - lse) = 1 / sum_k exp(z_k - max) >= 1/K, so
    lse = max - log(softmax at the argmax) is exact and never underflows.
    """
    probs = torch.softmax(z, dim)
    return probs, z.amax(dim) - probs.amax(dim).log()


class _KernelLogLikelihood(torch.autograd.Function):
    """L = logsumexp_s log_softmax(z_s)_y per example from the fused kernel, which returns
    dL/dmu, dL/dd and dL/dV with it (see _MulticlassLogLikelihood for the math)."""

    @staticmethod
    def forward(ctx, mu, scale, factors, eps_r, eps_k, y, with_grad, seeded):
        seed, num = (None, None) if seeded is None else seeded
        total, *grads = het_kernel.loglik(mu, scale, factors, eps_r, eps_k, y, with_grad, seed, num)
        ctx.with_grad = with_grad
        if with_grad:
            ctx.save_for_backward(*grads)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if not ctx.with_grad:
            raise RuntimeError("the HET log-likelihood was computed without gradients")
        g_mu, g_scale, g_factors = ctx.saved_tensors
        g = grad.view(-1, 1)
        g_factors = None if g_factors is None else g_factors * g.unsqueeze(-1)
        return g_mu * g, g_scale * g, g_factors, None, None, None, None, None


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
        latent,
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
        # latent holds the tensors passed below; they are passed too so that autograd
        # routes their gradients (backward returns one per argument)
        draws = _Draws(latent, eps_r, eps_k, chunk, class_major)
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
            assert running_max is not None  # set by the first chunk of draws
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
        return (None,) * 7 + tuple(
            out.get(n) for n in ("mu", "scale", "factors", "factor_scale", "factor_basis")
        )


# -- the predictive and its moments ------------------------------------------------


def predict(latent, eps_r, eps_k, multiclass: bool, chunk: int, class_major: bool) -> torch.Tensor:
    """= reference_moments(...)["probs"]: 1/S sum_s softmax(z_s) (sigmoid: multilabel), (B, K)."""
    num = eps_k.shape[-2]
    if multiclass and het_kernel.applies(latent.mu, eps_r, eps_k):
        factors, eps_r = _kernel_factors(latent, eps_r)
        total, _, _ = het_kernel.moment_sums(
            latent.mu, latent.scale, factors, eps_r, eps_k, None, second=False
        )
        return total / num
    draws = _Draws(latent, eps_r, eps_k, chunk, class_major)
    total = torch.zeros_like(latent.mu)
    for _, _, _, z in draws:
        p = torch.softmax(z, draws.class_dim) if multiclass else z.sigmoid_()
        total += p.sum(draws.sample_dim)
    return total / num


def _kernel_factors(latent, eps_r):
    """(V as the kernel takes it, eps_r), both None when R = 0."""
    if not latent.num_factors:
        return None, None
    return latent.factor_matrix(), eps_r


def moments(
    latent, eps_r, eps_k, multiclass: bool, chunk: int, class_major: bool
) -> dict[str, torch.Tensor]:
    """= reference_moments(latent, eps_r, eps_k, task): probs, prob_std, expected_entropy."""
    num = eps_k.shape[-2]
    # Sums of p - p_0 with p_0 the noise-free prediction: E[p^2] - E[p]^2 in float32
    # cancels catastrophically when the spread is far below p, shifted sums do not.
    shift = torch.softmax(latent.mu, -1) if multiclass else torch.sigmoid(latent.mu)
    if multiclass and het_kernel.applies(latent.mu, eps_r, eps_k):
        factors, eps_r = _kernel_factors(latent, eps_r)
        total, total_sq, total_ent = het_kernel.moment_sums(
            latent.mu, latent.scale, factors, eps_r, eps_k, shift, second=True
        )
    else:
        total, total_sq, total_ent = _moment_sums(
            latent, eps_r, eps_k, multiclass, chunk, class_major, shift
        )
    return _finish_moments(shift, total, total_sq, total_ent, num)


def _finish_moments(shift, total, total_sq, total_ent, num: int) -> dict[str, torch.Tensor]:
    """probs, prob_std, expected_entropy from the sums of p_s - shift, its square and H[p_s]."""
    mean_shifted = total / num
    var = (total_sq / num - mean_shifted.square()).clamp_min(0) * (num / max(num - 1, 1))
    return {
        "probs": shift + mean_shifted,
        "prob_std": var.sqrt(),
        "expected_entropy": total_ent / num,
    }


def _moment_sums(latent, eps_r, eps_k, multiclass, chunk, class_major, shift):
    """sum_s (p_s - shift), sum_s (p_s - shift)^2 and sum_s H[p_s], chunk by chunk."""
    draws = _Draws(latent, eps_r, eps_k, chunk, class_major)
    total = torch.zeros_like(latent.mu)
    total_sq = torch.zeros_like(latent.mu)
    ent_shape = latent.mu.shape[:1] if multiclass else latent.mu.shape
    total_ent = latent.mu.new_zeros(ent_shape)
    cd, sd = draws.class_dim, draws.sample_dim
    for _, _, _, z in draws:
        if multiclass:
            p = torch.softmax(z, cd)
            # H = -sum_k p_k log p_k = lse - sum_k p_k z_k; shifted by max z (so both
            # terms stay small for a confident draw): -log p_max - sum_k p_k (z_k - max z)
            z.sub_(z.amax(cd, keepdim=True))
            total_ent -= (p.amax(cd).log() + torch.linalg.vecdot(p, z, dim=cd)).sum(-1)
        else:
            p = torch.sigmoid(z)
            total_ent += (F.softplus(z) - z * p).sum(sd)  # H[Bernoulli(sigmoid(z))]
        p.sub_(shift.unsqueeze(sd))
        total += p.sum(sd)
        total_sq += p.square_().sum(sd)
    return total, total_sq, total_ent


# -- the dense layers ------------------------------------------------------------------

# How the GEMMs are cut (het_kernel.c's dense-layer section): blocks of at least ~0.1 ms on
# one thread and 128 rows or columns (thinner ones cost the BLAS its efficiency), a
# multiple of 16 (whole vectors); passes below ~0.25 ms on the calling thread alone
DENSE_BLOCKING = het_kernel.Blocking(
    task_fmas=1 << 22, align=16, min_units=128, parallel_fmas=1 << 23
)
# Below this many multiply-adds a forward pass is torch's own GEMM: in the contention runs
# that introduced the split (bench/head_speed.py --contention), passes this short gained
# nothing from it while its task set-up cost up to 0.1 ms on a quiet machine. The backward
# pass, two to three times longer, keeps the dynamic split at every size.
DENSE_DYNAMIC_FORWARD_FMAS = 1 << 28


def dense_forward_fmas(h: torch.Tensor, weights) -> int:
    """Multiply-adds of h (B, D) times each W_l (N_l, D) transposed."""
    return h.shape[0] * h.shape[1] * sum(w.shape[0] for w in weights)


def dense_applies(h: torch.Tensor, layers: list[torch.nn.Linear]) -> bool:
    """Whether ``dense_layers`` takes these layers: float32 on a CPU, the kernel and torch's
    MKL sgemm found, and no tracing (export and torch.compile see the plain layers). A
    forward pass without autograd below DENSE_DYNAMIC_FORWARD_FMAS is the plain layers:
    the Function's bookkeeping would be all it adds."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or h.dim() != 2:
        return False
    weights = [m.weight for m in layers]
    if dense_forward_fmas(h, weights) < DENSE_DYNAMIC_FORWARD_FMAS and not (
        torch.is_grad_enabled() and (h.requires_grad or any(w.requires_grad for w in weights))
    ):
        return False
    if type(h) is not torch.Tensor or not het_kernel.applies(h, *weights):
        return False
    return het_kernel.blas() is not None


def dense_layers(h: torch.Tensor, layers: list[torch.nn.Linear]) -> tuple[torch.Tensor, ...]:
    """(layer(h) for layer in layers), forward and backward as GEMM blocks that torch's
    threads take dynamically (``het_kernel.dense_forward``): beside a busy process, the
    thread on the free core does most of them, where a 2-thread BLAS GEMM splits the work
    statically and then waits for the thread on the busy core."""
    flat = [t for m in layers for t in (m.weight, m.bias)]
    return _DenseLayers.apply(h, *flat)


class _DenseLayers(torch.autograd.Function):
    """y_l = h W_l^T + b_l for each layer l, h (B, D), W_l (N_l, D); dh and dW_l by the
    kernel's GEMM blocks, db_l = sum_b dy_l by torch. The forward pass takes the blocks from
    DENSE_DYNAMIC_FORWARD_FMAS multiply-adds up, torch's GEMM below."""

    @staticmethod
    def forward(ctx, h, *flat):
        h = h.contiguous()
        weights, biases = flat[0::2], flat[1::2]
        if dense_forward_fmas(h, weights) < DENSE_DYNAMIC_FORWARD_FMAS:
            outputs = [F.linear(h, w, b) for w, b in zip(weights, biases, strict=True)]
        else:
            outputs = [h.new_empty(h.shape[0], w.shape[0]) for w in weights]
            het_kernel.dense_forward(h, weights, biases, outputs, DENSE_BLOCKING)
        ctx.save_for_backward(h, *weights)
        ctx.has_bias = [bias is not None for bias in biases]
        return tuple(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *upstream):
        h, *weights = ctx.saved_tensors
        grads = [
            h.new_zeros(h.shape[0], w.shape[0]) if g is None else g.contiguous()
            for g, w in zip(upstream, weights, strict=True)
        ]
        wanted = ctx.needs_input_grad
        grad_h = torch.empty_like(h) if wanted[0] else None
        grad_weights = [
            torch.empty_like(w) if wanted[1 + 2 * i] else None for i, w in enumerate(weights)
        ]
        het_kernel.dense_backward(h, weights, grads, grad_h, grad_weights, DENSE_BLOCKING)
        grad_biases = [
            g.sum(0) if has and wanted[2 + 2 * i] else None
            for i, (g, has) in enumerate(zip(grads, ctx.has_bias, strict=True))
        ]
        return (grad_h, *(t for pair in zip(grad_weights, grad_biases, strict=True) for t in pair))
