"""Reduction over the tail axes, Caffe's "Reduction" layer.

x is seen as M = prod(shape[:axis]) rows of D = prod(shape[axis:]) values; each row becomes one
number, so y.shape = x.shape[:axis] (a scalar for axis 0). With c = coeff (c / D for MEAN):

    SUM    y = c sum(x)          dx = c dy
    MEAN   y = c sum(x)          dx = c dy         (c already divided by D)
    ASUM   y = c sum(|x|)        dx = c dy sign(x)      sign(0) = 0, Caffe's caffe_cpu_sign
    SUMSQ  y = c sum(x^2)        dx = 2 c dy x

Caffe reduces only the tail: there is no end axis. It computes c in the dtype (coeff / D rounded
to float32 in a float32 net) and multiplies each row's sum by it, so MEAN is sum * (1 / D)
rather than sum / D; so does this, and backward scales dy by c before the rest, as Caffe.
ASUM's kink is at 0 (gradient 0 there). Impls: ref; cuda (CuPy: the row sums in the dtype, as
the reference, but in CuPy's reduction order rather than NumPy's pairwise one, so float32 sums
differ in the last bits; the backward is the reference's expression, elementwise).
"""

import math

import numpy as np

from minicnn.ops._dispatch import Op

reduction_forward, reduction_backward = Op("reduction_forward"), Op("reduction_backward")

OPERATIONS = ("SUM", "ASUM", "SUMSQ", "MEAN")


def reduction_coeff(dtype, operation, coeff, dim):
    """Caffe's coeff_: coeff in the dtype, divided by the row length D for MEAN."""
    c = np.dtype(dtype).type(coeff)
    return c / np.dtype(dtype).type(dim) if operation == "MEAN" else c


def _rows(x, axis):
    return x.reshape(math.prod(x.shape[:axis]), -1)           # (M, D)


@reduction_forward.impl("ref")
def _reduction_forward_ref(x, operation="SUM", axis=0, coeff=1.0):
    rows = _rows(x, axis)
    if operation in ("SUM", "MEAN"):
        y = rows.sum(axis=1)
    elif operation == "ASUM":
        y = np.abs(rows).sum(axis=1)
    elif operation == "SUMSQ":
        y = (rows * rows).sum(axis=1)
    else:
        raise ValueError(f"reduction operation must be one of {OPERATIONS}, not {operation!r}")
    c = reduction_coeff(x.dtype, operation, coeff, rows.shape[1])
    if c != 1:
        y = y * c
    return y.reshape(x.shape[:axis])


@reduction_backward.impl("ref")
def _reduction_backward_ref(dy, x, operation="SUM", axis=0, coeff=1.0):
    rows = _rows(x, axis)
    scaled = (dy.reshape(-1, 1) * reduction_coeff(x.dtype, operation, coeff, rows.shape[1]))
    if operation in ("SUM", "MEAN"):
        dx = np.broadcast_to(scaled, rows.shape)
    elif operation == "ASUM":
        dx = np.sign(rows) * scaled
    elif operation == "SUMSQ":
        dx = (2 * scaled) * rows
    else:
        raise ValueError(f"reduction operation must be one of {OPERATIONS}, not {operation!r}")
    return np.array(dx, dtype=x.dtype).reshape(x.shape)


# --- CUDA (CuPy) --------------------------------------------------------------------------------
# The reference's expressions on CuPy arrays: a row sum (CuPy's reduction, in the dtype) and
# elementwise scaling; coeff stays a NumPy scalar of the dtype, as in the reference.

from minicnn import cuda  # noqa: E402


@reduction_forward.impl("cuda", available=cuda.importable)
def _reduction_forward_cuda(x, operation="SUM", axis=0, coeff=1.0):
    cp = cuda.cupy()
    rows = _rows(x, axis)
    if operation in ("SUM", "MEAN"):
        y = rows.sum(axis=1, dtype=x.dtype)
    elif operation == "ASUM":
        y = cp.abs(rows).sum(axis=1, dtype=x.dtype)
    elif operation == "SUMSQ":
        y = (rows * rows).sum(axis=1, dtype=x.dtype)
    else:
        raise ValueError(f"reduction operation must be one of {OPERATIONS}, not {operation!r}")
    c = reduction_coeff(x.dtype, operation, coeff, rows.shape[1])
    if c != 1:
        y = y * c
    return y.reshape(x.shape[:axis])


@reduction_backward.impl("cuda", available=cuda.importable)
def _reduction_backward_cuda(dy, x, operation="SUM", axis=0, coeff=1.0):
    cp = cuda.cupy()
    rows = _rows(x, axis)
    scaled = dy.reshape(-1, 1) * reduction_coeff(x.dtype, operation, coeff, rows.shape[1])
    if operation in ("SUM", "MEAN"):
        dx = cp.broadcast_to(scaled, rows.shape)
    elif operation == "ASUM":
        dx = cp.sign(rows) * scaled
    elif operation == "SUMSQ":
        dx = (2 * scaled) * rows
    else:
        raise ValueError(f"reduction operation must be one of {OPERATIONS}, not {operation!r}")
    return cp.ascontiguousarray(dx, dtype=x.dtype).reshape(x.shape)
