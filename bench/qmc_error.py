"""Error of the HET predictive for plain MC vs quasi-Monte Carlo noise, at equal S.

    nice -n 10 .venv/bin/python bench/qmc_error.py [--reps 20] [--samples 64 256 512 1024]

error = mean over inputs of max_k |p_hat_k - p_k|, p the predictive from a large
reference (Owen-scrambled Sobol, --reference-samples draws, far below every error shown),
averaged over --reps independent repetitions. Heads:

- K = 10: a HET head (R = 4, linear on the 64 pixels) trained for a few hundred Adam
  steps on sklearn's digits with 30 % of the training labels replaced by a confusable
  class (each digit's own most-confused class under a first clean fit); the test inputs'
  mu, V, d;
- K = 100 (R = 10) and K = 1000 (R = 15): random heads with plausible scales, mu ~ N(0, 2^2),
  d = softplus(N(0, 1)) + 0.1, V ~ N(0, 1) / sqrt(R), tau = 1 (top class ~ 0.3-0.9).

Methods (noise eps (S, K + R) shared by the batch, as the service draws it):

- "mc": independent normals (torch.randn);
- "antithetic": S/2 normals and their negatives;
- "sobol owen": torch's scrambled Sobol (linear matrix scrambling + digital shift, an
  Owen-type scramble), one scramble of S points, Phi^-1 = torch.special.ndtri;
- "sobol shift": the fixed Sobol points with one random digital shift (XOR);
- "rqmc 8 shifts": what the service uses (models/qmc.py): the fixed points split into
  M = 8 groups of S/8, each under its own digital shift, Phi^-1 by Acklam's approximation;
  "rqmc 4 shifts" the same with M = 4 (a better estimate, a noisier error bar).

With --gradient it measures the training loss's gradient instead (K <= 100; S 64 and
the train default 200): the relative error of d/d(mu, d, V) of the mean log-likelihood.

For "rqmc 8 shifts" it also reports the honesty of the error bar: the observed RMS error
of p_hat over the repetitions (all inputs and classes) divided by the RMS of the
reported mc_stderr (grouped_stderr), which should be about 1; and "mc" vs its
prob_std / sqrt(S) likewise.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from models import het_fast, qmc
from models.het_formula import LogitGaussian, grouped_stderr


def trained_digits_head(rows: int, seed: int = 0, labels: bool = False):
    """mu, V, d of a HET head (K = 10, R = 4) trained on noisy digits, for `rows` test
    inputs (and their labels, with labels=True)."""
    from sklearn.datasets import load_digits

    from core.spec import HeadSpec
    from models.heads import HetHead

    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-6), dtype=torch.float32)
    y = torch.tensor(y)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    test, train = order[:rows], order[rows:]
    # confusable label noise: each class flips (30 %) to its most confused class of a clean fit
    clean = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(clean.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clean(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        logits = clean(x[train])
        logits[torch.arange(len(train)), y[train]] = -1e9
        confused = torch.stack([logits[y[train] == k].mean(0).argmax() for k in range(10)])
    noisy = y[train].clone()
    flip = torch.rand(len(train), generator=gen) < 0.3
    noisy[flip] = confused[noisy[flip]]
    torch.manual_seed(seed)
    head = HetHead(HeadSpec(num_factors=4, train_mc_samples=100), 64, 10, fast=True)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        head.loss(x[train], noisy, generator=gen).backward()
        opt.step()
    with torch.no_grad():
        z = head.latent(x[test]).scaled(1.0 / head.temperature)
        latent = LogitGaussian(z.mu, z.scale, z.factor_matrix())
    return (latent, y[test]) if labels else latent


def random_head(rows: int, k: int, r: int, seed: int = 0) -> LogitGaussian:
    gen = torch.Generator().manual_seed(seed)
    mu = 2.0 * torch.randn(rows, k, generator=gen)
    scale = torch.nn.functional.softplus(torch.randn(rows, k, generator=gen)) + 0.1
    factors = torch.randn(rows, k, r, generator=gen) / math.sqrt(r)
    return LogitGaussian(mu, scale, factors)


def fast_args(z: LogitGaussian) -> tuple[int, bool]:
    k = z.mu.shape[1]
    return het_fast.chunk_size(z.mu.shape[0], k, None), k <= het_fast.CLASS_MAJOR_MAX_CLASSES


def split(eps: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[eps_K | eps_R] -> (eps_R, eps_K), as the head takes them."""
    return eps[:, k:].contiguous(), eps[:, :k].contiguous()


def predictive(z: LogitGaussian, eps: torch.Tensor) -> torch.Tensor:
    return het_fast.predict(z, *split(eps, z.mu.shape[1]), True, *fast_args(z))


def reference(z: LogitGaussian, width: int, samples: int, seed: int) -> torch.Tensor:
    engine = torch.quasirandom.SobolEngine(width, scramble=True, seed=seed)
    total, block = torch.zeros_like(z.mu), 1 << 13
    for _ in range(samples // block):
        u = engine.draw(block, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        total += predictive(z, torch.special.ndtri(u).float()) * block
    return total / samples


def draw(method: str, s: int, width: int, gen: torch.Generator) -> torch.Tensor:
    if method == "mc":
        return torch.randn(s, width, generator=gen)
    if method == "antithetic":
        half = torch.randn(s // 2, width, generator=gen)
        return torch.cat([half, -half])
    if method == "sobol owen":
        seed = int(torch.randint(0, 2**31, (), generator=gen))
        engine = torch.quasirandom.SobolEngine(width, scramble=True, seed=seed)
        u = engine.draw(s, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        return torch.special.ndtri(u).float()
    table = qmc.sobol_table(width)
    if method == "sobol shift":
        shift = torch.randint(0, 1 << qmc.DIGITS, (width,), generator=gen).numpy().astype(np.uint32)
        u = ((table[:s] ^ shift).astype(np.float32) + np.float32(0.5)) * np.float32(
            2.0**-qmc.DIGITS
        )
        return torch.from_numpy(qmc.normal_quantile(u))
    if method.startswith("rqmc"):
        groups = int(method.split()[1])
        shape = (qmc.num_shifts(s, len(table), groups), width)
        shifts = torch.randint(0, 1 << qmc.DIGITS, shape, generator=gen).numpy().astype(np.uint32)
        return torch.from_numpy(qmc.normals_from_shifts(table, shifts, s, groups))
    raise ValueError(method)


def gradient(z: LogitGaussian, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """d/d(mu, d, V) of the mean log-likelihood (the training loss's estimator), flattened."""
    leaves = [t.detach().clone().requires_grad_() for t in (z.mu, z.scale, z.factors)]
    k = z.mu.shape[1]
    loglik = het_fast.log_likelihood(LogitGaussian(*leaves), y, *split(eps, k), True, *fast_args(z))
    return torch.cat([g.flatten() for g in torch.autograd.grad(loglik.mean(), leaves)])


def gradient_table(args) -> None:
    """Relative error ||g_hat - g|| / ||g|| of the loss gradient, g from --reference-samples
    scrambled Sobol draws (the estimator is biased: log of a mean; the bias counts too)."""
    methods = ("mc", "sobol owen", "rqmc 8 shifts")
    print("\ntraining gradient: mean over repetitions of ||g_hat - g|| / ||g||\n")
    print("| K | R | S | " + " | ".join(methods) + " |")
    print("|" + "---:|" * (len(methods) + 3))
    for k in [c for c in args.classes if c <= 100]:
        if k == 10:
            r, (z, y) = 4, trained_digits_head(args.rows, labels=True)
        else:
            r, z = 10, random_head(args.rows, k, 10)
            y = torch.multinomial(
                reference(z, k + r, 1 << 14, seed=1), 1, generator=torch.Generator().manual_seed(3)
            ).squeeze(1)
        width = k + r
        engine = torch.quasirandom.SobolEngine(width, scramble=True, seed=54321)
        u = engine.draw(args.reference_samples, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        ref = gradient(z, y, torch.special.ndtri(u).float())
        for s in args.gradient_samples:
            gen = torch.Generator().manual_seed(2000 + s)
            errors = {m: [] for m in methods}
            for _ in range(args.reps):
                for method in methods:
                    g = gradient(z, y, draw(method, s, width, gen))
                    errors[method].append(float((g - ref).norm() / ref.norm()))
            cells = " | ".join(f"{np.mean(errors[m]):.4f}" for m in methods)
            print(f"| {k} | {r} | {s} | {cells} |", flush=True)


METHODS = ("mc", "antithetic", "sobol owen", "sobol shift", "rqmc 4 shifts", "rqmc 8 shifts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 256, 512, 1024])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rows", type=int, default=100, help="test inputs (half at K = 1000)")
    parser.add_argument("--reference-samples", type=int, default=1 << 16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gradient", action="store_true", help="the training gradient only")
    parser.add_argument("--gradient-samples", type=int, nargs="+", default=[64, 200])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.gradient:
        gradient_table(args)
        return
    print(
        f"error = mean over inputs of max_k |p_hat - p|, mean of {args.reps} repetitions; "
        f"reference: scrambled Sobol, {args.reference_samples} draws\n"
    )
    print(
        "| K | R | S | "
        + " | ".join(METHODS)
        + " | rqmc RMS err / RMS stderr | mc RMS err / RMS stderr |"
    )
    print("|" + "---:|" * (len(METHODS) + 5))
    for k in args.classes:
        if k == 10:
            r, z = 4, trained_digits_head(args.rows)
        else:
            r = 10 if k <= 100 else 15
            z = random_head(args.rows if k <= 100 else args.rows // 2, k, r)
        width = k + r
        ref = reference(z, width, args.reference_samples, seed=12345)
        for s in args.samples:
            gen = torch.Generator().manual_seed(1000 + s)
            errors = {m: [] for m in METHODS}
            sq_err = {"rqmc": 0.0, "mc": 0.0}
            sq_se = {"rqmc": 0.0, "mc": 0.0}
            for _ in range(args.reps):
                for method in METHODS:
                    eps = draw(method, s, width, gen)
                    p = predictive(z, eps)
                    errors[method].append(float((p - ref).abs().amax(1).mean()))
                    if method == "mc":
                        m = het_fast.moments(z, *split(eps, k), True, *fast_args(z))
                        sq_err["mc"] += float((p - ref).square().mean())
                        sq_se["mc"] += float(m["prob_std"].square().mean()) / s
                    if method == "rqmc 8 shifts":
                        g = qmc.QMC_GROUPS
                        means = torch.stack([predictive(z, eps[i::g]) for i in range(g)], 1)
                        counts = torch.tensor(
                            [len(range(i, s, g)) for i in range(g)], dtype=torch.float32
                        )
                        se = grouped_stderr(means, counts, p)
                        sq_err["rqmc"] += float((p - ref).square().mean())
                        sq_se["rqmc"] += float(se.square().mean())
            cells = " | ".join(f"{np.mean(errors[m]):.4f}" for m in METHODS)
            ratio = {key: math.sqrt(sq_err[key] / sq_se[key]) for key in sq_err}
            print(
                f"| {k} | {r} | {s} | {cells} | {ratio['rqmc']:.2f} | {ratio['mc']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
