"""Training images/s of the product's job path for a registered image folder, against a
plain PyTorch loop over the same images decoded in memory (the bound for this machine).

    .venv/bin/python bench/image_train_speed.py [--images 4000] [--epochs 2] [--rounds 3]
        [--backbones cnn,resnet18_cifar] [--resnet-images 1000]

The images: the first ``--images`` CIFAR-10N training JPEGs (bench/cifar10n.py's shared
data, extracted once into var/cifar10n) laid out as ``train/<class>/*.jpg`` by hard
links, registered the way the API does (``scan_reference`` → manifest) and opened the
way the worker does (``open_manifest``, ``loader_workers`` DataLoader processes from
the service's settings). Per backbone, in interleaved rounds:

- ``plain loop``: the same classifier (``build_classifier``, HET head R=4, τ=1), batch
  size, AdamW and augmentation (random crop + flip, ``augment_images``) over a uint8
  tensor decoded before the clock starts; training steps only;
- ``product``: ``models.train.train`` on the opened folder, as a job runs it (the
  folder decoded once into memory when it fits, models/image_cache.py): timed over the
  whole call (decoding, per-epoch validation and the final evaluations included) and
  per epoch after the first (one epoch's end to the next: its steps and validation);
- ``product, streamed``: the same with the in-memory cache turned off (every epoch
  decodes every image in the loader processes: a folder too large for memory).

images/s = training rows x epochs / seconds (per epoch: training rows / seconds). Each
round also prints the CPU that other processes used meanwhile (bench/quiet.py: /proc/stat
busy time minus this process tree's, in cores); a round where others used more than
bench/quiet.py's MAX_OTHER_CORES is marked ``!`` and left out of its variant's median
when a quiet round of it exists (the table's last column says how many were). The ratio
to the plain loop is of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# As the worker does (worker/celery_app.py), before torch loads: OpenMP threads that
# sleep rather than spin while they wait, on cores shared with other processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench.cifar10n import CLASS_NAMES, build_tree, from_shared, shared_dir  # noqa: E402
from bench.quiet import OtherCores, mark, quiet_rounds  # noqa: E402
from core.dataset_scan import scan_reference  # noqa: E402
from core.manifest import open_manifest  # noqa: E402
from core.spec import RunSpec  # noqa: E402
from models import image_cache  # noqa: E402
from models.backbones import augment_images  # noqa: E402
from models.classifier import build_classifier  # noqa: E402
from models.train import Callbacks, train  # noqa: E402


def run_spec(backbone: str, epochs: int) -> RunSpec:
    return RunSpec.model_validate(
        {
            "head": {"kind": "het", "num_factors": 4, "temperature": 1.0},
            "backbone": {"kind": backbone, "augment": True, "hflip": True},
            "train": {"epochs": epochs, "device": "cpu", "seed": 0, "val_fraction": 0.1},
        }
    )


def plain_loop(spec: RunSpec, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds for spec.train.epochs epochs of training steps over uint8 pixels."""
    x = pixels.float().div(255)
    mean = x.mean((0, 2, 3))[:, None, None].numpy()
    std = x.std((0, 2, 3))[:, None, None].numpy()
    torch.manual_seed(0)
    model = build_classifier(spec, list(pixels.shape[1:]), len(CLASS_NAMES), mean, std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr)
    gen = torch.Generator().manual_seed(0)
    noise = torch.Generator().manual_seed(1)
    model.train()
    start = time.perf_counter()
    for _ in range(spec.train.epochs):
        for batch in torch.randperm(len(pixels), generator=gen).split(spec.train.batch_size):
            xb = augment_images(pixels[batch], hflip=True, generator=gen).float().div_(255)
            loss = model.head.loss(model.features(xb), labels[batch], generator=noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def product(spec: RunSpec, manifest: dict, loader_workers: int, cache: bool) -> tuple:
    """(seconds of the whole train() call, seconds of each epoch after the first: from
    one epoch's end to the next, its validation included)."""
    data = open_manifest(manifest)
    data.x_train.num_workers = loader_workers
    fraction = image_cache.MEMORY_FRACTION
    image_cache.MEMORY_FRACTION = fraction if cache else 0.0
    ends: list[float] = []
    try:
        start = time.perf_counter()
        train(spec, data, Callbacks(on_epoch_end=lambda _: ends.append(time.perf_counter())))
        return time.perf_counter() - start, list(np.diff(ends))
    finally:
        image_cache.MEMORY_FRACTION = fraction


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--resnet-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backbones", default="cnn,resnet18_cifar")
    p.add_argument("--no-streamed", action="store_true", help="skip the streamed variant")
    p.add_argument("--cache", type=Path, default=ROOT / "var" / "cifar10n")
    args = p.parse_args()

    from app.settings import Settings

    loader_workers = Settings().loader_workers
    data_dir = shared_dir()
    if data_dir is None:
        raise SystemExit("no shared/data/cifar10n found (set HETSERVE_CIFAR10N_DIR)")
    data = from_shared(data_dir, args.cache)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"loader_workers={loader_workers}, {args.epochs} epochs per measurement, batch 128",
        flush=True,
    )
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speed-", dir=args.cache) as tmp:
        for backbone in args.backbones.split(","):
            n = args.resnet_images if backbone.startswith("resnet") else args.images
            root = Path(tmp) / backbone
            tree = build_tree(data, "clean", root, np.arange(n), test_rows=np.arange(0))
            manifest = scan_reference(str(root), [Path(tmp)], image_size=32, grayscale=False)
            spec = run_spec(backbone, args.epochs)
            opened = open_manifest(manifest)
            pixels = image_cache.decode_files(opened.x_train).pixels
            x, y = torch.from_numpy(pixels), torch.as_tensor(opened.y_train)
            n_train = n - max(1, round(n * spec.train.val_fraction))
            variants = {
                "plain loop": partial(plain_loop, spec, x[:n_train], y[:n_train]),
                "product": partial(product, spec, manifest, loader_workers, cache=True),
            }
            if not args.no_streamed:
                variants["product, streamed"] = partial(
                    product, spec, manifest, loader_workers, cache=False
                )
            rates: dict[str, list[float]] = {name: [] for name in variants}
            steady: dict[str, list[float]] = {name: [] for name in variants}
            others: dict[str, list[float]] = {name: [] for name in variants}
            print(f"\n{backbone}: {n} images ({n_train} training rows), {len(tree.rows)} files")
            for r in range(args.rounds):
                for name, run in variants.items():
                    with OtherCores() as meter:
                        measured = run()
                    others[name].append(meter.cores)
                    seconds, epochs = measured if isinstance(measured, tuple) else (measured, [])
                    rates[name].append(n_train * args.epochs / seconds)
                    # the plain loop has no fixed costs: its whole rate is its steady rate
                    steady[name].append(
                        n_train / statistics.median(epochs) if epochs else rates[name][-1]
                    )
                    print(
                        f"  round {r + 1} {name:<18} {rates[name][-1]:7.1f} images/s whole call, "
                        f"{steady[name][-1]:7.1f} per epoch after the first "
                        f"(others used {mark(meter.cores)} cores)",
                        flush=True,
                    )
            kept = {name: quiet_rounds(others[name]) for name in variants}
            plain = statistics.median(kept["plain loop"].pick(rates["plain loop"]))
            print(
                f"\n| {backbone} (median of {args.rounds}, quiet rounds) | images/s, whole call "
                "| × plain | images/s, epochs after the first | × plain | rounds |"
                "\n|---|---|---|---|---|---|"
            )
            for name in variants:
                whole = statistics.median(kept[name].pick(rates[name]))
                per_epoch = statistics.median(kept[name].pick(steady[name]))
                print(
                    f"| {name} | {whole:.1f} | {whole / plain:.2f} | {per_epoch:.1f} | "
                    f"{per_epoch / plain:.2f} | {kept[name].note()} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
