"""Quality benchmark (DESIGN §7): HET vs the softmax baseline under input-dependent label noise.

Both heads sit on the same MLP and get the same optimiser, epochs, batch size and
seeds; the model kept is each run's epoch with the best (noisy) validation NLL; the
metrics are on clean test labels. Prints one markdown table, mean ± std over seeds.

    .venv/bin/python bench/quality.py                      # 3 seeds, 100 epochs, both datasets
    .venv/bin/python bench/quality.py --seeds 5 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from models.benchmarks import noisy_blobs, noisy_digits  # noqa: E402
from models.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec  # noqa: E402
from models.train import resolve_device, train  # noqa: E402

DATASETS = {"noisy digits": noisy_digits, "noisy blobs": noisy_blobs}
METRICS = ("accuracy", "nll", "ece", "brier")


def run_spec(head: HeadSpec, args, seed: int) -> RunSpec:
    return RunSpec(
        head=head,
        backbone=BackboneSpec(kind="mlp", hidden=[256, 256]),
        train=TrainSpec(
            epochs=args.epochs, batch_size=128, lr=args.lr, seed=seed, device=args.device
        ),
    )


def heads(args) -> dict[str, HeadSpec]:
    tau = args.temperature if args.temperature in ("auto", "learned") else float(args.temperature)
    het = HeadSpec(
        kind="het",
        num_factors=args.factors,
        temperature=tau,
        train_mc_samples=args.train_samples,
        eval_mc_samples=1000,
    )
    return {"softmax": HeadSpec(kind="softmax"), f"HET R={args.factors} τ={args.temperature}": het}


def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--factors", type=int, default=4, help="R of the HET head")
    parser.add_argument("--temperature", default="2.0", help='a number, "auto" or "learned"')
    parser.add_argument("--train-samples", type=int, default=200)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {args.threads} threads"
    )
    print(
        f"device: {device} ({name}); torch {torch.__version__}; seeds 0..{args.seeds - 1}; epochs {args.epochs}"
    )

    rows = []
    for ds_name in args.datasets:
        results: dict[str, dict[str, list[float]]] = {}
        seconds: dict[str, float] = {}
        for seed in range(args.seeds):
            data = DATASETS[ds_name](seed)
            for head_name, head in heads(args).items():
                start = time.perf_counter()
                result = train(run_spec(head, args, seed), data)
                seconds[head_name] = seconds.get(head_name, 0.0) + time.perf_counter() - start
                per = results.setdefault(head_name, {m: [] for m in METRICS} | {"tau": []})
                for m in METRICS:
                    per[m].append(result.metrics[f"test_{m}"])
                per["tau"].append(result.metrics["temperature"])
                print(
                    f"  {ds_name} seed {seed} {head_name}: "
                    + ", ".join(f"{m} {result.metrics[f'test_{m}']:.4f}" for m in METRICS)
                    + f" (τ {result.metrics['temperature']:g}, best epoch {result.best_epoch})",
                    file=sys.stderr,
                    flush=True,
                )
        base = next(iter(results))
        for head_name, per in results.items():
            rows.append(
                f"| {ds_name} | {head_name} | {fmt(per['accuracy'], 100, 1)} | {fmt(per['nll'])} | "
                f"{fmt(per['ece'])} | {fmt(per['brier'])} | {seconds[head_name] / args.seeds:.0f} |"
            )
            if head_name != base:
                diff = {
                    m: [a - b for a, b in zip(per[m], results[base][m], strict=True)]
                    for m in METRICS
                }
                rows.append(
                    f"| {ds_name} | HET − softmax (paired) | {fmt(diff['accuracy'], 100, 1)} | {fmt(diff['nll'])} | "
                    f"{fmt(diff['ece'])} | {fmt(diff['brier'])} | |"
                )
    print()
    print("| dataset | head | accuracy % | NLL | ECE | Brier | s / run |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
