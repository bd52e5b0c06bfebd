"""Inner product (fully connected), Caffe's "InnerProduct".

The axes of x from ``axis`` on are flattened into K features per item; the axes before it are
M = prod(shape[:axis]) items:

    X = x.reshape(M, K)
    y = X @ w.T + b        w stored (N, K)       (the default)
    y = X @ w   + b        w stored (K, N)       (transpose=True)
    y.shape = x.shape[:axis] + (N,)

Backward, with DY = dy.reshape(M, N):

    dx = DY @ w      (DY @ w.T when transposed), reshaped to x.shape
    dw = DY.T @ X    (X.T @ DY when transposed)
    db = DY.sum(0)

Impls: ref. (One GEMM per pass: NumPy already hands it to BLAS, and with ``out=`` the product
lands straight in the top blob.)
"""

import math

import numpy as np

from minicnn.ops._dispatch import Op, write_out

inner_product_forward = Op("inner_product_forward")
inner_product_backward = Op("inner_product_backward")


def _as_matrix(x, axis):
    m = math.prod(x.shape[:axis])
    return x.reshape(m, math.prod(x.shape[axis:]))


# --- reference ---------------------------------------------------------------------------------

@inner_product_forward.impl("ref")
def _inner_product_forward_ref(x, w, b=None, *, axis=1, transpose=False, out=None):
    x2, wt = _as_matrix(x, axis), (w if transpose else w.T)
    shape = (*x.shape[:axis], wt.shape[1])
    if out is not None and out.shape == shape and out.dtype == np.result_type(x2, wt) \
            and out.flags.c_contiguous:
        y = np.matmul(x2, wt, out=out.reshape(x2.shape[0], wt.shape[1]))   # (M, N)
    else:
        y = x2 @ wt
    if b is not None:
        y += b
    return write_out(out, y.reshape(shape))


@inner_product_backward.impl("ref")
def _inner_product_backward_ref(dy, x, w, *, axis=1, transpose=False, need_dx=True, need_dw=True,
                                need_db=True):
    """Returns (dx, dw, db); an entry is None when its ``need_*`` is False."""
    dy2 = dy.reshape(-1, dy.shape[-1])                              # (M, N)
    dx = dw = db = None
    if need_dx:
        dx = (dy2 @ (w.T if transpose else w)).reshape(x.shape)
    if need_dw:
        x2 = _as_matrix(x, axis)
        dw = x2.T @ dy2 if transpose else dy2.T @ x2
    if need_db:
        db = dy2.sum(axis=0)
    return dx, dw, db
