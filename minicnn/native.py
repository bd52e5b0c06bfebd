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
processes"). GNU OpenMP's idle threads spin ``GOMP_SPINCOUNT`` times before they sleep:
``import minicnn`` makes that ``SPINCOUNT`` (30000, below) rather than libgomp's 300000, which
made two threads several times slower than one where another process kept a core busy. Your own
``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is left as it is: on a machine known to be busy,
``GOMP_SPINCOUNT=3000`` or ``MINICNN_NUM_THREADS=1`` do better still.
"""

import importlib
import os

# GNU OpenMP's waiting threads spin GOMP_SPINCOUNT times (300000 by default: 8 ms on a 2.45 GHz
# Zen 3) before they sleep, after each parallel region and at its barrier. Where another process
# keeps a core busy, the spinning thread holds the CPU the thread it waits for needs: on 2 cores
# beside one busy loop, LeNet's training step took 110-190 ms on two threads against 26 on one.
# 30000 (0.8 ms) still bridges most gaps between a layer's regions and between calls, so a quiet
# machine loses a few % at most (measured: 0-7%), and the busy case is 2-3x faster (62 ms;
# bench/RESULTS.md, "OpenMP threads on a busy machine"; shorter spins are faster still when
# busy and cost more when quiet: 3000, 29-60% on a convolution's forward). libgomp
# reads the variable once, as it loads with the extension (below), so it is set for that moment
# only; a GOMP_SPINCOUNT or OMP_WAIT_POLICY of the user's wins, and where another library loaded
# libgomp first (PyTorch, imported before minicnn), that library's settings hold.
SPINCOUNT = 30000
spincount = None if {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ) else SPINCOUNT
if spincount is not None:
    os.environ["GOMP_SPINCOUNT"] = str(spincount)
try:            # import_module, not `from minicnn import _native`: where the file is missing
    lib = importlib.import_module("minicnn._native")   # that one says "circular import"
    load_error = None
except ImportError as e:                   # not built (no compiler, no pybind11): NumPy path
    lib, load_error = None, e
finally:                                   # not inherited by other programs' OpenMP
    if spincount is not None:
        del os.environ["GOMP_SPINCOUNT"]

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
