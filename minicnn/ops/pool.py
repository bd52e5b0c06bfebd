"""2-D max and average pooling, Caffe's "Pooling" (MAX and AVE), with Caffe's window rules.

Geometry (PoolGeometry), per spatial dimension with input size H, kernel k, stride s, pad p:
    out = ceil((H + 2p - k) / s) + 1            (round_mode CEIL, Caffe's default; FLOOR: floor)
    if either pad is > 0 and (out - 1) * s >= H + p: out -= 1   (the last window would start in
                                                    the padding; Caffe tests this in both dims)
    window o covers rows h0 .. h0 + k - 1 with h0 = o * s - p, clipped to the image.
global_pooling takes the kernel from the input: k = (H, W), pad 0, stride 1, one output.

MAX:  y = max of the window, padding counting as -inf. As Caffe, y starts at -FLT_MAX and a value
      replaces it only if strictly greater, scanning the window in row-major order: ties go to the
      first maximum. The mask is its flat index h * W + w in the input plane; backward routes dy
      there. A window wholly outside the image (CEIL rounding, pad 0 and stride > kernel) keeps
      y = -FLT_MAX and mask -1, and passes no gradient. NaN never compares greater, so it is
      skipped as Caffe skips it (PyTorch propagates it): a window of NaNs (or of -inf) gives
      -FLT_MAX and mask -1 too. AVE sums NaN and inf like any value.
AVE:  y = sum of the window / divisor, divisor = (min(h0 + kh, H + ph) - h0) * (same for w), taken
      before clipping to the image: padding zeros count, overhang past the padding does not.
      backward spreads dy / divisor over the window's pixels in the image. A window wholly outside
      the image gives 0 (Caffe divides 0 by a divisor <= 0 there, giving -0 or NaN).

Why these backwards: a window's max changes with its largest entry at rate 1 and not at all
with the others (moving a loser a little does not change the max), so dy goes to the argmax
alone; forward saves the argmax (the mask) so that backward need not search again. An average
is linear, d(sum / divisor)/dx = 1 / divisor for each pixel in the window. Windows may overlap
(stride < kernel), and a pixel in several windows collects the sum of what each sends it, as in
any chain rule through several uses.

``out=`` names the array to write y (forward) or dx (backward) into.
Impls: ref; cpu (csrc/pool.cpp: one loop nest per (image, channel) plane, the same window
order, so MAX and the AVE forward are bit-identical to ref).
"""

import math
from dataclasses import dataclass

import numpy as np

from minicnn.errors import LayerError
from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out
from minicnn.ops._windows import tap_ranges

__all__ = [
    "PoolGeometry",
    "ave_pool2d_backward",
    "ave_pool2d_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
]

max_pool2d_forward, max_pool2d_backward = Op("max_pool2d_forward"), Op("max_pool2d_backward")
ave_pool2d_forward, ave_pool2d_backward = Op("ave_pool2d_forward"), Op("ave_pool2d_backward")


# --- geometry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolGeometry:
    """Kernel, stride and pad as (h, w) pairs; kernel None means global pooling (the input's
    H x W). ``ceil`` is Caffe's round_mode CEIL (True) or FLOOR (False)."""
    kernel: tuple = None
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    ceil: bool = True

    @classmethod
    def from_fields(cls, kernel_size=None, kernel_h=None, kernel_w=None, stride=None,
                    stride_h=None, stride_w=None, pad=None, pad_h=None, pad_w=None,
                    global_pooling=False, round_mode="CEIL"):
        """The geometry from PoolingParameter's fields, each None when not given, with the
        checks of Caffe's PoolingLayer::LayerSetUp."""
        if global_pooling:
            given = [f"{n} {v}" for n, v in (("kernel_size", kernel_size), ("kernel_h", kernel_h),
                                              ("kernel_w", kernel_w)) if v is not None]
            if given:
                raise LayerError(f"global_pooling takes its kernel from the input; "
                                 f"{', '.join(given)} must not be given")
            kernel = None
        else:
            has_hw = kernel_h is not None and kernel_w is not None
            if kernel_size is None and not has_hw:
                raise LayerError("pooling needs kernel_size, or both kernel_h and kernel_w "
                                 f"(got kernel_h {kernel_h}, kernel_w {kernel_w})")
            if kernel_size is not None and has_hw:
                raise LayerError(f"give kernel_size ({kernel_size}) or kernel_h and kernel_w "
                                 f"({kernel_h}, {kernel_w}), not both")
            # as Caffe, kernel_size wins over a lone kernel_h or kernel_w
            kernel = (kernel_size, kernel_size) if kernel_size is not None else (kernel_h, kernel_w)
            if min(kernel) <= 0:
                raise LayerError(f"pooling kernel {kernel[0]} x {kernel[1]} must not be zero")
        pad = _pair("pad", pad, pad_h, pad_w, 0)
        stride = _pair("stride", stride, stride_h, stride_w, 1)
        if min(stride) <= 0:
            raise LayerError(f"pooling stride {stride[0]} x {stride[1]} must be positive")
        if global_pooling:
            if pad != (0, 0) or stride != (1, 1):
                raise LayerError(f"global_pooling needs pad 0 and stride 1, got pad "
                                 f"{pad[0]} x {pad[1]} and stride {stride[0]} x {stride[1]}")
        elif pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise LayerError(f"pooling pad {pad[0]} x {pad[1]} must be smaller than the kernel "
                             f"{kernel[0]} x {kernel[1]}")
        if round_mode not in ("CEIL", "FLOOR"):
            raise LayerError(f"round_mode must be CEIL or FLOOR, not {round_mode}")
        return cls(kernel, stride, pad, round_mode == "CEIL")

    def kernel_for(self, h, w):
        return (h, w) if self.kernel is None else self.kernel

    def out_hw(self, h, w):
        """Output (oh, ow) for an (h, w) input, with Caffe's rounding and drop-last rule."""
        kernel, out = self.kernel_for(h, w), []
        for size, k, s, p in zip((h, w), kernel, self.stride, self.pad):
            span = size + 2 * p - k
            n = (math.ceil(span / s) if self.ceil else span // s) + 1
            if self.pad != (0, 0) and (n - 1) * s >= size + p:
                n -= 1                 # Caffe tests this in both dims if either pad is non-zero
            if n < 1:
                raise LayerError(f"pooling kernel {k} does not fit the input size {size} "
                                 f"with pad {p} (stride {s})")
            out.append(n)
        return tuple(out)


def _pair(name, both, h, w, default):
    if h is None and w is None:
        value = default if both is None else both
        return (value, value)
    if both is not None or h is None or w is None:
        raise LayerError(f"give {name} ({both}) or both {name}_h and {name}_w ({h}, {w}), "
                         "not a mix")
    return (h, w)


def _window_starts(size, k, s, p, n_out):
    """First row (or column) of each window, and the AVE divisor factor of each."""
    h0 = np.arange(n_out) * s - p
    return h0, np.minimum(h0 + k, size + p) - h0


# --- reference ---------------------------------------------------------------------------------

@max_pool2d_forward.impl("ref")
def _max_pool2d_forward_ref(x, *, geom, out=None):
    """(N, C, H, W) -> y (N, C, oh, ow) and mask (N, C, oh, ow) int64: h * W + w, or -1."""
    h, w = x.shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel_for(h, w), geom.stride, geom.pad
    oh, ow = geom.out_hw(h, w)
    y = np.full((*x.shape[:2], oh, ow), np.finfo(np.float32).min, x.dtype)   # Caffe's -FLT_MAX
    mask = np.full(y.shape, -1, np.int64)
    for i, lo_y, hi_y, r in tap_ranges(h, kh, sh, ph, 1, oh):      # taps on padding: -inf,
        for j, lo_z, hi_z, q in tap_ranges(w, kw, sw, pw, 1, ow):  # never a maximum
            tap = x[:, :, r:r + (hi_y - lo_y - 1) * sh + 1:sh, q:q + (hi_z - lo_z - 1) * sw + 1:sw]
            best = y[:, :, lo_y:hi_y, lo_z:hi_z]                   # a view: updated in place
            take = tap > best                  # row-major taps + strict > : first max wins
            rows = np.arange(r, r + (hi_y - lo_y) * sh, sh)[:, None]
            cols = np.arange(q, q + (hi_z - lo_z) * sw, sw)[None, :]
            best[take] = tap[take]
            mask[:, :, lo_y:hi_y, lo_z:hi_z][take] = np.broadcast_to(rows * w + cols,
                                                                     take.shape)[take]
    return write_out(out, y), mask


@max_pool2d_backward.impl("ref")
def _max_pool2d_backward_ref(dy, mask, x_shape, *, geom=None, out=None):
    """dy, mask (N, C, oh, ow) -> dx (N, C, H, W): each dy added at its argmax, the windows in
    row-major order. ``geom`` (the forward's) is not needed here; the GPU's gather uses it."""
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dy.dtype)
    plane = np.broadcast_to(np.arange(n * c)[:, None], (n * c, mask.shape[2] * mask.shape[3]))
    flat_mask, flat_dy = mask.reshape(n * c, -1), dy.reshape(n * c, -1)
    hit = flat_mask >= 0                        # -1: a window with no pixel of the image
    np.add.at(dx, (plane[hit], flat_mask[hit]), flat_dy[hit])   # overlapping windows add up
    return write_out(out, dx.reshape(x_shape))


def _ave_divisor(geom, h, w, dtype):
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel_for(h, w), geom.stride, geom.pad
    oh, ow = geom.out_hw(h, w)
    size_h = _window_starts(h, kh, sh, ph, oh)[1]
    size_w = _window_starts(w, kw, sw, pw, ow)[1]
    divisor = np.outer(size_h, size_w)
    # <= 0 only for windows wholly outside the image, whose sum is 0: give them 0, not NaN
    return np.where(divisor > 0, divisor, 1).astype(dtype)   # (oh, ow)


@ave_pool2d_forward.impl("ref")
def _ave_pool2d_forward_ref(x, *, geom, out=None):
    """(N, C, H, W) -> (N, C, oh, ow)."""
    h, w = x.shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel_for(h, w), geom.stride, geom.pad
    oh, ow = geom.out_hw(h, w)
    total = np.zeros((*x.shape[:2], oh, ow), x.dtype)
    for i, lo_y, hi_y, r in tap_ranges(h, kh, sh, ph, 1, oh):      # padding adds zeros:
        for j, lo_z, hi_z, q in tap_ranges(w, kw, sw, pw, 1, ow):  # only image taps count
            total[:, :, lo_y:hi_y, lo_z:hi_z] += \
                x[:, :, r:r + (hi_y - lo_y - 1) * sh + 1:sh, q:q + (hi_z - lo_z - 1) * sw + 1:sw]
    return write_out(out, total / _ave_divisor(geom, h, w, x.dtype))


def _check_pooled(dy, x_shape, geom):
    want = (*x_shape[:2], *geom.out_hw(*x_shape[2:]))
    if tuple(dy.shape) != want:
        raise LayerError(f"dy of shape {tuple(dy.shape)} does not match the pooled shape {want}")


@ave_pool2d_backward.impl("ref")
def _ave_pool2d_backward_ref(dy, x_shape, *, geom, out=None):
    """dy (N, C, oh, ow) -> dx (N, C, H, W)."""
    _check_pooled(dy, x_shape, geom)
    h, w = x_shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel_for(h, w), geom.stride, geom.pad
    oh, ow = dy.shape[2:]
    g = dy / _ave_divisor(geom, h, w, dy.dtype)
    dx = np.zeros(x_shape, dy.dtype)
    for i, lo_y, hi_y, r in tap_ranges(h, kh, sh, ph, 1, oh):      # the adjoint of the
        for j, lo_z, hi_z, q in tap_ranges(w, kw, sw, pw, 1, ow):  # forward's slices; taps on
            dx[:, :, r:r + (hi_y - lo_y - 1) * sh + 1:sh,          # padding carry nothing
               q:q + (hi_z - lo_z - 1) * sw + 1:sw] += g[:, :, lo_y:hi_y, lo_z:hi_z]
    return write_out(out, dx)


# --- fast CPU (csrc/pool.cpp) -------------------------------------------------------------------

def _native_geom(geom, h, w):
    return (*geom.kernel_for(h, w), *geom.stride, *geom.pad)


def _native_dtype(*arrays):
    return all(a.dtype in (np.float32, np.float64) and a.dtype == arrays[0].dtype
               for a in arrays)


def _output(out, shape, dtype):
    """``out`` when the kernels can write it directly, else a new array."""
    if out is not None and out.shape == tuple(shape) and out.dtype == dtype \
            and out.flags.c_contiguous and out.flags.writeable:
        return out
    return np.empty(shape, dtype)


def _finish(out, result):
    return result if result is out else write_out(out, result)


@max_pool2d_forward.impl("cpu", available=lib is not None)
def _max_pool2d_forward_cpu(x, *, geom, out=None):
    if x.ndim != 4 or not _native_dtype(x):
        return _max_pool2d_forward_ref(x, geom=geom, out=out)
    h, w = x.shape[2:]
    y = _output(out, (*x.shape[:2], *geom.out_hw(h, w)), x.dtype)
    mask = np.empty(y.shape, np.int64)
    lib.max_pool_forward(np.ascontiguousarray(x), y, mask, _native_geom(geom, h, w))
    return _finish(out, y), mask


@max_pool2d_backward.impl("cpu", available=lib is not None)
def _max_pool2d_backward_cpu(dy, mask, x_shape, *, geom=None, out=None):
    if dy.ndim != 4 or not _native_dtype(dy) or mask.dtype != np.int64:
        return _max_pool2d_backward_ref(dy, mask, x_shape, out=out)
    dx = _output(out, x_shape, dy.dtype)
    lib.max_pool_backward(np.ascontiguousarray(dy), np.ascontiguousarray(mask), dx)
    return _finish(out, dx)


@ave_pool2d_forward.impl("cpu", available=lib is not None)
def _ave_pool2d_forward_cpu(x, *, geom, out=None):
    if x.ndim != 4 or not _native_dtype(x):
        return _ave_pool2d_forward_ref(x, geom=geom, out=out)
    h, w = x.shape[2:]
    y = _output(out, (*x.shape[:2], *geom.out_hw(h, w)), x.dtype)
    lib.ave_pool_forward(np.ascontiguousarray(x), y, _native_geom(geom, h, w))
    return _finish(out, y)


@ave_pool2d_backward.impl("cpu", available=lib is not None)
def _ave_pool2d_backward_cpu(dy, x_shape, *, geom, out=None):
    if dy.ndim != 4 or not _native_dtype(dy):
        return _ave_pool2d_backward_ref(dy, x_shape, geom=geom, out=out)
    _check_pooled(dy, x_shape, geom)
    h, w = x_shape[2:]
    dx = _output(out, x_shape, dy.dtype)
    lib.ave_pool_backward(np.ascontiguousarray(dy), dx, _native_geom(geom, h, w))
    return _finish(out, dx)


# --- CUDA (kernels/pooling.cu) ------------------------------------------------------------------

from minicnn import cuda  # noqa: E402


def _cuda_args(geom, h, w):
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel_for(h, w), geom.stride, geom.pad
    oh, ow = geom.out_hw(h, w)
    return oh, ow, tuple(np.int32(v) for v in (h, w, oh, ow, kh, kw, sh, sw, ph, pw))


def _cuda_4d(shape):
    if len(shape) != 4:
        raise LayerError(f"pooling needs a 4-D (N, C, H, W) input, got shape {tuple(shape)}")


@max_pool2d_forward.impl("cuda", available=cuda.importable)
def _max_pool2d_forward_cuda(x, *, geom, out=None):
    """(N, C, H, W) -> y and mask (int64, h * W + w or -1), as the reference."""
    _cuda_4d(x.shape)
    x = cuda.contiguous(x)
    oh, ow, args = _cuda_args(geom, *x.shape[2:])
    y = cuda.output(cuda.distinct(out, x), (*x.shape[:2], oh, ow), x.dtype)
    mask = cuda.cupy().empty(y.shape, np.int64)
    cuda.launch_1d(cuda.kernel("pooling.cu", "max_pool2d_forward", x.dtype), y.size, x, y, mask,
                   *args)
    return cuda.finish(out, y), mask


@max_pool2d_backward.impl("cuda", available=cuda.importable)
def _max_pool2d_backward_cuda(dy, mask, x_shape, *, geom=None, out=None):
    """With the forward's ``geom``: a gather, each dx the sum over the windows that chose it,
    in the reference's order (deterministic, bit for bit the CPU's); without, a scatter with
    atomic adds (overlapping windows then sum in no fixed order)."""
    _cuda_4d(x_shape)
    dy, mask = cuda.contiguous(dy, mask.astype(np.int64, copy=False))
    dx = cuda.output(cuda.distinct(out, dy), x_shape, dy.dtype)
    if geom is not None:
        h, w = x_shape[2:]
        (kh, kw), (sh, sw), (ph, pw) = geom.kernel_for(h, w), geom.stride, geom.pad
        args = (h, w, *dy.shape[2:], kh, kw, sh, sw, ph, pw)     # dy's windows (SPP: the first)
        cuda.launch_1d(cuda.kernel("pooling.cu", "max_pool2d_backward_gather", dy.dtype),
                       dx.size, dy, mask, dx, *(np.int32(v) for v in args))
        return cuda.finish(out, dx)
    dx.fill(0)                                               # the kernel scatters into it
    cuda.launch_1d(cuda.kernel("pooling.cu", "max_pool2d_backward", dy.dtype), dy.size, dy, mask,
                   dx, np.int64(x_shape[2] * x_shape[3]), np.int64(dy.shape[2] * dy.shape[3]))
    return cuda.finish(out, dx)


@ave_pool2d_forward.impl("cuda", available=cuda.importable)
def _ave_pool2d_forward_cuda(x, *, geom, out=None):
    _cuda_4d(x.shape)
    x = cuda.contiguous(x)
    oh, ow, args = _cuda_args(geom, *x.shape[2:])
    y = cuda.output(cuda.distinct(out, x), (*x.shape[:2], oh, ow), x.dtype)
    cuda.launch_1d(cuda.kernel("pooling.cu", "ave_pool2d_forward", x.dtype), y.size, x, y, *args)
    return cuda.finish(out, y)


@ave_pool2d_backward.impl("cuda", available=cuda.importable)
def _ave_pool2d_backward_cuda(dy, x_shape, *, geom, out=None):
    _cuda_4d(x_shape)
    _check_pooled(dy, x_shape, geom)
    dy = cuda.contiguous(dy)
    _, _, args = _cuda_args(geom, *x_shape[2:])
    dx = cuda.output(cuda.distinct(out, dy), x_shape, dy.dtype)
    cuda.launch_1d(cuda.kernel("pooling.cu", "ave_pool2d_backward", dy.dtype), dx.size, dy, dx,
                   *args)
    return cuda.finish(out, dx)
