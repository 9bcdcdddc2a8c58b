"""The names an exported model file and its runtimes agree on (torch free, numpy only).

The exporter (``models.export``) writes these names into the ONNX graph and its metadata;
the serving runtime (``app.serving``) reads them back. Both import this module, so neither
keeps a copy: the API may import it because it pulls in no torch and no onnx.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Outputs of every exported graph, in this order. Baseline models have the same outputs,
# with zeros where a quantity does not exist (no noise: noise_std = 0, no correlations).
# noise_free_probs is softmax(mu / tau) (sigmoid per label): the predictive with the
# learned label noise set to zero, exact, no sampling (the baseline's own probabilities).
# mc_stderr is the standard error of probs: from the spread of M independently shifted
# groups of draws under QMC noise (models/qmc.py), prob_std / sqrt(S) under plain MC; NaN at
# S = 1 (undefined; the API answers null). QMC's has 7 degrees of freedom (95 %: +- 2.365 se).
# Files exported before it existed lack it; a runtime then takes prob_std / sqrt(S).
OUTPUT_NAMES = (
    "probs",
    "entropy",
    "expected_entropy",
    "prob_std",
    "noise_std",
    "top_classes",
    "top_correlation",
    "noise_free_probs",
    "mc_stderr",
)

# The outputs that come from the MC draws. A HET graph called with num_samples <= 0 skips
# the sampler and the MC moments altogether (an ONNX If on num_samples > 0) and returns
# these as placeholder zeros of their usual shapes: finite, meaningless, for a runtime to
# null out. The other outputs stay exact at S = 0: noise_free_probs, noise_std, and
# top_classes / top_correlation, ranked by noise_free_probs there (by probs when S > 0).
# The baseline ignores num_samples: its outputs are exact at any S, 0 included.
SAMPLED_OUTPUTS = ("probs", "entropy", "expected_entropy", "prob_std", "mc_stderr")

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
