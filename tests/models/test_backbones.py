"""models/backbones.py: torchvision's ResNets under torchvision's parameter names, their
pretrained weights loaded from a state dict, and a frozen backbone that only the head
trains against."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.dataset_files import ArrayDataset, validate
from core.spec import (
    BackboneSpec,
    HeadSpec,
    RunSpec,
    SpecMismatch,
    TrainSpec,
    check_fits,
    training_bytes,
)
from models.backbones import (
    WeightsError,
    build_backbone,
    load_backbone_weights,
    resolve_weights,
    weights_path,
)
from models.classifier import build_classifier
from models.train import train


def torchvision_resnet_keys(bottleneck: bool, blocks: list[int]) -> dict[str, list[int]]:
    """The state-dict keys and shapes of torchvision.models.resnet18/resnet50 without
    ``fc``, written from torchvision's rules (torchvision/models/resnet.py), not read
    off our model: a 7x7 stem ``conv1``/``bn1`` of 64 channels; four stages ``layerN`` of
    ``blocks[N-1]`` blocks with planes 64, 128, 256, 512; BasicBlock = conv1 3x3, bn1,
    conv2 3x3, bn2 (expansion 1); Bottleneck = conv1 1x1, bn1, conv2 3x3, bn2, conv3 1x1
    to 4 x planes, bn3 (expansion 4); a ``downsample`` (0: 1x1 conv, 1: bn) on a stage's
    first block when the stride is 2 (stages 2-4) or the channels change (Bottleneck's
    stage 1)."""
    keys: dict[str, list[int]] = {}

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{p}"] = [c]
        keys[f"{name}.num_batches_tracked"] = []

    keys["conv1.weight"] = [64, 3, 7, 7]
    bn("bn1", 64)
    expansion = 4 if bottleneck else 1
    in_planes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), 1):
        for b in range(n):
            pre = f"layer{stage}.{b}"
            if bottleneck:
                keys[f"{pre}.conv1.weight"] = [planes, in_planes, 1, 1]
                bn(f"{pre}.bn1", planes)
                keys[f"{pre}.conv2.weight"] = [planes, planes, 3, 3]
                bn(f"{pre}.bn2", planes)
                keys[f"{pre}.conv3.weight"] = [planes * 4, planes, 1, 1]
                bn(f"{pre}.bn3", planes * 4)
            else:
                keys[f"{pre}.conv1.weight"] = [planes, in_planes, 3, 3]
                bn(f"{pre}.bn1", planes)
                keys[f"{pre}.conv2.weight"] = [planes, planes, 3, 3]
                bn(f"{pre}.bn2", planes)
            if b == 0 and (stage > 1 or in_planes != planes * expansion):
                keys[f"{pre}.downsample.0.weight"] = [planes * expansion, in_planes, 1, 1]
                bn(f"{pre}.downsample.1", planes * expansion)
            in_planes = planes * expansion
    return keys


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_resnet18_has_torchvisions_keys_and_shapes_in_order():
    expected = torchvision_resnet_keys(False, [2, 2, 2, 2])
    got = shapes(build_backbone(BackboneSpec(kind="resnet18"), [3, 224, 224]))
    assert list(got) == list(expected)  # the same names, in torchvision's order
    assert got == expected
    # torchvision's published count, 11,689,512, less fc's 512 x 1000 + 1000.
    params = [s for k, s in expected.items() if k.endswith(("weight", "bias"))]
    assert sum(int(np.prod(s)) for s in params) == 11_689_512 - 513_000


def test_resnet50_has_torchvisions_keys_and_shapes():
    backbone = build_backbone(BackboneSpec(kind="resnet50"), [3, 224, 224])
    assert shapes(backbone) == torchvision_resnet_keys(True, [3, 4, 6, 3])
    assert backbone.out_features == 2048


def test_resnets_map_images_of_any_size_to_their_features():
    for kind, size in (("resnet18", 32), ("resnet18_cifar", 16)):
        backbone = build_backbone(BackboneSpec(kind=kind), [3, size, size]).eval()
        with torch.no_grad():
            assert backbone(torch.rand(2, 3, size, size)).shape == (2, 512)


def saved_resnet18(path, seed=3, with_fc=True) -> dict[str, torch.Tensor]:
    """A state dict as torchvision saves one: its backbone with random weights and
    batch-norm statistics, plus the ImageNet classifier ``fc``."""
    torch.manual_seed(seed)
    backbone = build_backbone(BackboneSpec(kind="resnet18"), [3, 32, 32])
    state = backbone.state_dict()
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.normal_()
        elif k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith(("bn1.weight", "bn2.weight", "bn1.bias", "bn2.bias")):
            v.normal_()
    if with_fc:
        state = state | {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(state, path)
    return state


def test_weights_from_the_spec_load_unchanged_and_fc_is_ignored(tmp_path):
    state = saved_resnet18(tmp_path / "r18.pth")
    torch.manual_seed(99)  # another initialisation: every value must come from the file
    spec = BackboneSpec(kind="resnet18", weights=f"file://{tmp_path / 'r18.pth'}")
    loaded = build_backbone(spec, [3, 32, 32]).state_dict()
    assert loaded.keys() == {k for k in state if not k.startswith("fc.")}
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k


def test_wrong_weights_name_the_first_mismatching_key(tmp_path):
    state = saved_resnet18(tmp_path / "ok.pth", with_fc=False)
    backbone = build_backbone(BackboneSpec(kind="resnet18"), [3, 32, 32])
    missing = {k: v for k, v in state.items() if not k.startswith("layer2.0.bn1")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing key 'layer2\.0\.bn1\.weight'"):
        load_backbone_weights(backbone, tmp_path / "missing.pth")
    torch.save(state | {"layer3.1.conv2.weight": torch.zeros(256, 256, 1, 1)}, tmp_path / "s.pth")
    with pytest.raises(
        WeightsError, match=r"'layer3\.1\.conv2\.weight' has shape \[256, 256, 1, 1\]"
    ):
        load_backbone_weights(backbone, tmp_path / "s.pth")
    torch.save(state | {"head.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected key 'head\.weight'"):
        load_backbone_weights(backbone, tmp_path / "extra.pth")
    # resnet18 weights into a resnet50: the first key that differs is named.
    spec = BackboneSpec(kind="resnet50", weights=str(tmp_path / "ok.pth"))
    with pytest.raises(
        WeightsError, match=r"'layer1\.0\.conv1\.weight' has shape \[64, 64, 3, 3\]"
    ):
        resolve_weights(spec, [3, 32, 32], None)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a torch state dict"):
        load_backbone_weights(backbone, tmp_path / "junk.pth")


def test_weights_paths_resolve_inside_the_weights_dir(tmp_path):
    (tmp_path / "w").mkdir()
    saved_resnet18(tmp_path / "w" / "r18.pth")
    saved_resnet18(tmp_path / "outside.pth")
    assert weights_path("r18.pth", tmp_path / "w") == tmp_path / "w" / "r18.pth"
    assert weights_path(f"file://{tmp_path}/w/r18.pth", tmp_path / "w").name == "r18.pth"
    with pytest.raises(WeightsError, match="outside HETSERVE_WEIGHTS_DIR"):
        weights_path("../outside.pth", tmp_path / "w")
    with pytest.raises(WeightsError, match="relative path"):
        weights_path("r18.pth", None)
    with pytest.raises(WeightsError, match="no such file"):
        weights_path(str(tmp_path / "w" / "nope.pth"), tmp_path / "w")
    resolved = resolve_weights(
        BackboneSpec(kind="resnet18", weights="r18.pth"), [3, 8, 8], tmp_path / "w"
    )
    assert resolved.weights == str(tmp_path / "w" / "r18.pth")


@pytest.mark.parametrize(
    "backbone",
    [
        {"kind": "mlp", "weights": "/w/r.pth"},
        {"kind": "cnn", "weights": "/w/r.pth"},
        {"kind": "resnet50", "weights": "s3://bucket/r.pth"},
        {"kind": "resnet50", "weights": "https://download.pytorch.org/r.pth"},
        {"kind": "resnet50", "weights": " "},
        {"kind": "vit"},
        {"kind": "resnet18", "freeze": "yes please"},
    ],
)
def test_backbone_spec_refuses_what_cannot_load(backbone):
    with pytest.raises(ValidationError):
        BackboneSpec(**backbone)


def tiny_images(n=16, k=2, size=16, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.uniform(size=(n, 3, size, size)).astype(np.float32)
    x[:, 0] += 0.5 * y[:, None, None]
    return validate(ArrayDataset(x, y, x_val=x[:8], y_val=y[:8]))


@pytest.mark.parametrize("freeze", [True, False])
def test_a_frozen_backbone_keeps_its_weights_and_statistics_while_the_head_trains(tmp_path, freeze):
    state = saved_resnet18(tmp_path / "r18.pth")
    spec = RunSpec(
        head=HeadSpec(num_factors=1, train_mc_samples=4, eval_mc_samples=8),
        backbone=BackboneSpec(
            kind="resnet18", weights=str(tmp_path / "r18.pth"), freeze=freeze, augment=False
        ),
        train=TrainSpec(epochs=1, batch_size=16, lr=0.05, seed=5, device="cpu"),
    )
    data = tiny_images()
    model = train(spec, data).model
    torch.manual_seed(spec.train.seed)  # what train() built before its one step
    start = build_classifier(spec, [3, 16, 16], 2, np.zeros(3), np.ones(3))
    after = model.backbone.state_dict()
    changed = {k for k in after if not torch.equal(after[k], state[k])}
    head_changed = {
        k
        for k, v in model.head.state_dict().items()
        if not torch.equal(v, start.head.state_dict()[k])
    }
    assert head_changed >= {"loc.weight", "loc.bias"}, head_changed
    if freeze:
        assert changed == set(), sorted(changed)[:5]
        assert not any(p.requires_grad for p in model.backbone.parameters())
        model.train()
        assert not model.backbone.training and model.head.training
    else:  # the same step moves every layer and the batch-norm statistics
        assert "conv1.weight" in changed and "layer4.1.bn2.running_mean" in changed


def test_a_frozen_backbone_is_sized_without_its_training_state():
    # ResNet-50 at 224 px, batch 128: fine-tuning keeps every activation for the backward
    # pass and Adam state for 23.5M parameters (refused, above 8 GiB); frozen it keeps neither.
    facts = SimpleNamespace(
        id="d", task="multiclass", input_shape=[3, 224, 224], num_classes=1000,
        num_train=10_000, num_val=1_000,
    )  # fmt: skip
    body = {"backbone": {"kind": "resnet50"}, "train": {"batch_size": 128}}
    with pytest.raises(SpecMismatch, match="GiB to train"):
        check_fits(RunSpec.model_validate(body), facts)
    body["backbone"]["freeze"] = True
    check_fits(RunSpec.model_validate(body), facts)
    assert training_bytes(RunSpec.model_validate(body), [3, 224, 224], 1000) < 8 << 30
