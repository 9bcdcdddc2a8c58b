"""Quality benchmark: HET vs the softmax baseline under input-dependent label noise.

Both heads sit on the same MLP and get the same optimiser, epochs, batch size and
seeds; the model kept is each run's epoch with the best (noisy) validation NLL; the
metrics are on clean test labels, for both predictives: the MC predictive ``probs``
and the noise-free ``softmax(mu / tau)`` (the same thing for the softmax baseline).

On noisy digits, whose flips are known, it also scores, per seed:

- the noise report of the HET model over its training inputs: how many of the 5
  injected confusion pairs are among its top 5 ``class_pairs`` (flip-rate ranking), and
  among the 5 most negative correlations of the training-set-averaged covariance;
- label-issue detection against the known flips, on every row of ``x_train``:
  confident learning (``models.label_issues``) on the HET model's noise-free
  probabilities from its one training run, on the softmax baseline's in-sample
  probabilities, and cleanlab's recipe (``--folds``-fold out-of-fold softmax
  probabilities + ``cleanlab.filter.find_label_issues``), plus ours on those same
  out-of-fold probabilities. Precision / recall / F1 of the flagged set, AUROC of the
  score (1 - p_given). "ours" is confident learning (prune by noise rate) unless the
  row says "predicted ≠ given" (argmax != given label).

Prints markdown tables, mean ± std over seeds; per-run lines go to stderr.

    pip install -e '.[train,bench]'                      # cleanlab (AGPL-3.0): benchmark only
    .venv/bin/python bench/quality.py                      # 3 seeds, 100 epochs, both datasets
    .venv/bin/python bench/quality.py --seeds 5 --device cuda
    .venv/bin/python bench/quality.py --datasets "noisy digits" --folds 0   # no cleanlab
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.label_scoring import detection  # noqa: E402
from core.spec import BackboneSpec, HeadSpec, RunSpec, TrainSpec  # noqa: E402
from models.benchmarks import DIGIT_PAIRS, noisy_blobs, noisy_digits  # noqa: E402
from models.label_issues import find_label_issues, noise_free_probs  # noqa: E402
from models.metrics import multiclass_metrics  # noqa: E402
from models.noise_report import noise_report  # noqa: E402
from models.train import predict_proba, resolve_device, train  # noqa: E402

DATASETS = {"noisy digits": noisy_digits, "noisy blobs": noisy_blobs}
METRICS = ("accuracy", "nll", "ece", "brier")
PREDICTIVES = ("MC", "noise-free")
DETECTION = ("precision", "recall", "f1", "auroc", "flagged")


def digits_clean_train_labels(seed: int, data, test_fraction: float = 0.3) -> np.ndarray:
    """The true labels of noisy_digits(seed)'s training rows (the split replayed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    train_rows = order[int(round(len(digits.target) * test_fraction)) :]
    if not np.array_equal(digits.data[train_rows].astype(np.float32), data.x_train):
        raise RuntimeError("noisy_digits' split changed: update digits_clean_train_labels")
    return digits.target[train_rows].astype(np.int64)


def out_of_fold_probs(args, data, seed: int, folds: int) -> np.ndarray:
    """Softmax-baseline probabilities of every training row from the model that did not see it."""
    n = len(data.y_train)
    fold_of = np.random.default_rng(seed + 1000).permutation(n) % folds
    probs = np.zeros((n, data.num_classes))
    spec = run_spec(HeadSpec(kind="softmax"), args, seed)
    for f in range(folds):
        held, kept = fold_of == f, fold_of != f
        part = replace(
            data,
            x_train=data.x_train[kept],
            y_train=data.y_train[kept],
            x_test=data.x_train[held],
            y_test=data.y_train[held],
        )
        model = train(spec, part).model
        probs[held] = predict_proba(model, data.x_train[held])
    return probs


def pair_recovery(report: dict, top: int = 5) -> tuple[int, int, list]:
    """(injected pairs among the top `top` by flip rate, among the `top` most negative
    correlations, the top pairs) of a noise report computed with top_pairs = all."""
    truth = {frozenset(p) for p in DIGIT_PAIRS}
    by_flip = [frozenset(p["classes"]) for p in report["class_pairs"][:top]]
    by_corr = sorted(report["class_pairs"], key=lambda p: p["correlation"])[:top]
    return (
        len(truth & set(by_flip)),
        len(truth & {frozenset(p["classes"]) for p in by_corr}),
        [tuple(sorted(p)) for p in by_flip],
    )


def label_issue_rows(args, data, seed, het_model, softmax_model, clean) -> dict[str, dict]:
    """Detection scores of each method on this seed's training rows."""
    from sklearn.metrics import roc_auc_score

    labels = data.y_train
    is_flip = labels != clean
    out = {}

    def ours(probs, rule="predicted_neq_given"):
        scores, flagged = find_label_issues(probs, labels, rule=rule)
        margin_scores, _ = find_label_issues(probs, labels, score="normalized_margin")
        d = detection(flagged, scores, is_flip)
        d["auroc_margin"] = float(roc_auc_score(is_flip, margin_scores))
        return d

    het_probs = noise_free_probs(het_model, data.x_train)
    out["ours: HET noise-free, 1 run (default: argmax ≠ given)"] = ours(het_probs)
    out["ours: HET noise-free, 1 run, confident learning"] = ours(het_probs, "prune_by_noise_rate")
    out["ours: softmax in-sample, 1 run"] = ours(noise_free_probs(softmax_model, data.x_train))
    if args.folds:
        from cleanlab.filter import find_label_issues as cleanlab_issues

        oof = out_of_fold_probs(args, data, seed, args.folds)
        flagged = cleanlab_issues(labels, oof)
        scores = 1.0 - oof[np.arange(len(labels)), labels]
        d = detection(flagged, scores, is_flip)
        margin_scores, _ = find_label_issues(oof, labels, score="normalized_margin")
        d["auroc_margin"] = float(roc_auc_score(is_flip, margin_scores))
        out[f"cleanlab: softmax out-of-fold, {args.folds} runs"] = d
        out[f"ours: softmax out-of-fold, {args.folds} runs"] = ours(oof)
    return out


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
    parser.add_argument(
        "--folds", type=int, default=5, help="cleanlab's out-of-fold recipe; 0 skips it"
    )
    parser.add_argument("--report-samples", type=int, default=1000, help="S of the noise report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.folds:
        try:
            import cleanlab  # noqa: F401
        except ImportError:
            print(
                "cleanlab is not installed (pip install -e '.[bench]'): its rows are skipped",
                file=sys.stderr,
            )
            args.folds = 0
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {args.threads} threads"
    )
    print(
        f"device: {device} ({name}); torch {torch.__version__}; seeds 0..{args.seeds - 1}; epochs {args.epochs}"
    )

    rows, pair_rows, detect = [], [], {}
    for ds_name in args.datasets:
        results: dict[str, dict[str, dict[str, list[float]]]] = {}
        seconds: dict[str, float] = {}
        for seed in range(args.seeds):
            data = DATASETS[ds_name](seed)
            models = {}
            for head_name, head in heads(args).items():
                start = time.perf_counter()
                result = train(run_spec(head, args, seed), data)
                seconds[head_name] = seconds.get(head_name, 0.0) + time.perf_counter() - start
                models[head_name] = result.model
                nf = multiclass_metrics(noise_free_probs(result.model, data.x_test), data.y_test)
                per = results.setdefault(
                    head_name, {p: {m: [] for m in METRICS} for p in PREDICTIVES}
                )
                for m in METRICS:
                    per["MC"][m].append(result.metrics[f"test_{m}"])
                    per["noise-free"][m].append(nf[m])
                print(
                    f"  {ds_name} seed {seed} {head_name}: "
                    + ", ".join(f"{m} {result.metrics[f'test_{m}']:.4f}" for m in METRICS)
                    + "; noise-free "
                    + ", ".join(f"{m} {nf[m]:.4f}" for m in METRICS)
                    + f" (τ {result.metrics['temperature']:g}, best epoch {result.best_epoch})",
                    file=sys.stderr,
                    flush=True,
                )
            if ds_name != "noisy digits":
                continue
            softmax_model, het_model = models.values()
            clean = digits_clean_train_labels(seed, data)
            start = time.perf_counter()
            report = noise_report(
                het_model,
                data.x_train,
                num_samples=args.report_samples,
                seed=seed,
                top_pairs=data.num_classes * (data.num_classes - 1) // 2,
            )
            report_s = time.perf_counter() - start
            by_flip, by_corr, top = pair_recovery(report)
            flip_total = sum(p["flip_rate"] for p in report["class_pairs"])
            pair_rows.append(
                f"| {seed} | {by_flip}/5 | {by_corr}/5 | {' '.join(f'{a}-{b}' for a, b in top)} | "
                f"{report_s:.1f} |"
            )
            print(
                f"  noise report seed {seed}: flip-ranked {by_flip}/5, correlation-ranked "
                f"{by_corr}/5, top {top}, summed pair flip rate {flip_total:.4f}",
                file=sys.stderr,
                flush=True,
            )
            for method, d in label_issue_rows(
                args, data, seed, het_model, softmax_model, clean
            ).items():
                per = detect.setdefault(method, {})
                for key, value in d.items():
                    per.setdefault(key, []).append(value)
                print(
                    f"  label issues seed {seed} {method}: "
                    + ", ".join(f"{key} {value:.3f}" for key, value in d.items())
                    + f" (true flips {int((data.y_train != clean).sum())})",
                    file=sys.stderr,
                    flush=True,
                )
        base = next(iter(results))
        for head_name, per in results.items():
            for pred in PREDICTIVES if head_name != base else ("MC",):
                r = per[pred]
                rows.append(
                    f"| {ds_name} | {head_name} | {pred if head_name != base else 'softmax'} | "
                    f"{fmt(r['accuracy'], 100, 1)} | {fmt(r['nll'])} | "
                    f"{fmt(r['ece'])} | {fmt(r['brier'])} | {seconds[head_name] / args.seeds:.0f} |"
                )
            if head_name != base:
                for pred in PREDICTIVES:
                    diff = {
                        m: [
                            a - b for a, b in zip(per[pred][m], results[base]["MC"][m], strict=True)
                        ]
                        for m in METRICS
                    }
                    ratio = [
                        a / b
                        for a, b in zip(per[pred]["nll"], results[base]["MC"]["nll"], strict=True)
                    ]
                    rows.append(
                        f"| {ds_name} | HET − softmax (paired) | {pred} | {fmt(diff['accuracy'], 100, 1)} | "
                        f"{fmt(diff['nll'])} (×{fmt(ratio, 1, 2)}) | {fmt(diff['ece'])} | {fmt(diff['brier'])} | |"
                    )
    print()
    print("| dataset | head | predictive | accuracy % | NLL | ECE | Brier | s / run |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if pair_rows:
        print()
        print(
            "Noise report of the HET model (noisy digits, training inputs, "
            f"S={args.report_samples}): injected pairs {', '.join(f'{a}-{b}' for a, b in DIGIT_PAIRS)}"
        )
        print()
        print("| seed | top 5 by flip rate | top 5 by most negative ρ | top 5 pairs | s |")
        print("|---|---|---|---|---|")
        print("\n".join(pair_rows))
    if detect:
        print()
        print("Label issues on noisy digits' training rows (known flips)")
        print()
        print(
            "| method | precision | recall | F1 | AUROC (1 − p_given) | AUROC (margin) | flagged |"
        )
        print("|---|---|---|---|---|---|---|")
        for method, per in detect.items():
            margin = fmt(per["auroc_margin"]) if "auroc_margin" in per else "–"
            print(
                f"| {method} | {fmt(per['precision'])} | {fmt(per['recall'])} | {fmt(per['f1'])} | "
                f"{fmt(per['auroc'])} | {margin} | {fmt(per['flagged'], 1, 0)} |"
            )


if __name__ == "__main__":
    main()
