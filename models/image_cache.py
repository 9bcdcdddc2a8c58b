"""An image folder decoded once, held in memory as uint8 pixels.

A registered image folder (``core.manifest.ImageFiles``) holds paths; streaming it
(models.streaming) decodes every image again on every epoch and every evaluation. When
the decoded pixels fit in memory, ``decode_once`` reads each file once, through the
same checked open and the same preprocessing as streaming (``ImageFiles.load``: the
manifest's size and stamp checked as each file is opened, then ``decode_image``), and
keeps the result as uint8: ``decode_image`` returns ``round(255 v) / 255`` for a uint8
pixel ``v`` of the resized image, so ``round(255 x)`` recovers ``v`` exactly and
``DecodedImages[i] == ImageFiles.load(i)`` bit for bit.

What fits: the pixels of every split (N x C x H x W bytes) at most
``MEMORY_FRACTION`` of the memory available when the job starts (``MemAvailable`` of
/proc/meminfo; elsewhere no cache). A folder that does not fit keeps streaming.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from core.dataset_files import ArrayDataset, channel_stats, standardisation_rows
from core.manifest import ImageFiles

MEMORY_FRACTION = 0.25
DECODE_BATCH = 256


class DecodedImages:
    """uint8 pixels [N, C, H, W] standing in for the float32 array in [0, 1] they
    encode: ``x[i:j]`` and ``x[i]`` give float32 (divided by 255), ``x[index array]``
    a DecodedImages subset, ``x.pixels`` the uint8 array itself (the training loop
    batches and augments uint8 and converts a batch at a time)."""

    ndim = 4

    def __init__(self, pixels: np.ndarray):
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ValueError(
                f"pixels must be uint8 [N, C, H, W], got {pixels.dtype} {pixels.shape}"
            )
        self.pixels = pixels

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, c, h, w = self.pixels.shape
        return n, c, h, w

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (slice, int, np.integer)):
            return self.pixels[key].astype(np.float32) / np.float32(255)
        return DecodedImages(self.pixels[np.asarray(key)])

    def standardisation(self, limit: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std (C, 1, 1) over the same images ``ImageFiles`` takes
        them over (``standardisation_rows``): a folder gets the same statistics whether
        it is streamed or decoded once."""
        c = self.shape[1]
        rows = standardisation_rows(len(self), limit, seed)
        return channel_stats(self.pixels[int(i)].reshape(c, -1) / 255.0 for i in rows)


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def decoded_bytes(data: ArrayDataset) -> int:
    """Bytes of uint8 pixels of every ImageFiles split of ``data``."""
    splits: list[object] = [data.x_train, data.x_val, data.x_test]
    return sum(int(np.prod(x.shape)) for x in splits if isinstance(x, ImageFiles))


def fits_in_memory(data: ArrayDataset) -> bool:
    need = decoded_bytes(data)
    available = available_memory()
    return need > 0 and available is not None and need <= MEMORY_FRACTION * available


def decode_once(data: ArrayDataset) -> ArrayDataset:
    """``data`` with each ImageFiles split replaced by its DecodedImages when they all
    fit in memory (``fits_in_memory``); otherwise ``data`` unchanged (streamed)."""
    if not fits_in_memory(data):
        return data
    # ArrayDataset types its splits as arrays; a folder's stand in for them (as ImageFiles do)
    decoded: dict[str, Any] = {
        f"x_{split}": decode_files(x)
        for split in ("train", "val", "test")
        if isinstance(x := getattr(data, f"x_{split}"), ImageFiles)
    }
    return replace(data, **decoded)


def decode_files(files: ImageFiles) -> DecodedImages:
    """Every image of ``files`` decoded (by ``files.num_workers`` loader processes, in
    order) into one uint8 array."""
    import torch
    from torch.utils.data import DataLoader

    from models.streaming import ImageFilesDataset

    pixels = np.empty(files.shape, dtype=np.uint8)
    loader = DataLoader(
        ImageFilesDataset(files, np.zeros(len(files), dtype=np.int64)),
        batch_size=DECODE_BATCH,
        shuffle=False,
        num_workers=files.num_workers,
        prefetch_factor=2 if files.num_workers else None,
    )
    start = 0
    with torch.no_grad():
        for xb, _ in loader:
            pixels[start : start + len(xb)] = xb.mul_(255).round_().to(torch.uint8).numpy()
            start += len(xb)
    return DecodedImages(pixels)
