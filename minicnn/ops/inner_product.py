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

Why (the default layout), per element: Y[m, n] = sum_k X[m, k] w[n, k] + b[n]. So
dY[m, n]/dX[m, k] = w[n, k], and X[m, k] reaches every output n of its item: dX[m, k] = sum_n
DY[m, n] w[n, k], i.e. DY @ w. Weight w[n, k] is used by every item m: dw[n, k] = sum_m DY[m, n]
X[m, k], i.e. DY.T @ X (the items' gradients add up, which is why a batch's dw is a sum). The
bias is added to every item: db[n] = sum_m DY[m, n]. A shape check remembers all three: dx has
x's shape, dw has w's.

``out=`` (forward) and ``dx_out=`` name arrays to write y and dx into; ``dw_acc=`` and
``db_acc=`` name arrays to *add* dw and db to (a layer's parameter diffs, which accumulate).
Impls: ref (NumPy's BLAS); cpu, float32 (csrc/inner_product.cpp on minicnn's GEMM: each pass
reads W exactly once, and dW is added into the diff without a W-sized temporary).
"""

import math
import os

import numpy as np

from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out

__all__ = ["inner_product_forward", "inner_product_backward", "inner_product_backward_step"]

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
                                need_db=True, dx_out=None, dw_acc=None, db_acc=None):
    """Returns (dx, dw, db); an entry is None when its ``need_*`` is False."""
    dy2 = dy.reshape(-1, dy.shape[-1])                              # (M, N)
    dx = dw = db = None
    if need_dx:
        dx = write_out(dx_out, (dy2 @ (w.T if transpose else w)).reshape(x.shape))
    if need_dw:
        x2 = _as_matrix(x, axis)
        dw = _accumulate(dw_acc, x2.T @ dy2 if transpose else dy2.T @ x2)
    if need_db:
        db = _accumulate(db_acc, dy2.sum(axis=0))
    return dx, dw, db


def _accumulate(acc, value):
    if acc is None:
        return value
    acc += value.reshape(acc.shape)
    return acc


# --- fast CPU (csrc/inner_product.cpp) ----------------------------------------------------------

def _native_ok(*arrays):
    return all(a is None or (a.dtype == np.float32 and a.flags.c_contiguous) for a in arrays)


def _writable(out, shape):
    return out is not None and out.shape == tuple(shape) and out.dtype == np.float32 and \
        out.flags.c_contiguous and out.flags.writeable


@inner_product_forward.impl("cpu", available=lib is not None)
def _inner_product_forward_cpu(x, w, b=None, *, axis=1, transpose=False, out=None):
    x2 = _as_matrix(x, axis)
    if not _native_ok(x2, w, b) or w.ndim != 2 or \
            (w.shape[0] if transpose else w.shape[1]) != x2.shape[1]:
        return _inner_product_forward_ref(x, w, b, axis=axis, transpose=transpose, out=out)
    shape = (*x.shape[:axis], w.shape[1] if transpose else w.shape[0])
    y = out if _writable(out, shape) else np.empty(shape, np.float32)
    lib.ip_forward(x2, w, b, y.reshape(x2.shape[0], shape[-1]), transpose)
    return y if y is out or out is None else write_out(out, y)


@inner_product_backward.impl("cpu", available=lib is not None)
def _inner_product_backward_cpu(dy, x, w, *, axis=1, transpose=False, need_dx=True, need_dw=True,
                                need_db=True, dx_out=None, dw_acc=None, db_acc=None):
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), _as_matrix(x, axis)
    if not _native_ok(dy2, x2, w) or w.ndim != 2 or dy2.shape[0] != x2.shape[0] or \
            w.size != dy2.shape[1] * x2.shape[1] or \
            (dw_acc is not None and not _writable(dw_acc, w.shape)):
        return _inner_product_backward_ref(dy, x, w, axis=axis, transpose=transpose,
                                           need_dx=need_dx, need_dw=need_dw, need_db=need_db,
                                           dx_out=dx_out, dw_acc=dw_acc, db_acc=db_acc)
    dx = dw = db = None
    if need_dx:
        dx = dx_out if _writable(dx_out, x.shape) else np.empty(x.shape, np.float32)
        lib.ip_backward_data(dy2, w, dx.reshape(x2.shape), transpose)
        if dx_out is not None and dx is not dx_out:
            dx = write_out(dx_out, dx)
    if need_dw:
        dw = dw_acc if dw_acc is not None else np.zeros(w.shape, np.float32)
        lib.ip_backward_filter(dy2, x2, dw, transpose)
    if need_db:
        db = _accumulate(db_acc, dy2.sum(axis=0))
    return dx, dw, db


def inner_product_backward_step(dy, x, w, diff, step, *, axis=1, transpose=False, dx_out=None):
    """The input gradient (into ``dx_out``, when given) and the solver's step of the weights in
    one pass over them (csrc/inner_product.cpp): ``step`` is a minicnn.solver.ParamStep, and w,
    step.history and ``diff`` (w's diff, which gets the step, as after Caffe's update) are
    updated in place (``diff`` None: not written, for a caller that knows the step equals the
    new history); the weight gradient itself is never stored. Bit for bit the result of the
    backward followed by the solver's update. True when done; False, with nothing written,
    where this pass does not run (not float32 host arrays, a transposed layer, a batch over 64,
    no AVX-512, MINICNN_CPU=ref): then take the backward and leave the step to the solver."""
    if lib is None or transpose or os.environ.get("MINICNN_CPU", "") == "ref":
        return False
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), _as_matrix(x, axis)
    updated = (w, step.history) if diff is None else (w, diff, step.history)
    if not all(type(a) is np.ndarray for a in (dy2, x2, *updated)) or \
            not _native_ok(dy2, x2) or w.ndim != 2 or w.shape != (dy2.shape[1], x2.shape[1]) or \
            dy2.shape[0] != x2.shape[0] or not all(_writable(a, w.shape) for a in updated):
        return False
    dx2 = None
    if dx_out is not None:
        if not _writable(dx_out, x.shape):
            return False
        dx2 = dx_out.reshape(x2.shape)
    return lib.ip_backward_step(dy2, x2, w, step.history, diff, dx2, step.lr, step.momentum,
                                step.decay, step.regularization, step.nesterov)


# --- CUDA (cuBLAS through minicnn.cuda.gemm; the bias by kernels/im2col.cu) ----------------------
# Transposes are cuBLAS flags, not copies; dW is added into the diff by the GEMM itself (beta 1).

from minicnn import cuda  # noqa: E402


@inner_product_forward.impl("cuda", available=cuda.importable)
def _inner_product_forward_cuda(x, w, b=None, *, axis=1, transpose=False, out=None):
    x2, w, b = cuda.contiguous(_as_matrix(x, axis), w, b)
    m, k = x2.shape
    n = w.shape[1] if transpose else w.shape[0]
    if w.ndim != 2 or w.size != n * k:
        raise ValueError(f"inner product: weights of shape {w.shape} do not take {k} inputs")
    shape = (*x.shape[:axis], n)
    y = cuda.output(cuda.distinct(out, x, w, b), shape, x.dtype)
    cuda.gemm(x2, w, y, m, n, k, trans_b=not transpose)
    if b is not None:
        cuda.launch_1d(cuda.kernel("im2col.cu", "channel_bias_add", y.dtype), y.size, y, b,
                       np.int32(n), np.int64(1))
    return cuda.finish(out, y)


@inner_product_backward.impl("cuda", available=cuda.importable)
def _inner_product_backward_cuda(dy, x, w, *, axis=1, transpose=False, need_dx=True,
                                 need_dw=True, need_db=True, dx_out=None, dw_acc=None,
                                 db_acc=None):
    dy2 = cuda.contiguous(dy.reshape(-1, dy.shape[-1]))               # (M, N)
    x2, w = cuda.contiguous(_as_matrix(x, axis), w)                  # (M, K)
    m, n = dy2.shape
    k = x2.shape[1]
    dx = dw = db = None
    if need_dx:                                   # DY @ W, or DY @ W^T when transposed
        dx = cuda.output(cuda.distinct(dx_out, dy, w), x.shape, dy.dtype)
        cuda.gemm(dy2, w, dx, m, k, n, trans_b=transpose)
        dx = cuda.finish(dx_out, dx)
    if need_dw:                                   # DY^T @ X (N, K), or X^T @ DY (K, N)
        direct = dw_acc is not None and cuda.is_device_array(dw_acc) and \
            dw_acc.flags.c_contiguous and dw_acc.dtype == dy.dtype and dw_acc.size == w.size
        dw = dw_acc if direct else cuda.cupy().zeros(w.shape, dy.dtype)
        if transpose:
            cuda.gemm(x2, dy2, dw, k, n, m, trans_a=True, beta=1.0)
        else:
            cuda.gemm(dy2, x2, dw, n, k, m, trans_a=True, beta=1.0)
        if not direct:
            dw = _accumulate(dw_acc, dw)
    if need_db:
        db = _accumulate(db_acc, dy2.sum(axis=0))
    return dx, dw, db
