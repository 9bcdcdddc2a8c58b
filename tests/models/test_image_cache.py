"""models/image_cache.py: an image folder decoded once into uint8 pixels gives the
pixels streaming gives, trains to the same model, and stays streamed when it does not
fit in memory."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.dataset_scan import scan_reference
from core.manifest import open_manifest
from core.spec import RunSpec
from models import image_cache
from models.image_cache import DecodedImages, decode_files, decode_once
from models.train import train


def folder(root, per_class=12, size=10):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.asarray(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255)
                # JPEG and PNG, and a size that is resized (10 -> 8): bilinear on uint8
                suffix = "jpg" if i % 2 else "png"
                Image.fromarray(pixels.astype(np.uint8)).save(
                    root / split / f"c{c}" / f"{i}.{suffix}"
                )
    return root


def test_decoded_pixels_are_the_streamed_ones_bit_for_bit(tmp_path):
    manifest = scan_reference(str(folder(tmp_path / "f")), [tmp_path], image_size=8)
    files = open_manifest(manifest).x_train
    decoded = decode_files(files)
    assert decoded.pixels.dtype == np.uint8 and decoded.shape == files.shape
    np.testing.assert_array_equal(decoded[0 : len(files)], files[0 : len(files)])
    np.testing.assert_array_equal(decoded[5], files.load(5))
    subset = decoded[np.array([3, 1])]
    assert isinstance(subset, DecodedImages)
    np.testing.assert_array_equal(subset[0:2], np.stack([files.load(3), files.load(1)]))
    mean, std = decoded.standardisation()
    x = files[0 : len(files)].astype(np.float64)
    np.testing.assert_allclose(mean.ravel(), x.mean((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.ravel(), x.std((0, 2, 3)), rtol=1e-5)
    # a sample of the images: the same rows, so the same statistics, streamed or decoded
    for got, want in zip(
        decoded.standardisation(limit=3, seed=5),
        files.standardisation(limit=3, seed=5),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_file_changed_since_registration_fails_the_decode_naming_it(tmp_path):
    root = folder(tmp_path / "f")
    manifest = scan_reference(str(root), [tmp_path], image_size=8)
    files = open_manifest(manifest).x_train
    buffer = io.BytesIO()
    Image.new("RGB", (9, 9)).save(buffer, format="PNG")
    (root / "train" / "c1" / "2.png").write_bytes(buffer.getvalue())
    with pytest.raises(Exception, match="train/c1/2.png"):
        decode_files(files)


def test_folder_decoded_once_when_it_fits_streamed_when_not(tmp_path, monkeypatch):
    manifest = scan_reference(str(folder(tmp_path / "f")), [tmp_path], image_size=8)
    data = open_manifest(manifest)
    cached = decode_once(data)
    assert isinstance(cached.x_train, DecodedImages) and isinstance(cached.x_test, DecodedImages)
    np.testing.assert_array_equal(cached.y_train, data.y_train)
    monkeypatch.setattr(image_cache, "MEMORY_FRACTION", 0.0)
    assert decode_once(data) is data


def test_training_on_decoded_pixels_matches_streaming(tmp_path, monkeypatch):
    """Same batches, same augmentation draws (crop and flip on uint8 then /255 equal
    /255 then crop and flip): the same model up to the standardisation's last bits.
    A batch of 16 holds every test row: MC draws depend on how rows are batched."""
    manifest = scan_reference(str(folder(tmp_path / "f")), [tmp_path], image_size=8)
    spec = RunSpec.model_validate(
        {
            "head": {"kind": "het", "num_factors": 2, "temperature": 1.0,
                     "train_mc_samples": 8, "eval_mc_samples": 16},
            "backbone": {"kind": "cnn", "augment": True, "hflip": True},
            "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "seed": 3},
        }
    )  # fmt: skip
    cached = train(spec, open_manifest(manifest))
    monkeypatch.setattr(image_cache, "MEMORY_FRACTION", 0.0)
    streamed = train(spec, open_manifest(manifest))
    for key in ("val_nll", "test_nll", "noise_free_test_nll"):
        assert cached.metrics[key] == pytest.approx(streamed.metrics[key], rel=1e-4), key
    for a, b in zip(cached.model.parameters(), streamed.model.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-4)


def test_decoded_images_refuses_what_is_not_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        DecodedImages(np.zeros((2, 3, 4, 4), np.float32))
