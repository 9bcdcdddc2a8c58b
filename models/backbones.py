"""Backbones f(x) = h in R^D: an MLP for vectors, a small CNN and a CIFAR-style
ResNet-18 for images [N, C, H, W]. Each exposes ``out_features``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels), global average pool."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        blocks: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            blocks += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i < len(widths) - 1:
                blocks.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*blocks)
        self.out_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((-1, -2))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, four stages of two BasicBlocks."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        stages, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean((-1, -2))


def build_backbone(spec, input_shape: list[int]) -> nn.Module:
    """From a BackboneSpec and one example's shape ([D] or [C, H, W])."""
    if spec.kind == "mlp":
        if len(input_shape) != 1:
            raise ValueError(
                f"the mlp backbone takes vectors [N, D], got examples of shape {input_shape}"
            )
        return MLP(input_shape[0], spec.hidden, spec.dropout)
    if len(input_shape) != 3:
        raise ValueError(
            f"the {spec.kind} backbone takes images [N, C, H, W], got examples of shape {input_shape}"
        )
    if spec.kind == "cnn":
        return SmallCNN(input_shape[0])
    if spec.kind == "resnet18":
        return ResNet18(input_shape[0])
    raise ValueError(f"unknown backbone kind {spec.kind!r}")


def augment_images(
    x: torch.Tensor, pad: int = 4, hflip: bool = False, generator=None
) -> torch.Tensor:
    """Random crop after zero padding (and optionally a horizontal flip), per example."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)  # (N, H)
    cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)  # (N, W)
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)].permute(
        0, 3, 1, 2
    )
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
    return out.contiguous()
