"""Build and load the native sequence kernel (``sequence.cpp``): once per machine, then cached.

The kernel is plain C++ with a C ABI and no Python or PyTorch headers, so it builds with the
system's C++ compiler (the one ``torch.compile`` already needs on CPU) in about 30 CPU-seconds, and
one build serves every torch version, every genome and every process.  The library lands in
``$HYBRIDOPT_CACHE`` (default ``~/.cache/hybridopt``) under a name keyed by the source, the
compiler, its flags and the processor (it is built with ``-march=native``), built under a
lock file beside it, so that of the workers starting at once on a fresh machine one builds and
the others wait for its library (they pay no compiler CPU), and written to a temporary name and
renamed, so that no process ever loads a half-written file.  A process loads it with :mod:`ctypes`.

:func:`library` returns the loaded library, or ``None`` (after one warning) when no compiler
is found or the build fails; the caller then runs another kernel, which gives the same values.
:func:`build_cpu_seconds` says what building cost this process (the compiler's CPU time, a
child process), for the training loop to report apart from its budget.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # not POSIX: concurrent first builds are only wasteful, never wrong
    fcntl = None  # type: ignore[assignment]

__all__ = ["CACHE_ENV", "NetArgs", "ProjArgs", "build_cpu_seconds", "library", "library_path", "unavailable"]

CACHE_ENV = "HYBRIDOPT_CACHE"
SOURCE = Path(__file__).with_name("sequence.cpp")
# -ffp-contract=off: each element computed with the reference's own roundings (no fused multiply-add)
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC")

_PROJ_INTS = ("rule", "mode", "n_pre", "n_post", "n_eta", "c_inside", "tau_inside", "pad")
_PROJ_FLOATS = ("h_max", "lam", "c", "a_plus", "a_minus", "tau", "mtau")
_PROJ_PTRS = (
    "alpha", "eta", "mod_a", "mod_b", "w_M_s", "w_M_y", "zx", "w_G_s", "w_G_y", "zgx", "cA", "cB", "cC", "cD",
    "H", "E", "xpre", "xpost", "phi", "zb",
    "xpre_all", "xpost_all", "phi_all", "M_all", "H_ck", "E_ck", "G_all", "Mu_all",
    "gH", "gE", "gxpre", "gxpost", "gphi", "gzb",
    "g_alpha", "g_eta", "g_mod_a", "g_mod_b", "g_z", "g_zg", "g_cA", "g_cB", "g_cC", "g_cD",
)  # fmt: skip
_PROJ_GRADS = ("g_c", "g_a_plus", "g_a_minus", "g_tau")


class ProjArgs(ctypes.Structure):
    """One projection's arguments (``struct Proj`` in ``sequence.cpp``, field for field)."""

    _fields_ = (
        [(n, ctypes.c_int32) for n in _PROJ_INTS]
        + [(n, ctypes.c_double) for n in _PROJ_FLOATS]
        + [(n, ctypes.c_void_p) for n in _PROJ_PTRS]
        + [(n, ctypes.c_double) for n in _PROJ_GRADS]
    )


_NET_INTS = ("T", "B", "n_in", "N", "n_out", "reset", "surrogate", "K", "store", "winners")
_NET_FLOATS = ("beta", "theta", "slope", "kappa")
_NET_PTRS = (
    "x", "W_in", "b_hid", "W_rec", "W_out", "b_out", "v0", "s0", "y0", "v_all", "s_all", "y_all",
    "gs_all", "gy_all", "gcur_all", "gv", "gs", "gy", "gW_in", "gb_hid", "gW_rec", "gW_out", "gb_out",
)  # fmt: skip


class NetArgs(ctypes.Structure):
    """The whole call's arguments (``struct Net`` in ``sequence.cpp``)."""

    _fields_ = (
        [(n, ctypes.c_int32) for n in _NET_INTS]
        + [(n, ctypes.c_double) for n in _NET_FLOATS]
        + [(n, ctypes.c_void_p) for n in _NET_PTRS]
        + [("p", ProjArgs * 3)]
    )


_state: dict[str, object] = {}  # "lib": the loaded library; "error": why not; "build_s": CPU seconds


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the processor's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def library_path(compiler: str) -> Path:
    """Where the library built by ``compiler`` for this machine lives (built or not)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), version, " ".join(FLAGS), platform.machine(), _cpu_identity()]).encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hybridopt")
    return root / "native" / f"hybridopt_sequence_{key}.so"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (created if needed) while the block runs."""
    with open(lock, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _build_once(compiler: str, target: Path) -> None:
    """Build ``target`` unless it exists, one process at a time: a process that waited for the
    lock finds the library its holder built."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_suffix(".lock")):
        if not target.exists():
            _build(compiler, target)


def _build(compiler: str, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, "-o", tmp, str(SOURCE)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            first = (out.stderr.strip().splitlines() or ["(no output)"])[0]
            raise OSError(f"{Path(compiler).name} failed: {first}")
        os.replace(tmp, target)  # atomic: a concurrent loader sees the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> Optional[ctypes.CDLL]:
    """The native kernel, built on first use on this machine; ``None`` when it cannot be built
    here (one warning says why; the caller falls back)."""
    if "lib" in _state or "error" in _state:
        return _state.get("lib")  # type: ignore[return-value]
    before = _children_cpu()
    try:
        compiler = _compiler()
        if compiler is None:
            raise OSError("no C++ compiler (set CXX, or install g++)")
        path = library_path(compiler)
        if not path.exists():
            _build_once(compiler, path)
        lib = ctypes.CDLL(str(path))
        lib.hyb_abi.restype = ctypes.c_int32
        want = ctypes.sizeof(NetArgs) * 1000 + ctypes.sizeof(ProjArgs)
        if lib.hyb_abi() != want:
            raise OSError(f"{path.name}: argument layout {lib.hyb_abi()} != {want}")
        for name in ("hyb_forward_f32", "hyb_forward_f64", "hyb_backward_f32", "hyb_backward_f64"):
            getattr(lib, name).argtypes = [ctypes.POINTER(NetArgs)]
            getattr(lib, name).restype = None
        _state["lib"] = lib
    except OSError as e:
        _state["error"] = str(e)
        warnings.warn(f"native sequence kernel unavailable, using the compiled steps ({e})", stacklevel=2)
    _state["build_s"] = _children_cpu() - before
    return _state.get("lib")  # type: ignore[return-value]


def unavailable() -> Optional[str]:
    """``None`` when the native kernel is loaded (building it if needed), else why not."""
    library()
    return _state.get("error")  # type: ignore[return-value]


def build_cpu_seconds() -> float:
    """CPU seconds this process spent building (or checking) the library: 0 once it was cached."""
    return float(_state.get("build_s", 0.0))  # type: ignore[arg-type]
