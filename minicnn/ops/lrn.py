"""Local response normalization, Caffe's "LRN" (n = local_size, odd; h = (n - 1) / 2).

ACROSS_CHANNELS, on x (N, C, ...):
    s_c  = k + (alpha / n) * sum_{c' = c-h .. c+h} x_c'^2          (channels past the ends are 0)
    y_c  = x_c * s_c^-beta
    dx_c = dy_c * s_c^-beta - (2 alpha beta / n) * x_c * sum_{j = c-h .. c+h} dy_j * y_j / s_j
WITHIN_CHANNEL, on x (N, C, H, W), as Caffe builds it from layers (square, AVE pool of size n
with pad h and stride 1, power, product), so k is not used and the pool's divisor is always n^2:
    b  = 1 + (alpha / n^2) * sum over the n x n neighbourhood of x^2   (pixels outside are 0)
    y  = x * b^-beta
    dx = dy * b^-beta - (2 alpha beta / n^2) * x * sum over the n x n neighbourhood of dy * y / b
The window sums are symmetric (odd n, centred), so each backward sum is the same window sum.
``out=`` names the array to write the result into (it may be x or dy: in place is safe).
Impls: ref; cpu for ACROSS_CHANNELS (csrc/lrn.cpp: the same window sums over blocks of pixels;
not Caffe's sliding sum, which carries an overflowing x^2 into every later channel;
WITHIN_CHANNEL runs on ref).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out

__all__ = ["check_local_size", "lrn_backward", "lrn_forward"]

lrn_forward, lrn_backward = Op("lrn_forward"), Op("lrn_backward")

NORM_REGIONS = ("ACROSS_CHANNELS", "WITHIN_CHANNEL")


def check_local_size(local_size, norm_region="ACROSS_CHANNELS"):
    """Raise LayerError unless local_size is odd (Caffe's only supported windows)."""
    if local_size <= 0 or local_size % 2 != 1:
        raise LayerError(f"LRN local_size must be odd, got {local_size}")
    if norm_region not in NORM_REGIONS:
        raise LayerError(f"LRN norm_region must be one of {', '.join(NORM_REGIONS)}, "
                         f"not {norm_region}")


def _window_sum(a, n, axes):
    """Sum over a window of n centred on each element along ``axes``, zero beyond the ends."""
    for axis in axes:
        length = a.shape[axis]
        half = min((n - 1) // 2, max(length - 1, 0))   # a wider window adds only zeros
        padding = [(0, 0)] * a.ndim
        padding[axis] = (half, half)
        ap, out = np.pad(a, padding), np.zeros_like(a)
        for offset in range(2 * half + 1):
            out += ap[(slice(None),) * axis + (slice(offset, offset + length),)]
        a = out
    return a


def _base(x, local_size, alpha, k, norm_region):
    """The scale s (ACROSS_CHANNELS) or b (WITHIN_CHANNEL), same shape as x."""
    alpha, k = float(alpha), float(k)           # Python floats keep float32 arrays float32
    if norm_region == "ACROSS_CHANNELS":
        return k + (alpha / local_size) * _window_sum(x * x, local_size, axes=(1,))
    # the AVE pool sums then divides by n^2, so the alpha factor stays outside the average
    return 1 + alpha * (_window_sum(x * x, local_size, axes=(2, 3)) / local_size**2)


# --- reference ---------------------------------------------------------------------------------

@lrn_forward.impl("ref")
def _lrn_forward_ref(x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                     norm_region="ACROSS_CHANNELS", out=None):
    """(N, C, H, W) -> (N, C, H, W)."""
    check_local_size(local_size, norm_region)
    return write_out(out, x * _base(x, local_size, alpha, k, norm_region) ** -float(beta))


@lrn_backward.impl("ref")
def _lrn_backward_ref(dy, x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                      norm_region="ACROSS_CHANNELS", out=None):
    """dy, x (N, C, H, W) -> dx (N, C, H, W); s (or b) and y are recomputed from x."""
    check_local_size(local_size, norm_region)
    alpha, beta = float(alpha), float(beta)
    base = _base(x, local_size, alpha, k, norm_region)
    power = base ** -beta
    y = x * power
    if norm_region == "ACROSS_CHANNELS":
        window, axes = local_size, (1,)
    else:
        window, axes = local_size**2, (2, 3)
    return write_out(out, dy * power - (2 * alpha * beta / window) * x * _window_sum(
        dy * y / base, local_size, axes))


# --- fast CPU (csrc/lrn.cpp) --------------------------------------------------------------------

def _native_ok(norm_region, *arrays):
    return norm_region == "ACROSS_CHANNELS" and arrays[0].ndim >= 2 and all(
        a.dtype in (np.float32, np.float64) and a.dtype == arrays[0].dtype for a in arrays)


def _output(out, like):
    if out is not None and out.shape == like.shape and out.dtype == like.dtype \
            and out.flags.c_contiguous and out.flags.writeable:
        return out
    return np.empty(like.shape, like.dtype)


@lrn_forward.impl("cpu", available=lib is not None)
def _lrn_forward_cpu(x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                     norm_region="ACROSS_CHANNELS", out=None):
    check_local_size(local_size, norm_region)
    if not _native_ok(norm_region, x):
        return _lrn_forward_ref(x, local_size=local_size, alpha=alpha, beta=beta, k=k,
                                norm_region=norm_region, out=out)
    y = _output(out, x)
    lib.lrn_forward(np.ascontiguousarray(x), y, local_size, float(alpha), float(beta), float(k))
    return y if out is None or y is out else write_out(out, y)


@lrn_backward.impl("cpu", available=lib is not None)
def _lrn_backward_cpu(dy, x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                      norm_region="ACROSS_CHANNELS", out=None):
    check_local_size(local_size, norm_region)
    if not _native_ok(norm_region, dy, x):
        return _lrn_backward_ref(dy, x, local_size=local_size, alpha=alpha, beta=beta, k=k,
                                 norm_region=norm_region, out=out)
    dx = _output(out, x)
    lib.lrn_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), dx, local_size,
                     float(alpha), float(beta), float(k))
    return dx if out is None or dx is out else write_out(out, dx)


# --- CUDA (kernels/lrn.cu) ----------------------------------------------------------------------

from minicnn import cuda  # noqa: E402


def _cuda_scale(x, local_size, alpha, k, norm_region):
    """s (ACROSS_CHANNELS) or b (WITHIN_CHANNEL) of x, as a new device array."""
    if x.ndim < 2 or (norm_region == "WITHIN_CHANNEL" and x.ndim != 4):
        raise LayerError(f"LRN needs an (N, C, ...) input (4-D for WITHIN_CHANNEL), got shape "
                         f"{tuple(x.shape)}")
    s = cuda.cupy().empty_like(x)
    t, half = x.dtype.type, (local_size - 1) // 2
    if norm_region == "ACROSS_CHANNELS":
        inner = int(np.prod(x.shape[2:], dtype=np.int64))
        cuda.launch_1d(cuda.kernel("lrn.cu", "lrn_scale_across", x.dtype), x.size, x, s,
                       np.int32(x.shape[1]), np.int64(inner), np.int32(half),
                       t(float(alpha) / local_size), t(k))
    else:
        cuda.launch_1d(cuda.kernel("lrn.cu", "lrn_scale_within", x.dtype), x.size, x, s,
                       np.int32(x.shape[2]), np.int32(x.shape[3]), np.int32(half), t(alpha),
                       t(local_size ** 2))
    return s


@lrn_forward.impl("cuda", available=cuda.importable)
def _lrn_forward_cuda(x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                      norm_region="ACROSS_CHANNELS", out=None):
    check_local_size(local_size, norm_region)
    x = cuda.contiguous(x)
    s = _cuda_scale(x, local_size, alpha, k, norm_region)
    y = cuda.output(out, x.shape, x.dtype)                        # x itself is fine now
    cuda.launch_1d(cuda.kernel("lrn.cu", "lrn_apply", x.dtype), x.size, x, s, y,
                   x.dtype.type(beta))
    return cuda.finish(out, y)


@lrn_backward.impl("cuda", available=cuda.importable)
def _lrn_backward_cuda(dy, x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                       norm_region="ACROSS_CHANNELS", out=None):
    check_local_size(local_size, norm_region)
    dy, x = cuda.contiguous(dy, x)
    t, half = dy.dtype.type, (local_size - 1) // 2
    s = _cuda_scale(x, local_size, alpha, k, norm_region)
    r = cuda.cupy().empty_like(dy)
    cuda.launch_1d(cuda.kernel("lrn.cu", "lrn_ratio", dy.dtype), dy.size, dy, x, s, r, t(beta))
    dx = cuda.output(out, dy.shape, dy.dtype)                     # reads only its own dy, x
    if norm_region == "ACROSS_CHANNELS":
        inner = int(np.prod(x.shape[2:], dtype=np.int64))
        cuda.launch_1d(cuda.kernel("lrn.cu", "lrn_backward_across", dy.dtype), dy.size, dy, x,
                       s, r, dx, np.int32(x.shape[1]), np.int64(inner), np.int32(half), t(beta),
                       t(2 * float(alpha) * float(beta) / local_size))
    else:
        cuda.launch_1d(cuda.kernel("lrn.cu", "lrn_backward_within", dy.dtype), dy.size, dy, x,
                       s, r, dx, np.int32(x.shape[2]), np.int32(x.shape[3]), np.int32(half),
                       t(beta), t(2 * float(alpha) * float(beta) / local_size ** 2))
    return cuda.finish(out, dx)
