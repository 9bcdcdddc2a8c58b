"""Short recipe runs on a CIFAR-10N subset, judged on a validation split of the NOISY
training labels only (never the test set): what limits the image model (epochs,
learning rate, HET's τ and R)?

    .venv/bin/python bench/cifar10n_recipe.py --labels worse --train-subset 4000 \\
        --runs "softmax lr=1e-3 epochs=8" "softmax lr=3e-3 epochs=8" "het tau=1 r=4 epochs=8"

Each run: models.train.train (the worker's training loop) on the decoded images of the
subset (bench/cifar10n.py's stratified subset and hard-linked tree), the `cnn` backbone
with crop + flip, train.val_fraction = 0.1 of the subset as the noisy validation split;
prints the validation accuracy and NLL (noisy labels) of the kept epoch, the epoch
kept, and the seconds it took. With ``--test-subset N`` (a diagnosis, never a choice:
the choice is made on the noisy validation columns) also the clean test accuracy of
the MC and the noise-free predictive on N stratified clean test images, to see where
the noisy validation and the clean test disagree.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# As the worker does (worker/celery_app.py), before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.cifar10n import (  # noqa: E402
    CLASS_NAMES,
    build_tree,
    from_shared,
    shared_dir,
    stratified_subset,
)


def parse_run(text: str) -> dict:
    """'het tau=1 r=4 s=200 share=1 lr=1e-3 epochs=8 backbone=cnn aug=1' -> a job
    spec's head/backbone/train (aug=0: no crop nor flip)."""
    kind, *pairs = text.split()
    opts = dict(pair.split("=", 1) for pair in pairs)
    head: dict = {"kind": kind}
    if kind == "het":
        head |= {"temperature": float(opts.get("tau", 1)), "num_factors": int(opts.get("r", 4))}
        if "s" in opts:  # S while training
            head["train_mc_samples"] = int(opts["s"])
        if "share" in opts:  # one draw of the noise per step for the whole batch, or not
            head["share_samples_across_batch"] = opts["share"] == "1"
    return {
        "head": head,
        "backbone": {
            "kind": opts.get("backbone", "cnn"),
            "augment": opts.get("aug", "1") == "1",
            "hflip": opts.get("aug", "1") == "1",
        },
        "train": {
            "epochs": int(opts.get("epochs", 8)),
            "lr": float(opts.get("lr", 1e-3)),
            "batch_size": int(opts.get("batch", 128)),
            "seed": int(opts.get("seed", 0)),
            "device": "cpu",
        },
    }


def main() -> int:
    from bench.label_scoring import detection
    from core.dataset_files import ArrayDataset
    from core.manifest import ImageFiles
    from core.spec import RunSpec
    from models.image_cache import decode_files
    from models.train import predict_proba, train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", default="worse")
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--test-subset", type=int, default=0, help="clean test images (diagnosis)")
    p.add_argument("--cache", type=Path, default=ROOT / "var" / "cifar10n")
    args = p.parse_args()
    data_dir = shared_dir()
    if data_dir is None:
        raise SystemExit("no shared/data/cifar10n found (set HETSERVE_CIFAR10N_DIR)")
    data = from_shared(data_dir, args.cache)
    rows = stratified_subset(data.labels[args.labels], args.train_subset, seed=0)
    test_labels = np.asarray([c for _, c in data.test_files])
    test_rows = stratified_subset(test_labels, args.test_subset, seed=0)[: args.test_subset]
    with tempfile.TemporaryDirectory(prefix="recipe-", dir=args.cache) as tmp:
        tree = build_tree(data, args.labels, Path(tmp), rows, test_rows=test_rows)
        files = ImageFiles(tmp, [str(f.relative_to(tmp)) for f in tree.files], 32, False)
        x = decode_files(files)
        tests = [data.test_files[j][0] for j in test_rows]
        test_files = ImageFiles(
            tmp,
            [
                f"test/{CLASS_NAMES[data.test_files[j][1]]}/{p.name}"
                for j, p in zip(test_rows, tests, strict=True)
            ],
            32,
            False,
        )
        x_test = decode_files(test_files) if len(test_rows) else None
    y_test = test_labels[test_rows] if len(test_rows) else None
    extra = (
        " | clean test acc, MC | clean test acc, noise-free | label issues F1, noise-free "
        "| label issues F1, MC"
        if len(test_rows)
        else ""
    )
    print(f"| run ({args.labels}, {len(rows)} images) | noisy val accuracy | noisy val NLL "
          f"| epoch kept | s{extra} |\n|---|---|---|---|---|" + "---|" * extra.count("|"))  # fmt: skip
    for text in args.runs:
        spec = RunSpec.model_validate(parse_run(text))
        ds = ArrayDataset(
            x_train=x,
            y_train=tree.given,
            x_test=x_test,
            y_test=y_test,
            class_names=list(CLASS_NAMES),
        )
        start = time.perf_counter()
        result = train(spec, ds)  # type: ignore[arg-type]
        m = result.metrics
        f1 = {}
        if len(test_rows):  # argmax != given on every training row, each predictive
            is_issue = tree.given != tree.clean
            for name, noise_free in (("noise-free", True), ("MC", False)):
                probs = predict_proba(result.model, x, noise_free=noise_free)
                flagged = probs.argmax(1) != tree.given
                f1[name] = detection(flagged, 1 - probs[np.arange(len(x)), tree.given], is_issue)[
                    "f1"
                ]
        print(
            f"| {text} | {m['val_accuracy']:.3f} | {m['val_nll']:.3f} | "
            f"{result.best_epoch}/{spec.train.epochs} | {time.perf_counter() - start:.0f} |"
            + (
                f" {m['test_accuracy']:.3f} | {m.get('noise_free_test_accuracy', float('nan')):.3f} |"
                f" {f1['noise-free']:.3f} | {f1['MC']:.3f} |"
                if len(test_rows)
                else ""
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
