"""Streaming an image folder through a ``torch.utils.data.DataLoader``: the path of a
folder whose decoded pixels do not fit in memory (models.image_cache decodes the others
once, through ``ImageFilesDataset`` too).

The dataset a registered image folder becomes (``core.manifest.ImageFiles``) holds paths,
not pixels: each item is opened through the folder's fsspec store (a local folder, or
an ``s3://`` prefix: each loader process opens its own s3fs client), checked against
the manifest (size and mtime on disk, size and ETag in object storage: a changed or
missing file fails the job, named), decoded and resized in a loader process with exactly
the preprocessing predict applies to ``images`` (``core.dataset_files.decode_image``: RGB or
grayscale, bilinear resize to the stored size, [0, 1]); the classifier normalises with
the per-channel mean and std it stores, and the training loop augments each batch as it
does for in-memory images. Memory stays a few batches whatever the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.manifest import ImageFiles


class ImageFilesDataset(Dataset):
    def __init__(self, files: ImageFiles, labels: np.ndarray):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.files.load(i)), torch.as_tensor(self.labels[i])


def streamed_batches(
    files: ImageFiles,
    labels: np.ndarray,
    batches: list[torch.Tensor],
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of each of ``batches`` (index tensors the caller cut from a permutation
    of its seeded generator, so a resumed run sees the same order; under DDP, this
    rank's share of each global batch), decoded by ``files.num_workers`` processes."""
    loader = DataLoader(
        ImageFilesDataset(files, labels),
        batch_sampler=[b.tolist() for b in batches],
        num_workers=files.num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if files.num_workers else None,
    )
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
