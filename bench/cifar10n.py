"""CIFAR-10N through the product: real annotator noise, HET against softmax, and the
noise report and label issues scored against the people's own mistakes.

    .venv/bin/python bench/cifar10n.py --labels worse --train-subset 10000 --seeds 2
    .venv/bin/python bench/cifar10n.py --source python-release \\
        --release-dir ~/data/cifar-10-batches-py --human-labels ~/data/CIFAR-10_human.pt

What it does, as a user would (the Python client ``hetserve`` against a ``hetserve up``
it starts on a free loopback port with a temporary data folder):

1. The data. ``--source shared`` (default): ``../shared/data/cifar10n`` (found by walking
   up from the repository, or ``$HETSERVE_CIFAR10N_DIR``): its JPEG tarball is extracted
   once into ``var/cifar10n/jpeg`` and its ``labels.npz`` read. ``--source python-release``:
   the CIFAR-10 python release (``data_batch_1`` … ``_5``, ``test_batch``: pickles of
   ``data`` uint8 [N, 3072] and ``labels``) plus CIFAR-10N's ``CIFAR-10_human.pt``
   (``clean_label``, ``worse_label``, ``aggre_label``, ``random_label1`` … ``3``); each
   image is written once as a PNG into ``var/cifar10n/python-release``, training example
   i as ``train/<i>.png`` (the release order, which CIFAR-10N's labels follow).
2. The tree. Under a ``HETSERVE_DATASET_ROOTS`` root: ``train/<class>/<i>.<ext>`` for
   each chosen training example i (a ``--train-subset`` stratified by the given label,
   the same for every seed), in the folder of its *given* label (``--labels``), and
   ``test/<class>/…`` with the clean test labels: hard links to the extracted files,
   never copies. A by-reference image folder lists its rows class folder by class
   folder, names sorted (core/dataset_files.py), so row r of the product's ``x_train`` is
   ``rows[r]`` of the ``Tree`` built here.
3. Per seed, one job: HET (``--temperature``, by default "auto" over
   ``--temperature-grid``: chosen by the validation NLL of the *noisy* hold-out, never
   the test set) with ``compare_baseline`` (the softmax head on the same backbone,
   augmentation, epochs and seed). Read back: the job's metrics (clean test labels),
   ``GET /noise``, every page of ``GET /label-issues`` of both models, and the HET
   model's noise-free predictive on every training image (``POST /predict`` with
   ``predictive: "noise_free"``, the training images as files) to apply the other flag
   rules of models/label_issues.py to.
4. The anchor: cleanlab's ``find_label_issues`` on ``--folds``-fold out-of-fold softmax
   probabilities (``bench`` extra; AGPL-3.0, never a service dependency), each fold a
   softmax model trained with ``models/`` directly (models.train.train, the job's
   backbone, augmentation, epochs and seed, the same decode-once image path as the
   worker) on the same training rows.

Scored against the clean labels: test accuracy / NLL / ECE of softmax, HET's MC
predictive and HET's noise-free predictive; the noise report's top 6 pairs beside the
true top 6 (flips both ways between given and clean on these rows); label-issue
precision / recall / F1 / AUROC against ``given != clean``; wall time and peak RSS
(the worker's process tree, sampled) of every job. ``--json OUT`` writes it all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# As the worker does (worker/celery_app.py), before torch loads: OpenMP threads that
# sleep rather than spin while they wait, on cores shared with other processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench import cifar10n_loop as loop  # noqa: E402
from bench.label_scoring import detection  # noqa: E402

CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The human confusions CIFAR-10N's README names first: automobile-truck, cat-dog,
# deer-horse, airplane-ship.
HUMAN_PAIRS = ((1, 9), (3, 5), (4, 7), (0, 8))
LABEL_SETS = ("worse", "aggre", "random1", "random2", "random3")
HUMAN_KEYS = {
    "clean": "clean_label",
    "worse": "worse_label",
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
}
API_KEY = "cifar10n-bench-key-0123456789"
PAGE = 10_000  # label issues per request (the API's most)
PREDICT_BATCH = 512  # images per predict request (under HETSERVE_MAX_BATCH_ROWS)
RULES = ("predicted_neq_given", "prune_by_noise_rate", "confident_joint")


# -- the data -------------------------------------------------------------------------


@dataclass
class Cifar10N:
    """Training example i is ``train_files[i]``; its label sets ``labels[name][i]``
    (``clean`` among them); ``test_files`` are (path, clean class)."""

    train_files: list[Path]
    labels: dict[str, np.ndarray]
    test_files: list[tuple[Path, int]]


def shared_dir() -> Path | None:
    """``$HETSERVE_CIFAR10N_DIR``, else the first ``shared/data/cifar10n`` beside the
    repository or one of its parents (a worktree sits deeper than the main checkout)."""
    if env := os.environ.get("HETSERVE_CIFAR10N_DIR"):
        return Path(env)
    for parent in ROOT.parents:
        candidate = parent / "shared" / "data" / "cifar10n"
        if (candidate / "labels.npz").is_file():
            return candidate
    return None


def from_shared(data_dir: Path, cache: Path) -> Cifar10N:
    """The shared folder: its tarball extracted once into ``cache/jpeg``."""
    jpeg = cache / "jpeg"
    done = jpeg / ".extracted"
    if not done.exists():
        jpeg.mkdir(parents=True, exist_ok=True)
        with tarfile.open(data_dir / "cifar10-jpeg.tar.gz") as archive:
            archive.extractall(jpeg, filter="data")
        done.touch()
    labels_npz = np.load(data_dir / "labels.npz")
    labels = {k: labels_npz[k].astype(np.int64) for k in ("clean", "worse", "aggre")}
    n = len(labels["clean"])
    train_files = [jpeg / "cifar10" / "train" / f"{i:05d}.jpg" for i in range(n)]
    test_files = [
        (path, c)
        for c, name in enumerate(CLASS_NAMES)
        for path in sorted((jpeg / "cifar10" / "test" / name).iterdir())
    ]
    return Cifar10N(train_files, labels, test_files)


def unpickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the CIFAR-10 python release: (images uint8 [N, 32, 32, 3], labels)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the release's own files (trusted)
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data.transpose(0, 2, 3, 1), np.asarray(batch[b"labels"], dtype=np.int64)


def read_human_labels(path: Path) -> dict[str, np.ndarray]:
    """CIFAR-10N's ``CIFAR-10_human.pt``: {clean, worse, aggre, random1..3} (those present)."""
    import torch

    # A dict of numpy arrays saved with torch.save: weights_only cannot read numpy
    # arrays, and this is the user's own download of the published file.
    raw = torch.load(path, weights_only=False)
    labels = {
        name: np.asarray(raw[key], dtype=np.int64) for name, key in HUMAN_KEYS.items() if key in raw
    }
    if "clean" not in labels:
        raise SystemExit(f"{path} has no clean_label: not CIFAR-10N's CIFAR-10_human.pt")
    return labels


def from_python_release(release_dir: Path, human_labels: Path, cache: Path) -> Cifar10N:
    """The python release + CIFAR-10_human.pt, each image written once as a PNG."""
    from PIL import Image

    out = cache / "python-release"
    batches = [unpickle(release_dir / f"data_batch_{b}") for b in range(1, 6)]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    x_test, y_test = unpickle(release_dir / "test_batch")
    labels = read_human_labels(human_labels)
    if len(labels["clean"]) != len(y) or not np.array_equal(labels["clean"], y):
        raise SystemExit(
            f"{human_labels}'s clean labels are not the labels of {release_dir}'s data_batch_1..5 "
            "in order: the human labels follow the release order"
        )
    train_files = [out / "train" / f"{i:05d}.png" for i in range(len(y))]
    test_files = [(out / "test" / f"{j:05d}.png", int(c)) for j, c in enumerate(y_test)]
    done = out / ".written"
    if not done.exists():
        for folder in ("train", "test"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        for path, pixels in zip(train_files, x, strict=True):
            Image.fromarray(pixels).save(path)
        for (path, _), pixels in zip(test_files, x_test, strict=True):
            Image.fromarray(pixels).save(path)
        done.touch()
    return Cifar10N(train_files, labels, test_files)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of n rows drawn per class in proportion to ``labels`` (all if None)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    take = np.floor(counts / counts.sum() * n).astype(int)
    take[np.argsort(-(counts / counts.sum() * n - take))[: n - take.sum()]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


@dataclass
class Tree:
    """An image-folder tree laid out for the product: ``rows[r]`` is the training
    example (index into the data set) of the product's training row r, ``given`` and
    ``clean`` its labels, ``files[r]`` its path inside the tree."""

    root: Path
    rows: np.ndarray
    given: np.ndarray
    clean: np.ndarray
    files: list[Path] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.root.resolve().as_uri()


def build_tree(
    data: Cifar10N,
    label_set: str,
    root: Path,
    train_rows: np.ndarray,
    test_rows: np.ndarray | None = None,
) -> Tree:
    """``root/train/<given class>/<i>.<ext>`` for each i in ``train_rows``, ``root/test/
    <class>/…`` for the test images (``test_rows``, default all): hard links."""
    if label_set not in data.labels:
        raise SystemExit(
            f"label set {label_set!r} is not in this source (it has {sorted(data.labels)})"
        )
    given_all = data.labels[label_set]
    for c in CLASS_NAMES:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        (root / "test" / c).mkdir(parents=True, exist_ok=True)
    for i in train_rows:
        src = data.train_files[i]
        os.link(src, root / "train" / CLASS_NAMES[given_all[i]] / src.name)
    tests = range(len(data.test_files)) if test_rows is None else test_rows
    for j in tests:
        src, c = data.test_files[j]
        os.link(src, root / "test" / CLASS_NAMES[c] / src.name)
    # The product's row order: class folders in name order, files in name order.
    order = sorted(train_rows, key=lambda i: (CLASS_NAMES[given_all[i]], data.train_files[i].name))
    rows = np.asarray(order, dtype=np.int64)
    files = [root / "train" / CLASS_NAMES[given_all[i]] / data.train_files[i].name for i in rows]
    return Tree(root, rows, given_all[rows], data.labels["clean"][rows], files)


def true_pairs(given: np.ndarray, clean: np.ndarray, top: int = 6) -> list[tuple[tuple, int]]:
    """The data's own most confused pairs: flips both ways between clean and given."""
    k = len(CLASS_NAMES)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (clean, given), 1)
    pairs = [((i, j), int(counts[i, j] + counts[j, i])) for i in range(k) for j in range(i + 1, k)]
    return sorted(pairs, key=lambda p: -p[1])[:top]


# -- the service ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """pid and every descendant (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE"
            )
    return total


class RssPeak:
    """The peak summed RSS of a process tree, sampled every ``interval`` s in a thread;
    ``reset()`` starts a new peak (one per job)."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(process_tree(self.pid)))

    def reset(self) -> None:
        self.peak = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    log: Path

    def worker_pid(self) -> int:
        """The Celery worker child of ``hetserve up``."""
        for pid in process_tree(self.process.pid):
            with contextlib.suppress(OSError):
                if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        raise RuntimeError(f"no worker process under hetserve up: {self.log.read_text()[-2000:]}")


@contextlib.contextmanager
def hetserve_up(work: Path, dataset_root: Path, timeout_s: float = 180) -> Iterator[Service]:
    """``hetserve up`` on a free loopback port, a fresh data folder under ``work``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")} | {
        "HETSERVE_DATA_DIR": str(work / "data"),
        "HETSERVE_HOST": "127.0.0.1",
        "HETSERVE_PORT": str(port),
        "HETSERVE_API_KEYS": API_KEY,
        "HETSERVE_DATASET_ROOTS": str(dataset_root),
        "PYTHONPATH": str(ROOT),
    }
    log = work / "hetserve-up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + timeout_s
        while b"hetserve is up" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hetserve up did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield service
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def all_label_issues(client, model_id: str) -> dict[str, np.ndarray]:
    """Every entry of ``GET /label-issues``, page by page, as arrays in row order."""
    entries: list[dict] = []
    while True:
        page = client.label_issues(model_id, limit=PAGE, offset=len(entries))
        entries += page["issues"]
        if len(entries) >= page["num_examples"] or not page["issues"]:
            break
    n = page["num_examples"]
    if len(entries) != n:
        raise RuntimeError(f"read {len(entries)} label issues of {n}")
    index = np.asarray([e["index"] for e in entries], dtype=np.int64)
    out = {
        "score": np.zeros(n),
        "flagged": np.zeros(n, dtype=bool),
        "given": np.zeros(n, dtype=np.int64),
        "suggested": np.zeros(n, dtype=np.int64),
    }
    out["score"][index] = [e["score"] for e in entries]
    out["flagged"][index] = [e["flagged"] for e in entries]
    out["given"][index] = [e["given_label"] for e in entries]
    out["suggested"][index] = [e["suggested_label"] for e in entries]
    return out


def noise_free_train_probs(client, model_id: str, files: list[Path]) -> np.ndarray:
    """The model's noise-free predictive on each training image, through POST /predict."""
    out = []
    for start in range(0, len(files), PREDICT_BATCH):
        result = client.predict(
            model_id, images=files[start : start + PREDICT_BATCH], predictive="noise_free"
        )
        out.append(np.asarray(result.probs, dtype=np.float64))
    return np.concatenate(out)


# -- scoring --------------------------------------------------------------------------


def out_of_fold_probs(tree: Tree, spec: dict, folds: int, seed: int) -> np.ndarray:
    """Softmax probabilities of every training row from the fold model that did not see
    it: ``folds`` trainings with models/ directly, the job's backbone and train spec."""
    from core.dataset_files import ArrayDataset
    from core.manifest import ImageFiles
    from core.spec import RunSpec
    from models.image_cache import decode_files
    from models.label_issues import noise_free_probs
    from models.train import train

    files = ImageFiles(tree.root, [str(p.relative_to(tree.root)) for p in tree.files], 32, False)
    x = decode_files(files)
    n = len(tree.rows)
    fold_of = np.random.default_rng(seed + 1000).permutation(n) % folds
    run = RunSpec.model_validate(
        {"head": {"kind": "softmax"}, "backbone": spec["backbone"], "train": spec["train"]}
    )
    probs = np.zeros((n, len(CLASS_NAMES)))
    for f in range(folds):
        held, kept = np.flatnonzero(fold_of == f), np.flatnonzero(fold_of != f)
        part = ArrayDataset(
            x_train=x[kept], y_train=tree.given[kept], class_names=list(CLASS_NAMES)
        )
        model = train(run, part).model  # type: ignore[arg-type]
        probs[held] = noise_free_probs(model, x[held])
        print(f"  out-of-fold softmax: fold {f + 1}/{folds} done", file=sys.stderr, flush=True)
    return probs


def cleanlab_oof(tree: Tree, spec: dict, folds: int, seed: int) -> tuple[dict, np.ndarray]:
    """cleanlab's ``find_label_issues`` on out-of-fold softmax probabilities: its
    detection scores, and the rows it flagged."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    start = time.perf_counter()
    oof = out_of_fold_probs(tree, spec, folds, seed)
    flagged = np.asarray(cleanlab_issues(tree.given, oof), dtype=bool)
    scores = 1.0 - oof[np.arange(len(tree.given)), tree.given]
    out = detection(flagged, scores, tree.given != tree.clean)
    out["wall_s"] = time.perf_counter() - start
    return out, flagged


# -- one seed -------------------------------------------------------------------------


def job_spec(args, dataset_id: str, seed: int) -> dict:
    tau: float | str = (
        args.temperature if args.temperature in ("auto", "learned") else float(args.temperature)
    )
    head: dict = {"kind": "het", "num_factors": args.factors, "temperature": tau}
    if tau == "auto":
        head["temperature_grid"] = [float(t) for t in args.temperature_grid.split(",")]
    return {
        "dataset_id": dataset_id,
        "head": head,
        "backbone": {"kind": args.backbone, "augment": True, "hflip": True},
        "train": {"epochs": args.epochs, "seed": seed, "device": args.device}
        | ({"lr": args.lr} if args.lr else {})
        | ({"batch_size": args.batch_size} if args.batch_size else {}),
        "compare_baseline": True,
    }


def run_seed(args, client, service: Service, tree: Tree, dataset_id: str, seed: int) -> dict:
    from models.label_issues import find_label_issues

    spec = job_spec(args, dataset_id, seed)
    rss = RssPeak(service.worker_pid())
    start = time.perf_counter()
    try:
        job = client.submit_job(spec)
        job = client.wait(job["id"], timeout=args.job_timeout)
    finally:
        rss.stop()
    wall = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
    metrics = job["metrics"] or {}
    model, baseline = metrics["model"], metrics["baseline"]
    result: dict = {
        "seed": seed,
        "job_id": job["id"],
        "job": {"wall_s": wall, "peak_rss_bytes": rss.peak, "spec": spec},
        "temperature": model.get("temperature"),
        "candidates": metrics.get("candidates"),
        "best_epoch": {"het": model.get("best_epoch"), "softmax": baseline.get("best_epoch")},
        "test": {
            "softmax": {m: baseline[f"test_{m}"] for m in ("accuracy", "nll", "ece")},
            "HET, MC predictive": {m: model[f"test_{m}"] for m in ("accuracy", "nll", "ece")},
            "HET, noise-free": {
                m: model[f"noise_free_test_{m}"] for m in ("accuracy", "nll", "ece")
            },
        },
        "val_accuracy": {"het": model.get("val_accuracy"), "softmax": baseline.get("val_accuracy")},
    }
    report = client.noise(job["model_id"])
    result["noise_pairs"] = [
        {"classes": p["classes"], "flip_rate": p["flip_rate"], "correlation": p["correlation"]}
        for p in report["class_pairs"][:6]
    ]
    top4 = {frozenset(p["classes"]) for p in report["class_pairs"][:4]}
    result["human_pairs_in_top4"] = sum(frozenset(p) in top4 for p in HUMAN_PAIRS)

    is_issue = tree.given != tree.clean
    detections = {}
    for role, model_id in (("HET", job["model_id"]), ("softmax", job["baseline_model_id"])):
        issues = all_label_issues(client, model_id)
        if not np.array_equal(issues["given"], tree.given):
            raise RuntimeError("the label issues' given labels are not the tree's: rows moved")
        detections[f"{role}: product default"] = detection(
            issues["flagged"], issues["score"], is_issue
        )
    probs = noise_free_train_probs(client, job["model_id"], tree.files)
    for rule in RULES:
        scores, flagged = find_label_issues(probs, tree.given, rule=rule)
        detections[f"HET noise-free: {rule}"] = detection(flagged, scores, is_issue)
    if args.folds:
        anchor, flagged = cleanlab_oof(tree, spec, args.folds, seed)
        detections[f"cleanlab, softmax out-of-fold ({args.folds} folds)"] = anchor
        result["cleanlab_flagged"] = flagged.tolist()
    result["label_issues"] = detections
    # what the rules above were applied to, to compare rules again without retraining
    result["het_noise_free_train_probs"] = np.round(probs, 5).tolist()
    result["train_given"], result["train_clean"] = tree.given.tolist(), tree.clean.tolist()
    result["model_ids"] = {"het": job["model_id"], "softmax": job["baseline_model_id"]}
    return result


# -- the table ------------------------------------------------------------------------


def fmt(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def pair_name(pair) -> str:
    i, j = sorted(pair)
    return f"{CLASS_NAMES[i]}–{CLASS_NAMES[j]}"


def table(runs: list[dict], truth: list[tuple[tuple, int]], header: str) -> str:
    lines = [header, "", "| | clean test accuracy | NLL | ECE |", "|---|---|---|---|"]
    for name in runs[0]["test"]:
        cells = [fmt([r["test"][name][m] for r in runs]) for m in ("accuracy", "nll", "ece")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| rank | noise report (seed " + ", ".join(str(r["seed"]) for r in runs)
              + ") | true (given vs clean, flips both ways) |", "|---|---|---|"]  # fmt: skip
    for k in range(6):
        ours = " / ".join(
            pair_name(r["noise_pairs"][k]["classes"]) for r in runs if k < len(r["noise_pairs"])
        )
        true = f"{pair_name(truth[k][0])} ({truth[k][1]})" if k < len(truth) else ""
        lines.append(f"| {k + 1} | {ours} | {true} |")
    lines.append(
        "\nhuman pairs (automobile–truck, cat–dog, deer–horse, airplane–ship) in the report's "
        "top 4: " + ", ".join(str(r["human_pairs_in_top4"]) for r in runs)
    )
    lines += [
        "",
        "| label issues vs given ≠ clean | precision | recall | F1 | AUROC | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for name in runs[0]["label_issues"]:
        d = [r["label_issues"][name] for r in runs]
        cells = [fmt([x[m] for x in d]) for m in ("precision", "recall", "f1", "auroc")]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {fmt([x['flagged'] for x in d], 0)} |"
        )
    lines += ["", "| job (seed) | wall | peak RSS (worker tree) | τ chosen |", "|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| HET + softmax baseline ({r['seed']}) | {r['job']['wall_s']:.0f} s | "
            f"{r['job']['peak_rss_bytes'] / 2**20:.0f} MiB | {r['temperature']} |"
        )
        oof = next((v for k, v in r["label_issues"].items() if k.startswith("cleanlab")), None)
        if oof:
            lines.append(f"| cleanlab out-of-fold trainings ({r['seed']}) | {oof['wall_s']:.0f} s "
                         "| (this process) | |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", choices=LABEL_SETS, default="worse")
    p.add_argument("--train-subset", type=int, default=None, help="stratified rows (all if unset)")
    p.add_argument("--test-subset", type=int, default=None, help="stratified test images")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--backbone", default="cnn")
    p.add_argument("--seeds", type=int, default=2, help="N seeds, one job each")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first .. first + N - 1")
    p.add_argument("--device", default="auto")
    p.add_argument("--temperature", default="auto", help='a number, "auto" or "learned"')
    p.add_argument("--temperature-grid", default="1,2")
    p.add_argument("--factors", type=int, default=4, help="R")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--folds", type=int, default=5, help="cleanlab's out-of-fold K; 0 skips it")
    p.add_argument("--source", choices=("shared", "python-release"), default="shared")
    p.add_argument("--data-dir", type=Path, default=None, help="the shared cifar10n folder")
    p.add_argument("--release-dir", type=Path, help="cifar-10-batches-py (python-release)")
    p.add_argument("--human-labels", type=Path, help="CIFAR-10_human.pt (python-release)")
    p.add_argument("--cache", type=Path, default=ROOT / "var" / "cifar10n")
    p.add_argument("--job-timeout", type=float, default=6 * 3600)
    p.add_argument("--json", type=Path, default=None, help="write every measurement here")
    p.add_argument(
        "--loop",
        action="store_true",
        help="then one round of corrections and a retrain per seed (bench/cifar10n_loop.py)",
    )
    p.add_argument(
        "--loop-top", default="all", help='rows each round corrects: "all" flagged, or N, or both'
    )
    p.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="after the first job, its label-issue table filtered to dogs the model calls "
        "cats, as the dashboard shows it (bench/dashboard_screenshot.py)",
    )
    args = p.parse_args(argv)

    if args.folds:
        try:
            import cleanlab  # noqa: F401
        except ImportError:
            raise SystemExit(
                "cleanlab is not installed (pip install -e '.[bench]'), or pass --folds 0"
            ) from None
    if args.source == "shared":
        data_dir = args.data_dir or shared_dir()
        if data_dir is None:
            raise SystemExit("no shared/data/cifar10n found: pass --data-dir or --source")
        data = from_shared(data_dir, args.cache)
    else:
        if not (args.release_dir and args.human_labels):
            raise SystemExit("--source python-release needs --release-dir and --human-labels")
        data = from_python_release(args.release_dir, args.human_labels, args.cache)

    if args.labels not in data.labels:
        raise SystemExit(f"label set {args.labels!r} is not in this source")
    given_all = data.labels[args.labels]
    train_rows = stratified_subset(given_all, args.train_subset, seed=0)
    test_labels = np.asarray([c for _, c in data.test_files])
    test_rows = stratified_subset(test_labels, args.test_subset, seed=0)
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # Under var/ beside the extracted files: a hard link needs the same file system.
    with tempfile.TemporaryDirectory(prefix="run-", dir=args.cache) as tmp:
        work = Path(tmp)
        roots = work / "refs"
        tree = build_tree(data, args.labels, roots / "cifar10n", train_rows, test_rows)
        noise = float((tree.given != tree.clean).mean())
        print(
            f"{args.labels}: {len(tree.rows)} training images ({noise:.1%} noisy), "
            f"{len(test_rows)} test images; tree {tree.root}",
            file=sys.stderr,
            flush=True,
        )
        from hetserve import Client

        runs: list[dict] = []
        loops: list[dict] = []
        with hetserve_up(work, roots) as service, Client(service.url, key=API_KEY) as client:
            dataset = client.register_dataset(tree.uri)

            def make_tree(rows: np.ndarray, label_set: str | None) -> str:
                """A tree of these training examples (same test images) under the given
                labels, or ``label_set``'s, registered."""
                labels = label_set or args.labels
                folder = roots / f"seed{len(loops)}-{labels}-{len(rows)}"
                sub = build_tree(data, labels, folder, rows, test_rows)
                return client.register_dataset(sub.uri)["id"]

            for seed in range(args.first_seed, args.first_seed + args.seeds):
                print(f"seed {seed}: training", file=sys.stderr, flush=True)
                runs.append(run_seed(args, client, service, tree, dataset["id"], seed))
                print(json.dumps(runs[-1]["test"]), file=sys.stderr, flush=True)
                if args.screenshot and len(runs) == 1:
                    from bench.dashboard_screenshot import label_issue_table

                    job_id = runs[0]["job_id"]
                    label_issue_table(service.url, API_KEY, job_id, "dog", "cat", args.screenshot)
                if args.loop:
                    print(f"seed {seed}: corrections and retrains", file=sys.stderr, flush=True)
                    loops.append(
                        loop.run_loop(args, client, tree, dataset["id"], runs[-1], make_tree)
                    )
                report(args, runs, loops, tree, noise, len(test_rows), started)  # so far
    return 0


def report(
    args, runs: list[dict], loops: list[dict], tree: Tree, noise: float, num_test: int, started: str
) -> None:
    """Print the table of ``runs``; with --json also write every measurement there."""
    truth = true_pairs(tree.given, tree.clean)
    header = (
        f"CIFAR-10N `{args.labels}` ({noise:.1%} of these rows noisy): {len(tree.rows)} "
        f"training images, {num_test} clean test images; backbone `{args.backbone}` "
        f"(crop + flip), {args.epochs} epochs, HET R={args.factors} τ={args.temperature}"
        + (f" over {{{args.temperature_grid}}}" if args.temperature == "auto" else "")
        + f", `compare_baseline`; {len(runs)} seed(s), mean ± std; {started}"
    )
    text = table(runs, truth, header)
    if loops:
        text += "\n\n" + loop.table(
            loops,
            f"One round of corrections and a retrain (same spec), clean test accuracy; "
            f"{len(loops)} seed(s), mean ± std",
        )
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "noise_rate": noise,
                    "true_pairs": truth,
                    "runs": runs,
                    "loops": loops,
                    "table": text,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
