"""Per-example uncertainty of a head's predictive (the fields of docs/predictions.md).

This is the reference the exported ONNX graph is tested against.

The fields are the outputs of an exported graph, with the same names and meanings
(``core.onnx_contract.OUTPUTS``), plus ``correlated_pairs``: among the most probable
classes (up to TOP_CLASSES), the pairs with the largest |rho_ij|
(``core.onnx_contract.rank_pairs``), and ``num_samples``.

For multilabel heads entropy and expected_entropy are per label (binary entropies).

The HET model captures aleatoric (label-noise) uncertainty only: entropy minus
expected_entropy is *not* an epistemic estimate here. Under a softmax a negative
rho_ij widens u_i - u_j, so i and j swap more often; a positive one moves them together.
"""

from __future__ import annotations

import torch

from core.onnx_contract import TOP_CLASSES, rank_pairs
from models.heads import Head
from models.het_formula import MULTICLASS


def entropy_of(probs: torch.Tensor, task: str) -> torch.Tensor:
    p = probs.clamp_min(1e-12)
    if task == MULTICLASS:
        return -(probs * p.log()).sum(-1)
    q = (1 - probs).clamp_min(1e-12)
    return -(probs * p.log() + (1 - probs) * q.log())


def top_correlations(
    latent, probs: torch.Tensor, top: int = TOP_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent correlation matrix among each row's `top` most probable classes.

    Returns (classes (B, T), rho (B, T, T)) with T = min(top, K). Only the T x T block
    of Sigma is formed: Sigma_top = V_top V_top^T + diag(d_top^2).
    """
    t = min(top, probs.shape[-1])
    classes = probs.topk(t, dim=-1).indices  # (B, T)
    scale = latent.scale.gather(-1, classes)
    cov = torch.diag_embed(scale * scale)  # Mul, not Pow, in an exported graph
    v = latent.factor_matrix()
    if v is not None:
        v_top = v.gather(1, classes.unsqueeze(-1).expand(-1, -1, v.shape[-1]))  # (B, T, R)
        cov = cov + v_top @ v_top.transpose(-1, -2)
    std = cov.diagonal(dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()
    rho = cov / (std.unsqueeze(-1) * std.unsqueeze(-2))
    return classes, rho


@torch.no_grad()
def predictive_uncertainty(
    head: Head,
    h: torch.Tensor,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    noise=None,
    max_pairs: int = 5,
) -> dict:
    """Every per-example uncertainty quantity for a batch of backbone features h."""
    m = head.moments(h, num_samples, generator, noise)
    latent = head.latent(h)
    num = int(m["num_samples"])
    probs = m["probs"]
    classes, rho = top_correlations(latent, probs)
    return {
        "probs": probs,
        "entropy": entropy_of(probs, head.task),
        "expected_entropy": m["expected_entropy"],
        "prob_std": m["prob_std"],
        "mc_stderr": m["mc_stderr"],
        "noise_std": latent.variance().sqrt(),
        "top_classes": classes,
        "top_correlation": rho,
        "correlated_pairs": [
            rank_pairs(c, r, max_pairs)
            for c, r in zip(classes.cpu().numpy(), rho.cpu().numpy(), strict=True)
        ],
        "noise_free_probs": head.noise_free_probs(h),
        "num_samples": num,
    }
