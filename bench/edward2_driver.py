"""edward2's ``MCSoftmaxDenseFA`` as a timing worker for ``bench/head_speed.py``.

Runs in the edward2 virtualenv that head_speed.py installs (edward2 0.0.2, TensorFlow
2.18, tf-keras, TensorFlow Probability 0.25; env ``TF_USE_LEGACY_KERAS=1``), never in
the service's environment: it imports neither torch nor hetserve.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (the
process's own stdout is sent to stderr so TensorFlow's chatter cannot corrupt it):

    {"cmd": "build", "B": 128, "D": 512, "K": 100, "R": 10, "S": 1000, "mode": "shared"}
    {"cmd": "time", "op": "fwd+bwd"}     -> {"ms": ...}   one call, timed here
    {"cmd": "time", "op": "predict"}     -> {"ms": ...}
    {"cmd": "peak", "op": "fwd+bwd"}     -> {"mb": ...}   peak RSS growth of one call
    {"cmd": "info"}                      -> versions and thread settings
    {"cmd": "quit"}

What is computed (the same work as hetserve's ``HetHead``):

    layer = MCSoftmaxDenseFA(K, R, temperature=1, parameter_efficient=False,
                             train_mc_samples=S, test_mc_samples=S,
                             share_samples_across_batch=(mode == "shared"))
    fwd+bwd: log_p = layer(h, training=True)[0]     # log(clip(1/S sum_s softmax(u_s), 1e-7))
             loss  = -mean_b log_p[b, y_b]           # NLL of the MC-averaged probability
             gradients of loss for every trainable variable of the layer and for h
    predict: layer(h, training=False)[2]             # 1/S sum_s softmax(u_s), (B, K)

Both run as ``tf.function`` graphs (as Keras training and serving run them), traced
once for any batch size; the outputs not returned are pruned from the graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


class Edward2Case:
    """One MCSoftmaxDenseFA at one shape and noise mode, with its input batch."""

    def __init__(self, tf, ed, batch, in_features, num_classes, num_factors, samples, mode):
        self.tf = tf
        share = {"shared": True, "per-example": False}[mode]
        self.layer = ed.layers.MCSoftmaxDenseFA(
            num_classes,
            num_factors,
            temperature=1.0,
            parameter_efficient=False,
            train_mc_samples=samples,
            test_mc_samples=samples,
            share_samples_across_batch=share,
            logits_only=False,
        )
        tf.random.set_seed(0)
        self.h = tf.random.normal([batch, in_features])
        self.y = tf.random.uniform([batch], 0, num_classes, dtype=tf.int32)
        self.layer(self.h[:2], training=False)  # creates the weights eagerly
        signature = [
            tf.TensorSpec([None, in_features], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
        layer = self.layer

        @tf.function(input_signature=signature)
        def forward_backward(h, y):
            with tf.GradientTape() as tape:
                tape.watch(h)
                log_probs = layer(h, training=True)[0]
                loss = -tf.reduce_mean(tf.gather(log_probs, y, batch_dims=1))
            grads = tape.gradient(loss, [h] + layer.trainable_variables)
            return loss, grads

        @tf.function(input_signature=signature[:1])
        def predict(h):
            return layer(h, training=False)[2]

        self.fns = {
            "fwd+bwd": lambda h, y: forward_backward(h, y),
            "predict": lambda h, y: predict(h),
        }

    def call(self, op: str, h=None, y=None) -> None:
        out = self.fns[op](self.h if h is None else h, self.y if y is None else y)
        # Eager execution on a CPU is synchronous; reading a value makes sure of it.
        first = out[0] if isinstance(out, tuple) else out
        first.numpy()

    def time_ms(self, op: str) -> float:
        start = time.perf_counter()
        self.call(op)
        return (time.perf_counter() - start) * 1e3

    def peak_mb(self, op: str) -> float:
        """Growth of the peak RSS over one call (MB), after a 2-row call of the same
        traced graph has loaded every kernel. Writing 5 to /proc/self/clear_refs resets
        the peak (VmHWM) to the current RSS."""
        self.call(op, self.h[:2], self.y[:2])
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status_kb("VmRSS")
        self.call(op)
        return (status_kb("VmHWM") - before) / 1024


def onednn_state() -> str:
    """Whether TensorFlow runs its oneDNN kernels (its default depends on the CPU):
    "on", "off", or "unknown" where this TensorFlow lacks the (private) query."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return "unknown"
    return "on" if _pywrap_util_port.IsMklEnabled() else "off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intra-op-threads", type=int, default=2)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    args = parser.parse_args()

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by TensorFlow goes to stderr
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "NumPy backend for Edward2 is not available"
        import edward2 as ed
    import tensorflow_probability as tfp

    case = None
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request["cmd"]
        try:
            if cmd == "build":
                case = None
                case = Edward2Case(
                    tf,
                    ed,
                    request["B"],
                    request["D"],
                    request["K"],
                    request["R"],
                    request["S"],
                    request["mode"],
                )
                reply = {"ok": True}
            elif cmd == "time":
                assert case is not None, "build first"
                reply = {"ms": case.time_ms(request["op"])}
            elif cmd == "peak":
                assert case is not None, "build first"
                reply = {"mb": case.peak_mb(request["op"])}
            elif cmd == "info":
                reply = {
                    "tensorflow": tf.__version__,
                    "edward2": getattr(ed, "__version__", "?"),
                    "tensorflow_probability": tfp.__version__,
                    "keras": tf.keras.__name__ if hasattr(tf.keras, "__name__") else "?",
                    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                    "onednn": onednn_state(),
                }
            elif cmd == "quit":
                protocol.write(json.dumps({"ok": True}) + "\n")
                return
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as exc:  # reported to the parent, which raises
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
