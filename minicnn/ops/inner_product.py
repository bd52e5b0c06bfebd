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

Impls: ref. (One GEMM per pass: NumPy already hands it to BLAS.)
"""

import math

from minicnn.ops._dispatch import Op

inner_product_forward = Op("inner_product_forward")
inner_product_backward = Op("inner_product_backward")


def _as_matrix(x, axis):
    m = math.prod(x.shape[:axis])
    return x.reshape(m, math.prod(x.shape[axis:]))


# --- reference ---------------------------------------------------------------------------------

@inner_product_forward.impl("ref")
def _inner_product_forward_ref(x, w, b=None, *, axis=1, transpose=False):
    y = _as_matrix(x, axis) @ (w if transpose else w.T)            # (M, N)
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:axis], y.shape[1])


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
