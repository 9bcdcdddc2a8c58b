"""Boundary models of the model registry and prediction routes (the uncertainty fields are defined in docs/predictions.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from core.onnx_contract import MAX_SEED

ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class ModelOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "5b2e0c1d9f8a4e3b8c7d6e5f4a3b2c1d",
                    "job_id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9",
                    "role": "model",
                    "head": "het",
                    "task": "multiclass",
                    "input_shape": [64],
                    "num_classes": 10,
                    "class_names": [str(i) for i in range(10)],
                    "metrics": {
                        "test_accuracy": 0.845,
                        "test_nll": 0.468,
                        "test_ece": 0.03,
                        "test_brier": 0.22,
                        "noise_free_test_accuracy": 0.851,
                        "noise_free_test_nll": 0.401,
                        "noise_free_test_ece": 0.018,
                        "noise_free_test_brier": 0.2,
                        "reliability": {
                            "marginal": {
                                "bin_edges": [0.0, 0.5, 1.0],
                                "accuracy": [None, 0.85],
                                "confidence": [None, 0.82],
                                "count": [0, 397],
                            },
                            "noise_free": {
                                "bin_edges": [0.0, 0.5, 1.0],
                                "accuracy": [None, 0.85],
                                "confidence": [None, 0.86],
                                "count": [0, 397],
                            },
                        },
                    },
                    "baseline_metrics": {
                        "test_accuracy": 0.764,
                        "test_nll": 0.561,
                        "test_ece": 0.05,
                        "test_brier": 0.31,
                    },
                    "baseline_model_id": "9e8d7c6b5a4f43e2d1c0b9a8f7e6d5c4",
                    "onnx_sha256": "4f0c…",
                    "created_at": "2026-11-25T21:40:00Z",
                }
            ]
        },
    )

    id: str
    job_id: str
    role: str = Field(description='"model", or "baseline" for a job\'s softmax comparison model')
    head: str
    task: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    metrics: dict[str, Any] = Field(
        description="test_accuracy, test_nll, test_ece, test_brier of the MC predictive; "
        "noise_free_test_accuracy, noise_free_test_nll, noise_free_test_ece, "
        "noise_free_test_brier of the noise-free one; reliability: the test split's "
        "reliability diagrams of both, {marginal, noise_free: {bin_edges, accuracy, "
        "confidence, count}} (models trained since they are stored); val_*, ..."
    )
    baseline_metrics: dict[str, Any] | None = Field(
        None,
        description="the same metrics of the softmax baseline trained beside it (compare_baseline)",
    )
    baseline_model_id: str | None = Field(
        None, description="the baseline's own model id, when registered"
    )
    onnx_sha256: str
    created_at: datetime


class AliasIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model_id": "5b2e0c1d9f8a4e3b8c7d6e5f4a3b2c1d"}]},
    )

    model_id: str = Field(min_length=1, max_length=64)


class AliasOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    model_id: str
    updated_at: datetime


PREDICT_EXAMPLE: JsonDict = {
    "inputs": [[0.0] * 4, [1.0, 2.0, 3.0, 4.0]],
    "mc_samples": 1000,
    "seed": 7,
    "top_k": 3,
    "correlated_pairs": True,
}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PREDICT_EXAMPLE]})

    inputs: list[Any] | None = Field(
        None, description="rows as nested lists of numbers, each of the model's input_shape"
    )
    images: list[str] | None = Field(
        None,
        description="image models only: base64 PNG/JPEG, decoded and resized as at training time",
    )
    mc_samples: int | None = Field(
        None,
        description="S, Monte-Carlo samples, 1 ≤ S ≤ HETSERVE_MAX_MC_SAMPLES; default the model's eval S",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="reproducible draws: equal seeds give equal outputs, whatever else is batched",
    )
    top_k: int | None = Field(
        None, ge=1, description="also list the k most probable classes per row"
    )
    correlated_pairs: bool = Field(
        False, description="report each row's most correlated class pairs"
    )
    predictive: Literal["marginal", "noise_free"] = Field(
        "marginal",
        description='"marginal": the MC predictive (which label would an annotator of the '
        'training data give?); "noise_free": softmax(mu/τ), the label noise set to zero '
        "(which class is it?), exact, no sampling: mc_samples is then ignored",
    )


class CorrelatedPair(BaseModel):
    classes: list[int] = Field(description="two class indices among the row's most probable")
    correlation: float = Field(
        description="ρ_ij = Σ_ij / sqrt(Σ_ii Σ_jj), latent (logit) correlation"
    )


class TopClass(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: int = Field(alias="class")
    class_name: str
    prob: float


class Prediction(BaseModel):
    """One row's uncertainty fields. Multilabel models: probs are per label, and entropy
    and expected_entropy are per-label binary entropies (lists). With ``predictive:
    "noise_free"``, probs (and label, class_name, confidence, entropy, top_k) come from
    noise_free_probs and the sampled-only fields are null."""

    probs: list[float] = Field(
        description="the predictive asked for: the MC predictive p̂ (marginal) or noise_free_probs"
    )
    label: int = Field(description="argmax of probs")
    class_name: str
    confidence: float = Field(description="probs of the label")
    entropy: float | list[float] = Field(
        description="H[probs], total predictive (aleatoric) uncertainty"
    )
    expected_entropy: float | list[float] | None = Field(
        description="mean_s H[softmax(u_s / τ)]; null for noise_free"
    )
    prob_std: list[float] | None = Field(
        description="per-class std of the sampled probabilities; null for noise_free"
    )
    mc_stderr: list[float] | None = Field(
        description="the standard error of p̂ (QMC: from 8 independently shifted groups of "
        "draws, 7 degrees of freedom: a 95 % interval is p̂ ± 2.365·mc_stderr, not ±1.96; "
        "plain MC: prob_std / sqrt(S)); null for noise_free and when S = 1 (undefined)"
    )
    noise_std: list[float] = Field(description="sqrt(diag Σ(x)): label noise in logit space, exact")
    noise_free_probs: list[float] | None = Field(
        None,
        description="softmax(mu(x)/τ) (sigmoid per label): the predictive with the learned "
        "label noise set to zero, exact; absent for a model file exported before it existed",
    )
    correlated_pairs: list[CorrelatedPair] | None = Field(
        None,
        description="only when asked (correlated_pairs: true); up to 5 pairs, largest |ρ| first",
    )
    top_k: list[TopClass] | None = Field(None, description="only when top_k is given")


class PredictResponse(BaseModel):
    model_id: str = Field(description="the model that answered (an alias resolved)")
    mc_samples: int = Field(description="S used; 0 for noise_free (no sampling)")
    predictive: Literal["marginal", "noise_free"] = Field(description="the predictive answered")
    predictions: list[Prediction]


class NoisePair(BaseModel):
    classes: list[int] = Field(description="two class indices i < j")
    class_names: list[str]
    flip_rate: float = Field(
        description="pooled rate at which a draw of the latent noise moves the argmax "
        "between i and j, over the training inputs predicted i or j"
    )
    correlation: float = Field(
        description="ρ_ij of the training-set average Σ; negative: i and j swap more often"
    )


class NoiseReportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "5b2e0c1d9f8a4e3b8c7d6e5f4a3b2c1d",
                    "num_examples": 1400,
                    "class_pairs": [
                        {
                            "classes": [3, 5],
                            "class_names": ["3", "5"],
                            "flip_rate": 0.041,
                            "correlation": -0.62,
                        }
                    ],
                    "flip_matrix": None,
                    "noise_std_by_class": [0.8] * 10,
                }
            ]
        }
    )

    model_id: str
    num_examples: int = Field(description="training rows the report aggregates")
    class_pairs: list[NoisePair] = Field(description="most confused first (up to 20)")
    flip_matrix: list[list[float]] | None = Field(
        description="K x K: [i][j] = rate at which a draw moves argmax mu from i to j; "
        "null when K > 100"
    )
    noise_std_by_class: list[float] = Field(
        description="per class, the mean over training inputs of sqrt(Σ_kk(x))"
    )


class LabelIssue(BaseModel):
    index: int = Field(description="the row of the dataset's uploaded x_train")
    given_label: int
    given_name: str = Field(description="the class name of given_label")
    suggested_label: int = Field(description="argmax of the noise-free predictive")
    suggested_name: str = Field(description="the class name of suggested_label")
    score: float = Field(description="1 - p(given label) under the noise-free predictive")
    flagged: bool = Field(description="in the flagged set (suggested_label != given_label)")


class LabelIssuesOut(BaseModel):
    model_id: str
    dataset_id: str
    num_examples: int = Field(description="every row of the uploaded x_train")
    num_flagged: int = Field(description="the size of the set the flag rule flags")
    num_matching: int = Field(description="rows that match the filters (flagged, given, suggested)")
    offset: int = Field(0, description="matching rows skipped before issues[0]")
    issues: list[LabelIssue] = Field(description="most likely mislabeled first, up to limit")
