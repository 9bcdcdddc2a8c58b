"""A dataset that stays where it is, end to end through real processes: an image
folder registered by URI, a HET head trained by a real worker on a frozen pretrained
ResNet-18 (weights from HETSERVE_WEIGHTS_DIR) streaming the folder through a DataLoader
(worker processes), and the model answering base64 ``images`` preprocessed the same way."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.spec import BackboneSpec
from models.backbones import build_backbone
from tests.support.folder_datasets import synthetic_folder
from tests.support.waiting import wait_until

SPEC = {
    "head": {"kind": "het", "num_factors": 2, "train_mc_samples": 16, "eval_mc_samples": 64},
    "backbone": {"kind": "resnet18", "weights": "colour-resnet18.pth", "freeze": True},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "lr": 0.1},
}


def colour_resnet18(path: Path) -> None:
    """A "pretrained" ResNet-18 state dict (torchvision's keys) whose features carry the
    mean colour: the stem's centre tap copies +x and -x of each channel, every residual
    branch is switched off (bn2 scale 0, torchvision's zero_init_residual), each
    downsample passes those six channels on, batch norms are identities. With random
    weights instead, a frozen backbone's head does not separate the colours in two
    epochs: the accuracy asserted below depends on the file having been loaded."""
    state = build_backbone(BackboneSpec(kind="resnet18"), [3, 8, 8]).state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        ones = key.endswith("running_var") or (value.ndim == 1 and key.endswith(".weight"))
        value.fill_(1.0 if ones and not key.endswith("bn2.weight") else 0.0)
    for c in range(3):
        state["conv1.weight"][c, c, 3, 3], state["conv1.weight"][3 + c, c, 3, 3] = 1.0, -1.0
    for key, value in state.items():
        if key.endswith("downsample.0.weight"):
            value[range(6), range(6)] = 1.0
    torch.save(state | {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)


# The path under test is the worker's (weights, streaming, export, predict), the same on
# both stores, and exporting a ResNet-18 takes ~20 s on 2 cores: one backend.
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_image_folder_by_reference_trains_streaming_and_predicts_images(stack):
    folder = synthetic_folder(Path(stack.env["HETSERVE_DATASET_ROOTS"]) / "colours", per_class=24)
    colour_resnet18(Path(stack.env["HETSERVE_WEIGHTS_DIR"]) / "colour-resnet18.pth")
    with stack.client() as client:
        r = client.post("/v1/datasets", json={"uri": f"file://{folder}", "image_size": 8})
        assert r.status_code == 201, r.text
        dataset = r.json()
        assert dataset["format"] == "imagefolder" and dataset["input_shape"] == [3, 8, 8]
        assert dataset["num_train"] == 72 and dataset["num_test"] == 18
        r = client.post("/v1/jobs", json={"dataset_id": dataset["id"], **SPEC})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def ended():
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

        done = wait_until(ended, 240, f"job {job_id} to end", interval=0.3)
        assert done["status"] == "succeeded", done["error"]
        assert done["metrics"]["model"]["test_accuracy"] > 0.9, done["metrics"]

        names = dataset["class_names"]  # blue, green, red
        files = [folder / "test" / name / "00000.png" for name in names]
        images = [base64.b64encode(f.read_bytes()).decode() for f in files]
        r = client.post(
            f"/v1/models/{done['model_id']}/predict", json={"images": images, "seed": 1}
        )
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert [p["label"] for p in predictions] == [0, 1, 2], predictions
        # The same pixels as numbers, decoded as training decoded them: the same answer.
        x = [
            (
                np.asarray(
                    Image.open(io.BytesIO(f.read_bytes()))
                    .convert("RGB")
                    .resize((8, 8), Image.Resampling.BILINEAR),
                    dtype=np.float32,
                )
                / 255.0
            )
            .transpose(2, 0, 1)
            .tolist()
            for f in files
        ]
        r = client.post(f"/v1/models/{done['model_id']}/predict", json={"inputs": x, "seed": 1})
        assert [p["probs"] for p in r.json()["predictions"]] == [p["probs"] for p in predictions]

        # What the model knows about its training labels, the folder read again.
        noise = client.get(f"/v1/models/{done['model_id']}/noise")
        assert noise.status_code == 200 and noise.json()["num_examples"] == 72, noise.text
        issues = client.get(f"/v1/models/{done['model_id']}/label-issues")
        assert issues.status_code == 200, issues.text
