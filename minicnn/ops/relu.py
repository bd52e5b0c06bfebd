"""Leaky ReLU, Caffe's "ReLU" with relu_param.negative_slope (0 gives the plain ReLU).

    y  = x       if x > 0 else negative_slope * x
    dx = dy      if x > 0 else negative_slope * dy

Kink convention: x == 0 takes the slope branch, as Caffe's (x > 0) + slope * (x <= 0).
Because sign(y) == sign(x) when negative_slope >= 0, backward may be given y in place of x: that
is what makes the in-place ReLU (top == bottom) correct.
Impls: ref. (NumPy is already memory-bound here; a compiled loop would not be faster.)
"""

import numpy as np

from minicnn.ops._dispatch import Op

relu_forward, relu_backward = Op("relu_forward"), Op("relu_backward")


# --- reference ---------------------------------------------------------------------------------

@relu_forward.impl("ref")
def _relu_forward_ref(x, negative_slope=0.0):
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


@relu_backward.impl("ref")
def _relu_backward_ref(dy, x, negative_slope=0.0):
    return np.where(x > 0, dy, dy * dy.dtype.type(negative_slope))
