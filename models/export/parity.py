"""The export's parity check: onnxruntime running the finished graph vs PyTorch.

Two checks (``check_parity``), either failing refuses the export:

1. statistical: onnxruntime's estimate with its own seeded noise vs PyTorch's large-S
   estimate with independent noise, every probability within a few combined MC standard
   errors;
2. same noise: EVERY output of the graph vs PyTorch fed ``sampler_normals(seed)``, the
   sampler's numpy twin, each within a relative tolerance suited to it
   (``SAME_NOISE_TOLERANCES``): any mistake in the graph shows here, a loss of float32
   precision on a confident input included (a prob_std of 4e-6 must not come out 0).

At S = 0, where the graph must skip the sampler, its exact outputs (noise_free_probs,
noise_std, the top classes and their correlations) are compared the same way, and the
SAMPLED_OUTPUTS placeholders must be finite.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import onnx
import torch

from core.onnx_contract import OUTPUT_NAMES
from models.classifier import Classifier
from models.export.core import het_head, is_sampled, noise_width, split_noise
from models.export.sampler import sampler_normals
from models.uncertainty import predictive_uncertainty, top_correlations

# Parity, two checks (check_parity):
# 1. statistical: onnxruntime's estimate (its own seeded noise, S = max(eval S,
#    PARITY_MIN_ONNX_SAMPLES)) vs PyTorch at PARITY_TORCH_SAMPLES (independent noise),
#    every probability within z_limit combined MC standard errors, where
#    z_limit = max(PARITY_Z, the Bonferroni bound for PARITY_FAMILY_ALPHA over the N
#    probabilities compared): with thousands of probabilities a fixed 4 would refuse
#    good models (P(|z| > 4) = 6e-5 each, and more at small S, where p_s is skewed).
# 2. same noise: every graph output vs PyTorch fed sampler_normals(seed), within
#    SAME_NOISE_TOLERANCES: any mistake in the graph shows here.
PARITY_Z = 4.0
PARITY_FAMILY_ALPHA = 1e-3
PARITY_MIN_ONNX_SAMPLES = 4000
PARITY_TORCH_SAMPLES = 10_000
PARITY_SEEDS = (20260, 20261)  # (torch generator, onnx seed): a reproducible check
# float32 rounding of a mean of S probabilities; the z-score is taken against
# sqrt(se_onnx^2 + se_torch^2) + PARITY_ATOL so deterministic entries compare exactly.
PARITY_ATOL = 1e-5
# Same noise, per output (rtol, atol, spacing): |onnx - torch| <= rtol |torch| + atol +
# spacing * eps32 * p, p the class's probability. Relative, so a small value (a confident
# input's prob_std or entropy) is held to its own size, not to a blanket 1e-4. ``spacing``
# is for the spreads of p: p_s is stored with float32's spacing eps32 * p, so a spread
# below a few of those is not resolved by either side. Measured on the tests' models
# (K = 7 and 10, QMC, confident inputs included) the worst ratio to these bounds is < 0.1.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
SAME_NOISE_TOLERANCES: dict[str, tuple[float, float, float]] = {
    "probs": (1e-4, 1e-7, 0.0),
    "entropy": (1e-4, 1e-6, 0.0),
    "expected_entropy": (1e-3, 1e-6, 0.0),
    "prob_std": (2e-3, 1e-9, 0.5),
    "mc_stderr": (1e-2, 1e-10, 1.0),  # PyTorch's group means are rounded to p's spacing
    "noise_std": (1e-4, 1e-7, 0.0),
    "top_correlation": (0.0, 1e-5, 0.0),  # rho in [-1, 1]: absolute
    "noise_free_probs": (1e-4, 1e-7, 0.0),
}
# noise_free_probs: no sampling, so onnxruntime and PyTorch differ by float32 rounding only
PARITY_EXACT_ATOL = 1e-5
PARITY_CHUNK_ELEMENTS = 1 << 24  # rows per onnxruntime call: B x S x K at most this
# The first parity_rows(model) of parity_inputs are compared: the check's cost grows with
# rows x S x K (PyTorch at 10 000 draws), so many-class models use fewer rows.
PARITY_MAX_INPUTS = 256
PARITY_MIN_INPUTS = 8
PARITY_MAX_ELEMENTS = 1 << 30


class ParityError(Exception):
    """onnxruntime's outputs disagree with PyTorch's (the message carries the figures)."""


def parity_rows(model: Classifier) -> int:
    """How many parity inputs to use: at most PARITY_MAX_INPUTS, and fewer for many
    classes so that the check stays within PARITY_MAX_ELEMENTS rows x S x K per side."""
    head = model.head
    per_row = (
        max(PARITY_TORCH_SAMPLES, PARITY_MIN_ONNX_SAMPLES, int(head.eval_mc_samples))
        * head.num_classes
    )
    return max(PARITY_MIN_INPUTS, min(PARITY_MAX_INPUTS, PARITY_MAX_ELEMENTS // per_row))


def check_parity(model: Classifier, proto: onnx.ModelProto, x: np.ndarray) -> dict:
    """onnxruntime vs PyTorch on held-out inputs x; returns the figures, or raises ParityError.

    Statistical check, independent noise on each side::

        z = |p_onnx - p_torch| / (sqrt(se_onnx^2 + se_torch^2) + PARITY_ATOL),  se = prob_std / sqrt(S)
        max z <= z_limit = max(PARITY_Z, Phi^-1(1 - PARITY_FAMILY_ALPHA / (2 N)))

    Same-noise check, every output o at eval S (seed) vs PyTorch fed sampler_normals(seed),
    and the exact outputs at S = 0 (``tolerance_ratio``)::

        |o_onnx - o_torch| <= rtol |o_torch| + atol + spacing * eps32 * p   (SAME_NOISE_TOLERANCES)

    top_classes through the probabilities they pick (ties may rank either way), and
    top_correlation among the graph's own top classes.
    noise_free_probs, at eval S and at S = 0: max |p_onnx - softmax(mu / tau)| <= PARITY_EXACT_ATOL,
    and every output finite at S = 0.
    """
    import onnxruntime as ort  # the training side has it; imported here, where it is used

    head = model.head
    torch_seed, onnx_seed = PARITY_SEEDS
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )

    def run_onnx(num_samples: int, names=("probs", "prob_std")) -> dict[str, np.ndarray]:
        rows = max(1, PARITY_CHUNK_ELEMENTS // (max(num_samples, 1) * head.num_classes))
        feeds = {
            "num_samples": np.asarray(num_samples, np.int64),
            "seed": np.asarray(onnx_seed, np.int64),
        }
        parts = [
            session.run(list(names), {"input": x[i : i + rows], **feeds})
            for i in range(0, len(x), rows)
        ]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}

    sampled = is_sampled(model)
    onnx_samples = max(int(head.eval_mc_samples), PARITY_MIN_ONNX_SAMPLES) if sampled else 1
    torch_samples = PARITY_TORCH_SAMPLES if sampled else 1
    got = run_onnx(onnx_samples)
    with torch.no_grad():
        h = model.features(torch.from_numpy(x))
        # PyTorch's side draws plain MC (independent normals), whose prob_std / sqrt(S) is
        # an exact-enough error bar; under QMC the onnxruntime side's error is below its
        # prob_std / sqrt(S), so that bar is conservative there (a grouped error bar from
        # 8 shifts has t_7 tails, too heavy for a max over thousands of z-scores)
        noise = None
        if sampled:
            gen = torch.Generator().manual_seed(torch_seed)
            noise = het_head(model).draw_noise(len(x), torch_samples, "cpu", gen, mode="mc")
        ref = predictive_uncertainty(head, h, torch_samples, noise=noise)
    p_onnx, p_ref = got["probs"].astype(np.float64), ref["probs"].double().numpy()
    se_onnx = got["prob_std"].astype(np.float64) / math.sqrt(onnx_samples)
    se_ref = ref["prob_std"].double().numpy() / math.sqrt(torch_samples)
    z = np.abs(p_onnx - p_ref) / (np.sqrt(se_onnx**2 + se_ref**2) + PARITY_ATOL)
    z_limit = max(PARITY_Z, NormalDist().inv_cdf(1 - PARITY_FAMILY_ALPHA / (2 * z.size)))

    same_samples = int(head.eval_mc_samples) if sampled else 1
    same = run_onnx(same_samples, OUTPUT_NAMES)
    zero = run_onnx(0, OUTPUT_NAMES)
    with torch.no_grad():
        noise = None
        if sampled:
            mode, width = het_head(model).eval_noise, noise_width(model)
            eps = torch.from_numpy(sampler_normals(mode, onnx_seed, same_samples, width))
            noise = split_noise(eps, head.num_classes, head.num_factors)
        same_ref = predictive_uncertainty(head, h, same_samples, noise=noise)
        latent = head.latent(h)
        # correlations among the graph's own top classes: where two probabilities tie to
        # rounding the two sides may rank them differently, and both rankings are right
        same_rho = top_correlations(latent, _ranking(same["top_classes"], head.num_classes))[1]
        zero_rho = top_correlations(latent, _ranking(zero["top_classes"], head.num_classes))[1]
        exact = {
            "noise_std": latent.variance().sqrt().numpy(),
            "noise_free_probs": head.noise_free_probs(h).numpy(),
        }
    ref_probs = same_ref["probs"].double().numpy()
    same_ratio = {
        name: tolerance_ratio(name, same[name], same_ref[name].numpy(), ref_probs)
        for name in SAME_NOISE_TOLERANCES
        if name != "top_correlation"
    }
    same_ratio["top_correlation"] = tolerance_ratio(
        "top_correlation", same["top_correlation"], same_rho.numpy(), ref_probs
    )
    same_ratio["top_classes"] = tolerance_ratio(  # the classes' probabilities, in rank order
        "probs",
        np.take_along_axis(ref_probs, same["top_classes"], -1),
        np.take_along_axis(ref_probs, same_ref["top_classes"].numpy(), -1),
        ref_probs,
    )
    noise_free_ref = exact["noise_free_probs"].astype(np.float64)
    zero_ratio = {
        name: tolerance_ratio(name, zero[name], want, noise_free_ref)
        for name, want in exact.items()
    }
    zero_ratio["top_correlation"] = tolerance_ratio(
        "top_correlation", zero["top_correlation"], zero_rho.numpy(), noise_free_ref
    )
    zero_ratio["top_classes"] = tolerance_ratio(
        "probs",
        np.take_along_axis(noise_free_ref, zero["top_classes"], -1),
        np.sort(noise_free_ref, -1)[:, ::-1][:, : zero["top_classes"].shape[-1]],
        noise_free_ref,
    )
    same_worst = max(same_ratio, key=lambda name: same_ratio[name])
    zero_worst = max(zero_ratio, key=lambda name: zero_ratio[name])
    same_diff = float(np.abs(same["probs"] - ref_probs).max())
    noise_free_diff = float(np.abs(same["noise_free_probs"] - noise_free_ref).max())
    zero_diff = float(np.abs(zero["noise_free_probs"] - noise_free_ref).max())
    zero_finite = all(bool(np.isfinite(v).all()) for v in zero.values())
    same_ok = same_ratio[same_worst] <= 1 and zero_ratio[zero_worst] <= 1

    figures = {
        "num_inputs": int(len(x)),
        "num_probabilities": int(z.size),
        "onnx_samples": onnx_samples,
        "torch_samples": torch_samples,
        "z_limit": round(z_limit, 4),
        "max_z": float(z.max()),
        "mean_z": float(z.mean()),
        "max_abs_diff": float(np.abs(p_onnx - p_ref).max()),
        "same_noise_samples": same_samples,
        "same_noise_max_abs_diff": same_diff,
        # per output: the largest |onnx - torch| as a fraction of its tolerance (<= 1 passes)
        "same_noise_tolerance_ratio": {k: round(v, 4) for k, v in same_ratio.items()},
        "zero_samples_tolerance_ratio": {k: round(v, 4) for k, v in zero_ratio.items()},
        "noise_free_max_abs_diff": noise_free_diff,
        "zero_samples_noise_free_max_abs_diff": zero_diff,
        "zero_samples_finite": zero_finite,
        "passed": bool(
            z.max() <= z_limit
            and same_ok
            and max(noise_free_diff, zero_diff) <= PARITY_EXACT_ATOL
            and zero_finite
        ),
    }
    if not z.max() <= z_limit:  # NaN fails too
        row, cls = (int(i) for i in np.unravel_index(int(np.argmax(z)), z.shape))
        raise ParityError(
            f"parity check failed: onnxruntime p={p_onnx[row, cls]:.6f} vs PyTorch p={p_ref[row, cls]:.6f} "
            f"for input {row}, class {cls}: {figures['max_z']:.1f} combined MC standard errors apart "
            f"(limit {z_limit:.2f}; S={onnx_samples} vs {torch_samples}); figures: {figures}"
        )
    if not same_ratio[same_worst] <= 1:
        raise ParityError(
            f"parity check failed: with the same noise (S={same_samples}), onnxruntime's "
            f"{same_worst} differs from PyTorch's by {same_ratio[same_worst]:.3g} times its "
            f"tolerance {SAME_NOISE_TOLERANCES.get(same_worst, SAME_NOISE_TOLERANCES['probs'])} "
            f"(rtol, atol, float32 spacings); figures: {figures}"
        )
    if not zero_ratio[zero_worst] <= 1:
        raise ParityError(
            f"parity check failed: at num_samples=0 onnxruntime's {zero_worst} differs from "
            f"PyTorch's by {zero_ratio[zero_worst]:.3g} times its tolerance; figures: {figures}"
        )
    if not max(noise_free_diff, zero_diff) <= PARITY_EXACT_ATOL:
        raise ParityError(
            f"parity check failed: noise_free_probs differ from PyTorch's softmax(mu / tau) by "
            f"up to {max(noise_free_diff, zero_diff):.2e} (limit {PARITY_EXACT_ATOL:.0e}; "
            f"{noise_free_diff:.2e} at S={same_samples}, {zero_diff:.2e} at S=0); figures: {figures}"
        )
    if not zero_finite:
        raise ParityError(
            f"parity check failed: a call with num_samples=0 returned non-finite outputs; "
            f"figures: {figures}"
        )
    return figures


def tolerance_ratio(name: str, got, want, probs: np.ndarray) -> float:
    """max over entries of |got - want| / (rtol |want| + atol + spacing * eps32 * p), the
    tolerances SAME_NOISE_TOLERANCES[name] and p the probabilities ``probs`` (B, K) of the
    entries' classes (used for (B, K) outputs only). NaN on both sides (an mc_stderr at
    S = 1) matches; NaN on one side is infinitely far."""
    rtol, atol, spacing = SAME_NOISE_TOLERANCES[name]
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.inf
    bound = rtol * np.abs(want) + atol
    if spacing:
        bound = bound + spacing * FLOAT32_EPS * np.abs(probs)
    both_nan = np.isnan(got) & np.isnan(want)
    ratio = np.where(both_nan, 0.0, np.abs(got - want) / bound)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    return float(ratio.max()) if ratio.size else 0.0


def _ranking(classes: np.ndarray, num_classes: int) -> torch.Tensor:
    """Scores (B, K) whose top classes are ``classes`` (B, T), in that order."""
    t = classes.shape[-1]
    scores = torch.zeros(len(classes), num_classes)
    order = torch.arange(t, 0, -1, dtype=scores.dtype).expand(len(classes), t)
    return scores.scatter_(1, torch.from_numpy(classes), order)
