"""Randomized quasi-Monte Carlo (RQMC) normals for the HET predictive, in numpy.

The predictive p(y|x) ~= 1/S sum_s softmax((mu + V eps_R,s + d * eps_K,s) / tau) is an
average over S standard normal vectors eps_s = [eps_K | eps_R] of width K + R. Drawn as
randomized Sobol points instead of independent normals, the same accuracy takes several
times fewer draws (bench/qmc_error.py measures it)::

    row s:  point  i(s) = floor(s / M) mod N                 a fixed Sobol point
            shift  j(s) = (s mod M) + M * floor(s / (M N))   an independent random shift
            u_s = ((P[i(s)] XOR D[j(s)]) + 1/2) / 2^23       (23-bit digits, in (0, 1))
            eps_s = Phi^-1(u_s)                               (Wichura's AS241, PPND7)

P is the first N points of the unscrambled Sobol sequence in K + R dimensions (top 23
bits of each coordinate), baked into the exported graph as an initializer; D[j] is a
uniform random 23-bit vector per shift (a random digital shift, which keeps each u_s
exactly uniform, so each eps_s exactly N(0, I) up to the 23-bit grid and Phi^-1's error).
Rows in one group g = s mod M share one shift and walk the Sobol points in order, so
the M groups are M independent randomisations and the estimator is unbiased. Beyond
S = M N rows the points repeat under new shifts: any S works, without a cap (the QMC
gain stops growing there).

Honest error bars. Under QMC the S draws are not independent, so prob_std / sqrt(S)
overstates the error. The M group means are independent, so the standard error of
p_hat comes from their spread (``models.het_formula.grouped_stderr``)::

    se(p_hat) = sqrt( G / (G - 1) * sum_g (n_g / S)^2 (m_g - p_hat)^2 ),   G = min(S, M)

with n_g rows and mean m_g in group g.

The same arithmetic runs in three places: ``rqmc_normals`` here (numpy; the twin the
parity check feeds to PyTorch), ``HetHead.draw_noise`` (torch's own eval draws, shifts
from a torch.Generator, through ``normals_from_shifts``) and the ONNX sampler
(``models.export.sampler``, shifts from the graph's seed).
"""

from __future__ import annotations

import functools

import numpy as np

QMC_GROUPS = 8  # M: independent random shifts, for an honest standard error
QMC_MAX_POINTS = 1024  # N at most: Sobol points per table
QMC_TABLE_BYTES = 4 << 20  # the table is N x (K + R) uint32: at most 4 MiB
QMC_MIN_POINTS = 16
SOBOL_MAX_DIM = 21201  # torch.quasirandom.SobolEngine's direction numbers (Joe & Kuo)
# bits per coordinate: u = (digits + 1/2) / 2^23 and 1 - u are exact in float32 (24-bit
# significand), so u lies in [2^-24, 1 - 2^-24] and Phi^-1(u) is finite (|eps| <= 5.3)
DIGITS = 23

# Phi^-1 by Wichura's AS241 PPND7, the single-precision variant (relative error ~1e-7):
# rational functions of r = 0.180625 - q^2 (|q| <= 0.425, q = u - 1/2) and of
# t = sqrt(-log min(u, 1 - u)) - 1.6 in the tails (t <= 5 - 1.6 holds: u >= 2^-24),
# coefficients highest power first
PPND7_CENTRAL = 0.425
PPND7_A = (59.109374720, 159.29113202, 50.434271938, 3.3871327179)
PPND7_B = (67.187563600, 78.757757664, 17.895169469, 1.0)
PPND7_C = (0.17023821103, 1.3067284816, 2.7568153900, 1.4234372777)
PPND7_D = (0.12021132975, 0.73700164250, 1.0)


def table_points(width: int) -> int:
    """N for a noise width K + R: a power of two, at most QMC_MAX_POINTS, and the table
    N x width x 4 bytes within QMC_TABLE_BYTES (N >= QMC_MIN_POINTS)."""
    fit = QMC_TABLE_BYTES // (4 * max(1, width))
    n = QMC_MAX_POINTS
    while n > QMC_MIN_POINTS and n > fit:
        n //= 2
    return n


@functools.lru_cache(maxsize=8)
def sobol_table(width: int) -> np.ndarray:
    """P: the first table_points(width) unscrambled Sobol points in ``width`` dimensions,
    each coordinate's top DIGITS bits, (N, width) uint32 (read only)."""
    if width > SOBOL_MAX_DIM:
        raise ValueError(f"Sobol points cover up to {SOBOL_MAX_DIM} dimensions, got {width}")
    import torch  # the export and training side only (the API never builds a table)

    engine = torch.quasirandom.SobolEngine(width, scramble=False)
    points = engine.draw(table_points(width), dtype=torch.float64).numpy()
    table = np.floor(points * 2.0**DIGITS).astype(np.uint32)
    table.setflags(write=False)
    return table


def num_shifts(num_samples: int, num_points: int, groups: int = QMC_GROUPS) -> int:
    """How many shifts S rows use: M per pass over the N points."""
    return groups * max(1, -(-num_samples // (groups * num_points)))


def layout(
    num_samples: int, num_points: int, groups: int = QMC_GROUPS
) -> tuple[np.ndarray, np.ndarray]:
    """(i(s), j(s)) for s in [0, S): each row's Sobol point and shift (see the module doc)."""
    s = np.arange(num_samples, dtype=np.int64)
    return (s // groups) % num_points, s % groups + groups * (s // (groups * num_points))


def horner(x: np.ndarray, coefs) -> np.ndarray:
    """((c0 x + c1) x + ...) x + c_last in x's dtype, the graph's order of operations."""
    dt = x.dtype.type
    acc = dt(coefs[0]) * x
    for c in coefs[1:-1]:
        acc = (acc + dt(c)) * x
    return acc + dt(coefs[-1])


def normal_quantile(u: np.ndarray) -> np.ndarray:
    """Phi^-1(u) for u in [2^-24, 1 - 2^-24] by AS241 PPND7, in u's dtype, with the same
    operations, in the same order, as the ONNX graph (models.export.sampler)::

        |q| <= 0.425:  q A(r) / B(r),            q = u - 1/2, r = 0.180625 - q^2
        else:          sign(q) C(t) / D(t),      t = sqrt(-log min(u, 1 - u)) - 1.6
    """
    dt = u.dtype.type
    q = u - dt(0.5)
    r = dt(0.180625) - q * q
    central = q * horner(r, PPND7_A) / horner(r, PPND7_B)
    t = np.sqrt(-np.log(np.minimum(u, dt(1) - u))) - dt(1.6)
    tail = horner(t, PPND7_C) / horner(t, PPND7_D) * np.sign(q)
    return np.where(np.abs(q) <= dt(PPND7_CENTRAL), central, tail)


def normals_from_shifts(
    table: np.ndarray, shifts: np.ndarray, num_samples: int, groups: int = QMC_GROUPS
) -> np.ndarray:
    """eps (..., S, width) float32 from P (N, width) and the shifts D (..., num_shifts, width)
    (uint32 < 2^DIGITS; leading dims: one independent set of shifts per example)."""
    point, shift = layout(num_samples, len(table), groups)
    digits = table[point] ^ shifts[..., shift, :]
    u = (digits.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-DIGITS)
    return normal_quantile(u)


def shift_words(words: np.ndarray) -> np.ndarray:
    """A 64-bit generator word -> a shift's DIGITS-bit digit (its top bits), uint32."""
    return (words >> np.uint64(64 - DIGITS)).astype(np.uint32)
