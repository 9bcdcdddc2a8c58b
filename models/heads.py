"""Classification heads: the heteroscedastic (HET) head and the linear baseline.

The formula they compute (the Gaussian on the logits, ``LogitGaussian``, and its
reference estimators) is ``models.het_formula``'s; the fast estimators are
``models.het_fast``'s. ``HetHead`` holds the layers that give the Gaussian of a backbone
feature, draws the noise (plain MC or randomized QMC, shared by the batch or per
example) and runs the fast estimators over it, or the reference when built with
``fast=False``.

Both heads follow ``Head`` (``latent``, ``loss``, ``log_likelihood``, ``predict``,
``moments``, ``noise_free_probs``, ``temperature``, ``task``) so training, evaluation and
export do not care which head they hold.

Two predictives: ``predict`` is the MC predictive (models.het_formula), which models the
noisy labels an annotator gives; ``noise_free_probs`` is ``softmax(mu(x) / tau)``
(sigmoid per label), the predictive with the learned label noise set to zero, which
answers "which class is it?". It is exact and costs what a softmax head costs.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.spec import HeadSpec
from models import het_fast, qmc
from models.generators import generator_device
from models.het_formula import (
    MULTICLASS,
    MULTILABEL,
    LogitGaussian,
    binary_entropy_from_logits,
    grouped_stderr,
    independent_stderr,
    noise_free_from_logits,
    reference_log_likelihood,
    reference_moments,
)

Noise = tuple[torch.Tensor | None, torch.Tensor]  # (eps_R, eps_K)


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
