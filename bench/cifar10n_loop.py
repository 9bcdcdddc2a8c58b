"""From finding to fixing on CIFAR-10N, measured: one round of hetserve's own label
suggestions (relabel, or drop) and a retrain, before and after, beside cleanlab's
``CleanLearning`` recipe on the same budget and the ceiling of any correction (the same
rows with their clean labels). ``bench/cifar10n.py --loop`` runs it after
each seed's first job; this module is the loop alone.

Per seed, through the product as a user would (the Python client):

1. *before*: the seed's first job (HET + ``compare_baseline``) on the noisy tree.
2. hetserve's round: ``POST /v1/datasets/{id}/corrections/from-model`` with the HET
   model, ``action`` ``relabel`` (each flagged row gets the suggested class) and ``drop``
   (flagged rows leave), ``top`` every flagged row (the product's default) or
   ``--loop-top`` N most suspect; each corrected dataset trained by the same job spec
   (HET + softmax baseline, same backbone, augmentation, epochs, seed).
3. cleanlab's recipe (``CleanLearning``: out-of-fold issues dropped, retrain): the rows
   cleanlab's ``find_label_issues`` flags on the ``--folds`` out-of-fold softmax
   probabilities ``bench/cifar10n.py`` already computed leave the tree (a new tree of
   hard links, registered by URI, as a user holding cleanlab's list would do), and a
   softmax job trains on the rest with the same spec.

Scored on the clean test images (the job metrics): accuracy of softmax, HET MC and HET
noise-free before and after each round; for each round, how many rows it changed, the
share of them whose given label was wrong (the flag precision) and, for ``relabel``, the
share whose new label is the clean one (the relabel precision), and the share of the
training labels that are right after it.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from core.corrections import from_findings

HEADS = ("softmax", "HET, MC predictive", "HET, noise-free")


def test_accuracy(job: dict) -> dict[str, float]:
    """Clean test accuracy of each head a job trained (HEADS; softmax alone for a
    softmax job)."""
    metrics = job["metrics"]
    model = metrics["model"]
    if "baseline" not in metrics:  # a softmax job: its model is the softmax head
        return {"softmax": model["test_accuracy"]}
    return {
        "softmax": metrics["baseline"]["test_accuracy"],
        "HET, MC predictive": model["test_accuracy"],
        "HET, noise-free": model["noise_free_test_accuracy"],
    }


def train_job(client, spec: dict, timeout: float) -> tuple[dict, float]:
    start = time.perf_counter()
    job = client.wait(client.submit_job(spec)["id"], timeout=timeout)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
    return job, time.perf_counter() - start


def label_quality(kept: np.ndarray, labels: np.ndarray, clean: np.ndarray) -> float:
    """The share of the training rows left whose label is the clean one."""
    return float((labels[kept] == clean[kept]).mean())


def hetserve_round(
    client, tree, dataset_id: str, het_model_id: str, spec: dict, action: str, top, timeout
) -> dict:
    """One round of hetserve's suggestions: the corrected dataset from the HET model's
    findings, trained with ``spec``; what it changed, scored against the clean labels."""
    child = client.correct_from_model(dataset_id, het_model_id, action, top=top)
    # What the product changed, from the same findings it used (GET /label-issues, most
    # suspect first) through the same rule (core.corrections.from_findings).
    entries: list[dict] = []
    while True:
        page = client.label_issues(het_model_id, flagged=True, limit=10_000, offset=len(entries))
        if not page["issues"]:
            break
        entries += page["issues"]
    findings = {
        "index": np.asarray([e["index"] for e in entries], dtype=np.int64),
        "suggested": np.asarray([e["suggested_label"] for e in entries], dtype=np.int64),
        "flagged": np.ones(len(entries), dtype=bool),
    }
    corrections = from_findings(findings, action, top)
    changed_rows = np.asarray(sorted(corrections.drop | corrections.relabel.keys()), np.int64)
    new_labels = np.asarray([corrections.relabel.get(int(r), -1) for r in changed_rows])
    labels = tree.given.copy()
    kept = np.ones(len(labels), dtype=bool)
    if action == "relabel":
        labels[changed_rows] = new_labels
    else:
        kept[changed_rows] = False
    lineage = child.get("lineage") or {}
    counted = lineage.get("num_relabelled" if action == "relabel" else "num_dropped")
    if counted != len(changed_rows):
        raise RuntimeError(
            f"the product changed {counted} rows, the findings list {len(changed_rows)}"
        )
    job, wall = train_job(client, spec | {"dataset_id": child["id"]}, timeout)
    wrong = tree.given[changed_rows] != tree.clean[changed_rows]
    out = {
        "dataset_id": child["id"],
        "rows_changed": len(changed_rows),
        "flag_precision": float(wrong.mean()) if len(changed_rows) else 0.0,
        "labels_right_after": label_quality(kept, labels, tree.clean),
        "test_accuracy": test_accuracy(job),
        "wall_s": wall,
    }
    if action == "relabel":
        out["relabel_precision"] = (
            float((new_labels == tree.clean[changed_rows]).mean()) if len(changed_rows) else 0.0
        )
    return out


def cleanlab_round(
    client, make_tree, tree, flagged: np.ndarray, spec: dict, timeout: float
) -> dict:
    """cleanlab's CleanLearning recipe through the product: the rows it flagged out of
    the tree (``make_tree(kept training examples, None)`` lays out and registers a new
    one with the given labels),
    a softmax job with the same backbone, augmentation, epochs and seed on the rest."""
    kept = ~flagged
    dataset_id = make_tree(tree.rows[kept], None)
    softmax_spec = {k: v for k, v in spec.items() if k not in ("head", "compare_baseline")}
    softmax_spec |= {"dataset_id": dataset_id, "head": {"kind": "softmax"}}
    job, wall = train_job(client, softmax_spec, timeout)
    wrong = tree.given[flagged] != tree.clean[flagged]
    return {
        "dataset_id": dataset_id,
        "rows_changed": int(flagged.sum()),
        "flag_precision": float(wrong.mean()) if flagged.any() else 0.0,
        "labels_right_after": label_quality(kept, tree.given, tree.clean),
        "test_accuracy": test_accuracy(job),
        "wall_s": wall,
    }


def labels_right_before(tree) -> float:
    return float((tree.given == tree.clean).mean())


# -- the table ------------------------------------------------------------------------


def _cell(values: list[float], signed: bool = False) -> str:
    if not values:
        return "—"
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.3f}"
    return f"{statistics.fmean(values):{sign}.3f} ± {statistics.stdev(values):.3f}"


def table(loops: list[dict], header: str) -> str:
    """Before / after per head for every round, mean ± std over the seeds, and each
    head's change against the same head before (the first job of the same seed)."""
    rounds = list(loops[0]["rounds"])
    lines = [
        header,
        "",
        "| training labels | rows changed | flag precision | relabel precision "
        "| labels right | softmax | HET, MC | HET, noise-free | Δ softmax | Δ HET, MC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    before = [lp["before"] for lp in loops]
    lines.append(
        "| noisy (before) | — | — | — | "
        + _cell([lp["labels_right_before"] for lp in loops])
        + " | "
        + " | ".join(_cell([b[h] for b in before]) for h in HEADS)
        + " | | |"
    )
    for name in rounds:
        rs = [lp["rounds"][name] for lp in loops]
        heads = [
            _cell([r["test_accuracy"][h] for r in rs if h in r["test_accuracy"]]) for h in HEADS
        ]
        deltas = [
            _cell(
                [
                    r["test_accuracy"][h] - lp["before"][h]
                    for lp, r in zip(loops, rs, strict=True)
                    if h in r["test_accuracy"]
                ],
                signed=True,
            )
            for h in HEADS[:2]
        ]
        changed = statistics.fmean(r["rows_changed"] for r in rs)
        lines.append(
            f"| {name} | {changed:.0f} | "
            f"{_cell([r['flag_precision'] for r in rs])} | "
            f"{_cell([r['relabel_precision'] for r in rs if 'relabel_precision' in r])} | "
            f"{_cell([r['labels_right_after'] for r in rs])} | " + " | ".join(heads + deltas) + " |"
        )
    lines += ["", "| job (seed) | wall |", "|---|---|"]
    for lp in loops:
        for name, r in lp["rounds"].items():
            lines.append(f"| {name} ({lp['seed']}) | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def run_loop(args, client, tree, dataset_id: str, run: dict, make_tree) -> dict:
    """The loop for one seed of ``bench/cifar10n.py``: ``run`` is its first job's
    result (its HET model, spec and, with --folds, cleanlab's flagged rows)."""
    spec = {k: v for k, v in run["job"]["spec"].items() if k != "dataset_id"}
    timeout = args.job_timeout
    tops = [None if t == "all" else int(t) for t in args.loop_top.split(",")]
    rounds: dict[str, dict] = {}
    for top in tops:
        which = "every flagged row" if top is None else f"top {top} flagged"
        for action in ("relabel", "drop"):
            rounds[f"hetserve {action}, {which}"] = hetserve_round(
                client, tree, dataset_id, run["model_ids"]["het"], spec, action, top, timeout
            )
    # The ceiling of any correction: the same rows with their clean labels.
    oracle_id = make_tree(tree.rows, "clean")
    job, wall = train_job(client, spec | {"dataset_id": oracle_id}, timeout)
    rounds["oracle: every label corrected (the clean labels)"] = {
        "dataset_id": oracle_id,
        "rows_changed": int((tree.given != tree.clean).sum()),
        "flag_precision": 1.0,
        "labels_right_after": 1.0,
        "test_accuracy": test_accuracy(job),
        "wall_s": wall,
    }
    if "cleanlab_flagged" in run:
        flagged = np.asarray(run["cleanlab_flagged"], dtype=bool)
        rounds[f"cleanlab recipe: out-of-fold issues dropped ({args.folds} folds)"] = (
            cleanlab_round(client, make_tree, tree, flagged, spec, timeout)
        )
    return {
        "seed": run["seed"],
        "labels_right_before": labels_right_before(tree),
        "before": {h: run["test"][h]["accuracy"] for h in HEADS},
        "rounds": rounds,
    }
