"""Peak memory of the chunked HET loss, measured as real process RSS in a subprocess.

Linux only: the peak is VmHWM, reset through /proc/self/clear_refs (ru_maxrss would
carry the parent's peak across exec and hide the child's own).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

PEAK_RSS_SCRIPT = r"""
import json, sys, torch
from models.heads import HetHead
from core.spec import HeadSpec

def status_kb(field):
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))

torch.set_num_threads(1)
chunk_elements = int(sys.argv[1])
torch.manual_seed(0)
b, d, k, r, s = 32, 16, 1000, 4, 400           # B x S x K = 12.8M floats = 51 MB per copy
head = HetHead(HeadSpec(num_factors=r, train_mc_samples=s), d, k, chunk_elements=chunk_elements)
h = torch.randn(b, d, requires_grad=True)
y = torch.randint(0, k, (b,))
noise = head.draw_noise(b, s, "cpu", torch.Generator().manual_seed(1))
small = head.draw_noise(b, 2, "cpu")
head.loss(h, y, noise=small).backward()       # warm up kernels and the allocator
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status_kb("VmRSS")
loss = head.loss(h, y, noise=noise)
loss.backward()
growth = status_kb("VmHWM") - before
print(json.dumps({"growth_kb": growth, "loss": loss.item(), "grad": h.grad.abs().sum().item()}))
"""


@functools.cache  # each configuration runs once per session
def peak_rss_growth(chunk_elements: int, estimator: str = "torch") -> dict:
    """estimator: HETSERVE_HET_KERNEL, "torch" for the chunked torch path, "kernel" for the
    fused kernel (which ignores chunk_elements)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(chunk_elements)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HETSERVE_HET_KERNEL": estimator},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_chunked_loss_uses_far_less_peak_memory_for_the_same_value():
    unchunked = peak_rss_growth(1 << 40)
    chunked = peak_rss_growth(1 << 18)  # chunks of 262k logits (1 MB)
    assert unchunked["growth_kb"] > 50_000  # the whole (B, S, K) tensor really was formed
    assert chunked["growth_kb"] < unchunked["growth_kb"] / 4
    assert abs(chunked["loss"] - unchunked["loss"]) < 1e-4 * abs(unchunked["loss"])
    assert abs(chunked["grad"] - unchunked["grad"]) < 1e-3 * abs(unchunked["grad"])


def test_fused_kernel_peak_memory_is_gradient_sized():
    """The fused kernel keeps per-thread buffers of a few draws and the (B, K, R) gradients:
    far below even one chunk of the torch path, and the same value."""
    unchunked = peak_rss_growth(1 << 40)
    fused = peak_rss_growth(1 << 40, estimator="kernel")
    assert fused["growth_kb"] < unchunked["growth_kb"] / 10
    assert abs(fused["loss"] - unchunked["loss"]) < 1e-4 * abs(unchunked["loss"])
    assert abs(fused["grad"] - unchunked["grad"]) < 1e-3 * abs(unchunked["grad"])
