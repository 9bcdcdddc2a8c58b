"""A classifier = input standardisation + backbone + head (HET or linear baseline)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.spec import RunSpec
from models.backbones import build_backbone
from models.heads import Head, build_head


class Classifier(nn.Module):
    # buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        mean: np.ndarray,
        std: np.ndarray,
        freeze_backbone: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # Frozen: no gradient into the backbone, and always in eval mode, so its
        # batch-norm statistics stay those it was loaded with (only the head trains).
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        # Standardisation statistics travel with the weights (and into the ONNX graph).
        self.register_buffer("input_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("input_std", torch.as_tensor(std, dtype=torch.float32))

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.input_mean) / self.input_std)

    def forward(self, x: torch.Tensor):
        return self.head.latent(self.features(x))

    def loss(self, x, y, num_samples=None, generator=None):
        return self.head.loss(self.features(x), y, num_samples, generator)

    def log_likelihood(self, x, y, num_samples=None, generator=None):
        return self.head.log_likelihood(self.features(x), y, num_samples, generator)

    @torch.no_grad()
    def predict(self, x, num_samples=None, generator=None):
        return self.head.predict(self.features(x), num_samples, generator)

    @torch.no_grad()
    def noise_free_probs(self, x):
        """softmax(mu(x) / tau) (sigmoid per label): the predictive without label noise."""
        return self.head.noise_free_probs(self.features(x))


def build_classifier(
    spec: RunSpec, input_shape: list[int], num_classes: int, mean: np.ndarray, std: np.ndarray
) -> Classifier:
    """Build from a RunSpec; the temperature must be a number or "learned" here
    ("auto" is resolved by the training loop's grid)."""
    backbone = build_backbone(spec.backbone, input_shape)
    head = build_head(spec.head, backbone.out_features, num_classes, spec.task)
    return Classifier(backbone, head, mean, std, freeze_backbone=spec.backbone.freeze)
