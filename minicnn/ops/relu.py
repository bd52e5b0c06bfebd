"""Leaky ReLU, Caffe's "ReLU" with relu_param.negative_slope (0 gives the plain ReLU).

    y  = x       if x > 0 else negative_slope * x
    dx = dy      if x > 0 else negative_slope * dy

Why: y is linear on each side of 0 (slope 1 for x > 0, negative_slope below), so dy/dx is that
slope and the chain rule dL/dx = dL/dy * dy/dx gives the line above. At x == 0 there is a kink
(no derivative); any value between the two slopes is a valid subgradient, and Caffe picks one.
Kink convention: x == 0 takes the slope branch, as Caffe's (x > 0) + slope * (x <= 0).
Because sign(y) == sign(x) when negative_slope >= 0, backward may be given y in place of x: that
is what makes the in-place ReLU (top == bottom) correct.
Impls: ref; cpu (csrc/relu.cpp: one pass written into ``out``, which saves NumPy's mask and
product temporaries and the copy into the top blob).
"""

import numpy as np

from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out

relu_forward, relu_backward = Op("relu_forward"), Op("relu_backward")


# --- reference ---------------------------------------------------------------------------------

@relu_forward.impl("ref")
def _relu_forward_ref(x, negative_slope=0.0, *, out=None):
    return write_out(out, np.where(x > 0, x, x * x.dtype.type(negative_slope)))


@relu_backward.impl("ref")
def _relu_backward_ref(dy, x, negative_slope=0.0, *, out=None):
    return write_out(out, np.where(x > 0, dy, dy * dy.dtype.type(negative_slope)))


# --- fast CPU (csrc/relu.cpp) -------------------------------------------------------------------

def _native_ok(out, *arrays):
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        a.dtype == dtype and a.flags.c_contiguous and a.shape == arrays[0].shape
        for a in arrays + ((out,) if out is not None else ()))


@relu_forward.impl("cpu", available=lib is not None)
def _relu_forward_cpu(x, negative_slope=0.0, *, out=None):
    if not _native_ok(out, x):
        return _relu_forward_ref(x, negative_slope, out=out)
    y = np.empty_like(x) if out is None else out
    lib.relu_forward(x, y, float(negative_slope))
    return y


@relu_backward.impl("cpu", available=lib is not None)
def _relu_backward_cpu(dy, x, negative_slope=0.0, *, out=None):
    if not _native_ok(out, dy, x):
        return _relu_backward_ref(dy, x, negative_slope, out=out)
    dx = np.empty_like(dy) if out is None else out
    lib.relu_backward(dy, x, dx, float(negative_slope))
    return dx


# --- CUDA (kernels/relu.cu) ---------------------------------------------------------------------

from minicnn import cuda  # noqa: E402


@relu_forward.impl("cuda", available=cuda.importable)
def _relu_forward_cuda(x, negative_slope=0.0, *, out=None):
    x = cuda.contiguous(x)
    y = cuda.output(out, x.shape, x.dtype)             # may be x itself: elementwise is safe
    cuda.launch_1d(cuda.kernel("relu.cu", "relu_forward", x.dtype), x.size, x, y,
                   x.dtype.type(negative_slope))
    return cuda.finish(out, y)


@relu_backward.impl("cuda", available=cuda.importable)
def _relu_backward_cuda(dy, x, negative_slope=0.0, *, out=None):
    dy, x = cuda.contiguous(dy, x)
    dx = cuda.output(out, dy.shape, dy.dtype)
    cuda.launch_1d(cuda.kernel("relu.cu", "relu_backward", dy.dtype), dy.size, dy, x, dx,
                   dy.dtype.type(negative_slope))
    return cuda.finish(out, dx)
