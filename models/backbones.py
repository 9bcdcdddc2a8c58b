"""Backbones f(x) = h in R^D: an MLP for vectors; for images [N, C, H, W] a small CNN,
torchvision's ResNet-18 and ResNet-50 (its parameter names, so its pretrained state
dicts load) and a CIFAR-stem ResNet-18. Each exposes ``out_features``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.datastore import within_roots
from models.generators import generator_device


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


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)): two 3x3 convolutions."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 down to ``planes``, 3x3 (carrying the stride), 1x1 up to 4 x ``planes``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet without its ``fc`` (the head replaces it), with torchvision's
    module names (conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, ...), so a state dict
    saved from ``torchvision.models.resnet18()``/``resnet50()`` loads unchanged.

    ImageNet stem: 7x7 stride-2 convolution and a 3x3 stride-2 max-pool (input / 4).
    ``small_input``: the CIFAR stem instead (3x3 stride-1 convolution, no max-pool), for
    images of a few dozen pixels trained from scratch.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        small_input: bool = False,
    ):
        super().__init__()
        if small_input:
            self.conv1 = conv3x3(in_channels, 64)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.out_features = 512 * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.in_planes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((-1, -2))  # torchvision's AdaptiveAvgPool2d(1) + flatten


RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int], bool]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), False),
    "resnet50": (Bottleneck, (3, 4, 6, 3), False),
    "resnet18_cifar": (BasicBlock, (2, 2, 2, 2), True),
}


class WeightsError(ValueError):
    """backbone.weights cannot be used: missing, unreadable, or not this architecture."""


def weights_path(uri: str, weights_dir: str | Path | None = None) -> Path:
    """The local file a ``backbone.weights`` value names: a ``file://`` URI, an absolute
    path, or a path relative to ``weights_dir`` (HETSERVE_WEIGHTS_DIR). When
    ``weights_dir`` is set, the file (symlinks followed) must lie inside it."""
    path = Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)
    if not path.is_absolute():
        if weights_dir is None:
            raise WeightsError(
                f"backbone.weights {uri!r} is a relative path: give an absolute path or "
                "set HETSERVE_WEIGHTS_DIR on the worker"
            )
        path = Path(weights_dir) / path
    if weights_dir is not None and not within_roots(path, [Path(os.path.realpath(weights_dir))]):
        raise WeightsError(f"backbone.weights {uri!r} is outside HETSERVE_WEIGHTS_DIR")
    if not path.is_file():
        raise WeightsError(f"backbone.weights: no such file {str(path)!r}")
    return path


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a state dict (``torch.save(model.state_dict())``, torchvision's included)
    into ``backbone``; its ``fc.*`` keys (the ImageNet classifier) are ignored. Raises
    WeightsError naming the first key, in the backbone's order, that is missing, has
    the wrong shape, or is not the backbone's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"backbone.weights {str(path)!r} is not a torch state dict: {exc}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"backbone.weights {str(path)!r} is not a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise WeightsError(f"backbone.weights {str(path)!r}: missing key {key!r}")
        if state[key].shape != value.shape:
            raise WeightsError(
                f"backbone.weights {str(path)!r}: key {key!r} has shape "
                f"{list(state[key].shape)}, the backbone needs {list(value.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise WeightsError(
            f"backbone.weights {str(path)!r}: unexpected key {extra[0]!r} "
            f"({len(extra)} not in the backbone)"
        )
    backbone.load_state_dict(state)


def resolve_weights(spec, input_shape: list[int], weights_dir: str | Path | None):
    """The BackboneSpec with ``weights`` as the absolute path of a file that loads into
    this backbone (checked by loading it: WeightsError names the first bad key)."""
    if spec.weights is None:
        return spec
    resolved = spec.model_copy(update={"weights": str(weights_path(spec.weights, weights_dir))})
    build_backbone(resolved, input_shape)
    return resolved


def build_backbone(spec, input_shape: list[int]) -> MLP | SmallCNN | ResNet:
    """From a BackboneSpec and one example's shape ([D] or [C, H, W]); with its
    ``weights`` loaded (an absolute path or file:// URI by now: the worker resolves)."""
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
    if spec.kind not in RESNETS:
        raise ValueError(f"unknown backbone kind {spec.kind!r}")
    block, layers, small_input = RESNETS[spec.kind]
    backbone = ResNet(block, layers, input_shape[0], small_input)
    if spec.weights:
        load_backbone_weights(backbone, weights_path(spec.weights))
    return backbone


def augment_images(
    x: torch.Tensor, pad: int = 4, hflip: bool = False, generator=None
) -> torch.Tensor:
    """Random crop after zero padding (and optionally a horizontal flip), per example.

    The offsets are drawn on ``generator``'s device (the CPU without one) and moved to x's."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    at = generator_device(generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=at).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=at).to(x.device)
    rows = dy.view(n, 1) + torch.arange(h, device=x.device)  # (N, H)
    cols = dx.view(n, 1) + torch.arange(w, device=x.device)  # (N, W)
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)].permute(
        0, 3, 1, 2
    )
    if hflip:
        flip = (torch.rand(n, generator=generator, device=at) < 0.5).to(x.device)
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
    return out.contiguous()
