"""Speed of the exported ONNX graph: onnxruntime vs PyTorch eager, in-graph sampling vs
the same graph fed precomputed noise, HET vs the softmax baseline.

    .venv/bin/python bench/export_speed.py [--threads 1] [--samples 1000] [--repeats 7]

MLP backbone (D=128, hidden [256, 256]), HET with R=10, S=1000 (one draw shared by the
batch), B in {1, 64}, K in {10, 100, 1000}; random weights (speed does not depend on
training). Each cell is the median wall time of one call computing every output
(probs, entropies, prob_std, noise_std, top classes and their correlations); the
variants of one row are timed round-robin, so a load change hits them alike. Each
round goes to stderr with the CPU other processes used meanwhile (bench/quiet.py, in
cores); the medians are over the quiet rounds (others at most 0.2 core; every round if
none is), and each row says how many busy rounds it left out. Prints a markdown table;
ratios are against baselines measured in the same run.

Columns: "graph" = the exported file (noise drawn in the graph from a seed), "noise in"
= the same core fed a precomputed noise matrix (the sampler's cost is the difference),
"row per call" = the file run one row per session call, as app/serving/onnx_model.py does for a
caller's seed,
"torch" = PyTorch eager ``predictive_uncertainty`` (draws with torch.randn), "softmax"
= the baseline's exported file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench import calibrate, run_record
from bench.quiet import MAX_OTHER_CORES, RoundWindows, mark, others_summary, quiet_rounds
from core.spec import BackboneSpec, HeadSpec, RunSpec
from models.classifier import build_classifier
from models.export import build_onnx, core_onnx, counter_normals, noise_width
from models.uncertainty import predictive_uncertainty

D = 128
R = 10


def make_model(
    kind: str,
    num_classes: int,
    samples: int,
    num_factors: int = R,
    efficient: bool = False,
    noise: str = "qmc",
):
    """An MLP classifier with random weights (speed does not depend on training); noise:
    the eval draws ("qmc", the default, or "mc")."""
    torch.manual_seed(0)
    spec = RunSpec(
        head=HeadSpec(
            kind=kind,
            num_factors=num_factors,
            temperature=1.5,
            eval_mc_samples=samples,
            eval_noise=noise,
            parameter_efficient=efficient,
        ),
        backbone=BackboneSpec(hidden=[256, 256]),
    )
    return build_classifier(
        spec, [D], num_classes, np.zeros(D, np.float32), np.ones(D, np.float32)
    ).eval()


def session(proto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


@dataclass
class RoundRobin:
    """Medians of interleaved rounds, over the quiet rounds (bench/quiet.py)."""

    medians: dict[str, float]  # seconds per call
    others: list[float]  # per round: the cores other processes used meanwhile

    def others_note(self) -> str:
        """Others' cores per round, median / max, and the busy rounds left out."""
        return others_summary(self.others)


def time_round_robin(calls: dict, repeats: int, warmup: int = 5) -> RoundRobin:
    """Seconds per call of each callable, timed in interleaved rounds: the medians over
    the rounds where other processes used at most bench/quiet.py's MAX_OTHER_CORES (all
    rounds if none did). Each round goes to stderr with others' cores beside it."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    windows = RoundWindows()
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        windows.round_ended()
    others = windows.finish()
    for i, cores in enumerate(others):
        cells = ", ".join(f"{name} {t[i] * 1e3:.2f} ms" for name, t in times.items())
        print(f"  round {i + 1}: {cells}; others {mark(cores)} cores", file=sys.stderr)
    kept = quiet_rounds(others)
    return RoundRobin({name: statistics.median(kept.pick(t)) for name, t in times.items()}, others)


def bench_cell(
    num_classes: int, batch: int, samples: int, threads: int, repeats: int
) -> RoundRobin:
    het, base = make_model("het", num_classes, samples), make_model("softmax", num_classes, samples)
    graph = session(build_onnx(het, [D]), threads)
    noise_in = session(core_onnx(het, [D]), threads)
    softmax = session(build_onnx(base, [D]), threads)
    x = np.random.default_rng(0).normal(size=(batch, D)).astype(np.float32)
    xt = torch.from_numpy(x)
    noise = counter_normals(1, samples, noise_width(het))
    feeds = {
        "input": x,
        "num_samples": np.asarray(samples, np.int64),
        "seed": np.asarray(1, np.int64),
    }
    gen = torch.Generator().manual_seed(0)

    def torch_het():
        with torch.no_grad():
            predictive_uncertainty(het.head, het.features(xt), samples, gen)

    def torch_softmax():
        with torch.no_grad():
            predictive_uncertainty(base.head, base.features(xt))

    return time_round_robin(
        {
            "graph": lambda: graph.run(None, feeds),
            # what OnnxModel.run does with a caller's seed: one row per call (bit-identical
            # whatever the row is batched with; app/serving/onnx_model.py says why)
            "row per call": lambda: [
                graph.run(None, {**feeds, "input": x[i : i + 1]}) for i in range(batch)
            ],
            "noise in": lambda: noise_in.run(
                None, {"input": x, "noise": noise, "num_samples": feeds["num_samples"]}
            ),
            "torch": torch_het,
            "softmax": lambda: softmax.run(None, feeds),
            "torch softmax": torch_softmax,
        },
        repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op and torch threads"
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--json", type=Path, help="write the run's record here (bench/run_record.py)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.threads} thread(s), "
        f"S={args.samples}, R={R}, MLP {D}-256-256, median of {args.repeats} rounds (the quiet "
        f"ones: others' CPU at most {MAX_OTHER_CORES} core)"
    )
    machine = run_record.machine()
    print(calibrate.line(machine["speed"]) + "\n")
    ratios: dict[str, float] = {}
    medians_ms: dict[str, dict[str, float]] = {}
    print(
        "| K | B | graph ms | noise in ms | graph / noise in | torch ms | graph / torch "
        "| softmax ms | torch softmax ms | graph / softmax | row per call / graph "
        "| others' cores per round, median / max |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for num_classes in args.classes:
        for batch in args.batches:
            cell = bench_cell(num_classes, batch, args.samples, args.threads, args.repeats)
            t = cell.medians
            ms = {k: v * 1e3 for k, v in t.items()}
            where = f"K={num_classes} B={batch}"
            medians_ms[where] = ms
            ratios |= {
                f"{where}: graph / noise in": t["graph"] / t["noise in"],
                f"{where}: graph / torch": t["graph"] / t["torch"],
                f"{where}: graph / softmax": t["graph"] / t["softmax"],
                f"{where}: row per call / graph": t["row per call"] / t["graph"],
            }
            print(
                f"| {num_classes} | {batch} | {ms['graph']:.2f} | {ms['noise in']:.2f} "
                f"| {t['graph'] / t['noise in']:.2f}x | {ms['torch']:.2f} | {t['graph'] / t['torch']:.2f}x "
                f"| {ms['softmax']:.3f} | {ms['torch softmax']:.3f} | {t['graph'] / t['softmax']:.0f}x "
                f"| {t['row per call'] / t['graph']:.2f}x | {cell.others_note()} |",
                flush=True,
            )

    if args.json:
        settings = {"threads": args.threads, "samples": args.samples, "repeats": args.repeats}
        run_record.write(
            args.json, "export_speed", machine, ratios, settings=settings, medians_ms=medians_ms
        )


if __name__ == "__main__":
    main()
