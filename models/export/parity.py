"""The export's parity check: onnxruntime running the finished graph vs PyTorch.

Two checks (``check_parity``), either failing refuses the export:

1. statistical: onnxruntime's estimate with its own seeded noise vs PyTorch's large-S
   estimate with independent noise, every probability within a few combined MC standard
   errors;
2. same noise: the graph's probs and mc_stderr vs PyTorch fed ``sampler_normals(seed)``,
   the sampler's numpy twin, which must agree to float32 rounding: any mistake in the
   graph shows here.

The deterministic ``noise_free_probs`` is compared exactly (to float32 rounding), at the
eval S and at S = 0, where the graph must skip the sampler and still return it, with
finite placeholders for the SAMPLED_OUTPUTS.
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
from models.uncertainty import predictive_uncertainty

# Parity, two checks (check_parity):
# 1. statistical: onnxruntime's estimate (its own seeded noise, S = max(eval S,
#    PARITY_MIN_ONNX_SAMPLES)) vs PyTorch at PARITY_TORCH_SAMPLES (independent noise),
#    every probability within z_limit combined MC standard errors, where
#    z_limit = max(PARITY_Z, the Bonferroni bound for PARITY_FAMILY_ALPHA over the N
#    probabilities compared): with thousands of probabilities a fixed 4 would refuse
#    good models (P(|z| > 4) = 6e-5 each, and more at small S, where p_s is skewed).
# 2. same noise: the graph's output vs PyTorch fed sampler_normals(seed), which must agree
#    to float32 rounding (PARITY_SAME_NOISE_ATOL): any mistake in the graph shows here.
PARITY_Z = 4.0
PARITY_FAMILY_ALPHA = 1e-3
PARITY_MIN_ONNX_SAMPLES = 4000
PARITY_TORCH_SAMPLES = 10_000
PARITY_SEEDS = (20260, 20261)  # (torch generator, onnx seed): a reproducible check
# float32 rounding of a mean of S probabilities; the z-score is taken against
# sqrt(se_onnx^2 + se_torch^2) + PARITY_ATOL so deterministic entries compare exactly.
PARITY_ATOL = 1e-5
PARITY_SAME_NOISE_ATOL = 1e-4
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

    Same-noise check: max |p_onnx(seed) - p_torch(sampler_normals(seed))| <= PARITY_SAME_NOISE_ATOL,
    for probs and mc_stderr.
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
    same = run_onnx(same_samples, ("probs", "mc_stderr", "noise_free_probs"))
    with torch.no_grad():
        noise = None
        if sampled:
            mode, width = het_head(model).eval_noise, noise_width(model)
            eps = torch.from_numpy(sampler_normals(mode, onnx_seed, same_samples, width))
            noise = split_noise(eps, head.num_classes, head.num_factors)
        same_moments = head.moments(h, same_samples, noise=noise)
        noise_free_ref = head.noise_free_probs(h).numpy()
    same_diff = float(
        max(
            np.abs(same[name] - same_moments[name].numpy()).max() for name in ("probs", "mc_stderr")
        )
    )
    noise_free_diff = float(np.abs(same["noise_free_probs"] - noise_free_ref).max())
    # S = 0: no sampling; noise_free_probs exact, every output finite
    zero = run_onnx(0, OUTPUT_NAMES)
    zero_diff = float(np.abs(zero["noise_free_probs"] - noise_free_ref).max())
    zero_finite = all(bool(np.isfinite(v).all()) for v in zero.values())

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
        "noise_free_max_abs_diff": noise_free_diff,
        "zero_samples_noise_free_max_abs_diff": zero_diff,
        "zero_samples_finite": zero_finite,
        "passed": bool(
            z.max() <= z_limit
            and same_diff <= PARITY_SAME_NOISE_ATOL
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
    if not same_diff <= PARITY_SAME_NOISE_ATOL:
        raise ParityError(
            f"parity check failed: with the same noise, onnxruntime and PyTorch probabilities differ by "
            f"up to {same_diff:.2e} (limit {PARITY_SAME_NOISE_ATOL:.0e}); figures: {figures}"
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
