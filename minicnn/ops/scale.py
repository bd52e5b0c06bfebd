"""Broadcast multiply (and add), Caffe's "Scale" (and the bias half of it, Caffe's "Bias").

scale has the shape of x.shape[axis : axis + scale.ndim] and is broadcast over the other axes
(a 0-d scale multiplies everything); bias, if given, has the shape of scale:

    y      = x * scale + bias
    dx     = dy * scale
    dscale = sum of dy * x over the broadcast axes
    dbias  = sum of dy over the broadcast axes

No kinks. Impls: ref.
"""

from minicnn.ops._dispatch import Op

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
def _scale_forward_ref(x, scale, bias=None, axis=1):
    y = x * _broadcastable(scale, x.ndim, axis)
    if bias is not None:
        y += _broadcastable(bias, x.ndim, axis)
    return y


@scale_backward.impl("ref")
def _scale_backward_ref(dy, x, scale, axis=1, bias_term=False):
    """Returns (dx, dscale, dbias); dbias is None without bias_term."""
    dx = dy * _broadcastable(scale, dy.ndim, axis)
    dscale = _sum_to(dy * x, scale.ndim, axis)
    dbias = _sum_to(dy, scale.ndim, axis) if bias_term else None
    return dx, dscale, dbias
