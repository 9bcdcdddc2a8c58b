"""A dataset that stays where it is, end to end through real processes: an image
folder registered by URI, trained by a real worker streaming it through a DataLoader
(worker processes), and the model answering base64 ``images`` preprocessed the same way."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.faults.test_dataset_by_reference_jobs import synthetic_folder
from tests.waiting import wait_until

SPEC = {
    "head": {"kind": "het", "num_factors": 2, "train_mc_samples": 16, "eval_mc_samples": 64},
    "backbone": {"kind": "cnn", "hflip": True},
    "train": {"epochs": 4, "batch_size": 16, "device": "cpu", "lr": 3e-3},
}


def test_image_folder_by_reference_trains_streaming_and_predicts_images(stack):
    folder = synthetic_folder(Path(stack.env["HETSERVE_DATASET_ROOTS"]) / "colours", per_class=24)
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
