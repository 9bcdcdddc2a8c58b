"""The noise report of a trained HET classifier: its label noise aggregated over a dataset.

One input's covariance says little; aggregated over the training set the learned
Gaussian N(mu(x), Sigma(x)), Sigma = V V^T + diag(d^2), points at the classes whose
labels get swapped. The report has three parts:

- ``flip_matrix`` (K x K): sampled-argmax flip rates. For each input, S draws
  u_s ~ N(mu(x), Sigma(x)) (the temperature rescales u and so never changes an argmax);
  entry [i][j], j != i, is the fraction of draws that move the argmax from
  i = argmax mu(x) to j, over all the draws of the inputs whose mu-argmax is i. The
  diagonal is 0 (no flip): the rate at which class i stays is 1 minus its row sum.
  Rows of classes no input predicts are all 0. ``None`` when K > ``max_matrix_classes``.
- ``class_pairs``: unordered pairs {i, j}, most confused first, ranked by the pooled
  symmetric flip rate (c_ij + c_ji) / (S (n_i + n_j)), c_ij the number of draws moving
  i to j and n_i the number of inputs whose mu-argmax is i. With balanced classes it is
  (f_ij + f_ji) / 2; unlike that mean, a class predicted for one or two inputs cannot
  push a pair to the top by chance. Ties (pairs that never flip, say) are ranked by the
  more negative correlation first. Each pair carries ``correlation`` rho_ij of the
  training-set average Sigma_bar = mean_x Sigma(x): Sigma_bar_ij / sqrt(Sigma_bar_ii Sigma_bar_jj).
  Under a softmax a negative rho_ij widens u_i - u_j: i and j swap more often.
- ``noise_std_by_class`` (K): for each class k, the mean over inputs of sqrt(Sigma_kk(x)),
  the logit-space noise std of class k (before the temperature, as the per-example
  ``noise_std``).

Class names are not in here: the caller maps indices to names.

Memory is bounded: inputs go through in batches, draws in chunks of about a million
logits; Sigma_bar is accumulated as a K x K float64 sum of
per-batch GEMMs, sum_x V_x V_x^T = M M^T with M = [V_x1 ... V_xB] (K x BR), plus
diag(sum_x d_x^2) (for the parameter-efficient V = diag(v) J: (J J^T) * sum_x v_x v_x^T),
so no B x K x K tensor exists; flip counts are a K x K int64 matrix. Peak memory is
O(K^2 + B K R + chunk), not O(N) nor O(B K^2): 16 MB of accumulators at K = 1000,
1.6 GB at K = 10 000 (time and memory measured: docs/benchmarks.md).

Multilabel heads raise ``UnsupportedTask``: with independent sigmoids there is no
argmax to flip (a per-label sign-flip report would be a different contract).
Baselines (``LinearHead``) raise ``NoNoiseModel``: a softmax has no noise model.
"""

from __future__ import annotations

import numpy as np
import torch

from models.heads import LinearHead
from models.het_formula import MULTICLASS

MAX_MATRIX_CLASSES = 100
TOP_PAIRS = 20
SAMPLE_CHUNK_ELEMENTS = 1 << 20  # logits drawn at once: a 4 MB (B, C, K) chunk


class NoNoiseModel(ValueError):
    """The model has no learned label noise (a softmax/sigmoid baseline): no noise report."""


class UnsupportedTask(ValueError):
    """The noise report is defined for multiclass heads only."""


@torch.no_grad()
def noise_report(
    model,
    x: np.ndarray,
    *,
    num_samples: int = 100,
    batch_size: int = 256,
    seed: int = 0,
    max_matrix_classes: int = MAX_MATRIX_CLASSES,
    top_pairs: int = TOP_PAIRS,
) -> dict:
    """The noise report of ``model`` (a ``Classifier``) over the inputs ``x``.

    Returns ``{"num_examples", "class_pairs": [{"classes": [i, j], "flip_rate",
    "correlation"}, ...] (most confused first, at most ``top_pairs``), "flip_matrix":
    K x K list or None when K > max_matrix_classes, "noise_std_by_class": [K]}``.
    Deterministic for a given ``seed`` (and device).
    """
    head = model.head
    if isinstance(head, LinearHead):
        raise NoNoiseModel("a softmax baseline has no noise model: no noise report")
    if getattr(head, "task", MULTICLASS) != MULTICLASS:
        raise UnsupportedTask(
            "the noise report is defined for multiclass models only (multilabel heads "
            "have no argmax to flip)"
        )
    if num_samples < 1 or batch_size < 1:
        raise ValueError("num_samples and batch_size must be >= 1")
    n = len(x)
    if n == 0:
        raise ValueError("the noise report needs at least one input")
    model.eval()
    device = model.input_mean.device
    k = head.num_classes
    gen = torch.Generator(device=device).manual_seed(seed)

    cov_sum = torch.zeros(k, k, dtype=torch.float64, device=device)  # sum_x V V^T (or v v^T)
    var_diag_sum = torch.zeros(k, dtype=torch.float64, device=device)  # sum_x d^2
    std_sum = torch.zeros(k, dtype=torch.float64, device=device)  # sum_x sqrt(diag Sigma)
    flips = torch.zeros(k * k, dtype=torch.int64, device=device)  # flat [i, j] draw counts
    class_count = torch.zeros(k, dtype=torch.int64, device=device)
    basis = None

    for start in range(0, n, batch_size):
        xb = torch.as_tensor(np.asarray(x[start : start + batch_size], np.float32), device=device)
        latent = head.latent(model.features(xb).float())
        b = latent.mu.shape[0]
        var_diag_sum += latent.scale.double().square().sum(0)
        std_sum += latent.variance().double().sqrt().sum(0)
        if latent.factor_basis is not None:
            v = latent.factor_scale  # (B, K)
            cov_sum += (v.T @ v).double()
            basis = latent.factor_basis
        elif latent.factors is not None:
            m = latent.factors.transpose(0, 1).reshape(k, -1)  # (K, B R)
            cov_sum += (m @ m.T).double()

        top = latent.mu.argmax(-1)  # (B,)
        class_count += torch.bincount(top, minlength=k)
        r = latent.num_factors
        chunk = max(1, SAMPLE_CHUNK_ELEMENTS // (b * k))
        for s0 in range(0, num_samples, chunk):
            c = min(chunk, num_samples - s0)
            eps_k = torch.randn(b, c, k, device=device, generator=gen)
            eps_r = torch.randn(b, c, r, device=device, generator=gen) if r else None
            drawn = latent.sample(eps_r, eps_k).argmax(-1)  # (B, C)
            moved = drawn != top.unsqueeze(1)
            if moved.any():
                codes = (top.unsqueeze(1) * k + drawn)[moved]
                flips.index_add_(0, codes, torch.ones_like(codes))

    sigma_bar = cov_sum
    if basis is not None:
        sigma_bar = (basis @ basis.T).double() * cov_sum
    sigma_bar = (sigma_bar + torch.diag(var_diag_sum)) / n
    diag = sigma_bar.diagonal()
    if not bool((diag > 0).any()):
        raise NoNoiseModel("the model's latent covariance is zero: no noise model")
    std = diag.clamp_min(1e-300).sqrt()
    corr = (sigma_bar / (std.unsqueeze(0) * std.unsqueeze(1))).cpu().numpy()

    counts = flips.view(k, k).cpu().numpy()
    per_class = class_count.cpu().numpy()
    draws = per_class.astype(np.float64) * num_samples
    matrix = None
    if k <= max_matrix_classes:
        matrix = np.zeros((k, k))
        np.divide(counts, draws[:, None], out=matrix, where=draws[:, None] > 0)

    first, second = np.triu_indices(k, k=1)
    pooled_draws = draws[first] + draws[second]
    pooled = np.zeros(len(first))
    np.divide(
        counts[first, second] + counts[second, first],
        pooled_draws,
        out=pooled,
        where=pooled_draws > 0,
    )
    rho = corr[first, second]
    order = np.lexsort((rho, -pooled))[: max(0, top_pairs)]  # flip rate desc, then rho asc
    pairs = [
        {
            "classes": [int(first[i]), int(second[i])],
            "flip_rate": float(pooled[i]),
            "correlation": float(rho[i]),
        }
        for i in order
    ]
    return {
        "num_examples": int(n),
        "class_pairs": pairs,
        "flip_matrix": None if matrix is None else matrix.tolist(),
        "noise_std_by_class": (std_sum / n).cpu().numpy().tolist(),
    }
