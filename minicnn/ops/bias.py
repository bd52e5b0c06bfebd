"""Broadcast add, Caffe's "Bias" (the additive twin of minicnn.ops.scale).

bias has the shape of x.shape[axis : axis + bias.ndim] and is broadcast over the other axes
(a 0-d bias is added to everything):

    y     = x + bias
    dx    = dy
    dbias = sum of dy over the broadcast axes

No kinks. Impls: ref.
"""

from minicnn.ops._dispatch import Op
from minicnn.ops.scale import _broadcastable, _sum_to

bias_forward, bias_backward = Op("bias_forward"), Op("bias_backward")


# --- reference ---------------------------------------------------------------------------------

@bias_forward.impl("ref")
def _bias_forward_ref(x, bias, axis=1):
    return x + _broadcastable(bias, x.ndim, axis)


@bias_backward.impl("ref")
def _bias_backward_ref(dy, bias_ndim, axis=1):
    """Returns (dx, dbias): dx is a new array equal to dy, dbias has bias_ndim axes."""
    return dy.copy(), _sum_to(dy, bias_ndim, axis)


# --- CUDA (kernels/normalization.cu) ------------------------------------------------------------

import numpy as np  # noqa: E402

from minicnn import cuda  # noqa: E402
from minicnn.ops.scale import _cuda_layout  # noqa: E402


@bias_forward.impl("cuda", available=cuda.importable)
def _bias_forward_cuda(x, bias, axis=1):
    x, bias = cuda.contiguous(x, bias)
    _, s, inner = _cuda_layout(x.shape, bias.shape, axis)
    y = cuda.cupy().empty_like(x)
    cuda.launch_1d(cuda.kernel("normalization.cu", "bias_forward", x.dtype), x.size, x, bias, y,
                   np.int32(s), np.int64(inner))
    return y


@bias_backward.impl("cuda", available=cuda.importable)
def _bias_backward_cuda(dy, bias_ndim, axis=1):
    dy = cuda.contiguous(dy)
    p_shape = dy.shape[axis:axis + bias_ndim]
    total = cuda.channel_add_total("channel_sum", (dy,), _cuda_layout(dy.shape, p_shape, axis),
                                   None, dy.dtype)
    return dy.copy(), total.reshape(p_shape)
