"""Optional native CPU kernels (``_native.cpp``) for the hot paths of the samplers.

What they do, each one pass over a row (per row in cache): the mass cuts of top-p and typical
(`temperance.ops._cut`), top-k by a heap (alone, with a few tokens' values overridden, or after
penalties applied to the window's distinct tokens), min-p, the copy of the entries above a
threshold, and the counter-based noise of `temperance.noise` bit for bit. The pure-torch code is
the reference and runs wherever these do not (GPUs, other dtypes, no compiler); tests check that
both give identical results.

On first use ``_native.cpp`` is compiled with the system C++ compiler (``$CXX``, else g++ or c++;
no torch headers, about a second) into ``$XDG_CACHE_HOME/temperance/native`` (default
``~/.cache/temperance/native``), keyed by the source, the flags and the CPU, and loaded with
ctypes. Nothing is printed: without a compiler, or if the build fails, `lib()` returns None and the
torch path runs. ``TEMPERANCE_NATIVE=0`` turns the kernels off; `use(False)` does the same
in-process (tests compare both paths).
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
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

# -ffp-contract=off: no implicit fused multiply-adds, so float32 arithmetic matches torch's op for op
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fopenmp-simd",
         "-ffp-contract=off"]
if platform.machine() in ("x86_64", "AMD64"):
    FLAGS.append("-mprefer-vector-width=512")
_SRC = Path(__file__).with_name("_native.cpp")
_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "on": os.environ.get("TEMPERANCE_NATIVE", "1") != "0"}

ALL = 2**62  # q: keep every tie (the kernels treat anything >= 2^61 so)
_P = ctypes.c_void_p
_I = ctypes.c_int64
SIGNATURES = {
    "temperance_cut": (_I, [_P, _I, _I, ctypes.c_int, _P, _P, _P, _P, _P]),
    "temperance_cut_dense": (None, [_P, _I, _I, ctypes.c_int, _P, _P, _P, _P]),
    "temperance_cut_compact": (None, [_P, _I, _I, ctypes.c_int, _P, _P, _P, _I, _P, _P]),
    "temperance_count_ge": (_I, [_P, _I, _I, _P, _P]),
    "temperance_min_p_dense": (ctypes.c_int, [_P, _I, _I, _P, _P]),
    "temperance_penalized_topk": (ctypes.c_int, [_P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P]),
    "temperance_topk": (ctypes.c_int, [_P, _I, _I, _I, _P, _P]),
    "temperance_topk_dense": (ctypes.c_int, [_P, _I, _I, _P, _P]),
    "temperance_topk_override": (ctypes.c_int, [_P, _I, _I, _P, _I, _I, _P, _P, _P, _P, _P]),
    "temperance_softmax_stats": (ctypes.c_int, [_P, _I, _I, _P, _P, _P]),
    "temperance_moments": (None, [_P, _I, _I, _P, _P]),
    "temperance_uniform": (None, [_P, _P, _P, _I, _I, _I, _P]),
}


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL | None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None or not _SRC.exists():
        return None
    src = _SRC.read_bytes()
    key = hashlib.sha256(src + " ".join([cxx, *FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "temperance" / "native"
    so = root / f"cut-{key}.so"
    if not so.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=root)
        os.close(fd)
        try:
            done = subprocess.run([cxx, *FLAGS, str(_SRC), "-o", tmp], capture_output=True, timeout=300)
            if done.returncode != 0:
                return None
            os.replace(tmp, so)  # atomic: concurrent builders never load half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(so))
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def lib() -> ctypes.CDLL | None:
    """The loaded kernels, or None (not built, build failed, or switched off)."""
    if not _state["on"]:
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["lib"] = _build()
                except Exception:  # no compiler, read-only cache, odd platform: the torch path runs
                    _state["lib"] = None
                _state["tried"] = True
    return _state["lib"]


@contextmanager
def use(on: bool):
    """Switch the native kernels on or off inside a ``with`` block (for tests and benchmarks)."""
    was, _state["on"] = _state["on"], on
    try:
        yield
    finally:
        _state["on"] = was


def usable(x: Tensor) -> bool:
    """Can the kernels take ``x`` (a contiguous CPU float32 [B, V] tensor)?"""
    return (x.dtype is torch.float32 and x.is_cpu and x.is_contiguous() and x.shape[1] > 0
            and (_state["lib"] is not None if _state["tried"] else lib() is not None) and _state["on"])


def _ptr(t: Tensor) -> int:
    """The address of a tensor's data; the caller keeps the tensor alive during the call."""
    return t.data_ptr()


def column(value, B: int, dtype: torch.dtype) -> Tensor:
    """A knob (a scalar or a tensor of B values) as a contiguous CPU ``[B]`` tensor."""
    if isinstance(value, Tensor):
        return value.to(dtype).reshape(-1).expand(B).contiguous()
    return torch.full((B,), value, dtype=dtype)


def cut(x: Tensor, mode: int, p) -> tuple[Tensor, Tensor, Tensor, Tensor, int] | None:
    """Cut every row of ``x`` at the mass ``p`` (a float32 knob, see ``_native.cpp``): (kstar,
    center, q, n, max n), each ``[B]``; None when a row holds NaN/+inf or nothing finite (the
    caller runs the reference instead)."""
    B, V = x.shape
    p = column(p, B, torch.float32)
    kstar, center = torch.empty(B, dtype=torch.float64), torch.empty(B, dtype=torch.float64)
    q, n = torch.empty(B, dtype=torch.int64), torch.empty(B, dtype=torch.int64)
    nmax = lib().temperance_cut(_ptr(x), B, V, mode, _ptr(p), _ptr(kstar), _ptr(center), _ptr(q), _ptr(n))
    return None if nmax < 0 else (kstar, center, q, n, int(nmax))


def dense(x: Tensor, mode: int, kstar: Tensor, center: Tensor, q: Tensor, out: Tensor | None = None
          ) -> Tensor:
    """x where the cut keeps it, -inf elsewhere (``out=x`` works in place)."""
    out = torch.empty_like(x) if out is None else out
    lib().temperance_cut_dense(_ptr(x), x.shape[0], x.shape[1], mode, _ptr(kstar), _ptr(center),
                               _ptr(q), _ptr(out))
    return out


def compact(x: Tensor, mode: int, kstar: Tensor, center: Tensor, q: Tensor, K: int
            ) -> tuple[Tensor, Tensor]:
    B, V = x.shape
    vals = torch.empty(B, K, dtype=x.dtype)
    ids = torch.empty(B, K, dtype=torch.int64)
    lib().temperance_cut_compact(_ptr(x), B, V, mode, _ptr(kstar), _ptr(center), _ptr(q), K,
                                 _ptr(vals), _ptr(ids))
    return vals, ids


def survivors(x: Tensor, mode: int, kstar: Tensor, center: Tensor, q: Tensor, K: int
              ) -> tuple[Tensor, Tensor]:
    """What a cut keeps, as (vals, ids): compacted to ``[B, K]``, or, when most of some row
    survives (2K > V, a high temperature under min-p or top-p), masked densely with
    ``ids = arange(V)`` expanded (`Candidates.whole`'s form): compacting would then
    cost more than every later stage saves."""
    B, V = x.shape
    if 2 * K > V:
        return dense(x, mode, kstar, center, q), torch.arange(V).expand(B, V)
    return compact(x, mode, kstar, center, q, K)


def at_least(x: Tensor, t: Tensor):
    """Every entry of ``x`` >= ``t`` (``[B, 1]``, float32 values) as (vals, ids) (see
    `survivors`), in one counting and one copying pass per row."""
    B, V = x.shape
    t = t.to(torch.float64).contiguous()
    n = torch.empty(B, dtype=torch.int64)
    K = lib().temperance_count_ge(_ptr(x), B, V, _ptr(t), _ptr(n))
    q = torch.full((B,), ALL, dtype=torch.int64)
    return survivors(x, 0, t, t, q, int(K))


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population variance of the finite entries of each row, float64 ``[B, 1]`` each."""
    B, V = x.shape
    mean, var = torch.empty(B, 1, dtype=torch.float64), torch.empty(B, 1, dtype=torch.float64)
    lib().temperance_moments(_ptr(x), B, V, _ptr(mean), _ptr(var))
    return mean, var


def softmax_stats(x: Tensor, pos: Tensor, mask: bool = False) -> tuple[Tensor, Tensor | None] | None:
    """Exact float64 statistics of ``softmax(x)`` per row (see ``_native.cpp``): ``[B, 4]`` =
    (q at ``pos``, sum q², entropy in nats, kept count), ``pos`` ``[B]`` the true token's column
    (-1: absent); with ``mask`` also the kept flags ``[B, K]``. None if a row holds NaN/+inf or
    nothing finite (the caller runs the torch reference instead)."""
    B, K = x.shape
    pos = pos.to(torch.int64).contiguous()
    out = torch.empty(B, 4, dtype=torch.float64)
    flags = torch.empty(B, K, dtype=torch.bool) if mask else None
    bad = lib().temperance_softmax_stats(_ptr(x), B, K, _ptr(pos), _ptr(out),
                                         _ptr(flags) if mask else None)
    return None if bad else (out, flags)


def uniform(seed: Tensor, step: Tensor, index: Tensor, salt: int) -> Tensor:
    """`temperance.noise.uniform`, bit for bit (seed, step ``[B]`` int64; index ``[B, K]`` int64)."""
    seed, step, index = seed.contiguous(), step.contiguous(), index.contiguous()  # (kept alive)
    out = torch.empty(index.shape, dtype=torch.float64)
    lib().temperance_uniform(_ptr(seed), _ptr(step), _ptr(index), index.shape[0], index.shape[1],
                             salt, _ptr(out))
    return out


def topk(x: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """The k largest entries per row, ties to the lower id, sorted (value desc, id asc); padding
    -inf / V past a row's entries above -inf. None if a row holds NaN."""
    B, V = x.shape
    vals = torch.empty(B, k, dtype=torch.float32)
    ids = torch.empty(B, k, dtype=torch.int64)
    if lib().temperance_topk(_ptr(x), B, V, k, _ptr(vals), _ptr(ids)):
        return None
    return vals, ids


def topk_dense(x: Tensor, k: Tensor, out: Tensor | None = None) -> Tensor | None:
    """x on each row's k best entries (ties to the lower id), -inf elsewhere; k ``[B]`` (<= 0 or
    >= V: the row unchanged); ``out=x`` works in place. None if a row holds NaN."""
    k = k.to(torch.int64).reshape(-1).expand(x.shape[0]).contiguous()
    out = torch.empty_like(x) if out is None else out
    return None if lib().temperance_topk_dense(_ptr(x), x.shape[0], x.shape[1], _ptr(k), _ptr(out)) else out


def topk_override(x: Tensor, k: Tensor, kmax: int, ov_ids: Tensor, ov_vals: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor] | None:
    """Top-k of ``x`` whose tokens ``ov_ids`` ``[B, T]`` (ascending, padding V) have the values
    ``ov_vals`` instead: (vals, ids) ``[B, kmax]`` in token-id order (padding -inf / V), and each
    raw row's maximum ``[B]``; k ``[B]`` int64, kmax its maximum. None if a row holds NaN."""
    B, V = x.shape
    k, ov_ids, ov_vals = k.contiguous(), ov_ids.contiguous(), ov_vals.contiguous()
    vals, ids = torch.empty(B, kmax, dtype=torch.float32), torch.empty(B, kmax, dtype=torch.int64)
    rawmax = torch.empty(B, dtype=torch.float32)
    if lib().temperance_topk_override(_ptr(x), B, V, _ptr(k), kmax, ov_ids.shape[1], _ptr(ov_ids),
                                      _ptr(ov_vals), _ptr(vals), _ptr(ids), _ptr(rawmax)):
        return None
    return vals, ids, rawmax


def min_p_dense(x: Tensor, log_min_p: Tensor, out: Tensor | None = None) -> Tensor | None:
    """Min-p in one call: x where x >= max + log(min_p) per row, -inf elsewhere (``out=x``: in
    place). None if a row holds NaN."""
    lmp = column(log_min_p, x.shape[0], torch.float32)
    out = torch.empty_like(x) if out is None else out
    bad = lib().temperance_min_p_dense(_ptr(x), x.shape[0], x.shape[1], _ptr(lmp), _ptr(out))
    return None if bad else out


def penalized_topk(x: Tensor, history: Tensor, last_n: Tensor, theta: Tensor, freq: Tensor,
                   pres: Tensor, k: Tensor, kmax: int) -> tuple[Tensor, Tensor, Tensor] | int:
    """Penalties over each row's last ``last_n`` tokens of ``history`` ``[B, L]`` (right-aligned,
    -1 padded), then top-k, in one call: (vals, ids) ``[B, kmax]`` in token-id order (padding -inf
    / V) and each raw row's maximum; or 1 (a row holds NaN) / 2 (a row's maximum is not finite).
    last_n, k ``[B]`` int64; theta/freq/pres ``[B]`` float32."""
    B, V = x.shape
    history, last_n, k = history.contiguous(), last_n.contiguous(), k.contiguous()
    theta, freq, pres = theta.contiguous(), freq.contiguous(), pres.contiguous()
    vals, ids = torch.empty(B, kmax, dtype=torch.float32), torch.empty(B, kmax, dtype=torch.int64)
    rawmax = torch.empty(B, dtype=torch.float32)
    bad = lib().temperance_penalized_topk(_ptr(x), B, V, history.shape[1], _ptr(history), _ptr(last_n),
                                          _ptr(theta), _ptr(freq), _ptr(pres), _ptr(k), kmax,
                                          _ptr(vals), _ptr(ids), _ptr(rawmax))
    return bad or (vals, ids, rawmax)
