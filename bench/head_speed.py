"""Speed of the HET head vs a plain linear head at the same shapes.

For each shape (B, D, K, R) with S = 1000 samples: forward+backward of the training
loss (gradients for the head's parameters and for h, as inside a network) and predict
(the MC predictive: probabilities, their std and the expected entropy), for
``HetHead`` and for ``LinearHead`` in the same run. Wall-clock medians (and minima)
over repeats, the cases interleaved; peak memory at the ImageNet-sized shape: growth of the process's peak
RSS (VmHWM, reset before the call) in a fresh subprocess on a CPU, or
torch.cuda.max_memory_allocated on a GPU.

edward2's figures (MCSoftmaxDenseFA, PyPI release, TF 2.18, 2 threads) are quoted from
an earlier measurement; edward2 is not rerun here.

    .venv/bin/python bench/head_speed.py                 # CPU, 2 threads
    .venv/bin/python bench/head_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from models.heads import HetHead, LinearHead  # noqa: E402
from models.spec import HeadSpec  # noqa: E402

SAMPLES = 1000
SHAPES = [  # (B, D, K, R), edward2 medians quoted from an earlier measurement (ms): fwd+bwd, predict
    ((128, 512, 100, 10), (154.0, 129.0)),
    ((128, 256, 10, 5), (26.0, 22.0)),
    ((64, 2048, 1000, 15), (811.0, 629.0)),
]
EDWARD2_PEAK_GB = 2.1  # at the third shape, quoted


INPUT_GRAD = True  # --no-input-grad: gradients for the head's parameters only


def make(kind: str, shape, device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    b, d, k, r = shape
    torch.manual_seed(0)
    if kind == "het":
        spec = HeadSpec(num_factors=r, train_mc_samples=SAMPLES, eval_mc_samples=SAMPLES)
        head = HetHead(spec, d, k)
    else:
        head = LinearHead(d, k)
    head = head.to(device)
    h = torch.randn(b, d, device=device, requires_grad=INPUT_GRAD)
    y = torch.randint(0, k, (b,), device=device)
    return head, h, y


def step_fns(head, h, y):
    def forward_backward():
        head.zero_grad(set_to_none=True)
        h.grad = None
        head.loss(h, y).backward()

    def predict():
        head.predict(h.detach())

    return {"fwd+bwd": forward_backward, "predict": predict}


def timed_interleaved(fns: dict, repeats: int, device) -> dict[str, list[float]]:
    """Wall-clock ms per call; one call of every case per round, so that load from
    other processes on a shared machine hits HET and the baseline alike."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in fns.values():
        fn()
        fn()  # warm-up: kernels, allocator, caches
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def peak_memory_mb(kind: str, mode: str, shape, device, threads: int) -> float:
    """Peak memory added by one call, in MB."""
    if device.type == "cuda":
        head, h, y = make(kind, shape, device)
        fn = step_fns(head, h, y)[mode]
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    args = [
        sys.executable,
        __file__,
        "--peak-rss-child",
        kind,
        mode,
        json.dumps(shape),
        "--threads",
        str(threads),
    ]
    args += [] if INPUT_GRAD else ["--no-input-grad"]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def peak_rss_child(kind: str, mode: str, shape) -> None:
    """In a fresh process: how far one call lifts the peak RSS above the RSS before it (MB).

    Linux: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current
    RSS, so earlier peaks (building the weights) do not hide the call's own.
    """
    head, h, y = make(kind, shape, torch.device("cpu"))
    fn = step_fns(head, h, y)[mode]
    small, hs, ys = make(kind, (2, shape[1], shape[2], shape[3]), torch.device("cpu"))
    step_fns(small, hs, ys)[mode]()  # load kernels without touching the big shape
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    fn()
    print((status_kb("VmHWM") - before) / 1024)


def describe(device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({cpu}, {os.cpu_count()} cores visible), torch threads {threads}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads, as edward2's 2 threads"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=21,
        help="timed calls per case (a third at the largest shape)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        choices=[",".join(map(str, shape)) for shape, _ in SHAPES],
        help="B,D,K,R: time only this shape (repeatable; default: all)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--no-input-grad",
        action="store_true",
        help="fwd+bwd without the gradient for h (head parameters only)",
    )
    parser.add_argument("--peak-rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global INPUT_GRAD
    INPUT_GRAD = not args.no_input_grad
    torch.set_num_threads(args.threads)
    if args.peak_rss_child:
        kind, mode, shape = args.peak_rss_child
        peak_rss_child(kind, mode, tuple(json.loads(shape)))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    grads = "head parameters and h" if INPUT_GRAD else "head parameters only"
    print(
        f"device: {describe(device, args.threads)}; torch {torch.__version__}; S = {SAMPLES}; fwd+bwd gradients: {grads}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    rows = []
    for shape, (e2_fb, e2_pred) in SHAPES:
        if args.shape and ",".join(map(str, shape)) not in args.shape:
            continue
        repeats = max(3, args.repeats // 3) if shape[2] >= 1000 else args.repeats
        fns = {
            (kind, mode): fn
            for kind in ("linear", "het")
            for mode, fn in step_fns(*make(kind, shape, device)).items()
        }
        ms = {
            key: (statistics.median(t), min(t))
            for key, t in timed_interleaved(fns, repeats, device).items()
        }
        del fns
        b, d, k, r = shape
        for kind in ("linear", "het"):
            fb, pred = ms[kind, "fwd+bwd"], ms[kind, "predict"]
            name = "linear softmax" if kind == "linear" else "HET"
            cells = [
                f"B={b} D={d} K={k} R={r}",
                name,
                f"{fb[0]:.2f} ({fb[1]:.2f})",
                f"{pred[0]:.2f} ({pred[1]:.2f})",
            ]
            if kind == "het":
                lin_fb, lin_pred = ms["linear", "fwd+bwd"][0], ms["linear", "predict"][0]
                cells += [
                    f"{fb[0] / lin_fb:.0f}x / {pred[0] / lin_pred:.0f}x",
                    f"{e2_fb:.0f} / {e2_pred:.0f}",
                    f"{e2_fb / fb[0]:.1f}x / {e2_pred / pred[0]:.1f}x",
                    f"{e2_fb / 4:.1f} / {e2_pred / 4:.1f}",
                ]
            else:
                cells += ["1x / 1x", "", "", ""]
            rows.append("| " + " | ".join(cells) + " |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| shape (S=1000) | head | fwd+bwd ms, median (min) | predict ms, median (min) | "
        "vs linear (fwd+bwd / predict) | edward2 quoted ms | speed-up vs edward2 quoted | 4x target ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))

    if not args.no_memory:
        shape = SHAPES[2][0]
        what = (
            "torch.cuda.max_memory_allocated growth"
            if device.type == "cuda"
            else "peak RSS (VmHWM) growth"
        )
        print()
        print(
            f"Peak memory at B=64 D=2048 K=1000 R=15 S=1000, {what} over one call (edward2 quoted: ~{EDWARD2_PEAK_GB} GB):"
        )
        print()
        print("| head | fwd+bwd MB | predict MB |")
        print("|---|---|---|")
        for kind in ("linear", "het"):
            fb = peak_memory_mb(kind, "fwd+bwd", shape, device, args.threads)
            pred = peak_memory_mb(kind, "predict", shape, device, args.threads)
            print(f"| {'HET' if kind == 'het' else 'linear softmax'} | {fb:.0f} | {pred:.0f} |")


if __name__ == "__main__":
    main()
