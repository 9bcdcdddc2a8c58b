"""Images per second of the training data path: an image folder streamed from disk
(models.streaming.streamed_batches: a DataLoader decoding and resizing in 0, 1 or 2
worker processes) against the in-memory path (the folder decoded whole first, batches
indexed out of one array, as for an uploaded dataset).

One epoch of batches in a random order, each batch as the training loop receives it
(a float32 tensor [B, C, H, W] on the CPU), nothing trained: the loader's own rate. The
folder is made once (random 64x64 PNGs, bench/stream_memory.make_folder) and opened
the way the worker opens a registered folder (scan_reference -> open_manifest). The
in-memory path's one-off cost, decoding the folder whole, is timed and shown apart.
Configurations are timed in interleaved rounds (bench/export_speed.time_round_robin);
medians over the quiet rounds, each round on stderr with the CPU other processes used
meanwhile (bench/quiet.py).

    nice .venv/bin/python bench/data_loading.py                  # 2000 images, 3 rounds
    nice .venv/bin/python bench/data_loading.py --images 500 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import calibrate, run_record  # noqa: E402
from bench.export_speed import time_round_robin  # noqa: E402
from bench.stream_memory import SIZE, make_folder  # noqa: E402
from core.dataset_scan import scan_reference  # noqa: E402
from core.manifest import open_manifest  # noqa: E402
from models.streaming import streamed_batches  # noqa: E402

BATCH = 64
WORKERS = (0, 1, 2)


def epoch_batches(n: int, seed: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm.split(BATCH))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, help="write the run's record here (bench/run_record.py)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = run_record.machine()
    print(calibrate.line(machine["speed"]))
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "folder", args.images)
        data = open_manifest(scan_reference(folder, [folder], image_size=SIZE))
        files, labels = data.x_train, data.y_train
        n = len(files)

        start = time.perf_counter()
        x = torch.as_tensor(files[:])  # the in-memory path: every image decoded once
        decode_s = time.perf_counter() - start
        y = torch.as_tensor(labels)

        def in_memory() -> None:
            for b in epoch_batches(n, 0):
                xb, yb = x[b], y[b]
                assert xb.shape[0] == yb.shape[0]

        def streamed(workers: int):
            def epoch() -> None:
                files.num_workers = workers
                for xb, _ in streamed_batches(files, labels, epoch_batches(n, 0), cpu):
                    assert xb.dtype == torch.float32

            return epoch

        calls = {"in-memory (decoded beforehand)": in_memory}
        calls |= {f"streamed, {w} loader workers": streamed(w) for w in WORKERS}
        timed = time_round_robin(calls, repeats=args.rounds, warmup=1)
    medians = timed.medians

    anchor = medians["in-memory (decoded beforehand)"]
    print(
        f"{n} PNG images {SIZE}x{SIZE} RGB, batches of {BATCH}, {os.cpu_count()} CPU cores, "
        f"medians of {args.rounds} interleaved epochs; others' cores per round, median / max: "
        f"{timed.others_note()}\n"
    )
    print("| path | epoch s | images/s | vs in-memory |")
    print("|---|---:|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {anchor / seconds:.3f}x |")
    print(f"| in-memory: decoding the folder whole once | {decode_s:.3f} | {n / decode_s:,.0f} | |")
    print(
        f"\nCommand: nice .venv/bin/python bench/data_loading.py --images {args.images} "
        f"--rounds {args.rounds}"
    )
    np.testing.assert_equal(x.shape, (n, 3, SIZE, SIZE))
    if args.json:
        ratios = {  # images/s against the in-memory path's, as the table's last column
            f"{name}: images/s vs in-memory": anchor / sec
            for name, sec in medians.items()
            if name != "in-memory (decoded beforehand)"
        }
        images_per_s = {name: n / sec for name, sec in medians.items()}
        settings = {"images": args.images, "rounds": args.rounds}
        run_record.write(
            args.json, "data_loading", machine, ratios, settings=settings, images_per_s=images_per_s
        )


if __name__ == "__main__":
    main()
