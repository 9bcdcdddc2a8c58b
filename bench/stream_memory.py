"""Peak memory of one training epoch over an image folder streamed from disk, against
a folder 10x larger: the streamed path's peak RSS must not grow with the dataset.

Each run is a fresh subprocess: it writes nothing but reads a folder of random
64x64 PNGs (made once per size under a temporary folder), opens it the way the worker
does (core.dataset_scan.scan_reference -> core.manifest.open_manifest, ImageFiles), and
trains one epoch of a small CNN with a HET head (models.train.train_run: streaming
DataLoader, validation, final evaluation). Peak RSS: ru_maxrss of the process (and, separately, of its largest
DataLoader worker). For contrast, ``--in-memory`` decodes the same folder whole first
(what an array dataset costs).

    .venv/bin/python bench/stream_memory.py               # 300 vs 3000 images, workers 0
    .venv/bin/python bench/stream_memory.py --workers 2 --in-memory
    .venv/bin/python bench/stream_memory.py --glibc-default  # glibc's own mmap threshold

tests/models/test_stream_memory.py runs it at 150 vs 1500 images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SIZE = 64
SPEC = {
    "task": "multiclass",
    "head": {"kind": "het", "num_factors": 2, "train_mc_samples": 8, "eval_mc_samples": 8},
    "backbone": {"kind": "cnn", "augment": True},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
}


def make_folder(root: Path, n: int, classes: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png", compress_level=1)
    return root


def child(folder: str, workers: int, in_memory: bool) -> dict:
    import torch

    from core.dataset_scan import scan_reference
    from core.manifest import open_manifest
    from core.spec import RunSpec
    from models.train import Callbacks, train_run

    torch.set_num_threads(1)
    manifest = scan_reference(folder, [folder], image_size=SIZE)
    data = open_manifest(manifest)
    data.x_train.num_workers = workers
    if in_memory:
        from dataclasses import replace

        data = replace(data, x_train=data.x_train[:])
    start = time.perf_counter()
    train_run(RunSpec.model_validate(SPEC), data, Callbacks())
    return {
        "images": len(manifest["splits"]["train"]["paths"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_loader_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        / 1024,
        "epoch_s": round(time.perf_counter() - start, 2),
    }


# glibc raises its mmap threshold each time a large block is freed, after which large
# tensors come from the heap and its high-water mark creeps up with the number of
# steps (+50-70 MB over the longer epoch here), not with the data. A fixed threshold
# (what the variable sets) shows what the data costs; --glibc-default shows the rest.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run(folder: Path, workers: int, in_memory: bool, glibc_default: bool = False) -> dict:
    argv = [sys.executable, __file__, "--child", str(folder), "--workers", str(workers)]
    env = os.environ | {"OMP_NUM_THREADS": "1"} | ({} if glibc_default else FIXED_MMAP)
    out = subprocess.run(
        argv + (["--in-memory"] if in_memory else []),
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    small: int,
    workers: int,
    in_memory: bool = False,
    factor: int = 10,
    glibc_default: bool = False,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in (small, small * factor):
            folder = make_folder(Path(tmp) / str(n), n)
            results[n] = run(folder, workers, in_memory, glibc_default)
        return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--in-memory", action="store_true")
    parser.add_argument("--glibc-default", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.in_memory)))
        return
    g = args.glibc_default
    print(json.dumps({"streamed": measure(args.small, args.workers, glibc_default=g)}, indent=1))
    if args.in_memory:
        found = measure(args.small, args.workers, True, glibc_default=g)
        print(json.dumps({"in_memory": found}, indent=1))


if __name__ == "__main__":
    main()
