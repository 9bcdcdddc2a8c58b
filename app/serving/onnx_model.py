"""Serving-side runtime for hetserve's ONNX files: onnxruntime and numpy only (no torch).

    model = OnnxModel("model.onnx")
    out = model.run(x, num_samples=1000, seed=None)     # graph outputs, numpy arrays
    rows = model.rows(out, 1000, top_k=3, correlated_pairs=True)   # per-example fields
    out = model.run(x, num_samples=0)                    # noise-free: no sampling at all
    rows = model.rows(out, 0, predictive="noise_free")

Two predictives. ``"marginal"`` (the default) answers from the MC predictive ``probs``;
``"noise_free"`` from ``noise_free_probs`` = softmax(mu / tau) (sigmoid per label), the
predictive with the learned label noise set to zero, which the graph computes exactly
at ``num_samples = 0`` without drawing anything (the sampled outputs are placeholder
zeros then, and the rows give null for them). A file exported before the graph had the
``noise_free_probs`` output (``has_noise_free`` False) serves the marginal predictive
only.

Randomness. The graph draws its noise from a counter-based generator keyed by the
``seed`` input (models/export/). With ``seed=None`` this runtime passes a fresh
63-bit seed from ``os.urandom`` on every call instead of letting the graph fall back to
onnxruntime's own random node, because onnxruntime seeds those from one process-wide
clock seed: two sessions in one process, or processes forked after a session was
created, would repeat each other's draws (onnxruntime#27771). ``os.urandom`` reads the
kernel's generator, so forked workers never share a stream. A caller's seed makes the
output a pure function of (input row, S, seed): bit-identical across calls, sessions,
processes, and whatever else is batched with the row (the noise is shared by the batch).

Fork safety. A session's thread pool does not survive ``fork``: in a forked child the
inherited session must be neither used nor destroyed (its destructor joins threads that
do not exist there and hangs forever). After a fork every live OnnxModel in the child
sets its inherited session aside for good and builds a fresh one on first use.

Batch companions. The noise does not depend on the batch, but onnxruntime's kernels
do not promise batch-invariant rounding: measured in 1.32, Softplus, Log, Sin and Cos
compute a tensor's last few elements in a scalar tail loop that rounds differently from
the vectorised body (Exp, Sqrt, Sigmoid, Softmax do not), ReduceMean over a batch of one
takes another summation path, and fused graph optimisations differ again. So in one
batched call a row's last bits depend on where it sits in the batch. A seeded call therefore runs one row per session call: the row's output is
then a function of (row, S, seed) alone, bit for bit, whatever it is batched with
(measured identical across 1, 2 and 4 intra-op threads too). That costs up to a few
times the batched call (bench/export_speed.py); unseeded calls draw fresh noise anyway
and run batched.

Memory. The graph holds a B x S x K tensor; unseeded batches are split into row chunks
of at most ``max_elements`` B x S x K elements (one seed serves every chunk of a call).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike

from core.onnx_contract import MAX_SEED, META_PREFIX, REQUIRED_METADATA, rank_pairs

NOISE_FREE_OUTPUT = "noise_free_probs"
PREDICTIVES = ("marginal", "noise_free")


class ModelFileError(ValueError):
    """The file is not a usable hetserve ONNX model."""


def fresh_seed() -> int:
    """63 random bits from the kernel: fork safe, never shared between processes."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def read_metadata(session: ort.InferenceSession) -> dict[str, Any]:
    """The ``hetserve.*`` metadata_props, JSON-decoded, prefix stripped."""
    props = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in props.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ModelFileError(f"metadata {key!r} is not JSON: {exc}") from exc
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelFileError(
            f"not a hetserve model: metadata {', '.join(META_PREFIX + k for k in missing)} missing"
        )
    meta.setdefault("parity", None)
    return meta


_live_models: weakref.WeakSet[OnnxModel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for model in list(_live_models):
        model._abandon_inherited_session()


os.register_at_fork(after_in_child=_after_fork_in_child)


class OnnxModel:
    """One exported model, loaded into an onnxruntime CPU session.

    ``intra_op_threads=0`` lets onnxruntime pick (one per core); ``inter_op_threads``
    only matters for parallel graph branches. ``run`` is safe to call from several threads.
    """

    def __init__(
        self,
        path: str | Path,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        max_elements: int = 1 << 24,
    ):
        self.path = Path(path)
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.max_elements = max_elements
        self._lock = threading.Lock()
        self._session: ort.InferenceSession | None = self._new_session()
        _live_models.add(self)
        self.metadata = read_metadata(self._session)
        self.input_shape = [int(d) for d in self.metadata["input_shape"]]
        self.class_names = list(self.metadata["class_names"])
        self.num_classes = len(self.class_names)
        self.task = self.metadata["task"]
        self.eval_mc_samples = int(self.metadata["eval_mc_samples"])
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.has_noise_free = NOISE_FREE_OUTPUT in self.output_names

    def _new_session(self) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = self.inter_op_threads
        # The defaults num_samples / seed are initializers that are also inputs; that
        # warning (and other chatter) is expected on every load.
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFileError(f"cannot load {self.path}: {exc}") from exc

    @property
    def session(self) -> ort.InferenceSession:
        session = self._session
        if session is None:  # first use after a fork
            with self._lock:
                if self._session is None:
                    self._session = self._new_session()
                session = self._session
        return session

    def _abandon_inherited_session(self) -> None:
        """In a forked child: keep the parent's session alive forever (one extra
        reference, never released), since destroying it would hang; build anew later."""
        if self._session is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self._session))
        self._session = None
        self._lock = threading.Lock()  # another thread may have held it during the fork

    # -- running the graph ---------------------------------------------------------

    def check_input(self, x: ArrayLike) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if list(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            raise ValueError(
                f"inputs must have shape [batch, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}"
            )
        if len(x) == 0:
            raise ValueError("inputs must hold at least one example")
        if not np.isfinite(x).all():
            raise ValueError("inputs must be finite numbers")
        return np.ascontiguousarray(x)

    def run(
        self, x: np.ndarray, num_samples: int | None = None, seed: int | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's outputs for a batch x [B, ...], by name (core.onnx_contract.OUTPUTS;
        a file exported before an output existed lacks it).

        num_samples: S (default: the model's eval S); 0 skips the sampling (the
        noise-free predictive only; files with a noise_free_probs output). seed:
        0 <= seed < 2^63 for reproducible draws; None for fresh ones.
        """
        x = self.check_input(x)
        num_samples = self.eval_mc_samples if num_samples is None else int(num_samples)
        if num_samples < (0 if self.has_noise_free else 1):
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if seed is None:
            seed = fresh_seed()
            per_row = max(1, num_samples) * self.num_classes
            rows_per_call = max(1, self.max_elements // per_row)
        else:
            seed = int(seed)
            rows_per_call = 1  # bit-identical whatever the row is batched with
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2^63 - 1], got {seed}")
        feeds = {
            "num_samples": np.asarray(num_samples, dtype=np.int64),
            "seed": np.asarray(seed, dtype=np.int64),
        }
        session = self.session
        parts = [
            session.run(self.output_names, {"input": x[start : start + rows_per_call], **feeds})
            for start in range(0, len(x), rows_per_call)
        ]
        return {
            name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.output_names)
        }

    # -- per-example fields (docs/predictions.md) ------------------------------------------------

    def rows(
        self,
        outputs: dict[str, np.ndarray],
        num_samples: int,
        top_k: int | None = None,
        correlated_pairs: bool = False,
        max_pairs: int = 5,
        predictive: str = "marginal",
    ) -> list[dict[str, Any]]:
        """One JSON-ready dict per example: probs, label, class_name, confidence, entropy,
        expected_entropy, prob_std, mc_stderr (the graph's; prob_std / sqrt(S) for older
        files; None where undefined: S = 1, which the graph returns as NaN), noise_std,
        noise_free_probs (files that have it), and correlated_pairs (when asked) and
        top_k (when given).

        ``predictive="noise_free"`` (outputs of a num_samples = 0 call): probs, label,
        class_name, confidence, entropy and top_k come from noise_free_probs;
        expected_entropy, prob_std and mc_stderr, which only sampling gives, are None.
        """
        if predictive not in PREDICTIVES:
            raise ValueError(f"predictive must be one of {PREDICTIVES}, got {predictive!r}")
        noise_free = outputs.get(NOISE_FREE_OUTPUT)
        sampled = predictive == "marginal"
        if sampled:
            probs, entropy = outputs["probs"], outputs["entropy"]
            # files exported before the graph had an mc_stderr output drew plain MC
            if "mc_stderr" in outputs:
                mc_stderr = outputs["mc_stderr"]
            else:
                mc_stderr = outputs["prob_std"] / math.sqrt(num_samples)
                if num_samples < 2:
                    mc_stderr = np.full_like(mc_stderr, np.nan)
        elif noise_free is None:
            raise ValueError("this model file has no noise_free_probs output")
        else:
            probs, entropy = noise_free, entropy_of(noise_free, self.task)
        # numpy -> Python once per field for the whole batch, then zipped into rows.
        labels = probs.argmax(-1)
        unsampled = [None] * len(probs)
        columns = {
            "probs": probs.tolist(),
            "label": labels.tolist(),
            "class_name": [self.class_names[label] for label in labels.tolist()],
            "confidence": np.take_along_axis(probs, labels[:, None], -1)[:, 0].tolist(),
            "entropy": entropy.tolist(),
            "expected_entropy": outputs["expected_entropy"].tolist() if sampled else unsampled,
            "prob_std": outputs["prob_std"].tolist() if sampled else unsampled,
            "mc_stderr": undefined_as_null(mc_stderr) if sampled else unsampled,
            "noise_std": outputs["noise_std"].tolist(),
        }
        if noise_free is not None:
            columns["noise_free_probs"] = noise_free.tolist()
        names = list(columns)
        rows = [
            dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)
        ]
        if top_k is not None or correlated_pairs:
            self.add_asked(rows, outputs, top_k, correlated_pairs, max_pairs, predictive)
        return rows

    def add_asked(
        self,
        rows: list[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        top_k: int | None,
        correlated_pairs: bool,
        max_pairs: int = 5,
        predictive: str = "marginal",
    ) -> None:
        """Add the fields a request asks for to its ``rows`` (of ``rows()``, in place):
        correlated_pairs (when true) and top_k (when given)."""
        probs = outputs["probs"] if predictive == "marginal" else outputs[NOISE_FREE_OUTPUT]
        for i, row in enumerate(rows):
            if correlated_pairs:
                row["correlated_pairs"] = rank_pairs(
                    outputs["top_classes"][i], outputs["top_correlation"][i], max_pairs
                )
            if top_k is not None:
                row["top_k"] = self.top_k(probs[i], top_k)

    def top_k(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[: max(0, k)]
        return [
            {"class": int(c), "class_name": self.class_names[c], "prob": float(probs[c])}
            for c in order
        ]


def entropy_of(probs: np.ndarray, task: str) -> np.ndarray:
    """H[p] per row (nats), as the graph computes ``entropy``: multiclass, one value
    per row; multilabel, each label's binary entropy."""
    p = probs.astype(np.float64)
    if task == "multiclass":
        entropy: np.ndarray = (-(p * np.log(np.clip(p, 1e-12, None))).sum(-1)).astype(probs.dtype)
        return entropy
    q = 1 - p
    h = -(p * np.log(np.clip(p, 1e-12, None)) + q * np.log(np.clip(q, 1e-12, None)))
    return h.astype(probs.dtype)


def undefined_as_null(values: np.ndarray) -> list[list[float] | None]:
    """Rows of ``values`` as lists, None for a row with a NaN (an error bar that is
    undefined, as mc_stderr from one draw): JSON has no NaN."""
    finite = np.isfinite(values).reshape(len(values), -1).all(-1)
    return [row if ok else None for row, ok in zip(values.tolist(), finite.tolist(), strict=True)]
