"""minicnn's compiled CPU kernels (csrc/*.cpp -> ``minicnn._native``), if they were built.

    from minicnn.native import lib        # the pybind11 module, or None on the NumPy-only path

Ops register their "cpu" implementations only when ``lib`` is there, so minicnn runs (on the
NumPy reference) without it. ``MINICNN_REQUIRE_NATIVE=1`` turns a missing extension into an
import error (CI sets it, so a broken build cannot pass unnoticed).

Memory: large NumPy temporaries come and go every iteration (layer outputs, gradients, solver
steps). glibc hands out blocks over 32 MiB as fresh mmap()s and returns freed heap tops to the
system, so each such array pays its page faults again (measured here: a 200 MB temporary took 5x
as long as the arithmetic on it). ``import minicnn`` therefore raises glibc's mmap and trim
thresholds so freed memory is reused; MINICNN_MALLOC=system leaves glibc's defaults alone.

Threads: the kernels use ``MINICNN_NUM_THREADS`` OpenMP threads (default: OpenMP's own choice,
every core unless ``OMP_NUM_THREADS`` says otherwise). NumPy's BLAS, which does the matrix
products, reads ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` when NumPy is first imported;
``import minicnn`` copies ``MINICNN_NUM_THREADS`` into them if NumPy is not loaded yet.
The count is the process's: ``set_num_threads`` reaches the kernels every Python thread runs
(OpenMP's own setting is per thread). A child forked after the kernels ran on several threads
runs them on one (GNU OpenMP would hang it otherwise; see docs/pycaffe.md, "Threads and
processes").
"""

import importlib
import os

try:            # import_module, not `from minicnn import _native`: where the file is missing
    lib = importlib.import_module("minicnn._native")   # that one says "circular import"
    load_error = None
except ImportError as e:                   # not built (no compiler, no pybind11): NumPy path
    lib, load_error = None, e

if lib is None and os.environ.get("MINICNN_REQUIRE_NATIVE") == "1":
    raise ImportError(f"MINICNN_REQUIRE_NATIVE=1 but minicnn's native extension did not load: "
                      f"{load_error} (reinstall with pybind11 and a C++17 compiler present)")


def tune_malloc():
    """Keep freed memory in the process for reuse (glibc only); True if applied."""
    import ctypes
    import platform
    if os.environ.get("MINICNN_MALLOC", "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # from malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and
                    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


malloc_tuned = tune_malloc()


def _threads_from_env():
    text = os.environ.get("MINICNN_NUM_THREADS")
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"MINICNN_NUM_THREADS must be a positive integer, not {text!r}")
    return n


def set_num_threads(n):
    """Threads of minicnn's own kernels, in every Python thread (BLAS keeps the count it
    started with). In a forked child held to one thread (see above) more is a RuntimeError."""
    if lib is not None:
        lib.set_num_threads(int(n))


def num_threads():
    return lib.num_threads() if lib is not None else 1


if lib is not None and _threads_from_env():
    set_num_threads(_threads_from_env())
