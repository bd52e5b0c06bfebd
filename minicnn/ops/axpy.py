"""A per-channel scale and a sum in one: SENet's Caffe "Axpy" layer (hujie-frank/SENet), its
squeeze-and-excitation output applied to a residual branch and added to the shortcut:

    F = a * X + Y          a (N, C) or (N, C, 1, 1): one factor per image and channel
                           X, Y, F (N, C, ...)
    da = sum over the positions of dF * X        dX = a * dF        dY = dF

No kinks. Impls: ref (NumPy); cuda (the same expressions on CuPy arrays).
"""

from minicnn.ops._dispatch import Op

axpy_forward, axpy_backward = Op("axpy_forward"), Op("axpy_backward")


def _per_channel(a, x):
    """a shaped to broadcast over x's positions: (N, C, 1, ...)."""
    return a.reshape(x.shape[:2] + (1,) * (x.ndim - 2))


def _forward(a, x, y):
    return _per_channel(a, x) * x + y


def _backward(df, a, x, need=(True, True, True)):
    """(da, dX, dY), each None where ``need`` says so."""
    need_a, need_x, need_y = need
    da = (df * x).reshape(x.shape[0], x.shape[1], -1).sum(axis=2).reshape(a.shape) \
        if need_a else None
    dx = _per_channel(a, x) * df if need_x else None
    dy = df.copy() if need_y else None
    return da, dx, dy


axpy_forward.impl("ref")(_forward)
axpy_backward.impl("ref")(_backward)

# --- CUDA (CuPy evaluates the same expressions on device arrays) ---------------------------------

from minicnn import cuda  # noqa: E402

axpy_forward.impl("cuda", available=cuda.importable)(_forward)
axpy_backward.impl("cuda", available=cuda.importable)(_backward)
