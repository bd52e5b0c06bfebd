"""Broadcast multiply (and add), Caffe's "Scale" (and the bias half of it, Caffe's "Bias").

scale has the shape of x.shape[axis : axis + scale.ndim] and is broadcast over the other axes
(a 0-d scale multiplies everything); bias, if given, has the shape of scale:

    y      = x * scale + bias
    dx     = dy * scale
    dscale = sum of dy * x over the broadcast axes
    dbias  = sum of dy over the broadcast axes

The sums are the chain rule for broadcasting: one scale value multiplies x at every position
along the broadcast axes, and a value used several times collects the sum of its gradients.

``out=`` names the array to write y into (it may be x); ``keep_x=`` an array to copy x into first
(an in-place layer keeps its input for backward; one pass with y on the CPU); ``dx_out=`` the
array for dx, and ``dscale_acc=`` / ``dbias_acc=`` arrays to *add* dscale and dbias to (a
layer's parameter diffs).
No kinks. Impls: ref; cpu for a per-channel scale (shape (C,) at axis 1, the Caffe nets' case:
csrc/normalization.cpp, one pass each way).
"""

import numpy as np

from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out

scale_forward, scale_backward = Op("scale_forward"), Op("scale_backward")


def _broadcastable(p, ndim, axis):
    """p reshaped so it lines up with axes axis .. axis + p.ndim of an ndim-axis array."""
    return p.reshape((1,) * axis + p.shape + (1,) * (ndim - axis - p.ndim))


def _sum_to(a, ndim_p, axis):
    """a summed over every axis outside axis .. axis + ndim_p (the adjoint of broadcasting)."""
    outside = tuple(range(axis)) + tuple(range(axis + ndim_p, a.ndim))
    return a.sum(axis=outside)


# --- reference ---------------------------------------------------------------------------------

@scale_forward.impl("ref")
def _scale_forward_ref(x, scale, bias=None, axis=1, *, out=None, keep_x=None):
    if keep_x is not None:
        keep_x[...] = x
    y = x * _broadcastable(scale, x.ndim, axis)
    if bias is not None:
        y += _broadcastable(bias, x.ndim, axis)
    return write_out(out, y)


@scale_backward.impl("ref")
def _scale_backward_ref(dy, x, scale, axis=1, bias_term=False, *, need_dx=True,
                        need_dscale=True, dx_out=None, dscale_acc=None, dbias_acc=None):
    """Returns (dx, dscale, dbias); dbias is None without bias_term, dx and dscale None when not
    needed."""
    # the sums first: dx_out may be dy itself (an in-place layer)
    dscale = _add_to(dscale_acc, _sum_to(dy * x, scale.ndim, axis)) if need_dscale else None
    dbias = _add_to(dbias_acc, _sum_to(dy, scale.ndim, axis)) if bias_term else None
    dx = write_out(dx_out, dy * _broadcastable(scale, dy.ndim, axis)) if need_dx else None
    return dx, dscale, dbias


def _add_to(acc, value):
    if acc is None:
        return value
    acc += value.reshape(acc.shape)
    return acc


# --- fast CPU (csrc/normalization.cpp) ----------------------------------------------------------

def _per_channel(x, scale, axis, *others):
    dtype = x.dtype
    return dtype in (np.float32, np.float64) and x.ndim >= 2 and axis == 1 and \
        scale.shape == (x.shape[1],) and all(
            a is None or (a.dtype == dtype and a.flags.c_contiguous) for a in (x, scale) + others)


def _target(out, like):
    if out is not None and out.shape == like.shape and out.dtype == like.dtype and \
            out.flags.c_contiguous and out.flags.writeable:
        return out
    return np.empty(like.shape, like.dtype)


@scale_forward.impl("cpu", available=lib is not None)
def _scale_forward_cpu(x, scale, bias=None, axis=1, *, out=None, keep_x=None):
    if not _per_channel(x, scale, axis, bias) or (bias is not None and bias.shape != scale.shape) \
            or (keep_x is not None and _target(keep_x, x) is not keep_x):
        return _scale_forward_ref(x, scale, bias, axis, out=out, keep_x=keep_x)
    y = _target(out, x)
    lib.scale_forward(x, scale, bias, y, keep_x, False, 0.0)
    return y if out is None or y is out else write_out(out, y)


@scale_backward.impl("cpu", available=lib is not None)
def _scale_backward_cpu(dy, x, scale, axis=1, bias_term=False, *, need_dx=True,
                        need_dscale=True, dx_out=None, dscale_acc=None, dbias_acc=None):
    accs = [a for a in (dscale_acc, dbias_acc) if a is not None]
    if not _per_channel(dy, scale, axis, x) or x.shape != dy.shape or \
            any(a.shape != scale.shape or a.dtype != dy.dtype or not a.flags.c_contiguous
                for a in accs):
        return _scale_backward_ref(dy, x, scale, axis, bias_term, need_dx=need_dx,
                                   need_dscale=need_dscale, dx_out=dx_out,
                                   dscale_acc=dscale_acc, dbias_acc=dbias_acc)
    dx = _target(dx_out, dy) if need_dx else None
    dscale = (dscale_acc if dscale_acc is not None else np.zeros(scale.shape, dy.dtype)) \
        if need_dscale else None
    dbias = (dbias_acc if dbias_acc is not None else np.zeros(scale.shape, dy.dtype)) \
        if bias_term else None
    lib.scale_backward(dy, x, scale, dx, dscale, dbias)
    if dx is not None and dx_out is not None and dx is not dx_out:
        dx = write_out(dx_out, dx)
    return dx, dscale, dbias


# --- CUDA (kernels/normalization.cu) ------------------------------------------------------------

from minicnn import cuda  # noqa: E402


def _cuda_layout(shape, p_shape, axis):
    """(outer, S, inner): x viewed around the S = prod(p_shape) values of the parameter."""
    size = int(np.prod(shape, dtype=np.int64))
    s = int(np.prod(p_shape, dtype=np.int64))
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return outer, s, size // max(1, outer * s)


@scale_forward.impl("cuda", available=cuda.importable)
def _scale_forward_cuda(x, scale, bias=None, axis=1, *, out=None, keep_x=None):
    if keep_x is not None:
        keep_x[...] = x
    return scale_relu_forward_cuda(x, scale, bias, axis, out=out)


def scale_relu_forward_cuda(x, scale, bias=None, axis=1, *, out=None, relu_slope=None):
    """Scale's forward on the GPU, followed in the same pass by a (leaky) ReLU where relu_slope
    is given: minicnn/fusion.py's training chain (BatchNorm -> Scale -> ReLU in place)."""
    x, scale, bias = cuda.contiguous(x, scale, bias)
    _, s, inner = _cuda_layout(x.shape, scale.shape, axis)
    y = cuda.output(out, x.shape, x.dtype)                         # elementwise: in place is fine
    t = x.dtype.type
    cuda.launch_1d(cuda.kernel("normalization.cu", "scale_forward", x.dtype), x.size, x, scale,
                   scale if bias is None else bias, y, np.int32(s), np.int64(inner),
                   np.int32(bias is not None), np.int32(relu_slope is not None),
                   t(relu_slope or 0.0))
    return cuda.finish(out, y)


def _add_total_cuda(name, arrays, layout, acc, shape):
    """acc += the per-parameter totals of ``name`` (added on the device in one launch where acc
    is a contiguous device array of the dtype); acc None: a new array of them."""
    dtype = arrays[0].dtype
    if acc is None:
        return cuda.channel_add_total(name, arrays, layout, None, dtype).reshape(shape)
    if cuda.is_device_array(acc) and acc.flags.c_contiguous and acc.dtype == dtype \
            and acc.size == layout[1]:
        cuda.channel_add_total(name, arrays, layout, acc, dtype)
        return acc
    return _add_to(acc, cuda.channel_add_total(name, arrays, layout, None, dtype))


@scale_backward.impl("cuda", available=cuda.importable)
def _scale_backward_cuda(dy, x, scale, axis=1, bias_term=False, *, need_dx=True,
                         need_dscale=True, dx_out=None, dscale_acc=None, dbias_acc=None):
    dy, x, scale = cuda.contiguous(dy, x, scale)
    layout = _cuda_layout(dy.shape, scale.shape, axis)
    dscale = dbias = dx = None
    if need_dscale:                   # the sums first: dx_out may be dy itself (in place)
        dscale = _add_total_cuda("channel_dot", (dy, x), layout, dscale_acc, scale.shape)
    if bias_term:
        dbias = _add_total_cuda("channel_sum", (dy,), layout, dbias_acc, scale.shape)
    if need_dx:
        dx = cuda.output(dx_out, dy.shape, dy.dtype)
        cuda.launch_1d(cuda.kernel("normalization.cu", "scale_backward", dy.dtype), dy.size, dy,
                       scale, dx, np.int32(layout[1]), np.int64(layout[2]))
        dx = cuda.finish(dx_out, dx)
    return dx, dscale, dbias
