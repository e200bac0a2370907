"""Mamba v1's selective scan fused in C for the CPU (``cpu_scan.c``), built on first use with the system's C
compiler and called through ctypes; the pure-PyTorch loop (``ssm_ref``) stays the reference it is tested
against and the fallback where no compiler is found.

Why: on a CPU the token loop of ``ssm_ref._SelectiveScanLoop`` is bound by memory traffic, not arithmetic:
PyTorch runs each token as ~5 (forward) and ~12 (backward) passes over a (b, n, d) state and keeps every
state for the backward (L x b x n x d floats). The C loops take one block of VL channels and one state at a
time along the whole sequence, so the state, its adjoint and its dA sums stay in registers; they read each
input once, save nothing (the backward recomputes one state's h_t and decays, 2 x L x VL values, just before
its reverse pass), and split the batch over ``torch.get_num_threads()`` threads (ctypes releases the GIL).
Those threads share the cores with PyTorch's OpenMP workers, which busy-wait after each op: the command
line lowers that wait (``GOMP_SPINCOUNT``, see ``diffusion/cli.py``), which makes the main job's step ~15%
faster.

Build: ``cc -O3 -march=native -fno-math-errno -ffp-contract=fast -shared -fPIC -std=c11`` (``$CC`` if set),
once per source version and machine, into ``$ZIGSCAN_CACHE`` (default ``~/.cache/zigscan``); float32 uses a
polynomial exp2 (~2 ulp) on whole vectors (GCC / Clang vector extensions), float64 libm's exp2 (the float64
tests compare with the token-loop twin at 1e-10).
``ZIGSCAN_NATIVE_SCAN=0`` switches it off. ``available()`` says whether it can be used; it never raises.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

__all__ = ["available", "suits", "selective_scan_native", "build_error", "MAX_SCRATCH_BYTES"]

log = logging.getLogger("zigscan.mixers")

_LOG2E = 1.4426950408889634
_SOURCE = Path(__file__).with_name("cpu_scan.c")
VL = 32  # channels per block of the C loops
_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-ffp-contract=fast", "-shared",
          "-fPIC", "-std=c11", f"-DVL={VL}"]
_VARIANTS = {torch.float32: ["-DREAL=float"], torch.float64: ["-DREAL=double", "-DUSE_LIBM_EXP2"]}
MAX_SCRATCH_BYTES = 2**28  # "auto" takes the fused scan only while one thread's backward scratch fits in this
_libs: dict[torch.dtype, ctypes.CDLL] = {}
_error: str | None = None  # why the build failed (once per process), None while untried or built
_pool: ThreadPoolExecutor | None = None


def _cache_dir() -> Path:
    return Path(os.environ.get("ZIGSCAN_CACHE", Path.home() / ".cache" / "zigscan"))


def _build(dtype: torch.dtype) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    flags = _FLAGS + _VARIANTS[dtype]
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"cpu_scan_{key}_{str(dtype).split('.')[-1]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build aside, then rename: no half-written .so
            tmp_so = Path(tmp) / out.name
            res = subprocess.run([cc, *flags, str(_SOURCE), "-o", str(tmp_so), "-lm"], capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{cc} failed to build {_SOURCE.name}: {res.stderr.strip()[-800:]}")
            os.replace(tmp_so, out)
    lib = ctypes.CDLL(str(out))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.scan_fwd.argtypes = [p] * 6 + [i64] * 5
    lib.scan_bwd.argtypes = [p] * 11 + [i64] * 5
    lib.scan_fwd.restype = lib.scan_bwd.restype = ctypes.c_int
    return lib


def _lib(dtype: torch.dtype) -> ctypes.CDLL | None:
    global _error
    if dtype in _libs:
        return _libs[dtype]
    if _error is not None or dtype not in _VARIANTS:
        return None
    try:
        _libs[dtype] = _build(dtype)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _error = str(exc)
        log.warning("Mamba's fused CPU scan is unavailable (%s); using the pure-PyTorch loop (slower)", _error)
        return None
    return _libs[dtype]


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused CPU scan can run for ``dtype`` (builds it on the first call)."""
    if os.environ.get("ZIGSCAN_NATIVE_SCAN", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _lib(dtype) is not None


def suits(u: torch.Tensor, n: int) -> bool:
    """Whether ``selective_scan(method="auto")`` should take the fused scan for u (b, L, d) with n states: a CPU
    tensor, one thread's backward scratch (7 x L x VL values for one channel block, and the dB / dC partial sums:
    2 x L x n x 8 at most) within ``MAX_SCRATCH_BYTES``, and the library built."""
    scratch = (7 * VL + 2 * n * 8) * u.shape[1] * u.element_size()
    return u.device.type == "cpu" and scratch <= MAX_SCRATCH_BYTES and available(u.dtype)


def build_error() -> str | None:
    """The reason the last build failed, or None."""
    return _error


def _split(fn, b: int) -> None:
    """Run fn(b0, b1) over the batch, split across torch.get_num_threads() threads; a nonzero return raises."""
    global _pool
    nt = max(1, min(torch.get_num_threads(), b))
    bounds = [(b * i // nt, b * (i + 1) // nt) for i in range(nt)]
    if nt == 1:
        codes = [fn(0, b)]
    else:
        if _pool is None or _pool._max_workers < nt:
            _pool = ThreadPoolExecutor(max_workers=nt, thread_name_prefix="zigscan-scan")
        codes = list(_pool.map(lambda r: fn(*r), bounds))
    if any(codes):
        raise MemoryError("the fused CPU scan could not allocate its scratch buffer")


class _NativeScan(torch.autograd.Function):
    """y = scan(u, delta, A, B, C) (see ``cpu_scan.c``); the backward recomputes the states, keeps nothing."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        A2 = (A.t() * _LOG2E).contiguous()  # (n, d)
        b, L, d = u.shape
        n = A.shape[1]
        y = torch.empty_like(u)
        lib = _libs[u.dtype]
        ptrs = [t.data_ptr() for t in (u, delta, A2, B, C, y)]
        _split(lambda b0, b1: lib.scan_fwd(*ptrs, b0, b1, L, d, n), b)
        ctx.save_for_backward(u, delta, A2, B, C)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, delta, A2, B, C = ctx.saved_tensors
        gy = gy.contiguous()
        b, L, d = u.shape
        n = A2.shape[0]
        gu, gdl = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_zeros(b, n, d)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        lib = _libs[u.dtype]
        ptrs = [t.data_ptr() for t in (u, delta, A2, B, C, gy, gu, gdl, dA, dB, dC)]
        _split(lambda b0, b1: lib.scan_bwd(*ptrs, b0, b1, L, d, n), b)
        return gu, gdl, dA.sum(0).t(), dB, dC


def selective_scan_native(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor) -> torch.Tensor:
    """y_t = C_t . h_t, h_t = exp(delta_t A) h_(t-1) + delta_t u_t B_t, fused in C. u, delta: (b, L, d); A: (d, n);
    B, C: (b, L, n); all on the CPU, one dtype (float32 or float64), ``available(dtype)`` true."""
    if u.device.type != "cpu" or not available(u.dtype):
        raise RuntimeError("selective_scan_native needs CPU tensors and a built fused scan (see available())")
    if not all(t.dtype == u.dtype for t in (delta, A, B, C)):
        raise TypeError("selective_scan_native: u, delta, A, B, C must share one dtype")
    return _NativeScan.apply(u, delta, A, B, C)
