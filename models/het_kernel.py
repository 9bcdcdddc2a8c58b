"""The fused CPU kernel of the multiclass HET head (``het_kernel.c``), built at first use.

``load()`` compiles ``het_kernel.c`` with the machine's C compiler (``$CC``, else ``cc`` or
``gcc``) for the CPU it runs on (``-O3 -march=native``: about a second) into a cache
directory, keyed by the source, the flags, the compiler's version and the CPU, and loads it
with ctypes; later processes on the same machine load the cached library. It returns None
(and ``models.het_fast`` keeps its plain torch path) when ``HETSERVE_HET_KERNEL=torch``, or
when no compiler is found or the build fails (then with a warning, once).
``HETSERVE_HET_KERNEL=kernel`` makes a failed build an error instead.

Cache directory: see ``cache_dirs``. A build goes to a temporary name and is renamed into
place, so concurrent first uses (several workers) do not see half-written libraries.

The functions below take torch tensors and call the kernel on their ``data_ptr``; they
check what the C side trusts (float32, contiguous, CPU, shapes). Each call is one OpenMP
parallel region of ``torch.get_num_threads()`` threads; the library's libgomp is the one
torch already loaded (same soname), so these are torch's own intra-op threads (plain
pthreads in a forked child, see ``_threads``). ctypes releases the GIL during a call.

``dense_forward`` and ``dense_backward`` run the HET head's dense-layer GEMMs
(``models.het_fast.dense_layers``) in such a region, in blocks handed out dynamically, each
block an sgemm of the MKL that torch carries (``blas``: its address, in libtorch_cpu).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from core.settings import HetKernelMode, kernel_settings

SOURCE = Path(__file__).with_name("het_kernel.c")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp", "-pthread"]

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}

_i64, _u64, _int, _ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "het_loglik": [_i64] * 4 + [_ptr] * 4 + [_i64, _ptr, _i64, _u64] + [_ptr] * 5 + [_int],
    "het_moments": [_i64] * 4 + [_ptr] * 4 + [_i64, _ptr, _i64, _u64] + [_ptr] * 4 + [_int],
    "het_normals": [_u64] + [_i64] * 5 + [_ptr] * 3,
    "het_dense_forward": [_ptr] * 2 + [_i64] * 3 + [_ptr] * 6 + [_int],
    "het_dense_backward": [_ptr] * 2 + [_i64] * 3 + [_ptr] * 7 + [_int],
}
_RETURNS = {"het_normals": None}


_forked = False  # in a child forked after this module was imported


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def _threads() -> int:
    """torch's intra-op thread count; negative (plain pthreads instead of OpenMP) in a
    forked child, where the OpenMP pool inherited from the parent must not be used."""
    n = torch.get_num_threads()
    return -n if _forked else n


def mode() -> HetKernelMode:
    """``HETSERVE_HET_KERNEL`` (core.settings): auto, torch or kernel."""
    return kernel_settings().het_kernel


def cache_dirs() -> list[Path]:
    """Where the built library may live, in order: ``HETSERVE_KERNEL_CACHE`` alone if set,
    else ``~/.cache/hetserve/kernels`` (the worker image's home is its /data volume),
    ``$HETSERVE_DATA_DIR/cache/kernels`` and a temporary directory, the first writable one
    being used."""
    if (cache := kernel_settings().kernel_cache) is not None:
        return [cache]
    dirs = [Path.home() / ".cache" / "hetserve" / "kernels"]
    # The service's data dir only where one is set: app.settings owns it (default "var",
    # relative to the working directory), and models does not import app.
    if os.environ.get("HETSERVE_DATA_DIR"):
        dirs.append(Path(os.environ["HETSERVE_DATA_DIR"]) / "cache" / "kernels")
    return [*dirs, Path(tempfile.gettempdir()) / f"hetserve-kernels-{os.getuid()}"]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [
                ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))
            ]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(FLAGS).encode(), version.encode(), _cpu_identity().encode()])
    ).hexdigest()[:24]
    name = f"het_kernel-{key}.so"
    for directory in cache_dirs():
        if (directory / name).exists():
            return directory / name
    for directory in cache_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if os.access(directory, os.W_OK):
                break
        except OSError:
            continue
    else:
        raise RuntimeError(f"no writable cache directory among {cache_dirs()}")
    library = directory / name
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}:\n{done.stderr[-2000:]}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def load() -> ctypes.CDLL | None:
    """The kernel library, or None: disabled, or not buildable here (see the module doc)."""
    switch = mode()
    if switch == "torch":
        return None
    with _lock:
        if switch in _loaded:
            return _loaded[switch]
        lib = None
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler found ($CC, cc, gcc)")
            lib = ctypes.CDLL(str(_build(cc)))
            for name, argtypes in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = argtypes, _RETURNS.get(name, _int)
        except Exception as exc:  # noqa: BLE001 - any failure means: use the torch path
            if switch == "kernel":
                raise
            warnings.warn(
                f"HET head: fused CPU kernel unavailable, using the torch path ({exc})",
                RuntimeWarning,
                stacklevel=2,
            )
            lib = None
        _loaded[switch] = lib
        return lib


def _library() -> ctypes.CDLL:
    """The loaded library, for the functions below (their callers check ``applies``)."""
    lib = load()
    if lib is None:
        raise RuntimeError("the fused HET kernel is not loaded (HETSERVE_HET_KERNEL=torch?)")
    return lib


def applies(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernel can take these tensors: float32 on a CPU (and it loads)."""
    present = [t for t in tensors if t is not None]
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in present):
        return False
    return load() is not None


def _ptr_of(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def loglik(mu, scale, factors, eps_r, eps_k, y, with_grad: bool, seed=None, num_samples=None):
    """(L (B,), dL/dmu, dL/dd, dL/dV or None): L = logsumexp_s log softmax(z_s)_y.

    Noise: eps_r (S, R) / (B, S, R) or None, eps_k (S, K) / (B, S, K); or, with eps_k None,
    num_samples draws per example drawn in the kernel from ``seed`` (see ``normals``).
    Gradients only if with_grad."""
    lib = _library()
    b, k = mu.shape
    r = 0 if factors is None else factors.shape[2]
    num = eps_k.shape[-2] if eps_k is not None else int(num_samples)
    (er, er_stride), (ek, ek_stride) = _noise(eps_r, eps_k, b, num, k, r)
    _check(mu, scale, factors)
    if b and (y.min() < 0 or y.max() >= k):
        raise IndexError(f"labels outside [0, {k})")
    mu, scale = mu.contiguous(), scale.contiguous()
    factors = None if factors is None else factors.contiguous()
    y = y.to(torch.int64).contiguous()
    total = mu.new_empty(b)
    grads = (
        (
            torch.empty_like(mu),
            torch.empty_like(scale),
            None if r == 0 else torch.empty_like(factors),
        )
        if with_grad
        else (None, None, None)
    )
    rc = lib.het_loglik(
        b, k, r, num, mu.data_ptr(), scale.data_ptr(), _ptr_of(factors), _ptr_of(er),
        er_stride, _ptr_of(ek), ek_stride, _key(seed), y.data_ptr(), total.data_ptr(),
        *(_ptr_of(g) for g in grads), _threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("het_loglik: out of memory for its per-thread buffers")
    return total, *grads


def moment_sums(mu, scale, factors, eps_r, eps_k, shift, second: bool, seed=None, num_samples=None):
    """(sum_s (p_s - shift), sum_s (p_s - shift)^2 or None, sum_s H[p_s] or None), p_s =
    softmax(z_s); shift None means 0; the square and entropy sums only if ``second``."""
    lib = _library()
    b, k = mu.shape
    r = 0 if factors is None else factors.shape[2]
    num = eps_k.shape[-2] if eps_k is not None else int(num_samples)
    (er, er_stride), (ek, ek_stride) = _noise(eps_r, eps_k, b, num, k, r)
    _check(mu, scale, factors, shift)
    mu, scale = mu.contiguous(), scale.contiguous()
    factors = None if factors is None else factors.contiguous()
    shift = None if shift is None else shift.contiguous()
    total = torch.empty_like(mu)
    total_sq = torch.empty_like(mu) if second else None
    total_ent = mu.new_empty(b) if second else None
    rc = lib.het_moments(
        b, k, r, num, mu.data_ptr(), scale.data_ptr(), _ptr_of(factors), _ptr_of(er),
        er_stride, _ptr_of(ek), ek_stride, _key(seed), _ptr_of(shift), total.data_ptr(),
        _ptr_of(total_sq), _ptr_of(total_ent), _threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("het_moments: out of memory for its per-thread buffers")
    return total, total_sq, total_ent


def normals(seed: int, batch: int, num_samples: int, num_classes: int, num_factors: int):
    """(eps_R (B, S, R) or None, eps_K (B, S, K)): the per-example noise the kernel draws
    from ``seed`` when given no eps tensors, materialised (to check it against the reference).

    Counter-based, SplitMix64 + Box-Muller (see ``draw_normals`` in het_kernel.c): example
    b's draw s is a pure function of (seed, b * S + s, K + R)."""
    lib = _library()
    eps_k = torch.empty(batch, num_samples, num_classes)
    eps_r = torch.empty(batch, num_samples, num_factors) if num_factors else None
    row = torch.empty(num_classes + num_factors + 1)
    lib.het_normals(
        _key(seed), 0, batch, num_samples, num_classes, num_factors, _ptr_of(eps_r),
        eps_k.data_ptr(), row.data_ptr(),
    )  # fmt: skip
    return eps_r, eps_k


def _key(seed: int | None) -> int:
    return 0 if seed is None else seed & (2**64 - 1)


def _check(*tensors) -> None:
    """What the C side trusts: float32 tensors in CPU memory."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(
                f"the HET kernel takes float32 CPU tensors, got {t.dtype} on {t.device}"
            )


def _noise(eps_r, eps_k, batch, num, k, r):
    if eps_k is not None and r and eps_r is None:
        raise ValueError("eps_k without eps_r for a head with factors")

    def one(eps, width):
        if eps is None or width == 0:
            return None, 0
        if eps.shape[-1] != width or eps.shape[-2] != num:
            raise ValueError(f"noise of shape {tuple(eps.shape)}: expected (..., {num}, {width})")
        _check(eps)
        eps = eps.contiguous()
        if eps.dim() == 2:
            return eps, 0
        if eps.shape[0] != batch:
            raise ValueError(f"per-example noise for {eps.shape[0]} examples, batch of {batch}")
        return eps, num * width

    return one(eps_r, r), one(eps_k, k)


# -- the dense layers' GEMMs: blocks handed out dynamically ---------------------------------

_blas_lock = threading.Lock()
_blas: list[tuple[int, int] | None] = []  # [(sgemm_, MKL_Set_Num_Threads_Local)] once found


def blas() -> tuple[int, int] | None:
    """The addresses of torch's own ``sgemm_`` and ``MKL_Set_Num_Threads_Local`` (the MKL
    linked into libtorch_cpu, exported by the x86-64 wheels), or None where torch has no
    MKL or does not export them (the dense layers then stay torch's).

    MKL only: its local thread count makes each call one-threaded for sure, where another
    BLAS might start its own threads inside the kernel's parallel region."""
    with _blas_lock:
        if not _blas:
            _blas.append(_find_blas())
        return _blas[0]


def _find_blas() -> tuple[int, int] | None:
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        functions = lib.sgemm_, lib.MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    sgemm, set_threads = (ctypes.cast(f, ctypes.c_void_p).value for f in functions)
    return (sgemm, set_threads) if sgemm and set_threads else None


class Blocking(NamedTuple):
    """How het_kernel.c cuts the dense layers' GEMMs (see its dense-layer section): blocks
    of at least ``task_fmas`` multiply-adds and ``min_units`` rows or columns, a multiple
    of ``align``; a pass below ``parallel_fmas`` multiply-adds on the calling thread."""

    task_fmas: int
    align: int
    min_units: int
    parallel_fmas: int


def dense_forward(h, weights, biases, outputs, blocking: Blocking) -> None:
    """outputs[l] = h W_l^T + b_l (b_l None: none): h (B, D), W_l (N_l, D), outputs[l]
    (B, N_l), float32 contiguous CPU tensors. Callers check ``blas()`` first."""
    (b, d), widths = h.shape, [w.shape[0] for w in weights]
    _check_dense(
        [(h, (b, d))]
        + [(w, (n, d)) for w, n in zip(weights, widths, strict=True)]
        + [(t, (n,)) for t, n in zip(biases, widths, strict=True)]
        + [(t, (b, n)) for t, n in zip(outputs, widths, strict=True)]
    )
    rc = _library().het_dense_forward(
        *_blas_or_raise(), b, d, *_dense_layers(weights), _pointers(biases), h.data_ptr(),
        _pointers(outputs), _blocking(blocking), _threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("het_dense_forward: out of memory")


def dense_backward(h, weights, grads, grad_h, grad_weights, blocking: Blocking) -> None:
    """From grads[l] = dloss/dy_l (B, N_l): grad_h = sum_l grads[l] W_l (B, D) and
    grad_weights[l] = grads[l]^T h (N_l, D), each skipped where None."""
    (b, d), widths = h.shape, [w.shape[0] for w in weights]
    _check_dense(
        [(h, (b, d)), (grad_h, (b, d))]
        + [(w, (n, d)) for w, n in zip(weights, widths, strict=True)]
        + [(t, (b, n)) for t, n in zip(grads, widths, strict=True)]
        + [(t, (n, d)) for t, n in zip(grad_weights, widths, strict=True)]
    )
    rc = _library().het_dense_backward(
        *_blas_or_raise(), b, d, *_dense_layers(weights), _pointers(grads), h.data_ptr(),
        None if grad_h is None else grad_h.data_ptr(), _pointers(grad_weights),
        _blocking(blocking), _threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("het_dense_backward: out of memory")


def _blas_or_raise() -> tuple[int, int]:
    found = blas()
    if found is None:
        raise RuntimeError("no MKL sgemm exported by torch here (check het_kernel.blas())")
    return found


def _check_dense(expected: list) -> None:
    """What het_kernel.c trusts: each (tensor or None, shape) a float32 contiguous CPU
    tensor of that shape."""
    for t, shape in expected:
        if t is None:
            continue
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise TypeError("the dense layers take contiguous float32 CPU tensors")
        if t.shape != shape:
            raise ValueError(f"a dense-layer tensor of shape {tuple(t.shape)}, expected {shape}")


def _dense_layers(weights) -> tuple[int, ctypes.Array, ctypes.Array]:
    """L, the widths N_l and the weights' addresses."""
    sizes = (ctypes.c_int64 * len(weights))(*(w.shape[0] for w in weights))
    return len(weights), sizes, _pointers(weights)


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))


def _blocking(blocking: Blocking) -> ctypes.Array:
    return (ctypes.c_int64 * 4)(*blocking)
