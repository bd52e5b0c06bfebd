"""A locally connected layer (Darknet's [local], the "unshared convolution" of YOLOv1's full
model and of DeepFace): a convolution whose filters differ at every output place.

With the input's kernel windows as columns (im2col: cols[n, k, l], k = (c*kh + i)*kw + j over the
window, l = oy*OW + ox over the output places) and a weight matrix per place w[l] (F x K):

    y[n, f, l] = sum_k w[l, f, k] * cols[n, k, l] + b[f, l]

Backward: dcols[n, k, l] = sum_f w[l, f, k] dy[n, f, l], added back onto the image by col2im;
dw[l, f, k] = sum_n dy[n, f, l] cols[n, k, l]; db[f, l] = sum_n dy[n, f, l]. The weights'
layout (L, F, K) and the biases' (F, OH, OW) are Darknet's own order in its .weights files.
"""

import numpy as np

from minicnn.ops._dispatch import Op
from minicnn.ops.im2col import im2col_backward, im2col_forward

local_forward, local_backward = Op("local_forward"), Op("local_backward")


@local_forward.impl("ref")
def _local_forward_ref(x, w, b, *, geom):
    """y (N, F, OH, OW) from x (N, C, H, W), w (OH*OW, F, C*kh*kw) and b (F, OH, OW) or None."""
    cols = im2col_forward(x, geom=geom)                         # (N, K, OH, OW)
    n, k, oh, ow = cols.shape
    y = np.einsum("lfk,nkl->nfl", w, cols.reshape(n, k, oh * ow), optimize=True)
    y = y.reshape(n, w.shape[1], oh, ow)
    return y + b if b is not None else y


@local_backward.impl("ref")
def _local_backward_ref(dy, x, w, *, geom, bias=True):
    """(dx, dw, db or None)."""
    cols = im2col_forward(x, geom=geom)
    n, k, oh, ow = cols.shape
    cols = cols.reshape(n, k, oh * ow)
    g = dy.reshape(n, dy.shape[1], oh * ow)
    dcols = np.einsum("lfk,nfl->nkl", w, g, optimize=True).reshape(n, k, oh, ow)
    dx = im2col_backward(dcols, x_hw=x.shape[2:], geom=geom)
    dw = np.einsum("nfl,nkl->lfk", g, cols, optimize=True)
    return dx, dw, (dy.sum(axis=0) if bias else None)
