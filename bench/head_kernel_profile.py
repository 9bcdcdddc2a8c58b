"""The HET head with the fused CPU kernel vs its plain torch path, same head, same run.

For each shape (B, D, K, R), S = 1000, shared and per-example noise: forward+backward of
the loss (gradients for the head's parameters and h) and predict, ``HETSERVE_HET_KERNEL``
switched between "kernel" and "torch" call by call, interleaved rounds: medians (minima)
in ms. ``--parts`` also times the pieces of a kernel call: the head's linear layers
(forward and backward through them with the kernel's gradients) and drawing the noise.
``--busy`` runs one competing busy process (a pure-Python loop) during the timing;
``--clock cpu`` reports process CPU time instead of wall time (steadier on a loaded machine).
A quick developer check; the comparison with edward2 is bench/head_speed.py.

    nice -n 10 .venv/bin/python bench/head_kernel_profile.py --repeats 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from core.spec import HeadSpec  # noqa: E402
from models.heads import HetHead  # noqa: E402

SAMPLES = 1000
SHAPES = [(128, 256, 10, 5), (128, 512, 100, 10), (64, 2048, 1000, 15)]


def make(shape, shared: bool):
    b, d, k, r = shape
    torch.manual_seed(0)
    spec = HeadSpec(
        num_factors=r,
        train_mc_samples=SAMPLES,
        eval_mc_samples=SAMPLES,
        eval_noise="mc",  # plain MC normals, as edward2 draws (QMC: bench/qmc_error.py)
        share_samples_across_batch=shared,
    )
    head = HetHead(spec, d, k)
    h = torch.randn(b, d, requires_grad=True)
    y = torch.randint(0, k, (b,))
    return head, h, y


def calls(head, h, y):
    def forward_backward():
        head.zero_grad(set_to_none=True)
        h.grad = None
        head.loss(h, y).backward()

    def predict():
        head.predict(h.detach())

    def linear_only():  # the head's layers and noise, no estimator: forward + backward
        head.zero_grad(set_to_none=True)
        h.grad = None
        lat = head.latent(h).scaled(1.0 / head.temperature)
        v = lat.factor_matrix()
        (lat.mu.sum() + lat.scale.sum() + (0 if v is None else v.sum())).backward()

    def noise_only():
        head.draw_noise(h.shape[0], SAMPLES, "cpu")

    return {
        "fwd+bwd": forward_backward,
        "predict": predict,
        "linear fwd+bwd": linear_only,
        "draw noise": noise_only,
    }


def busy_loop():
    x = 0
    while True:
        x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", action="append", help="B,D,K,R (repeatable)")
    parser.add_argument("--noise", choices=["shared", "per-example", "both"], default="both")
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--busy", action="store_true", help="one competing busy process")
    parser.add_argument("--paths", default="kernel,torch")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time (all threads), steadier than wall time on a loaded machine",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shapes = [tuple(map(int, s.split(","))) for s in args.shape] if args.shape else SHAPES
    modes = {"shared": [True], "per-example": [False], "both": [True, False]}[args.noise]
    env = {"kernel": "kernel", "torch": "torch"}
    paths = args.paths.split(",")
    busy = None
    if args.busy:
        busy = multiprocessing.Process(target=busy_loop, daemon=True)
        busy.start()
    try:
        for shape in shapes:
            for shared in modes:
                head, h, y = make(shape, shared)
                fns = calls(head, h, y)
                names = ["fwd+bwd", "predict"] + (
                    ["linear fwd+bwd", "draw noise"] if args.parts else []
                )
                times = {(p, n): [] for p in paths for n in names}
                for rnd in range(args.repeats + 1):
                    order = paths if rnd % 2 == 0 else paths[::-1]
                    for path in order:
                        os.environ["HETSERVE_HET_KERNEL"] = env[path]
                        for name in names:
                            start = clock()
                            fns[name]()
                            ms = (clock() - start) * 1e3
                            if rnd:  # round 0 warms up (and builds the kernel)
                                times[(path, name)].append(ms)
                mode = "shared" if shared else "per-example"
                line = [f"{','.join(map(str, shape))} {mode:11s}"]
                for (path, name), ts in times.items():
                    if path != paths[0] and name not in ("fwd+bwd", "predict"):
                        continue
                    line.append(f"{path} {name} {statistics.median(ts):7.1f} ({min(ts):.1f})")
                print(" | ".join(line), flush=True)
    finally:
        if busy is not None:
            busy.terminate()
            busy.join()


if __name__ == "__main__":
    main()
