"""One run on a lent GPU: every check that needs CUDA, in under 10 minutes, one table.

    .venv/bin/python bench/gpu_check.py [--json out.json] [--quick]

Without CUDA it prints "GPU check: not run: no GPU" and exits 0 (nothing is timed on a
CPU: tests/models/test_devices.py is what a CPU can check of these paths). With CUDA,
in order, each step timed and its failure recorded without stopping the others:

1. ``pytest -m cuda tests/models/test_cuda.py``: training with QMC validation under the
   device guard, resume, the kernel's torch fallback against the reference, bf16 +
   channels-last resnet18_cifar, noise report and export of a CUDA model, nccl DDP (two
   GPUs only);
2. head speed on CUDA at bench/head_speed.py's shapes and S: HetHead (het_fast's chunked
   torch path, what CUDA runs) against the reference estimator (fast=False, the whole
   B x S x K tensor) and the softmax baseline, fwd+bwd and predict, shared and
   per-example noise, median ms of the rounds (CUDA-synchronised); edward2 only if its
   TensorFlow build sees this GPU (it says which);
3. a resnet18_cifar training step (batch 128, 32 px, K = 10, bf16 autocast,
   channels-last, AdamW), HET (R = 4, S = train default) vs softmax head: the ratio, goal
   <= 1.2x (the paper's TPU figure is 1.5x);
4. one short job's model path on CUDA: train (QMC validation each epoch), predict_proba,
   noise_report, export_onnx with its parity check.

Exit status 1 if any step failed. The table goes into README's "GPU check" section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TEST_TIMEOUT_S = 300
EDWARD2_PYTHON = ROOT / "var" / "bench-venvs" / "edward2" / "bin" / "python"


def cuda_ms(fn, rounds: int, warmup: int = 2) -> float:
    """Median wall time of fn() in ms over ``rounds`` calls, synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_cuda_tests() -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
         "tests/models/test_cuda.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S,
    )  # fmt: skip
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode == 0, summary


def head_speed(rounds: int) -> list[tuple[str, str]]:
    """(label, result) rows: hetserve's HetHead on CUDA vs the reference estimator and
    the softmax baseline at head_speed.py's shapes, S = head_speed.SAMPLES."""
    from head_speed import SAMPLES, SHAPES, fmt_shape

    from core.spec import HeadSpec
    from models.heads import HetHead, LinearHead

    rows = []
    for shape in SHAPES:
        b, d, k, r = shape
        for mode in ("shared", "per-example"):
            spec = HeadSpec(
                num_factors=r, train_mc_samples=SAMPLES, eval_mc_samples=SAMPLES,
                eval_noise="mc", share_samples_across_batch=mode == "shared",
            )  # fmt: skip
            torch.manual_seed(0)
            heads = {
                "hetserve": HetHead(spec, d, k).cuda(),
                "reference": HetHead(spec, d, k, fast=False).cuda(),
            }
            if mode == "shared":
                heads["softmax"] = LinearHead(d, k).cuda()
            h = torch.randn(b, d, device="cuda", requires_grad=True)
            y = torch.randint(0, k, (b,), device="cuda")
            gen = torch.Generator("cuda").manual_seed(0)
            cells = []
            for name, head in heads.items():
                try:
                    step_ms, predict_ms = time_head(head, h, y, gen, rounds)
                    cells.append(f"{name} {step_ms:.2f}/{predict_ms:.2f}")
                except torch.cuda.OutOfMemoryError:
                    cells.append(f"{name} out of memory")
                    torch.cuda.empty_cache()
            rows.append((f"head {fmt_shape(shape)} {mode}, ms fwd+bwd/predict", "; ".join(cells)))
    rows.append(("edward2 on GPU", edward2_gpu()))
    return rows


def time_head(head, h, y, gen, rounds: int) -> tuple[float, float]:
    """(fwd+bwd ms, predict ms) of one head, medians over ``rounds`` calls."""

    def step():
        head.train()
        head.zero_grad(set_to_none=True)
        h.grad = None
        head.loss(h, y, generator=gen).backward()

    def predict():
        head.eval()
        head.predict(h.detach(), generator=gen)

    return cuda_ms(step, rounds), cuda_ms(predict, rounds)


def edward2_gpu() -> str:
    """Whether edward2's TensorFlow (bench/head_speed.py's venv) can use this GPU."""
    if not EDWARD2_PYTHON.exists():
        return (
            "not run: no edward2 venv here (bench/head_speed.py creates it with pip, which "
            "needs the network; its tensorflow==2.18.1 wheel uses a GPU only with the "
            "CUDA libraries of tensorflow[and-cuda])"
        )
    probe = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    proc = subprocess.run(
        [str(EDWARD2_PYTHON), "-c", probe], capture_output=True, text=True, timeout=120
    )
    gpus = proc.stdout.strip().splitlines()[-1:] or ["?"]
    if gpus[0] in ("0", "?"):
        return "not run: its TensorFlow build sees no GPU (CPU-only wheel or no CUDA libraries)"
    return (
        f"TensorFlow sees {gpus[0]} GPU(s); not timed here (bench/head_speed.py's driver "
        "pins TensorFlow to 2 CPU threads): compare by hand"
    )


def resnet_step_ratio(rounds: int) -> list[tuple[str, str]]:
    from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec
    from models.classifier import build_classifier
    from models.train import TrainingLoss, mixed_precision

    autocast, layout = mixed_precision(torch.device("cuda"), images=True)
    x = torch.rand(128, 3, 32, 32, device="cuda").contiguous(memory_format=layout)
    y = torch.randint(0, 10, (128,), device="cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    times, dtypes = {}, {}
    for kind in ("softmax", "het"):
        spec = RunSpec(
            head=HeadSpec(kind=kind),
            backbone=BackboneSpec(kind="resnet18_cifar"),
            train=TrainSpec(device="cuda"),
        )
        torch.manual_seed(0)
        model = build_classifier(spec, [3, 32, 32], 10, np.zeros((3, 1, 1)), np.ones((3, 1, 1)))
        model = model.cuda().to(memory_format=layout)
        step_loss = TrainingLoss(model, autocast)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(step_loss=step_loss, optimizer=optimizer):
            loss = step_loss(x, y, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            dtypes["loss"] = loss.dtype

        times[kind] = cuda_ms(step, rounds, warmup=5)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise RuntimeError(f"{kind}: non-finite parameters after {rounds + 5} steps")
    ratio = times["het"] / times["softmax"]
    verdict = "meets" if ratio <= 1.2 else "misses"
    return [
        (
            "resnet18_cifar step, B=128, bf16 + channels-last",
            f"softmax {times['softmax']:.1f} ms, HET {times['het']:.1f} ms: "
            f"{ratio:.2f}x ({verdict} the 1.2x goal; paper TPU 1.5x)",
        ),
        ("bf16 autocast: head loss dtype", str(dtypes["loss"]).replace("torch.", "")),
    ]


def short_job() -> list[tuple[str, str]]:
    from core.dataset_files import ArrayDataset, validate
    from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec
    from models.export import export_onnx
    from models.noise_report import noise_report
    from models.train import predict_proba, train

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    x = (rng.normal(size=(2000, 32)) + 2.0 * np.eye(10, 32)[y]).astype(np.float32)
    data = validate(ArrayDataset(x, y, x_test=x[:400], y_test=y[:400]))
    spec = RunSpec(
        head=HeadSpec(num_factors=4),  # eval_noise "qmc", the default
        backbone=BackboneSpec(hidden=[64]),
        train=TrainSpec(epochs=2, batch_size=128, device="cuda"),
    )
    rows = []
    start = time.perf_counter()
    result = train(spec, data)
    rows.append(
        (
            "short job: train 2 epochs (QMC validation)",
            f"val_nll {result.metrics['val_nll']:.4f}, {time.perf_counter() - start:.1f} s",
        )
    )
    start = time.perf_counter()
    probs = predict_proba(result.model, data.x_test)
    if not np.allclose(probs.sum(-1), 1, atol=1e-4):
        raise RuntimeError("predict_proba rows do not sum to 1")
    rows.append(("short job: QMC predict_proba, 400 rows", f"{time.perf_counter() - start:.2f} s"))
    start = time.perf_counter()
    report = noise_report(result.model, data.x_test)
    rows.append(
        (
            "short job: noise_report",
            f"{len(report['class_pairs'])} pairs, {time.perf_counter() - start:.2f} s",
        )
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        meta = export_onnx(
            result.model,
            Path(tmp) / "m.onnx",
            class_names=[str(i) for i in range(10)],
            parity_inputs=data.x_test[:64],
        )
    parity = meta["parity"]
    worst = max(parity["same_noise_tolerance_ratio"].values())
    rows.append(
        (
            "short job: export_onnx + parity",
            f"passed={parity['passed']}, max_z {parity['max_z']:.2f}, worst same-noise "
            f"tolerance ratio {worst:.3f}, {time.perf_counter() - start:.1f} s",
        )
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the table here too")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("GPU check: not run: no GPU (torch.cuda.is_available() is False)")
        return 0
    card = torch.cuda.get_device_name(0)
    rounds = 5 if args.quick else 15
    rows: list[tuple[str, str, str]] = []  # (check, result, status)
    failed = False

    def step(name: str, fn) -> None:
        nonlocal failed
        start = time.perf_counter()
        try:
            got = fn()
        except Exception as exc:
            failed = True
            traceback.print_exc()
            rows.append((name, f"FAILED: {type(exc).__name__}: {exc}"[:300], "fail"))
            return
        if isinstance(got, tuple):  # (ok, summary)
            ok, summary = got
            failed |= not ok
            rows.append((name, summary, "ok" if ok else "fail"))
        else:
            rows.extend((label, result, "ok") for label, result in got)
        print(f"[{time.perf_counter() - start:6.1f} s] {name}", flush=True)

    step("pytest -m cuda", run_cuda_tests)
    step("head speed on CUDA", lambda: head_speed(rounds))
    step("resnet18_cifar HET vs softmax step", lambda: resnet_step_ratio(rounds))
    step("short job on CUDA", short_job)

    width = max(len(r[0]) for r in rows)
    print(
        f"\nGPU check on {card} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{torch.cuda.device_count()} GPU(s))\n"
    )
    print(f"| {'check'.ljust(width)} | status | result |")
    print(f"|{'-' * (width + 2)}|--------|--------|")
    for name, result, status in rows:
        print(f"| {name.ljust(width)} | {status:6} | {result} |")
    if args.json:
        args.json.write_text(
            json.dumps({"card": card, "torch": torch.__version__, "rows": rows}, indent=1)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
