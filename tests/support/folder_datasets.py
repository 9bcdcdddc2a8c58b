"""Image-folder datasets written to disk for the by-reference tests (PNG files under
``split/class/``), the job spec that trains on them, and a job's row as the store has it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.db import session_scope
from app.store import JobStore
from tests.support.service_client import png_bytes

COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def image_folder(root, per_class=3, splits=("train", "test")):
    for split in splits:
        for name, color in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(png_bytes(color, size=12))
    return root


FOLDER_SPEC = {
    "head": {"kind": "het", "num_factors": 2, "train_mc_samples": 16, "eval_mc_samples": 16},
    "backbone": {"kind": "cnn", "augment": True, "hflip": True},
    "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "lr": 3e-3},
    "task": "multiclass",
}


def synthetic_folder(root, per_class: int, size: int = 12, seed: int = 0):
    """Three classes told apart by colour, with noise: learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 40, 40), "green": (40, 220, 40), "blue": (40, 40, 220)}
    for split, n in (("train", per_class), ("test", max(2, per_class // 4))):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(
                    np.asarray(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255
                ).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def job_row(settings, job_id):
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        return job.status, job.error, job.model_id
