"""The names an exported model file and its runtimes agree on (torch free, numpy only).

The exporter (``models.export``) writes these names into the ONNX graph and its metadata;
the serving runtime (``app.serving``) reads them back. Both import this module, so neither
keeps a copy: the API may import it because it pulls in no torch and no onnx.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class GraphOutput(NamedTuple):
    """One output of every exported graph.

    ``shape``: B the batch, K the classes, T = min(TOP_CLASSES, K) the most probable
    classes; ``"K?"`` is an axis K for multilabel and no axis for multiclass (a binary
    entropy per label). ``sampled``: computed from the MC draws (see SAMPLED_OUTPUTS).
    """

    name: str
    dtype: str  # numpy's name for the element type
    shape: tuple[str, ...]
    sampled: bool
    meaning: str

    def dims(self, task: str) -> tuple[str, ...]:
        """``shape`` for ``task`` ("multiclass" or "multilabel"), "K?" resolved."""
        return tuple(d.rstrip("?") for d in self.shape if d != "K?" or task == "multilabel")


TOP_CLASSES = 10

# Outputs of every exported graph, in this order. Baseline models have the same outputs,
# with zeros where a quantity does not exist (no noise: noise_std = 0, no correlations).
# noise_free_probs is the predictive with the learned label noise set to zero, exact, no
# sampling (the baseline's own probabilities). mc_stderr comes from the spread of M
# independently shifted groups of draws under QMC noise (models/qmc.py), prob_std /
# sqrt(S) under plain MC; NaN at S = 1 (undefined; the API answers null). QMC's has 7
# degrees of freedom (95 %: +- 2.365 se). Files exported before it existed lack it, and a
# runtime then takes prob_std / sqrt(S).
OUTPUTS = (
    GraphOutput(
        "probs", "float32", ("B", "K"), True,
        "p_hat = 1/S sum_s softmax(u_s / tau) (sigmoid: multilabel)",
    ),
    GraphOutput("entropy", "float32", ("B", "K?"), True, "H[p_hat] (per label: multilabel)"),
    GraphOutput(
        "expected_entropy", "float32", ("B", "K?"), True, "mean_s H[softmax(u_s / tau)]"
    ),
    GraphOutput(
        "prob_std", "float32", ("B", "K"), True, "per-class std of the sampled probabilities"
    ),
    GraphOutput("noise_std", "float32", ("B", "K"), False, "sqrt(diag Sigma(x)), exact"),
    GraphOutput(
        "top_classes", "int64", ("B", "T"), False, f"the T = min({TOP_CLASSES}, K) most probable classes"
    ),
    GraphOutput(
        "top_correlation", "float32", ("B", "T", "T"), False,
        "rho_ij = Sigma_ij / sqrt(Sigma_ii Sigma_jj) among them",
    ),
    GraphOutput(
        "noise_free_probs", "float32", ("B", "K"), False,
        "softmax(mu / tau) (sigmoid: multilabel), exact",
    ),
    GraphOutput(
        "mc_stderr", "float32", ("B", "K"), True,
        "standard error of probs (QMC: from 8 independent shifts, 7 degrees of freedom)",
    ),
)  # fmt: skip
OUTPUT_NAMES = tuple(o.name for o in OUTPUTS)

# The outputs that come from the MC draws, in OUTPUT_NAMES order. A HET graph called with
# num_samples <= 0 skips the sampler and the MC moments altogether (an ONNX If on
# num_samples > 0) and returns these as placeholder zeros of their usual shapes: finite,
# meaningless, for a runtime to null out. The other outputs stay exact at S = 0:
# noise_free_probs, noise_std, and top_classes / top_correlation, ranked by
# noise_free_probs there (by probs when S > 0). The baseline ignores num_samples: its
# outputs are exact at any S, 0 included.
SAMPLED_OUTPUTS = tuple(o.name for o in OUTPUTS if o.sampled)


# Metadata lives in the file's metadata_props as JSON values under this prefix.
META_PREFIX = "hetserve."
REQUIRED_METADATA = ("class_names", "input_shape", "task", "head", "eval_mc_samples", "version")
RESERVED_METADATA = (*REQUIRED_METADATA, "parity", "outputs")

# The graph's seed input is an int64; a negative seed means "fresh draws".
MAX_SEED = 2**63 - 1


def rank_pairs(classes: np.ndarray, rho: np.ndarray, max_pairs: int = 5) -> list[dict[str, Any]]:
    """The off-diagonal pairs of one input's ``rho`` (T x T, among ``classes``) with the
    largest |rho|, largest first. Exact zeros are no pairs: R = 0 and the baseline have
    an exactly diagonal covariance."""
    classes = np.asarray(classes)
    rho = np.asarray(rho)
    first, second = np.triu_indices(len(classes), k=1)
    values = rho[first, second]
    order = np.argsort(-np.abs(values), kind="stable")[: max(0, max_pairs)]
    return [
        {
            "classes": [int(classes[first[k]]), int(classes[second[k]])],
            "correlation": float(values[k]),
        }
        for k in order
        if values[k] != 0
    ]
