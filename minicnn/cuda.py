"""minicnn's CUDA backend: CuPy (an optional dependency), the GPU mode, and the kernels of
kernels/*.cu.

    import minicnn
    minicnn.set_mode_gpu()                 # later Nets and Solvers put their blobs on the GPU
    minicnn.set_device(0)                  # which GPU (Caffe's Caffe::SetDevice)
    net = minicnn.Net("deploy.prototxt", "weights.caffemodel", minicnn.TEST)
    net = minicnn.Net(..., device="cuda:0")        # the same, for one net; device="cpu" too

CuPy is imported only when the GPU is asked for, so minicnn imports and runs on machines without
it; asking for the GPU there raises CudaUnavailable saying what is missing (CuPy, or a device).
Install it with ``pip install "minicnn[cuda]"`` (CUDA 12 drivers) or ``"minicnn[cuda13]"``.

Arrays. A net on the GPU holds CuPy arrays in its blobs; ops dispatch on the array type
(minicnn.ops._dispatch) to their "cuda" impls. ``to_host``/``to_device``/``assign`` move values
between NumPy and CuPy where the graph code meets the host (data input, snapshots).

Kernels. ``kernel("relu.cu", "relu_forward", dtype)`` is the CUDA function
``relu_forward<float>`` (or ``<double>``) of kernels/relu.cu, compiled at run time by CuPy's
RawModule (NVRTC): the first call compiles every ``template <typename T> __global__`` kernel of
the file for float and double at once; CuPy caches the binaries on disk. Launch hygiene
(CuPy validates nothing, see STYLE.md 1.4): ``launch`` refuses non-contiguous arrays and plain
Python numbers (CuPy would pass a Python int as long long and a float as double, whatever the
kernel declares); callers pass np.int32/np.int64 and x.dtype.type(...) scalars matching the
kernel signature.

Matrix products go through cuBLAS (``gemm``: strided-batched, transposes and beta without
copies). TF32 is off unless ``set_tf32(True)`` or MINICNN_TF32=1.
"""

import functools
import math
import os
import re
from importlib.util import find_spec as _find_spec
from pathlib import Path

import numpy as np

from minicnn.errors import MinicnnError


class CudaUnavailable(MinicnnError):
    """The GPU was asked for but CuPy or a CUDA device is missing."""


INSTALL_HINT = ('install CuPy for your CUDA driver: pip install "minicnn[cuda]" (cupy-cuda12x, '
                'CUDA 12) or "minicnn[cuda13]" (cupy-cuda13x)')

_backend = None            # the CuPy module (or a stand-in installed with use_backend)
_gemm_backend = None       # cuBLAS's strided-batched GEMM, or the stand-in's
_mode = {"gpu": False, "device": 0}
_tf32 = {"on": os.environ.get("MINICNN_TF32", "") == "1", "applied": {}}


# --- CuPy and devices ----------------------------------------------------------------------------

def use_backend(module=None, gemm=None):
    """Replace CuPy by ``module`` (an object with CuPy's API, e.g. the host emulator of
    tests/cuda_emu) and its strided-batched ``gemm``; None goes back to importing CuPy. Returns
    the previous (module, gemm). Compiled kernels are forgotten."""
    global _backend, _gemm_backend
    previous = (_backend, _gemm_backend)
    _backend, _gemm_backend = module, gemm
    _module.cache_clear()
    _kernels.clear()
    _tf32["applied"].clear()
    return previous


def cupy():
    """The CuPy module, imported on first use; CudaUnavailable if it does not import."""
    global _backend
    if _backend is None:
        try:
            import cupy as cp
        except Exception as e:               # ImportError, or a broken CUDA installation
            raise CudaUnavailable(f"minicnn's GPU backend needs CuPy, which did not import "
                                  f"({type(e).__name__}: {e}); {INSTALL_HINT}") from None
        _backend = cp
    return _backend


def device_count():
    """The number of CUDA devices CuPy sees (0 when the driver finds none)."""
    cp = cupy()
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:                        # cudaErrorNoDevice, no driver, ...
        return 0


def available():
    """Whether the GPU backend can run here (CuPy imports and a device exists)."""
    try:
        return device_count() > 0
    except CudaUnavailable:
        return False


def check_device(device):
    """CudaUnavailable unless CUDA device ``device`` (an int) exists."""
    count = device_count()
    if count == 0:
        raise CudaUnavailable("CuPy is installed but found no CUDA device (no NVIDIA GPU, or "
                              "no driver for it on this machine); run on the CPU instead")
    if not 0 <= device < count:
        raise CudaUnavailable(f"there is no CUDA device {device}: this machine has {count} "
                              f"(devices 0..{count - 1})")


# Caffe::DeviceQuery's lines: label, cudaDeviceProp field (CuPy's getDeviceProperties keys).
DEVICE_QUERY_FIELDS = [
    ("Major revision number", "major"), ("Minor revision number", "minor"), ("Name", "name"),
    ("Total global memory", "totalGlobalMem"),
    ("Total shared memory per block", "sharedMemPerBlock"),
    ("Total registers per block", "regsPerBlock"), ("Warp size", "warpSize"),
    ("Maximum memory pitch", "memPitch"), ("Maximum threads per block", "maxThreadsPerBlock"),
    ("Maximum dimension of block", "maxThreadsDim"), ("Maximum dimension of grid", "maxGridSize"),
    ("Clock rate", "clockRate"), ("Total constant memory", "totalConstMem"),
    ("Texture alignment", "textureAlignment"),
    ("Concurrent copy and execution", "deviceOverlap"),
    ("Number of multiprocessors", "multiProcessorCount"),
    ("Kernel execution timeout", "kernelExecTimeoutEnabled")]
_YES_NO = ("deviceOverlap", "kernelExecTimeoutEnabled")


def device_query(device):
    """[(label, text)] of CUDA device ``device``'s properties, as `caffe device_query` prints
    them; a property this CUDA no longer reports (CUDA 13 dropped clockRate) reads n/a."""
    check_device(device)
    prop = cupy().cuda.runtime.getDeviceProperties(device)
    lines = [("Device id", str(device))]
    for label, key in DEVICE_QUERY_FIELDS:
        value = prop.get(key)
        if value is None:
            text = "n/a"
        elif key in _YES_NO:
            text = "Yes" if value else "No"
        elif isinstance(value, bytes):
            text = value.decode(errors="replace").rstrip("\0")
        elif isinstance(value, (tuple, list)):
            text = ", ".join(str(v) for v in value)
        else:
            text = str(value)
        lines.append((label, text))
    return lines


def parse_device(device):
    """None (the host) or a CUDA device number from None, "cpu", "cuda", "cuda:N", "gpu:N"
    or an int."""
    if device is None or device == "cpu":
        return None
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        return int(device)
    if isinstance(device, str):
        m = re.fullmatch(r"(cuda|gpu)(?::(\d+))?", device.strip().lower())
        if m:
            return int(m.group(2)) if m.group(2) is not None else _mode["device"]
        if device.strip().isdigit():
            return int(device)
    raise MinicnnError(f"device must be 'cpu', 'cuda', 'cuda:N' or a GPU number, not {device!r}")


def set_mode_gpu():
    """Caffe's set_mode_gpu: Nets and Solvers made from now on live on the GPU (set_device's,
    0 by default). CudaUnavailable if there is none."""
    check_device(_mode["device"])
    _mode["gpu"] = True


def set_mode_cpu():
    """Caffe's set_mode_cpu: Nets and Solvers made from now on live on the CPU (the default)."""
    _mode["gpu"] = False


def set_device(device):
    """Caffe's set_device: the GPU that set_mode_gpu (and device="cuda") means."""
    device = parse_device(device)
    if device is None:
        raise MinicnnError("set_device takes a GPU number; use set_mode_cpu for the CPU")
    check_device(device)
    _mode["device"] = device
    cupy().cuda.Device(device).use()


def mode():
    """"GPU" or "CPU", as Caffe's mode()."""
    return "GPU" if _mode["gpu"] else "CPU"


def resolve_device(device=None):
    """The device a new Net goes on: ``device`` if given, else the global mode's; checked."""
    chosen = parse_device(device) if device is not None else \
        (_mode["device"] if _mode["gpu"] else None)
    if chosen is not None:
        check_device(chosen)
        cupy().cuda.Device(chosen).use()
    return chosen


def synchronize():
    """Wait for the current device's work (for timing)."""
    if _backend is not None:
        _backend.cuda.Device().synchronize()


# --- arrays --------------------------------------------------------------------------------------

def is_device_array(a):
    """A CuPy array (or the emulator's)? Checked by type name, so CuPy is never imported here."""
    return type(a).__module__.startswith("cupy")


def array_module(a):
    """cupy for device arrays, numpy otherwise (Chainer's get_array_module)."""
    return cupy() if is_device_array(a) else np


def to_host(a):
    """A NumPy array with the values of ``a`` (a copy for device arrays)."""
    return a.get() if is_device_array(a) else np.asarray(a)


def to_device(a, device=None, dtype=None):
    """A CuPy array on ``device`` (default: the current one) with the values of ``a``."""
    cp = cupy()
    if device is None:
        return cp.asarray(a, dtype=dtype)
    with cp.cuda.Device(device):
        return cp.asarray(a, dtype=dtype)


def zeros(shape, dtype, device=None):
    """A zero array on ``device``: NumPy for None, CuPy on that GPU otherwise."""
    if device is None:
        return np.zeros(shape, dtype)
    cp = cupy()
    with cp.cuda.Device(device):
        return cp.zeros(shape, dtype)


def assign(dst, src):
    """dst[...] = src across host and device: a NumPy source is copied to a device dst (through
    pinned memory when it has dst's shape and dtype), a device source to a NumPy dst."""
    if is_device_array(dst):
        if isinstance(src, np.ndarray) and src.ndim:
            if src.size == 0 == dst.size:      # nothing to copy (and no pinned buffer of 0 bytes)
                return dst
            if src.shape == dst.shape and src.dtype == dst.dtype and dst.flags.c_contiguous:
                _staged_copy(dst, src)
                return dst
            src = cupy().asarray(src)
        dst[...] = src
    else:
        dst[...] = src.get() if is_device_array(src) else src
    return dst


_pinned = {}              # nbytes -> a few [pinned host buffer, event of its last copy]
PINNED_PER_SIZE = 4       # buffers of one size in flight at once (two Dropout masks, a batch)


def _staged_copy(dst, src):
    """Host -> device through a pinned buffer, asynchronously on the current stream: the copy
    overlaps the GPU work queued before it, and the host runs on (a copy from pageable memory
    would wait for the GPU to drain first). A buffer is reused once its last copy is done."""
    cp = cupy()
    nbytes = src.nbytes
    ring = _pinned.get(nbytes)
    if ring is None:
        if len(_pinned) > 16:              # input sizes changing all the time: start over,
            for entries in _pinned.values():            # once no copy reads the old buffers
                for _, event in entries:
                    if event is not None:
                        event.synchronize()
            _pinned.clear()
        ring = _pinned[nbytes] = []
    entry = next((e for e in ring if e[1] is None or e[1].done), None)
    if entry is None and len(ring) < PINNED_PER_SIZE:
        entry = [cp.cuda.alloc_pinned_memory(nbytes), None]
        ring.append(entry)
    elif entry is None:                    # every buffer in flight: wait for the oldest
        entry = ring.pop(0)
        ring.append(entry)
        entry[1].synchronize()
    staged = np.ndarray(src.shape, src.dtype, buffer=entry[0])
    np.copyto(staged, src)
    dst.set(staged, stream=cp.cuda.get_current_stream())
    event = cp.cuda.Event()
    event.record()
    entry[1] = event


# --- kernels -------------------------------------------------------------------------------------

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
BLOCK = 256                    # threads per block of the 1-D launches
MAX_BLOCKS = 65536             # grid-stride loops cover the rest


def kernels_dir():
    """The folder holding the .cu files: the installed minicnn.kernels package, or kernels/
    next to minicnn/ in a source tree used without installing."""
    try:
        from importlib.resources import files
        path = Path(str(files("minicnn.kernels")))
        if (path / "common.cuh").is_file():
            return path
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "kernels"


@functools.lru_cache(maxsize=None)
def kernel_source(file):
    """The text of kernels/``file`` with its local ``#include "x.cuh"`` lines inlined (NVRTC
    then needs no include path)."""
    folder = kernels_dir()

    def expand(name, seen):
        if name in seen:
            return ""
        seen.add(name)
        text = re.sub(r"^\s*#pragma once\s*$", "", (folder / name).read_text(), flags=re.M)
        return re.sub(r'^\s*#include\s+"([^"]+)"\s*$',
                      lambda m: expand(m.group(1), seen), text, flags=re.M)
    return expand(file, set())


def template_kernels(source):
    """Names of the ``template <typename T> __global__ void name(...)`` kernels in source."""
    return re.findall(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(",
                      source)


def instantiations(source):
    """The name expressions CuPy compiles for a kernel file: each template kernel of it for
    float and double (``relu_forward<float>``, ...)."""
    return tuple(f"{k}<{t}>" for k in template_kernels(source) for t in ("float", "double"))


NVRTC_OPTIONS = ("-std=c++17",)        # CuPy adds the target (-arch=sm_XY) and -ftz=true


@functools.lru_cache(maxsize=None)
def _module(file):
    source = kernel_source(file)
    return cupy().RawModule(code=source, options=NVRTC_OPTIONS,
                            name_expressions=instantiations(source))


_kernels = {}                  # (file, name, dtype) -> function: get_function is not free


def kernel(file, name, dtype):
    """The CUDA function ``name<float>`` or ``name<double>`` of kernels/``file``."""
    key = (file, name, np.dtype(dtype))
    found = _kernels.get(key)
    if found is None:
        ctype = CTYPES.get(key[2])
        if ctype is None:
            raise MinicnnError(f"the CUDA kernels take float32 or float64 arrays, not {dtype}")
        found = _kernels[key] = _module(file).get_function(f"{name}<{ctype}>")
    return found


def _check_args(name, args):
    for i, a in enumerate(args):
        if is_device_array(a):
            if not a.flags.c_contiguous:
                raise MinicnnError(f"kernel {name}: argument {i} is not C-contiguous (RawKernel "
                                   "ignores strides); pass ascontiguousarray(...)")
        elif not isinstance(a, np.generic):
            raise MinicnnError(f"kernel {name}: argument {i} is a {type(a).__name__}; pass a "
                               "device array or a NumPy scalar of the kernel's type "
                               "(np.int32, np.int64, x.dtype.type(...))")


def launch(k, n, args, block=BLOCK):
    """Run kernel ``k`` over ``n`` work items (a grid-stride loop inside the kernel)."""
    if n <= 0:
        return
    _check_args(getattr(k, "__name__", str(k)), args)
    grid = min(max(1, math.ceil(n / block)), MAX_BLOCKS)
    k((grid,), (block,), tuple(args))


def launch_1d(k, n, *args):
    """``k(args..., (long long) n)`` over n items: the signature of the elementwise kernels."""
    launch(k, n, args + (np.int64(n),))


def launch_blocks(k, grid, args, block=BLOCK):
    """Run ``k`` on an explicit grid (a tuple of block counts), e.g. one block per channel."""
    if min(grid) <= 0:
        return
    _check_args(getattr(k, "__name__", str(k)), args)
    k(tuple(int(g) for g in grid), (block,), tuple(args))


# --- many arrays in one launch --------------------------------------------------------------------
# The solver's work touches every parameter blob: a ResNet-50 has hundreds, and a launch (or a few
# CuPy operations) per blob costs more host time than the GPU spends on them. kernels/solver.cu
# takes them all at once from a table of segments: (count, addresses of the arrays) a row.

SEGMENT_CHUNK = 8192           # elements a block takes at a time
_segment_tables = {}           # (rows, mults) -> (segments, mults, chunks, chunk count) on device


def segment_table(rows, mults=None):
    """The device tables of kernels/solver.cu for ``rows`` (one tuple of same-size, contiguous
    device arrays per segment) and per-segment float64 ``mults``: (segments (S, 1 + arrays)
    int64, mults or None, chunks (C, 2) int64 = (segment, first element), C). Made once for a
    set of arrays: the key is their addresses and sizes, which are all the table holds."""
    key = (tuple((int(r[0].size), *(int(a.data.ptr) for a in r)) for r in rows),
           None if mults is None else tuple(float(m) for m in mults))
    found = _segment_tables.get(key)
    if found is None:
        cp = cupy()
        if len(_segment_tables) >= 16:              # arrays keep moving: start over
            _segment_tables.clear()
        chunks = np.array([(s, start) for s, row in enumerate(key[0])
                           for start in range(0, row[0], SEGMENT_CHUNK)],
                          np.int64).reshape(-1, 2)
        found = _segment_tables[key] = (
            cp.asarray(np.array(key[0], np.int64).reshape(len(rows), -1)),
            None if mults is None else cp.asarray(np.array(key[1], np.float64)),
            cp.asarray(chunks), len(chunks))
    return found


def _by_dtype(rows):
    groups = {}
    for i, row in enumerate(rows):
        groups.setdefault(row[0].dtype, []).append(i)
    return groups


def zero_fill(arrays):
    """Every array of the list (contiguous float32/float64 device arrays) <- 0, in one launch
    per dtype: Caffe's ClearParamDiffs."""
    for dtype, indices in _by_dtype([(a,) for a in arrays]).items():
        segments, _, chunks, count = segment_table([(arrays[i],) for i in indices])
        if count:
            launch_blocks(kernel("solver.cu", "zero_segments", dtype), (min(count, MAX_BLOCKS),),
                          (segments, chunks, np.int64(count), np.int32(SEGMENT_CHUNK)))


def momentum_step(rows, mults, rate, momentum, scale, regularization, nesterov):
    """SGD's (or Nesterov's) step of every parameter in ``rows`` ((data, diff, history) device
    arrays each) in one launch per dtype, bit for bit csrc/solver.cpp's momentum_update;
    ``mults``: (lr_mult, weight_decay * decay_mult) a row; regularization 1 (L2) or 2 (L1)."""
    for dtype, indices in _by_dtype(rows).items():
        t = np.dtype(dtype).type
        segments, factors, chunks, count = segment_table(
            [rows[i] for i in indices], [m for i in indices for m in mults[i]])
        if count:
            launch_blocks(kernel("solver.cu", "momentum_step_segments", dtype),
                          (min(count, MAX_BLOCKS),),
                          (segments, factors, chunks, np.int64(count), np.int32(SEGMENT_CHUNK),
                           np.float64(rate), t(momentum), t(scale), np.int32(scale != 1.0),
                           np.int32(regularization), np.int32(bool(nesterov))))


# --- cuBLAS ---------------------------------------------------------------------------------------

def set_tf32(enabled):
    """Let cuBLAS use TF32 tensor cores for float32 products (off by default: FP32 exactness)."""
    _tf32["on"] = bool(enabled)
    _tf32["applied"].clear()


def _cublas_gemm(opa, opb, m, n, k, alpha, a, offset_a, lda, stride_a, b, offset_b, ldb, stride_b,
                 beta, c, offset_c, ldc, stride_c, batch):
    """cublas<t>gemmStridedBatched with cuBLAS's own (column-major) arguments; offsets are in
    elements from each array's first element."""
    from cupy.cuda import device as cuda_device
    from cupy_backends.cuda.libs import cublas
    handle = cuda_device.get_cublas_handle()
    dtype = c.dtype
    if _tf32["applied"].get(handle) != _tf32["on"]:
        tf32_mode, default_mode = getattr(cublas, "CUBLAS_TF32_TENSOR_OP_MATH", 3), \
            getattr(cublas, "CUBLAS_DEFAULT_MATH", 0)
        cublas.setMathMode(handle, tf32_mode if _tf32["on"] else default_mode)
        _tf32["applied"][handle] = _tf32["on"]
    fn = cublas.sgemmStridedBatched if dtype == np.float32 else cublas.dgemmStridedBatched
    scalars = np.array([alpha, beta], dtype)       # host pointers: CuPy's default pointer mode
    item = dtype.itemsize
    ops = {"N": 0, "T": 1}
    fn(handle, ops[opa], ops[opb], m, n, k, scalars.ctypes.data,
       a.data.ptr + offset_a * item, lda, stride_a,
       b.data.ptr + offset_b * item, ldb, stride_b,
       scalars.ctypes.data + item, c.data.ptr + offset_c * item, ldc, stride_c, batch)


def gemm(a, b, c, m, n, k, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, batch=1,
         stride_a=0, stride_b=0, stride_c=None, offset_a=0, offset_b=0, offset_c=0,
         lda=None, ldb=None, ldc=None):
    """Row-major products on contiguous device arrays a, b, c (any shapes: their buffers are
    read from the offsets): for i < batch,

        C_i (m x n) = alpha * op(A_i) @ op(B_i) + beta * C_i

    A_i starts ``offset_a + i * stride_a`` elements into a; op(A_i) is (m x k), stored (m x k)
    with row length lda (default k), or (k x m) with row length lda (default m) when trans_a.
    The same for B (k x n) and C. stride 0 reuses one matrix for every i (the weights)."""
    for name, arr in (("a", a), ("b", b), ("c", c)):
        if not arr.flags.c_contiguous or arr.dtype != c.dtype or arr.dtype not in CTYPES:
            raise MinicnnError(f"gemm: {name} must be a C-contiguous float32/float64 array of "
                               f"c's dtype, got {arr.dtype}")
    if min(m, n, batch) <= 0:
        return c
    lda = lda or (m if trans_a else k)
    ldb = ldb or (k if trans_b else n)
    ldc = ldc or n
    stride_c = m * n if stride_c is None else stride_c
    run = _gemm_backend or _cublas_gemm
    # cuBLAS is column-major: a row-major X is X^T to it, so C^T = op(B)^T op(A)^T
    run("T" if trans_b else "N", "T" if trans_a else "N", n, m, k, alpha,
        b, offset_b, ldb, stride_b, a, offset_a, lda, stride_a,
        beta, c, offset_c, ldc, stride_c, batch)
    return c


# --- helpers of the ops' "cuda" impls -------------------------------------------------------------

importable = _find_spec("cupy") is not None       # registers the "cuda" impls of the ops


def contiguous(*arrays):
    """Each device array C-contiguous (RawKernel ignores strides); None stays None."""
    cp = cupy()
    out = tuple(a if a is None or a.flags.c_contiguous else cp.ascontiguousarray(a)
                for a in arrays)
    return out[0] if len(out) == 1 else out


def output(out, shape, dtype):
    """``out`` when a kernel can write it directly (a contiguous device array of that shape and
    dtype), else a new device array."""
    shape = tuple(int(d) for d in shape)
    if out is not None and is_device_array(out) and out.shape == shape and \
            out.dtype == dtype and out.flags.c_contiguous:
        return out
    return cupy().empty(shape, dtype)


def finish(out, result):
    """``result``, written into ``out`` first when out is given and is another array."""
    if out is None or result is out:
        return result
    assign(out, result)
    return out


def distinct(out, *inputs):
    """``out`` unless it is one of ``inputs`` (a kernel that reads neighbours must not write
    what it reads): then None, and the impl writes a new array and copies it into out."""
    if out is not None and any(out is a for a in inputs if a is not None):
        return None
    return out


def loss_scale(loss_weight, normalizer, dtype):
    """loss_weight / normalizer rounded to dtype, as a device scalar that the losses' backward
    kernels read: divided in double, as the reference does. loss_weight may be the loss top's
    diff on the device, the normalizer a float64 device scalar (a VALID count), so no value has
    to come back to the host mid-step."""
    weight = loss_weight.astype(np.float64) if is_device_array(loss_weight) \
        else cupy().full((), float(loss_weight), np.float64)
    return (weight / normalizer).astype(dtype)


def channel_splits(layout):
    """Blocks per channel of the per-channel sums over (outer, C, inner) = ``layout``: enough
    for about 512 blocks in all, at most one per row (see normalization.cu's channel_visit)."""
    outer, c, inner = (int(v) for v in layout)
    rows = outer if inner >= 32 else -(-outer * inner // BLOCK)
    return max(1, min(rows, -(-512 // max(c, 1)), 256))


def channel_partials(name, arrays, layout, extra=()):
    """Per-channel partial sums of kernels/normalization.cu's ``name`` (channel_sum,
    channel_dot, channel_sqdev) over arrays viewed as (outer, C, inner) = ``layout``:
    (part, splits), part a float64 (C, splits) array that a finishing kernel of that file
    (channel_mean, channel_variance, channel_add_total) adds up on the device."""
    outer, c, inner = (int(v) for v in layout)
    cp = cupy()
    if c == 0:
        return cp.zeros((0, 1), np.float64), 1
    splits = channel_splits(layout)
    part = cp.empty((c, splits), np.float64)
    launch_blocks(kernel("normalization.cu", name, arrays[0].dtype), (c, splits),
                  (*arrays, *extra, part, np.int32(c), np.int64(inner), np.int64(outer)))
    return part, splits


def channel_mean(name, arrays, layout, divisor, dtype, extra=()):
    """(T array, float64 array) of the per-channel totals of ``name`` divided by ``divisor``."""
    part, splits = channel_partials(name, arrays, layout, extra)
    c = part.shape[0]
    cp = cupy()
    mean, mean64 = cp.empty(c, dtype), cp.empty(c, np.float64)
    launch(kernel("normalization.cu", "channel_mean", dtype), c,
           (part, mean, mean64, np.int32(splits), np.float64(divisor), np.int32(c)))
    return mean, mean64


def channel_add_total(name, arrays, layout, acc, dtype, extra=()):
    """acc (a contiguous (C,) device array) += the per-channel totals of ``name``, rounded to
    dtype; acc None: a new array of them. Returns acc."""
    part, splits = channel_partials(name, arrays, layout, extra)
    c = part.shape[0]
    assign = acc is None
    if assign:
        acc = cupy().empty(c, dtype)
    launch(kernel("normalization.cu", "channel_add_total", dtype), c,
           (part, acc, np.int32(splits), np.int32(assign), np.int32(c)))
    return acc
