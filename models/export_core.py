"""The torch core of an exported model: features -> latent Gaussian -> MC outputs,
with the noise as a graph input (the sampler in ``models.export_sampler`` replaces it).

The HET core computes its outputs with the head's own code: ``HetHead.latent``,
``LogitGaussian.scaled`` (1/tau folded into the (B, K) tensors) and
``models.heads.reference_moments`` (one pass over S, so batch and S stay dynamic in the
graph), then the exact per-example fields of ``models.uncertainty``. Exported alone, with
its ``noise`` input, it is the "precomputed noise" baseline of bench/export_speed.py.
"""

from __future__ import annotations

import onnx
import torch
from torch import nn

from models.classifier import Classifier
from models.heads import LogitGaussian, reference_moments
from models.onnx_contract import OUTPUT_NAMES
from models.uncertainty import entropy_of, top_correlations

OPSET = 18


def is_sampled(model: Classifier) -> bool:
    return model.head.kind == "het"


def noise_width(model: Classifier) -> int:
    """K + R: the columns of the shared noise matrix."""
    return model.head.num_classes + model.head.num_factors


def split_noise(noise: torch.Tensor, num_classes: int, num_factors: int):
    """The noise matrix [eps_K | eps_R] (S, K + R) as the head's (eps_R or None, eps_K)."""
    return (noise[:, num_classes:] if num_factors else None), noise[:, :num_classes]


class SampledCore(nn.Module):
    """forward(input, noise) -> the OUTPUT_NAMES tensors, noise = [eps_K | eps_R] (S, K + R)
    shared by the batch; the moments are ``reference_moments`` of z = u / tau."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor, noise: torch.Tensor):  # noqa: A002 (graph input name)
        head = self.model.head
        latent = head.latent(self.model.features(input))
        eps_r, eps_k = split_noise(noise, head.num_classes, head.num_factors)
        m = reference_moments(latent.scaled(1.0 / head.temperature), eps_r, eps_k, head.task)
        return outputs(latent, m, head.task)


class DeterministicCore(nn.Module):
    """forward(input) -> the OUTPUT_NAMES tensors for the linear baseline head: exact
    values, zeros where a quantity does not exist (prob_std, noise_std, correlations)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor):  # noqa: A002
        head = self.model.head
        h = self.model.features(input)
        return outputs(head.latent(h), head.moments(h), head.task)


def outputs(latent: LogitGaussian, moments: dict, task: str) -> tuple[torch.Tensor, ...]:
    """The OUTPUT_NAMES tensors, in order, from the latent of u and the MC moments."""
    probs = moments["probs"]
    classes, rho = top_correlations(latent, probs)
    return (
        probs,
        entropy_of(probs, task),
        moments["expected_entropy"],
        moments["prob_std"],
        latent.variance().sqrt(),
        classes,
        rho,
    )


def core_onnx(model: Classifier, input_shape: list[int]) -> onnx.ModelProto:
    """The torch-exported core of a CPU model. HET: inputs (input, noise); baseline: (input)."""
    model.eval()
    x = torch.zeros([3, *input_shape])
    batch = torch.export.Dim("batch")
    if is_sampled(model):
        core: nn.Module = SampledCore(model)
        args = (x, torch.zeros(5, noise_width(model)))
        dynamic = {"input": {0: batch}, "noise": {0: torch.export.Dim("samples")}}
        input_names = ["input", "noise"]
    else:
        core = DeterministicCore(model)
        args = (x,)
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
    return program.model_proto
