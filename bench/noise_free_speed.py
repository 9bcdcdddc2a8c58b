"""Cost of the noise-free predictive: a HET model called with num_samples = 0 vs the
softmax baseline on the same backbone, both through onnxruntime.

    .venv/bin/python bench/noise_free_speed.py [--threads 1] [--samples 512] [--repeats 51]

MLP backbone (D=128, hidden [256, 256]), K = 100, B = 64, R = 10, random weights (speed
does not depend on training). Variants, timed round-robin in interleaved rounds so a
load change hits them alike (median ms per call over the quiet rounds, the CPU other
processes used in each round beside it on stderr: bench/export_speed.time_round_robin):

- "het S=0": the HET file with num_samples = 0, every output fetched (noise_free_probs,
  noise_std, top classes and correlations exact; the sampled outputs are zeros);
- "het S=0, noise_free_probs only": the same call fetching only noise_free_probs
  (onnxruntime 1.32 runs every node whatever is fetched, so it costs the same);
- "het R=0 S=0": a diagonal-only HET model (no K x R factor layer), every output;
- "het PE S=0": the parameter-efficient HET model, V(x) = diag(v(x)) J, every output;
- "softmax": the baseline's file, every output;
- "het QMC S=<default>": the HET file at its default S (HeadSpec's eval_mc_samples, QMC
  noise: models/qmc.py), every output: the predictive's cost now;
- "het MC S=<--before-samples>": the HET file with plain MC noise at the former default
  S = 1000 (which QMC at the default S matches in accuracy: bench/qmc_error.py), every
  output: the cost before.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from export_speed import D, R, make_model, session, time_round_robin  # bench/: run as a script

from bench import calibrate, run_record
from core.spec import HeadSpec
from models.export import build_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--samples", type=int, default=HeadSpec().eval_mc_samples, help="the HET model's S (QMC)"
    )
    parser.add_argument("--before-samples", type=int, default=1000, help="S of the plain-MC file")
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--json", type=Path, help="write the run's record here (bench/run_record.py)"
    )
    args = parser.parse_args()
    machine = run_record.machine()
    print(calibrate.line(machine["speed"]))
    torch.set_num_threads(args.threads)
    k, s = args.classes, args.samples

    het = session(build_onnx(make_model("het", k, s), [D]), args.threads)
    base = session(build_onnx(make_model("softmax", k, s), [D]), args.threads)
    het_r0 = session(build_onnx(make_model("het", k, s, num_factors=0), [D]), args.threads)
    het_pe = session(build_onnx(make_model("het", k, s, efficient=True), [D]), args.threads)
    before_s = args.before_samples
    het_mc = session(build_onnx(make_model("het", k, before_s, noise="mc"), [D]), args.threads)
    x = np.random.default_rng(0).normal(size=(args.batch, D)).astype(np.float32)

    def feeds(num: int) -> dict:
        return {
            "input": x,
            "num_samples": np.asarray(num, np.int64),
            "seed": np.asarray(1, np.int64),
        }

    zero, default, before = feeds(0), feeds(s), feeds(before_s)
    timed = time_round_robin(
        {
            "het S=0": lambda: het.run(None, zero),
            "het S=0, noise_free_probs only": lambda: het.run(["noise_free_probs"], zero),
            "het R=0 S=0": lambda: het_r0.run(None, zero),
            "het PE S=0": lambda: het_pe.run(None, zero),
            "softmax": lambda: base.run(None, default),
            f"het QMC S={s}": lambda: het.run(None, default),
            f"het MC S={before_s}": lambda: het_mc.run(None, before),
        },
        args.repeats,
    )
    t = timed.medians
    print(
        f"onnxruntime {ort.__version__}, {args.threads} thread(s), K={k}, B={args.batch}, "
        f"R={R}, MLP {D}-256-256, median of {args.repeats} interleaved rounds; others' cores "
        f"per round, median / max: {timed.others_note()}\n"
    )
    print("| call | ms | vs softmax |")
    print("|---|---:|---:|")
    for name, sec in t.items():
        print(f"| {name} | {sec * 1e3:.3f} | {sec / t['softmax']:.2f}x |")
    mc_over_qmc = t[f"het MC S={before_s}"] / t[f"het QMC S={s}"]
    print(f"\nMC S={before_s} / QMC S={s}: {mc_over_qmc:.2f}x")
    if args.json:
        ratios = {
            f"{name} / softmax": sec / t["softmax"] for name, sec in t.items() if name != "softmax"
        }
        ratios[f"het MC S={before_s} / het QMC S={s}"] = mc_over_qmc
        settings = {
            "threads": args.threads,
            "classes": k,
            "batch": args.batch,
            "repeats": args.repeats,
        }
        medians_ms = {name: sec * 1e3 for name, sec in t.items()}
        run_record.write(
            args.json, "noise_free_speed", machine, ratios, settings=settings, medians_ms=medians_ms
        )


if __name__ == "__main__":
    main()
