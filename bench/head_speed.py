"""Speed of hetserve's HET head against edward2's MCSoftmaxDenseFA, both run here, and
against a lower bound for this machine.

The same work on both sides, at every shape (B, D, K, R) and S = 1000 samples:

    mu = W_mu h + b_mu,  V = reshape(W_V h + b_V, K x R),  d = softplus(W_d h + b_d) + 1e-3
    u_s = mu + V eps_R,s + d * eps_K,s            s = 1..S, temperature 1
    p_hat = 1/S sum_s softmax(u_s)                (B, K)

    noise "shared":      one eps draw (S x (R + K) normals) for the whole batch
                         (edward2 share_samples_across_batch=True, hetserve's default)
    noise "per-example": a draw per example (B x S x (R + K) normals)
                         (edward2 share_samples_across_batch=False)

    fwd+bwd:  loss = -1/B sum_b log p_hat[b, y_b], and its gradients for every head
              parameter (the three dense layers) and for h (as inside a network).
              hetserve: HetHead.loss (log of the MC average, in log space); edward2:
              log(clip(p_hat, 1e-7)) from the layer's first output, the label's entry
              gathered, negated and averaged (the clip is inactive at these shapes).
    predict:  p_hat, (B, K): HetHead.predict (eval_mc_samples = S) and the layer's third
              output with training=False (test_mc_samples = S; clipped at 1e-7 below).

edward2 0.0.2 (TensorFlow 2.18.1, tf-keras 2.18, TensorFlow Probability 0.25,
TF_USE_LEGACY_KERAS=1; parameter_efficient=False) runs in its own virtualenv,
var/bench-venvs/edward2, which this script creates on first use (a benchmark-only step,
never a dependency of the service), in a worker process (bench/edward2_driver.py, its
calls as tf.function graphs). hetserve runs in this process (torch). Both are limited
to 2 threads: torch.set_num_threads(2); TensorFlow intra-op 2, inter-op 1. TensorFlow's
oneDNN kernels are turned on (TF_ENABLE_ONEDNN_OPTS=1) on every CPU: TensorFlow's own
default turns them on only where the CPU has AVX-512 VNNI/BF16, AVX-VNNI or AMX, and an
AVX2-only EPYC ran edward2 3.6x slower without them (265 against 73 ms at 128/512/100/10
shared fwd+bwd, one VM, 7 December). The anchor runs at its best on every machine.

Timing: per shape and noise mode, rounds of one call of every case (hetserve and
edward2, and the bound below in shared mode; fwd+bwd and predict), the side that goes
first rotating between rounds, so that load from other processes hits both alike; median
and minimum ms per case over the rounds (after two warm-up calls each), and the ratio
edward2 / hetserve of the medians. Beside each round (stderr): the CPU other processes
of the machine used meanwhile (bench/quiet.py, in cores, over windows of one or more
rounds; the edward2 worker and a --contention load are this script's own); a round over
bench/quiet.py's MAX_OTHER_CORES is busy (``!``) and left out of the medians unless every
round is, and the tables say how many were. --runs N repeats the whole measurement N
times and prints, per shape and noise mode, the min / median / max over the runs of
every ratio (of each run's medians); --json stores them under "spread".

Peak memory at the K = 1000 shape: the growth of the peak RSS (VmHWM, reset by writing 5
to /proc/self/clear_refs) over one call, each in a fresh process, after a 2-row call has
loaded the kernels.

Lower bound (shared noise, per shape): the work no implementation can avoid, done with
torch at 2 threads and timed as a third side in the same rounds (so that it meets the
same load), each piece done the fastest of a few ways (chosen by the best of 15 calls):

    predict  >= T(dense forward)  + T(draw GEMM) + B*S*K / exp rate
    fwd+bwd  >= T(dense forward)  + T(draw GEMM) + B*S*K / exp rate
              + T(gradient GEMM) + T(dense backward: dW and dh)

    dense forward:  (B x D) @ (D x K(R+2)), the three head layers as one GEMM
    dense backward: (K(R+2) x B) @ (B x D) and (B x K(R+2)) @ (K(R+2) x D)
    draw GEMM:      [1, eps_R] (S x (1+R)) @ [mu; V^T] ((1+R) x B*K): mu + V eps_R for
                    every example and draw
    gradient GEMM:  (B*K x S) @ (S x (1+R)): dmu and dV = sum_s dz_s [1, eps_R,s]
                    (each of the two: the best of sample-major or class-major, one GEMM
                    or ~1M-element chunks of S into a reused buffer)
    exp rate:       torch.exp over a cache-sized buffer (64K to 1M floats), the best;
                    every one of the B*S*K draws needs one exp (softmax)

The model is optimistic on purpose: it counts one exp pass only (a fused kernel can
keep a chunk's exps in cache for the gradient), and nothing for the d * eps_K term, the
max / sum / log passes, the label gather, the S x (K + R) shared normals, softplus or the
Python and allocator overhead; a real kernel sits above it. Printed: hetserve median /
bound median.

Contention (--contention): the same rounds again while a busy process started here
spins (a Python loop, or a 1-thread numpy matmul loop with --load matmul), pinned to
the last CPU unless --no-pin; each side's slowdown = contended median / quiet median.

    .venv/bin/python bench/head_speed.py                 # all shapes, both modes, memory
    .venv/bin/python bench/head_speed.py --quick         # one shape, 7 rounds, no memory
    .venv/bin/python bench/head_speed.py --quick --runs 3  # and the spread over 3 runs
    .venv/bin/python bench/head_speed.py --contention --json var/head_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import calibrate, run_record  # noqa: E402
from bench.quiet import (  # noqa: E402
    MAX_OTHER_CORES,
    RoundWindows,
    Spread,
    mark,
    others_summary,
    quiet_rounds,
)
from core.spec import HeadSpec  # noqa: E402
from models.heads import HetHead  # noqa: E402

SAMPLES = 1000
SHAPES = [(128, 256, 10, 5), (128, 512, 100, 10), (64, 2048, 1000, 15)]  # B, D, K, R
QUICK_SHAPE = (128, 512, 100, 10)
MEMORY_SHAPE = (64, 2048, 1000, 15)
MODES = ("shared", "per-example")
OPS = ("fwd+bwd", "predict")
SIDES = ("hetserve", "edward2")
BOUND = "bound"  # the lower bound, timed as a third side (shared noise)
PIECES = ("dense forward", "dense backward", "draw GEMM", "gradient GEMM", "B*S*K exps")
THREADS = 2
GAP_S = 0.005  # between calls, so one side's idle worker threads stop spinning first

EDWARD2_REQUIREMENTS = [
    "edward2==0.0.2",
    "tensorflow==2.18.1",
    "tf-keras==2.18.0",
    "tensorflow-probability==0.25.0",
]
EDWARD2_VENV = ROOT / "var" / "bench-venvs" / "edward2"
DRIVER = Path(__file__).resolve().parent / "edward2_driver.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- edward2: its own virtualenv and a worker process ------------------------------------


def ensure_edward2_venv(path: Path) -> Path:
    """The python of a virtualenv holding EDWARD2_REQUIREMENTS, created on first use."""
    python = path / "bin" / "python"
    marker = path / ".installed"
    wanted = "\n".join(EDWARD2_REQUIREMENTS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log(
        f"installing edward2 into {path} (once; several hundred MB): {' '.join(EDWARD2_REQUIREMENTS)}"
    )
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *EDWARD2_REQUIREMENTS], check=True)
    marker.write_text(wanted)
    return python


def edward2_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TF_USE_LEGACY_KERAS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS=str(THREADS),
        PYTHONPATH="",
        TF_ENABLE_ONEDNN_OPTS="1",  # why: the module docstring
    )
    return env


class Edward2Worker:
    """bench/edward2_driver.py in the edward2 virtualenv, one JSON line per request."""

    def __init__(self, python: Path):
        self.proc = subprocess.Popen(
            [
                str(python),
                str(DRIVER),
                "--intra-op-threads",
                str(THREADS),
                "--inter-op-threads",
                "1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=edward2_env(),
        )

    def request(self, **message) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"edward2 driver exited (code {self.proc.wait()}) on {message}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"edward2 driver: {reply['error']} (on {message})")
        return reply

    def build(self, shape, mode: str) -> dict:
        b, d, k, r = shape
        fns = {}
        self.request(cmd="build", B=b, D=d, K=k, R=r, S=SAMPLES, mode=mode)
        for op in OPS:
            fns[op] = lambda op=op: self.request(cmd="time", op=op)["ms"]
        return fns

    def close(self) -> None:
        try:
            self.request(cmd="quit")
        except (RuntimeError, BrokenPipeError, OSError):
            pass
        self.proc.wait(timeout=30)


# --- hetserve: in this process -----------------------------------------------------------


def make_het(shape, mode: str) -> tuple[HetHead, torch.Tensor, torch.Tensor]:
    b, d, k, r = shape
    torch.manual_seed(0)
    spec = HeadSpec(
        num_factors=r,
        temperature=1.0,
        train_mc_samples=SAMPLES,
        eval_mc_samples=SAMPLES,
        eval_noise="mc",  # plain MC normals, as edward2 draws (QMC: bench/qmc_error.py)
        parameter_efficient=False,
        share_samples_across_batch=mode == "shared",
    )
    head = HetHead(spec, d, k)
    h = torch.randn(b, d, requires_grad=True)
    y = torch.randint(0, k, (b,))
    return head, h, y


def het_calls(head: HetHead, h: torch.Tensor, y: torch.Tensor) -> dict:
    def forward_backward() -> None:
        head.train()
        head.zero_grad(set_to_none=True)
        h.grad = None
        head.loss(h, y).backward()

    def predict() -> None:
        head.eval()
        head.predict(h.detach())

    return {"fwd+bwd": forward_backward, "predict": predict}


# --- interleaved rounds ------------------------------------------------------------------


def timed(fn):
    def call() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return call


def interleaved(shape, mode: str, rounds: int, worker: Edward2Worker, bound) -> tuple:
    """({(side, op): [ms per round]}, [others' cores per round]); each round one call of
    every case, the side that goes first rotating (the bound is a third side, shared noise
    only). Others' cores: bench/quiet.py, over windows of one or more rounds."""
    timers = {
        "hetserve": {op: timed(fn) for op, fn in het_calls(*make_het(shape, mode)).items()},
        "edward2": worker.build(shape, mode),
    }
    if bound is not None:
        timers[BOUND] = {op: timed(fn) for op, fn in bound.calls().items()}
    sides = list(timers)
    for side in sides:
        for op in OPS:
            for _ in range(2):  # warm-up: graphs, kernels, allocator, caches
                timers[side][op]()
    times: dict = {(side, op): [] for side in sides for op in OPS}
    windows = RoundWindows()  # the edward2 worker and a --contention load are ours
    for i in range(rounds):
        first = i % len(sides)
        for side in sides[first:] + sides[:first]:
            for op in OPS:
                time.sleep(GAP_S)
                times[side, op].append(timers[side][op]())
        windows.round_ended()
    return times, windows.finish()


def summarise(times: dict, others: list[float]) -> dict:
    """Median and minimum ms per case over the quiet rounds (all if none is quiet), and
    under "rounds" others' cores per round and how many busy rounds were left out."""
    kept = quiet_rounds(others)
    summary: dict = {
        f"{side} {op}": {
            "median_ms": statistics.median(kept.pick(t)),
            "min_ms": min(kept.pick(t)),
            "calls": len(kept.kept),
        }
        for (side, op), t in times.items()
    }
    summary["rounds"] = {"others_cores": others, "busy": kept.busy, "total": kept.total}
    return summary


def run_rounds(shapes, rounds_for, worker, bounds: dict) -> dict:
    results = {}
    for shape in shapes:
        for mode in MODES:
            rounds = rounds_for(shape)
            log(f"  {fmt_shape(shape)} {mode}: {rounds} rounds")
            bound = bounds[fmt_shape(shape)] if mode == "shared" else None
            times, others = interleaved(shape, mode, rounds, worker, bound)
            for i, cores in enumerate(others):
                cells = ", ".join(f"{side} {op} {t[i]:.1f}" for (side, op), t in times.items())
                log(f"    round {i + 1}: {cells} ms; others {mark(cores)} cores")
            results[fmt_shape(shape), mode] = summarise(times, others)
    return results


# --- lower bound ---------------------------------------------------------------------------


def best_ms(fn, repeats: int = 15) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


class LowerBound:
    """The unavoidable work of the module docstring's bound at one shape (shared noise),
    as two callables timed in the rounds like the two heads. Each low-rank GEMM takes the
    fastest of four ways (sample-major or class-major, one GEMM or ~1M-element chunks of
    S into a reused buffer), and the exps the fastest cache-sized buffer, chosen once by
    the best of 15 calls (``pieces_ms``)."""

    def __init__(self, shape):
        b, d, k, r = shape
        torch.manual_seed(0)
        h, weight = torch.randn(b, d), torch.randn(k * (r + 2), d)  # the three layers as one
        dout = torch.randn(b, k * (r + 2))
        self.dense_forward = lambda: torch.matmul(h, weight.t())

        def dense_backward():
            torch.matmul(dout.t(), h)  # dW
            torch.matmul(dout, weight)  # dh

        self.dense_backward = dense_backward
        draws, grads = self._low_rank_gemms(b * k, r)
        self.pieces_ms = {"dense forward": best_ms(self.dense_forward)}
        self.pieces_ms["dense backward"] = best_ms(dense_backward)
        (self.draw_name, self.draw), (self.grad_name, self.grad) = (
            min(fns.items(), key=lambda item: best_ms(item[1])) for fns in (draws, grads)
        )
        self.pieces_ms["draw GEMM"] = best_ms(self.draw)
        self.pieces_ms["gradient GEMM"] = best_ms(self.grad)
        self.exps, self.exp_rate = self._exps(b * SAMPLES * k)
        self.pieces_ms["B*S*K exps"] = best_ms(self.exps)

    @staticmethod
    def _low_rank_gemms(n: int, r: int) -> tuple[dict, dict]:
        """Ways to compute the draw GEMM [1, eps_R] @ [mu; V^T] (n = B*K columns) and the
        gradient GEMM [dmu; dV^T] = [1, eps_R]^T dz."""
        eps1 = torch.randn(SAMPLES, 1 + r)  # [1, eps_R]
        eps1_t = eps1.t().contiguous()
        stacked = torch.randn(1 + r, n)  # [mu; V^T] of every example, side by side
        stacked_t = stacked.t().contiguous()
        chunk = max(1, (1 << 20) // n)
        slices = [slice(s, min(s + chunk, SAMPLES)) for s in range(0, SAMPLES, chunk)]
        rows, cols = torch.randn(chunk, n), torch.randn(n, chunk)  # a chunk, both layouts
        dz_rows, dz_cols = torch.randn(SAMPLES, n), torch.randn(n, SAMPLES)
        acc_rows, acc_cols = torch.empty(1 + r, n), torch.empty(n, 1 + r)

        def draw_rows():
            for sl in slices:
                torch.matmul(eps1[sl], stacked, out=rows[: sl.stop - sl.start])

        def draw_cols():
            for sl in slices:
                torch.matmul(stacked_t, eps1_t[:, sl], out=cols[:, : sl.stop - sl.start])

        def grad_rows():  # a chunk of dz at a time, as a fused kernel would have it
            acc_rows.zero_()
            for sl in slices:
                acc_rows.addmm_(eps1_t[:, sl], rows[: sl.stop - sl.start])

        def grad_cols():
            acc_cols.zero_()
            for sl in slices:
                acc_cols.addmm_(cols[:, : sl.stop - sl.start], eps1[sl])

        draws = {
            "sample-major whole": lambda: torch.matmul(eps1, stacked),
            "class-major whole": lambda: torch.matmul(stacked_t, eps1_t),
            "sample-major chunks": draw_rows,
            "class-major chunks": draw_cols,
        }
        grads = {
            "sample-major whole": lambda: torch.matmul(eps1_t, dz_rows),
            "class-major whole": lambda: torch.matmul(dz_cols, eps1),
            "sample-major chunks": grad_rows,
            "class-major chunks": grad_cols,
        }
        return draws, grads

    @staticmethod
    def _exps(total: int):
        """(a callable doing ``total`` exps, in place over the fastest cache-sized buffer
        of 64K, 256K or 1M floats; that rate in exps/s)."""
        best = None
        for n in (1 << 16, 1 << 18, 1 << 20):
            x, out = torch.randn(n), torch.empty(n)
            full, rest = divmod(total, n)

            def run(x=x, out=out, full=full, rest=rest):
                for _ in range(full):
                    torch.exp(x, out=out)
                if rest:
                    torch.exp(x[:rest], out=out[:rest])

            ms = best_ms(run)
            if best is None or ms < best[0]:
                best = (ms, run)
        assert best is not None
        return best[1], total / best[0] * 1e3

    def calls(self) -> dict:
        def predict():
            self.dense_forward()
            self.draw()
            self.exps()

        def forward_backward():
            predict()
            self.grad()
            self.dense_backward()

        return {"fwd+bwd": forward_backward, "predict": predict}


# --- peak memory ---------------------------------------------------------------------------


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def het_peak_child(op: str, mode: str, shape) -> None:
    """In a fresh process: growth of the peak RSS over one call (MB), after a 2-row call
    of the same head has loaded the kernels."""
    head, h, y = make_het(shape, mode)
    small = h.detach()[:2].clone().requires_grad_(True)
    het_calls(head, small, y[:2])[op]()
    head.zero_grad(set_to_none=True)  # as edward2's returned gradients, freed after a call
    call = het_calls(head, h, y)[op]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    call()
    print((status_kb("VmHWM") - before) / 1024)


def peak_mb(side: str, op: str, mode: str, shape, python: Path) -> float:
    if side == "hetserve":
        args = [sys.executable, __file__, "--peak-child", op, mode, json.dumps(shape)]
        out = subprocess.run(args, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    worker = Edward2Worker(python)
    try:
        b, d, k, r = shape
        worker.request(cmd="build", B=b, D=d, K=k, R=r, S=SAMPLES, mode=mode)
        return worker.request(cmd="peak", op=op)["mb"]
    finally:
        worker.close()


# --- contention ----------------------------------------------------------------------------

LOADS = {
    "spin": "while True:\n    pass\n",
    "matmul": (
        "import os\nos.environ['OMP_NUM_THREADS'] = os.environ['OPENBLAS_NUM_THREADS'] = "
        "os.environ['MKL_NUM_THREADS'] = '1'\nimport numpy as np\n"
        "a = np.random.rand(512, 512).astype(np.float32)\nwhile True:\n    a @ a\n"
    ),
}


def start_load(kind: str, pin: bool) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", LOADS[kind]])
    where = "not pinned"
    if pin and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(proc.pid, {cpus[-1]})
            where = f"pinned to CPU {cpus[-1]}"
    return proc, where


# --- output --------------------------------------------------------------------------------


def fmt_shape(shape) -> str:
    return "/".join(map(str, shape))


def cell(stats: dict) -> str:
    return f"{stats['median_ms']:.1f} ({stats['min_ms']:.1f})"


def ratio(results: dict, key, op: str) -> float:
    return results[key][f"edward2 {op}"]["median_ms"] / results[key][f"hetserve {op}"]["median_ms"]


def bound_ratio(r: dict, op: str) -> float:
    """hetserve median / bound median."""
    return r[f"hetserve {op}"]["median_ms"] / r[f"{BOUND} {op}"]["median_ms"]


def speed_table(results: dict) -> list[str]:
    lines = [
        "| shape B/D/K/R | noise | hetserve fwd+bwd ms | edward2 fwd+bwd ms | edward2 / hetserve "
        "fwd+bwd | hetserve predict ms | edward2 predict ms | edward2 / hetserve predict | "
        "bound fwd+bwd / predict ms | hetserve / bound fwd+bwd / predict | others' cores per "
        "round, median / max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (shape, mode), r in results.items():
        if f"{BOUND} predict" in r:
            bound_cells = [
                f"{cell(r[f'{BOUND} fwd+bwd'])} / {cell(r[f'{BOUND} predict'])}",
                f"{bound_ratio(r, 'fwd+bwd'):.2f}x / {bound_ratio(r, 'predict'):.2f}x",
            ]
        else:
            bound_cells = ["", ""]
        cells = [
            shape,
            mode,
            cell(r["hetserve fwd+bwd"]),
            cell(r["edward2 fwd+bwd"]),
            f"**{ratio(results, (shape, mode), 'fwd+bwd'):.2f}x**",
            cell(r["hetserve predict"]),
            cell(r["edward2 predict"]),
            f"**{ratio(results, (shape, mode), 'predict'):.2f}x**",
            *bound_cells,
            others_summary(r["rounds"]["others_cores"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def slowdown(quiet: dict, contended: dict, key, side: str, op: str) -> float:
    """Contended median / quiet median."""
    name = f"{side} {op}"
    return contended[key][name]["median_ms"] / quiet[key][name]["median_ms"]


def slowdown_table(quiet: dict, contended: dict) -> list[str]:
    lines = [
        "| shape B/D/K/R | noise | hetserve slowdown fwd+bwd / predict | edward2 slowdown "
        "fwd+bwd / predict | contended ms hetserve / edward2 fwd+bwd | contended ms "
        "hetserve / edward2 predict | others' cores per round, median / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in contended.items():
        cells = [
            *key,
            *(
                f"{slowdown(quiet, contended, key, side, 'fwd+bwd'):.2f}x / "
                f"{slowdown(quiet, contended, key, side, 'predict'):.2f}x"
                for side in SIDES
            ),
            f"{r['hetserve fwd+bwd']['median_ms']:.1f} / {r['edward2 fwd+bwd']['median_ms']:.1f}",
            f"{r['hetserve predict']['median_ms']:.1f} / {r['edward2 predict']['median_ms']:.1f}",
            others_summary(r["rounds"]["others_cores"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def run_ratios(run: dict) -> dict:
    """{(shape, mode): {name: value}}: every ratio one run's tables print."""
    quiet, contended = run["quiet"], run["contended"]
    figures = {}
    for key, r in quiet.items():
        row = {f"edward2 / hetserve {op}": ratio(quiet, key, op) for op in OPS}
        if f"{BOUND} predict" in r:
            row |= {f"hetserve / bound {op}": bound_ratio(r, op) for op in OPS}
        if key in contended:
            row |= {
                f"{side} slowdown {op}": slowdown(quiet, contended, key, side, op)
                for side in SIDES
                for op in OPS
            }
        figures[key] = row
    return figures


def flat_ratios(run: dict) -> dict[str, float]:
    """run_ratios as one level, for bench/run_record.py: {"B/D/K/R noise: name": value}."""
    return {
        f"{shape} {mode}: {name}": value
        for (shape, mode), row in run_ratios(run).items()
        for name, value in row.items()
    }


def spreads(runs: list[dict]) -> dict:
    """{(shape, mode): {ratio name: Spread of that ratio over the runs}} (each run's ratio
    is of its medians)."""
    per_run = [run_ratios(run) for run in runs]
    return {
        key: {name: Spread.of([ratios[key][name] for ratios in per_run]) for name in row}
        for key, row in per_run[0].items()
    }


def spread_table(runs: list[dict], spread: dict) -> list[str]:
    names = list(dict.fromkeys(name for row in spread.values() for name in row))
    lines = [
        f"| shape B/D/K/R | noise | {' | '.join(names)} | busy rounds per run |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for key, row in spread.items():
        busy = []
        for part in ("quiet", "contended"):
            if key in runs[0][part]:
                counts = " / ".join(str(run[part][key]["rounds"]["busy"]) for run in runs)
                total = runs[0][part][key]["rounds"]["total"]
                busy.append(f"{counts} of {total}{' (contended)' if part == 'contended' else ''}")
        cells = [*key, *(row[n].format(unit="x") if n in row else "" for n in names)]
        lines.append("| " + " | ".join([*cells, "; ".join(busy)]) + " |")
    return lines


def measure(shapes, rounds_for, worker: Edward2Worker, args) -> dict:
    """One whole measurement: the bound's pieces chosen afresh, the interleaved rounds,
    and with --contention the rounds again beside a busy process."""
    log("lower bound: choosing the fastest way to do each piece")
    bounds = {fmt_shape(s): LowerBound(s) for s in shapes}
    log("interleaved rounds")
    quiet = run_rounds(shapes, rounds_for, worker, bounds)
    contended, where = {}, None
    if args.contention:
        load, where = start_load(args.load, not args.no_pin)
        try:
            log(f"interleaved rounds beside a busy process ({args.load}, {where})")
            time.sleep(0.5)
            contended = run_rounds(shapes, rounds_for, worker, bounds)
        finally:
            load.kill()
            load.wait()
    return {"bounds": bounds, "quiet": quiet, "contended": contended, "where": where}


def print_run(run: dict, args) -> None:
    """One run's tables: speed, the bound's pieces, contention."""
    print()
    print(
        "Median ms (min) over the quiet interleaved rounds (others' CPU at most "
        f"{MAX_OTHER_CORES} core; all rounds if none is); ratios are of the medians; the "
        "bound (shared noise only) is timed in the same rounds."
    )
    print()
    print("\n".join(speed_table(run["quiet"])))
    print()
    print("Lower bound pieces, best of 15 calls (ms), and the way each GEMM was done fastest:")
    print()
    print(f"| shape B/D/K/R | {' | '.join(PIECES)} | exp rate G/s | draw GEMM | gradient GEMM |")
    print("|---|" + "---|" * (len(PIECES) + 3))
    for shape, bound in run["bounds"].items():
        pieces = " | ".join(f"{bound.pieces_ms[name]:.2f}" for name in PIECES)
        print(
            f"| {shape} | {pieces} | {bound.exp_rate / 1e9:.2f} | {bound.draw_name} | "
            f"{bound.grad_name} |"
        )
    if run["contended"]:
        print()
        print(
            f"Contention ({args.load} process, {run['where']}); slowdown = contended median / "
            "quiet median:"
        )
        print()
        print("\n".join(slowdown_table(run["quiet"], run["contended"])))


def run_json(run: dict) -> dict:
    return {
        "quiet": {f"{s} {m}": v for (s, m), v in run["quiet"].items()},
        "contended": {f"{s} {m}": v for (s, m), v in run["contended"].items()},
        "bound_pieces": {
            shape: {
                "pieces_ms": bound.pieces_ms,
                "exp_per_s": bound.exp_rate,
                "draw_gemm": bound.draw_name,
                "gradient_gemm": bound.grad_name,
            }
            for shape, bound in run["bounds"].items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{fmt_shape(QUICK_SHAPE)} only, 7 rounds, no memory"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per shape and mode (default 21, 7 at K = 1000; --quick 7)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        choices=[fmt_shape(s) for s in SHAPES],
        help="B/D/K/R (repeatable)",
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        help="peak memory at K = 1000 (default: on, off with --quick)",
    )
    parser.add_argument(
        "--contention", action="store_true", help="rerun the rounds beside a busy process"
    )
    parser.add_argument("--load", choices=sorted(LOADS), default="spin", help="the busy process")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the busy process to one CPU"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat the whole measurement; prints min / median / max of the run medians' ratios",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--edward2-venv", type=Path, default=EDWARD2_VENV)
    parser.add_argument("--peak-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.peak_child:
        op, mode, shape = args.peak_child
        het_peak_child(op, mode, tuple(json.loads(shape)))
        return

    python = ensure_edward2_venv(args.edward2_venv)
    if args.shape:
        shapes = [s for s in SHAPES if fmt_shape(s) in args.shape]
    else:
        shapes = [QUICK_SHAPE] if args.quick else SHAPES

    def rounds_for(shape) -> int:
        if args.rounds:
            return args.rounds
        if args.quick:
            return 7
        return 7 if shape[2] >= 1000 else 21

    worker = Edward2Worker(python)
    report: dict = {"edward2": worker.request(cmd="info")}
    report["machine"] = run_record.machine() | {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "samples": SAMPLES,
    }
    print(
        f"{report['machine']['date']}, machine: {report['machine']['cpu']}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(calibrate.line(report["machine"]["speed"]))
    e2 = report["edward2"]
    print(
        f"edward2 {e2['edward2']}, tensorflow {e2['tensorflow']}, tfp {e2['tensorflow_probability']}, "
        f"{e2['keras']}, intra/inter-op threads {e2['intra_op_threads']}/{e2['inter_op_threads']}, "
        f"oneDNN {e2['onednn']}"
    )
    print(f"S = {SAMPLES}; load average before: {os.getloadavg()[0]:.2f}")

    runs = []
    try:
        for i in range(args.runs):
            if args.runs > 1:
                log(f"run {i + 1} of {args.runs}")
            runs.append(measure(shapes, rounds_for, worker, args))
    finally:
        worker.close()
    if args.contention:
        report["contention"] = {"load": args.load, "where": runs[-1]["where"]}
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    for i, run in enumerate(runs):
        if args.runs > 1:
            print(f"\nRun {i + 1} of {args.runs}:")
        print_run(run, args)
    spread = spreads(runs)
    if args.runs > 1:
        print()
        print(
            f"Spread over {args.runs} runs: min / median / max of each run's ratio of medians "
            f"(machine and date above):"
        )
        print()
        print("\n".join(spread_table(runs, spread)))

    memory = {}
    if args.memory if args.memory is not None else not args.quick:
        log("peak memory, each in a fresh process")
        for mode in MODES:
            for side in SIDES:
                for op in OPS:
                    memory[f"{side} {op} {mode}"] = peak_mb(side, op, mode, MEMORY_SHAPE, python)
        print()
        print(
            f"Peak memory at {fmt_shape(MEMORY_SHAPE)}, S = {SAMPLES}: growth of the peak RSS over one call, fresh process (MB):"
        )
        print()
        print("| noise | hetserve fwd+bwd | edward2 fwd+bwd | hetserve predict | edward2 predict |")
        print("|---|---|---|---|---|")
        for mode in MODES:
            row = [memory[f"{side} {op} {mode}"] for op in OPS for side in SIDES]
            print(f"| {mode} | " + " | ".join(f"{v:.0f}" for v in row) + " |")

    if args.json:
        per_run = [flat_ratios(run) for run in runs]
        report.update(
            run_json(runs[-1]),  # the last run, where a single run's figures always were
            runs=[run_json(run) for run in runs],
            ratios_per_run=per_run,
            spread={
                f"{s} {m}": {name: sp.as_dict() for name, sp in row.items()}
                for (s, m), row in spread.items()
            },
            peak_memory_mb=memory,
        )
        machine = report.pop("machine")
        run_record.write(args.json, "head_speed", machine, per_run[-1], **report)


if __name__ == "__main__":
    main()
