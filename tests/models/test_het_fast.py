"""models/het_fast.py computes what the reference estimator in models/het_formula.py computes."""

from __future__ import annotations

import itertools
import math
import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from core.spec import HeadSpec
from models import het_fast, het_kernel
from models.heads import HetHead
from models.het_formula import MULTICLASS, MULTILABEL, LogitGaussian

CASES = [
    {"task": task, "num_factors": r, "parameter_efficient": pe, "share_samples_across_batch": sh}
    for task, (r, pe), sh in itertools.product(
        (MULTICLASS, MULTILABEL), ((3, False), (3, True), (0, False)), (True, False)
    )
]


def case_id(case: dict) -> str:
    pe = "-pe" if case["parameter_efficient"] else ""
    shared = "" if case["share_samples_across_batch"] else "-per-example"
    return f"{case['task']}-R{case['num_factors']}{pe}{shared}"


def loss_and_grads(head: HetHead, h, y, noise):
    head.zero_grad()
    h = h.detach().requires_grad_()
    loss = head.loss(h, y, noise=noise)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    return loss.detach(), {**grads, "h": h.grad}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fast_path_equals_reference(case):
    """Same head, same noise: loss, every gradient, predict and moments, fast == reference,
    with one chunk or many and both layouts of the draws."""
    case = dict(case)
    task = case.pop("task")
    torch.manual_seed(0)
    k, b, s = 7, 4, 60
    spec = HeadSpec(temperature=1.3, **case)
    head = HetHead(spec, 5, k, task, fast=False).double()
    with torch.no_grad():  # a wide spread of draws, so every term matters
        head.diag.bias.fill_(0.5)
        head.loc.weight.mul_(3)
    h = torch.randn(b, 5, dtype=torch.double)
    y = torch.randint(0, k, (b,)) if task == MULTICLASS else torch.randint(0, 2, (b, k)).double()
    eps_r, eps_k = head.draw_noise(b, s, "cpu", torch.Generator().manual_seed(3))
    noise = (None if eps_r is None else eps_r.double(), eps_k.double())

    ref_loss, ref_grads = loss_and_grads(head, h, y, noise)
    ref_probs = head.predict(h, noise=noise)
    ref_moments = head.moments(h, noise=noise)
    assert all(g.abs().sum() > 0 for g in ref_grads.values())
    assert ref_moments["prob_std"].min() > 1e-3  # the draws really differ

    head.fast = True
    layouts = (False, True) if task == MULTICLASS else (False,)
    for chunk_elements, class_major in itertools.product((None, b * k * 7), layouts):
        # one chunk, or chunks of 7 draws (9 chunks); sample- or class-major
        head.chunk_elements, head.class_major = chunk_elements, class_major
        loss, grads = loss_and_grads(head, h, y, noise)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-8, atol=1e-10, msg=name)
        torch.testing.assert_close(head.predict(h, noise=noise), ref_probs, rtol=1e-10, atol=1e-12)
        m = head.moments(h, noise=noise)
        assert int(m["num_samples"]) == int(ref_moments["num_samples"]) == s
        for name in ("probs", "prob_std", "expected_entropy"):
            torch.testing.assert_close(m[name], ref_moments[name], rtol=1e-8, atol=1e-10, msg=name)


# -- the fused CPU kernel (models/het_kernel.c) -------------------------------------------

KERNEL_CASES = [  # (K, R, parameter-efficient, noise): S = 50 draws = 6 blocks of 8 and 2
    (10, 3, False, "shared"),
    (10, 0, False, "per-example"),
    (100, 4, False, "shared"),
    (100, 5, True, "per-example"),
    (100, 3, False, "seeded"),
    (10, 2, True, "seeded"),
]


def kernel_case_id(case) -> str:
    k, r, pe, noise = case
    return f"K{k}-R{r}{'-pe' if pe else ''}-{noise}"


def float32_head_and_batch(k, r, pe, shared):
    torch.manual_seed(1)
    b, d = 5, 6
    spec = HeadSpec(
        num_factors=r,
        parameter_efficient=pe,
        temperature=1.3,
        share_samples_across_batch=shared,
        eval_noise="mc",  # predict draws as training does: the kernel's own seeded noise
    )
    head = HetHead(spec, d, k, MULTICLASS)
    with torch.no_grad():
        head.diag.bias.fill_(0.5)
        head.loc.weight.mul_(3)
    h = torch.randn(b, d)
    y = torch.randint(0, k, (b,))
    # example 0 is confidently wrong: its label's logit far below the rest, with a large
    # spread, so log p_s ranges over hundreds of nats (the running reference is raised)
    y[0] = 0
    with torch.no_grad():
        head.loc.weight[0].zero_()
        head.loc.bias[0] = -1500.0
        head.diag.weight[0].zero_()
        head.diag.bias[0] = 400.0
    return head, h, y


def assert_grads_close(grads, ref_grads):
    for name, g in grads.items():
        ref = ref_grads[name].float()
        tol = 1e-4 * ref.abs().max().item() + 1e-7
        torch.testing.assert_close(g, ref, rtol=1e-3, atol=tol, msg=name)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=kernel_case_id)
def test_kernel_equals_reference_on_the_same_noise(case, monkeypatch):
    """float32 kernel == float64 reference on the same noise: loss, every gradient, predict,
    moments; with a confidently wrong example (log p far below -100)."""
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "kernel")
    k, r, pe, noise_kind = case
    head, h, y = float32_head_and_batch(k, r, pe, shared=noise_kind == "shared")
    b, s = h.shape[0], 50
    if noise_kind == "seeded":  # drawn inside the kernel from a seed
        seeded = het_fast.SeededNoise.draw(s, torch.Generator().manual_seed(3))
        noise = seeded.materialise(b, k, r)
        kernel_noise = None  # the head draws the seed itself from the generator
    else:
        noise = head.draw_noise(b, s, "cpu", torch.Generator().manual_seed(3))
        kernel_noise = noise

    reference = HetHead(head.spec, h.shape[1], k, MULTICLASS, fast=False).double()
    reference.load_state_dict(head.state_dict())
    noise64 = tuple(None if e is None else e.double() for e in noise)
    ref_loglik = reference.log_likelihood(h.double(), y, noise=noise64)
    assert ref_loglik[0] < -100  # confidently wrong, and still a finite log-likelihood
    ref_loss, ref_grads = loss_and_grads(reference, h.double(), y, noise64)
    ref_moments = reference.moments(h.double(), noise=noise64)

    calls = []
    real_loglik = het_kernel.loglik
    monkeypatch.setattr(
        het_kernel, "loglik", lambda *a, **kw: calls.append(1) or real_loglik(*a, **kw)
    )

    def gen():
        return torch.Generator().manual_seed(3)

    head.zero_grad()
    hh = h.clone().requires_grad_()
    loss = head.loss(hh, y, s, gen(), kernel_noise)
    loss.backward()
    grads = {n: p.grad for n, p in head.named_parameters()} | {"h": hh.grad}
    assert calls, "the kernel was not used"
    loglik = head.log_likelihood(h, y, s, gen(), kernel_noise)
    torch.testing.assert_close(loglik, ref_loglik.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, ref_loss.float(), rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, ref_grads)
    probs = head.predict(h, s, gen(), kernel_noise)
    torch.testing.assert_close(probs, ref_moments["probs"].float(), rtol=1e-4, atol=1e-6)
    m = head.moments(h, s, gen(), kernel_noise)
    assert int(m["num_samples"]) == s
    for name in ("probs", "prob_std", "expected_entropy"):
        ref = ref_moments[name].float()
        torch.testing.assert_close(m[name], ref, rtol=1e-4, atol=1e-5, msg=name)


def test_kernel_is_not_used_when_switched_off(monkeypatch):
    """HETSERVE_HET_KERNEL=torch: the plain torch path, same numbers."""
    head, h, y = float32_head_and_batch(10, 3, False, shared=True)
    noise = head.draw_noise(h.shape[0], 40, "cpu", torch.Generator().manual_seed(0))
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "kernel")
    fused = head.log_likelihood(h, y, noise=noise)

    def refuse(*args, **kwargs):
        raise AssertionError("kernel called although switched off")

    monkeypatch.setenv("HETSERVE_HET_KERNEL", "torch")
    monkeypatch.setattr(het_kernel, "loglik", refuse)
    monkeypatch.setattr(het_kernel, "moment_sums", refuse)
    assert not het_fast.kernel_draws_noise(True, h)
    plain = head.log_likelihood(h, y, noise=noise)
    head.moments(h, noise=noise)
    torch.testing.assert_close(plain, fused, rtol=1e-5, atol=1e-5)
    head.share_samples_across_batch = False  # per-example: noise drawn as tensors again
    head.log_likelihood(h, y, generator=torch.Generator().manual_seed(0))


def test_no_compiler_means_the_torch_path_with_a_warning(monkeypatch):
    monkeypatch.setattr(het_kernel, "_loaded", {})
    monkeypatch.setattr(het_kernel, "_compiler", lambda: None)
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "auto")
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert het_kernel.load() is None
    assert not het_kernel.applies(torch.zeros(1))
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "kernel")
    with pytest.raises(RuntimeError, match="no C compiler"):
        het_kernel.load()


def test_kernel_normals_are_standard_normal_and_independent(monkeypatch):
    """The kernel's counter-based normals: moments and tail mass within 5 MC standard
    errors, no correlation between neighbouring counters, examples or seeds."""
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "kernel")
    eps_r, eps_k = het_fast.SeededNoise(12345, 500).materialise(40, 9, 3)
    x = torch.cat([eps_k.flatten(), eps_r.flatten()]).double()
    n = x.numel()  # 240k
    assert abs(x.mean()) < 5 / n**0.5
    assert abs(x.var() - 1) < 5 * (2 / n) ** 0.5
    assert abs((x**4).mean() - 3) < 5 * (96 / n) ** 0.5
    tail = (x.abs() > 2).double().mean()
    p = 0.04550026  # P(|N(0, 1)| > 2)
    assert abs(tail - p) < 5 * (p * (1 - p) / n) ** 0.5
    k = eps_k.reshape(-1, 9).double()
    for a, b in ((k[:, 0], k[:, 1]), (eps_k[0].flatten(), eps_k[1].flatten())):
        assert abs(torch.corrcoef(torch.stack([a, b.double()]))[0, 1]) < 5 / a.numel() ** 0.5
    # the stream as documented in het_kernel.c's draw_normals, in float64
    golden, mask = 0x9E3779B97F4A7C15, 2**64 - 1

    def mix64(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    pairs = (9 + 3 + 1) // 2
    for b, s, i in ((0, 0, 0), (3, 7, 5), (39, 499, 6), (12, 250, 11)):
        j = i % pairs
        bits = mix64((12345 + golden * ((b * 500 + s) * pairs + j)) & mask)
        radius = math.sqrt(-2 * math.log(((bits >> 40) + 1) / 2**24))
        angle = 2 * math.pi * ((bits >> 16) & 0xFFFFFF) / 2**24
        want = radius * (math.cos(angle) if i < pairs else math.sin(angle))
        got = eps_k[b, s, i] if i < 9 else eps_r[b, s, i - 9]
        assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want)), (b, s, i)
    other = het_fast.SeededNoise(12346, 500).materialise(40, 9, 3)[1]
    corr = torch.corrcoef(torch.stack([eps_k.flatten(), other.flatten()]))[0, 1]
    assert abs(corr) < 5 / eps_k.numel() ** 0.5


def in_forked_child(compute) -> torch.Tensor:
    """compute() (a list of float32 tensors) in a child forked with 2 torch threads set,
    returned flattened and concatenated; fails the test if the child hangs. The child calls
    the kernel alone: torch's own parallel ops are not fork safe either (a child sets 1
    thread for those)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compute, report, exit without running pytest's teardown
            try:
                assert het_kernel._threads() == -2  # plain threads, two of them
                got = compute()
                os.write(write_end, torch.cat([t.flatten() for t in got]).numpy().tobytes())
            finally:
                os._exit(0)
    finally:
        torch.set_num_threads(threads)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the kernel hung in a forked child")
        time.sleep(0.05)
    got = b""
    while chunk := os.read(read_end, 1 << 16):
        got += chunk
    os.close(read_end)
    return torch.frombuffer(bytearray(got), dtype=torch.float32)


def test_kernel_in_a_forked_child(monkeypatch):
    """After the parent used the kernel (OpenMP on torch's pool), a forked child still gets
    the same numbers on two threads (plain pthreads there: libgomp's pool inherited from
    the parent must not be used) and does not hang."""
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "kernel")
    torch.manual_seed(0)
    b, k, r, s = 6, 100, 3, 40
    mu, scale, factors = torch.randn(b, k), torch.rand(b, k) + 0.5, torch.randn(b, k, r)
    eps_r, eps_k, y = torch.randn(s, r), torch.randn(s, k), torch.randint(0, k, (b,))

    def compute():
        return list(het_kernel.loglik(mu, scale, factors, eps_r, eps_k, y, True))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = compute()
    finally:
        torch.set_num_threads(threads)
    child = in_forked_child(compute)
    torch.testing.assert_close(child, torch.cat([t.flatten() for t in parent]), rtol=0, atol=0)


@pytest.mark.parametrize("num_classes", [25, 30, 101])
def test_kernel_entropy_has_no_padding_lane_term(num_classes, monkeypatch):
    """K > 24 and K % 8 != 0: the sample-major kernel pads K to a multiple of 8 with logits
    of -1e30, and a padding lane's clamped exp(-87) times (-1e30 - max) added -1.6e-8 to
    sum_k e_k (u_k - max) per lane, ~1.15e-7 nats of expected_entropy at 7 lanes. The
    same head widened to the multiple of 8 with real classes at logit -200 (which add
    nothing: exp(-200) underflows) has no padding: both must agree to 1e-9."""
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "kernel")
    padded = -(-num_classes // 8) * 8
    gen = torch.Generator().manual_seed(0)
    mu = torch.full((3, padded), -200.0)
    mu[:, :num_classes] = 3 * torch.randn(3, num_classes, generator=gen)
    scale = torch.full((3, padded), 0.5)
    eps_k = torch.randn(64, padded, generator=gen)
    calls = []
    real = het_kernel.moment_sums
    monkeypatch.setattr(
        het_kernel, "moment_sums", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )

    def entropy(k):
        latent = LogitGaussian(mu[:, :k].contiguous(), scale[:, :k].contiguous())
        m = het_fast.moments(latent, None, eps_k[:, :k].contiguous(), True, 1 << 20, False)
        return m["expected_entropy"]

    got, wide = entropy(num_classes), entropy(padded)
    assert len(calls) == 2, "the kernel was not used"
    torch.testing.assert_close(got, wide, rtol=0, atol=1e-9)


# -- the dense layers as GEMM blocks (het_fast.dense_layers) ------------------------------

needs_mkl = pytest.mark.skipif(
    het_kernel.load() is None or het_kernel.blas() is None,
    reason="no fused kernel or no MKL sgemm exported by torch here",
)

DENSE_SHAPES = [  # (B, D, output widths, bias on the last layer)
    (1, 8, (3, 3, 6), True),  # one example
    (5, 37, (10, 10, 30), True),  # B, D, N all odd: blocks end mid-vector
    (33, 100, (7, 7, 35), False),  # a layer without bias (parameter-efficient v(x))
    (64, 48, (100, 100, 1000), True),
]
BLOCKINGS = {  # every pass on all threads (parallel_fmas 0), cut three ways
    "head": het_fast.DENSE_BLOCKING._replace(parallel_fmas=0),  # as the head cuts them
    "aligned": het_kernel.Blocking(task_fmas=20000, align=16, min_units=16, parallel_fmas=0),
    "single": het_kernel.Blocking(task_fmas=1, align=1, min_units=1, parallel_fmas=0),
}


def dense_case(b, d, widths, last_bias, seed=0):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(d, n) for n in widths[:-1]]
    layers.append(torch.nn.Linear(d, widths[-1], bias=last_bias))
    h = torch.randn(b, d, requires_grad=True)
    return layers, h


def float64_reference(layers, h, grads):
    """The layers' outputs and the gradients of sum(out * grad) in float64: h's, then each
    layer's weight and bias."""
    h64 = h.detach().double().requires_grad_()
    params = [p.detach().double().requires_grad_() for m in layers for p in m.parameters()]
    it = iter(params)
    outs = []
    for m in layers:
        w = next(it)
        b = next(it) if m.bias is not None else None
        outs.append(F.linear(h64, w, b))
    got = torch.autograd.grad(outs, [h64, *params], [g.double() for g in grads])
    return outs, got


def assert_close32(got, want):
    tol = 2e-6 * want.abs().max().item() + 1e-6
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=tol)


def dense_forward_backward(layers, h, threads):
    """Outputs, the upstream gradients drawn for them, and d(sum out * grad) for h and every
    parameter, by het_fast.dense_layers on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert het_fast.dense_applies(h, layers)
        outs = het_fast.dense_layers(h, layers)
        grads = [torch.randn_like(o) for o in outs]
        params = [p for m in layers for p in m.parameters()]
        got = torch.autograd.grad(outs, [h, *params], grads)
    finally:
        torch.set_num_threads(previous)
    return outs, grads, got


@needs_mkl
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: f"B{s[0]}-D{s[1]}-N{s[2][-1]}")
@pytest.mark.parametrize("blocks", list(BLOCKINGS))
def test_dense_layers_equal_the_linear_layers(shape, threads, blocks, monkeypatch):
    """Outputs and every gradient (h, weights, biases) as nn.Linear's, against float64,
    with the GEMMs cut as the head cuts them, in blocks of 16 rows or columns (the last
    one partial), or in blocks of one; the forward pass as blocks at every size."""
    monkeypatch.setattr(het_fast, "DENSE_BLOCKING", BLOCKINGS[blocks])
    monkeypatch.setattr(het_fast, "DENSE_DYNAMIC_FORWARD_FMAS", 0)
    layers, h = dense_case(*shape)
    outs, grads, got = dense_forward_backward(layers, h, threads)
    want_outs, want_grads = float64_reference(layers, h, grads)
    for o, w in zip(outs, want_outs, strict=True):
        assert_close32(o, w)
    for g, w in zip(got, want_grads, strict=True):
        assert_close32(g, w)


@needs_mkl
def test_small_dense_passes_on_the_calling_thread_give_the_same_numbers(monkeypatch):
    """A pass below parallel_fmas runs on the calling thread alone, block by block: the
    same numbers as on every thread."""
    monkeypatch.setattr(het_fast, "DENSE_DYNAMIC_FORWARD_FMAS", 0)
    layers, h = dense_case(16, 64, (8, 8, 32), True)
    results = []
    for parallel_fmas in (1 << 40, 0):
        blocking = het_kernel.Blocking(
            task_fmas=1, align=1, min_units=5, parallel_fmas=parallel_fmas
        )
        monkeypatch.setattr(het_fast, "DENSE_BLOCKING", blocking)
        torch.manual_seed(3)
        outs, _, got = dense_forward_backward(layers, h, 2)
        results.append([*outs, *got])
    for serial, parallel in zip(*results, strict=True):
        torch.testing.assert_close(serial, parallel, rtol=1e-6, atol=1e-6)


@needs_mkl
def test_dense_layers_skip_the_gradients_nobody_needs(monkeypatch):
    """h without requires_grad and a frozen layer: no gradient is formed for them, the
    others are right."""
    monkeypatch.setattr(het_fast, "DENSE_BLOCKING", BLOCKINGS["single"])
    layers, h = dense_case(6, 20, (4, 4, 8), True)
    h = h.detach()
    layers[0].requires_grad_(False)
    outs = het_fast.dense_layers(h, layers)
    grads = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(outs, grads)
    assert layers[0].weight.grad is None and layers[0].bias.grad is None
    _, want = float64_reference(layers, h, grads)  # h, then (weight, bias) per layer
    for i, layer in enumerate(layers[1:], 1):
        assert_close32(layer.weight.grad, want[1 + 2 * i])
        assert_close32(layer.bias.grad, want[2 + 2 * i])


@needs_mkl
@pytest.mark.parametrize("small_forward", ["blocks", "torch"])
@pytest.mark.parametrize(
    ("r", "pe", "shared"), [(3, False, True), (3, True, False), (0, False, True)]
)
def test_head_with_dynamic_dense_layers_equals_the_static_ones(
    r, pe, shared, small_forward, monkeypatch
):
    """HetHead's loss, every gradient, predict and moments: dense layers as GEMM blocks ==
    torch's nn.Linear (same weights, same noise), float32, B = 13 cut into odd blocks.
    "torch": the shipped threshold, under which this small a forward pass is torch's GEMM
    and predict / moments (no autograd) take the plain layers."""
    monkeypatch.setattr(
        het_fast, "DENSE_BLOCKING", het_kernel.Blocking(1000, 3, 3, parallel_fmas=0)
    )
    if small_forward == "blocks":
        monkeypatch.setattr(het_fast, "DENSE_DYNAMIC_FORWARD_FMAS", 0)
    forwards = []
    real_forward = het_kernel.dense_forward
    monkeypatch.setattr(
        het_kernel, "dense_forward", lambda *a: forwards.append(1) or real_forward(*a)
    )
    torch.manual_seed(2)
    b, d, k = 13, 40, 12
    spec = HeadSpec(
        num_factors=r, parameter_efficient=pe, share_samples_across_batch=shared, eval_noise="mc"
    )
    heads = {flag: HetHead(spec, d, k, MULTICLASS, dynamic_dense=flag) for flag in (True, False)}
    heads[False].load_state_dict(heads[True].state_dict())
    h = torch.randn(b, d)
    y = torch.randint(0, k, (b,))
    noise = heads[True].draw_noise(b, 64, "cpu", torch.Generator().manual_seed(5))
    calls = []
    real = het_fast.dense_layers
    monkeypatch.setattr(het_fast, "dense_layers", lambda *a: calls.append(1) or real(*a))
    results = {}
    for flag, head in heads.items():
        loss, grads = loss_and_grads(head, h, y, noise)
        results[flag] = (loss, grads, head.predict(h, noise=noise), head.moments(h, noise=noise))
    # only the dynamic head: loss, predict, moments; under the threshold the loss alone
    assert len(calls) == (3 if small_forward == "blocks" else 1)
    assert len(forwards) == (3 if small_forward == "blocks" else 0)
    (loss, grads, probs, m), (ref_loss, ref_grads, ref_probs, ref_m) = results[True], results[False]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    assert_grads_close(grads, ref_grads)
    torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-6)
    for name in ("probs", "prob_std", "expected_entropy"):
        torch.testing.assert_close(m[name], ref_m[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dense_layers_not_taken_where_they_do_not_apply(monkeypatch):
    """float64, no MKL sgemm, the kernel switched off: the plain layers."""
    layers, h = dense_case(4, 8, (3, 3, 6), True)
    assert not het_fast.dense_applies(h.double(), [m.double() for m in layers])
    layers, h = dense_case(4, 8, (3, 3, 6), True)
    monkeypatch.setattr(het_kernel, "blas", lambda: None)
    assert not het_fast.dense_applies(h, layers)
    monkeypatch.undo()
    monkeypatch.setenv("HETSERVE_HET_KERNEL", "torch")
    assert not het_fast.dense_applies(h, layers)


@needs_mkl
def test_dense_kernel_refuses_tensors_of_the_wrong_shape():
    h, w = torch.zeros(4, 5), torch.zeros(3, 5)
    with pytest.raises(ValueError, match="expected"):  # an output of 4 x 2 for N = 3
        het_kernel.dense_forward(h, [w], [None], [torch.zeros(4, 2)], het_fast.DENSE_BLOCKING)
    with pytest.raises(TypeError, match="contiguous float32"):
        het_kernel.dense_forward(
            h, [w.t().contiguous().t()], [None], [torch.zeros(4, 3)], het_fast.DENSE_BLOCKING
        )


@needs_mkl
def test_dense_layers_in_a_forked_child(monkeypatch):
    """After the parent ran GEMM blocks on torch's OpenMP pool, a forked child runs them on
    plain threads, one MKL thread each, to the same numbers, and does not hang."""
    monkeypatch.setattr(het_fast, "DENSE_BLOCKING", BLOCKINGS["single"])
    monkeypatch.setattr(het_fast, "DENSE_DYNAMIC_FORWARD_FMAS", 0)  # the blocks at any size
    layers, h = dense_case(9, 30, (5, 5, 20), True)

    def compute():
        with torch.no_grad():
            return list(het_fast.dense_layers(h, layers))

    parent = compute()
    child = in_forked_child(compute)
    torch.testing.assert_close(child, torch.cat([t.flatten() for t in parent]), rtol=0, atol=0)
