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
