"""The torch core of an exported model: features -> latent Gaussian -> MC outputs,
with the noise as a graph input (the sampler in ``models.export.sampler`` replaces it).

The HET core computes its outputs with the head's own code: ``HetHead.latent``,
``LogitGaussian.scaled`` (1/tau folded into the (B, K) tensors) and
``models.het_formula.reference_moments`` (one pass over S, so batch and S stay dynamic in the
graph), then the exact per-example fields of ``models.uncertainty`` and the noise-free
predictive softmax(mu / tau). The MC moments sit in a ``torch.cond`` on num_samples > 0,
exported as an ONNX ``If``, so a call with S = 0 costs only the deterministic parts.
Exported alone, with its ``noise`` and ``num_samples`` inputs, it is the "precomputed
noise" baseline of bench/export_speed.py.
"""

from __future__ import annotations

import onnx
import torch
from torch import nn

from core.onnx_contract import OUTPUT_NAMES, OUTPUTS, SAMPLED_OUTPUTS
from models import qmc
from models.classifier import Classifier
from models.heads import HetHead
from models.het_formula import (
    MULTICLASS,
    LogitGaussian,
    noise_free_from_logits,
    reference_moments,
)
from models.uncertainty import entropy_of, top_correlations

OPSET = 18


def is_sampled(model: Classifier) -> bool:
    return model.head.kind == "het"


def het_head(model: Classifier) -> HetHead:
    """The model's head as the HET head a sampled graph is built from (``is_sampled``)."""
    if not isinstance(model.head, HetHead):
        raise TypeError(f"a {model.head.kind} head has no sampled graph")
    return model.head


def noise_width(model: Classifier) -> int:
    """K + R: the columns of the shared noise matrix."""
    return model.head.num_classes + model.head.num_factors


def split_noise(noise: torch.Tensor, num_classes: int, num_factors: int):
    """The noise matrix [eps_K | eps_R] (S, K + R) as the head's (eps_R or None, eps_K)."""
    return (noise[:, num_classes:] if num_factors else None), noise[:, :num_classes]


class SampledCore(nn.Module):
    """forward(input, noise, num_samples) -> the OUTPUT_NAMES tensors, noise = [eps_K | eps_R]
    (S, K + R) shared by the batch; the moments are ``reference_moments`` of z = u / tau.

    The MC part is a ``torch.cond`` on num_samples > 0 (an ONNX ``If``; the sampler is moved
    into its then-branch): with num_samples <= 0 the SAMPLED_OUTPUTS are zeros and nothing is
    drawn, while noise_free_probs, noise_std and the correlations stay exact (the top
    classes then ranked by noise_free_probs)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor, noise: torch.Tensor, num_samples: torch.Tensor):  # noqa: A002 (graph input names)
        head = self.model.head
        latent = head.latent(self.model.features(input))
        noise_free = noise_free_from_logits(latent.scaled(1.0 / head.temperature).mu, head.task)
        sampled = num_samples > 0
        # u's own tensors go into the If and 1/tau is folded in there: whatever the branches
        # read is computed before the If runs, so S = 0 computes nothing it does not return
        moments = torch.cond(
            sampled, self._moments, self._placeholders, (noise, *_latent_tensors(latent))
        )
        values = dict(zip(SAMPLED_OUTPUTS, moments, strict=True))
        ranking = torch.where(sampled, values["probs"], noise_free)
        return outputs(latent, values, ranking, noise_free)

    def _moments(self, noise, mu, scale, *factor):
        head = het_head(self.model)
        z = _latent_from(mu, scale, factor, head).scaled(1.0 / head.temperature)
        eps_r, eps_k = split_noise(noise, head.num_classes, head.num_factors)
        groups = qmc.QMC_GROUPS if head.eval_noise == "qmc" else None
        m = reference_moments(z, eps_r, eps_k, head.task, groups)
        values = sampled_values(m, head.task)
        return tuple(values[name] for name in SAMPLED_OUTPUTS)

    def _placeholders(self, noise, mu, scale, *factor):
        """Zeros of each SAMPLED_OUTPUTS' shape: (B, K), or (B,) where a multiclass head
        has one value per example."""
        task = self.model.head.task
        per_example = mu[:, 0] if task == MULTICLASS else mu
        return tuple(
            torch.zeros_like(mu if "K" in output.dims(task) else per_example)
            for output in OUTPUTS
            if output.sampled
        )


def _latent_tensors(z: LogitGaussian) -> tuple[torch.Tensor, ...]:
    """The input-dependent tensors of a LogitGaussian, as torch.cond operands."""
    basis, factor_scale, factors = z.factor_basis, z.factor_scale, z.factors
    if basis is not None and factor_scale is not None:
        return z.mu, z.scale, factor_scale
    if factors is not None:
        return z.mu, z.scale, factors
    return z.mu, z.scale


def _latent_from(mu, scale, factor, head) -> LogitGaussian:
    """_latent_tensors' inverse (J, input independent, comes from the head)."""
    if not factor:
        return LogitGaussian(mu, scale)
    if head.parameter_efficient:
        return LogitGaussian(mu, scale, factor_scale=factor[0], factor_basis=head.factor_basis)
    return LogitGaussian(mu, scale, factors=factor[0])


class DeterministicCore(nn.Module):
    """forward(input) -> the OUTPUT_NAMES tensors for the linear baseline head: exact
    values, zeros where a quantity does not exist (prob_std, noise_std, correlations)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor):  # noqa: A002
        head = self.model.head
        h = self.model.features(input)
        values = sampled_values(head.moments(h), head.task)
        return outputs(head.latent(h), values, values["probs"], head.noise_free_probs(h))


def sampled_values(moments: dict, task: str) -> dict[str, torch.Tensor]:
    """The SAMPLED_OUTPUTS tensors by name, from a head's moments (probs, prob_std,
    expected_entropy, mc_stderr): entropy = H[probs]."""
    probs = moments["probs"]
    return {
        "probs": probs,
        "entropy": entropy_of(probs, task),
        "expected_entropy": moments["expected_entropy"],
        "prob_std": moments["prob_std"],
        "mc_stderr": moments["mc_stderr"],
    }


def outputs(
    latent: LogitGaussian,
    sampled: dict[str, torch.Tensor],
    ranking: torch.Tensor,
    noise_free: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The OUTPUT_NAMES tensors, in that order, from the latent of u, the SAMPLED_OUTPUTS
    by name (``sampled_values``), the probabilities that rank the top classes and the
    noise-free predictive."""
    classes, rho = top_correlations(latent, ranking)
    values = {
        **sampled,
        "noise_std": latent.variance().sqrt(),
        "top_classes": classes,
        "top_correlation": rho,
        "noise_free_probs": noise_free,
    }
    return tuple(values[name] for name in OUTPUT_NAMES)


def core_onnx(model: Classifier, input_shape: list[int]) -> onnx.ModelProto:
    """The torch-exported core of a CPU model. HET: inputs (input, noise, num_samples);
    baseline: (input)."""
    model.eval()
    x = torch.zeros([3, *input_shape])
    batch = torch.export.Dim("batch")
    if is_sampled(model):
        core: nn.Module = SampledCore(model)
        args = (x, torch.zeros(5, noise_width(model)), torch.tensor(5))
        dynamic = {
            "input": {0: batch},
            "noise": {0: torch.export.Dim("samples")},
            "num_samples": None,
        }
        input_names = ["input", "noise", "num_samples"]
    else:
        core = DeterministicCore(model)
        args = (x,)  # type: ignore[assignment]  # the deterministic core's one input
        dynamic = {"input": {0: batch}}
        input_names = ["input"]
    core.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            core,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            optimize=True,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    return program.model_proto
