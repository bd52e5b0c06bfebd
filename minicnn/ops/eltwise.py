"""Elementwise combination of K same-shaped arrays, Caffe's "Eltwise".

    SUM   y = sum_k coeff_k * x_k          dx_k = coeff_k * dy          (coeff default all 1)
    PROD  y = prod_k x_k                   dx_k = dy * prod_{j != k} x_j   (stable_prod_grad)
                                           dx_k = dy * y / x_k             (otherwise; inf/nan at 0)
    MAX   y = max_k x_k                    dx_k = dy where k is the argmax, else 0

Kink convention (MAX ties), as Caffe behaves: bottoms 0 and 1 are compared first with x_0 > x_1,
so a tie between them goes to bottom 1; each later bottom takes over only if strictly greater.
Forward returns the argmax (an int32 array, None for SUM and PROD) for backward to route dy.
``out=`` (forward) and ``outs=`` (backward, one array or None per bottom) name arrays to write
into; they may be inputs (an in-place layer), as every operation here is elementwise.
Impls: ref (NumPy ufuncs with ``out``: one pass per term, no temporaries); cpu for SUM
(csrc/eltwise.cpp: the same arithmetic in one pass on every core; PROD and MAX take ref).
"""

import numpy as np

from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out

eltwise_forward, eltwise_backward = Op("eltwise_forward"), Op("eltwise_backward")

OPERATIONS = ("PROD", "SUM", "MAX")


def _check_operation(operation):
    if operation not in OPERATIONS:
        raise ValueError(f"eltwise operation must be one of {OPERATIONS}, not {operation!r}")


# --- reference ---------------------------------------------------------------------------------

@eltwise_forward.impl("ref")
def _eltwise_forward_ref(xs, operation="SUM", coeff=None, *, out=None):
    """xs: a sequence of K >= 2 arrays of one shape. Returns (y, argmax or None)."""
    _check_operation(operation)
    if operation == "SUM":
        if coeff is None or all(c == 1 for c in coeff):       # x * 1 is exact: skip it
            y = np.add(xs[0], xs[1], out=out)
            for x in xs[2:]:
                np.add(y, x, out=y)
            return y, None
        y = xs[0] * xs[0].dtype.type(coeff[0])
        for x, c in zip(xs[1:], coeff[1:]):
            y = y + x * x.dtype.type(c)
        return write_out(out, y), None
    if operation == "PROD":
        y = np.multiply(xs[0], xs[1], out=out)
        for x in xs[2:]:
            np.multiply(y, x, out=y)
        return y, None
    # MAX: the first comparison is strict in favour of bottom 0, so ties go to bottom 1
    first = xs[0] > xs[1]
    y = np.where(first, xs[0], xs[1])
    argmax = np.where(first, 0, 1).astype(np.int32)
    for k, x in enumerate(xs[2:], start=2):
        wins = x > y
        y = np.where(wins, x, y)
        argmax[wins] = k
    return write_out(out, y), argmax


@eltwise_backward.impl("ref")
def _eltwise_backward_ref(dy, xs, operation="SUM", coeff=None, y=None, argmax=None,
                          stable_prod_grad=True, which=None, *, outs=None):
    """Returns [dx_k] (None for k not in ``which``, default all). PROD with
    stable_prod_grad=False needs y; MAX needs the argmax from forward."""
    _check_operation(operation)
    which = list(range(len(xs)) if which is None else which)
    outs = [None] * len(xs) if outs is None else outs
    if operation == "SUM":          # dy may be one of the outs: write that one last
        which.sort(key=lambda k: outs[k] is dy)
    dxs = [None] * len(xs)
    for k in which:
        if operation == "SUM":
            c = 1.0 if coeff is None else coeff[k]
            dxs[k] = np.multiply(dy, dy.dtype.type(c), out=outs[k])
        elif operation == "PROD":
            if stable_prod_grad:
                partial = np.ones_like(dy)
                for j, x in enumerate(xs):
                    if j != k:
                        partial = partial * x
            else:
                with np.errstate(divide="ignore", invalid="ignore"):   # Caffe divides blindly
                    partial = y / xs[k]
            dxs[k] = dy * partial
        else:
            dxs[k] = np.where(argmax == k, dy, dy.dtype.type(0))
    if operation != "SUM":          # PROD and MAX read dy for every k: write the outs after
        dxs = [None if dx is None else write_out(outs[k], dx) for k, dx in enumerate(dxs)]
    return dxs


# --- fast CPU (csrc/eltwise.cpp): SUM -----------------------------------------------------------

def _native_sum(arrays, outs=()):
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        type(a) is np.ndarray and a.dtype == dtype and a.shape == arrays[0].shape
        and a.flags.c_contiguous for a in arrays) and all(
        o is None or (type(o) is np.ndarray and o.dtype == dtype and o.shape == arrays[0].shape
                      and o.flags.c_contiguous and o.flags.writeable) for o in outs)


@eltwise_forward.impl("cpu", available=lib is not None)
def _eltwise_forward_cpu(xs, operation="SUM", coeff=None, *, out=None):
    if operation != "SUM" or len(xs) < 2 or not _native_sum(list(xs), [out]):
        return _eltwise_forward_ref(xs, operation, coeff, out=out)
    y = np.empty_like(xs[0]) if out is None else out
    plain = coeff is None or all(c == 1 for c in coeff)
    lib.eltwise_sum(list(xs), None if plain else np.asarray(coeff, xs[0].dtype), y)
    return y, None


@eltwise_backward.impl("cpu", available=lib is not None)
def _eltwise_backward_cpu(dy, xs, operation="SUM", coeff=None, y=None, argmax=None,
                          stable_prod_grad=True, which=None, *, outs=None):
    which = list(range(len(xs)) if which is None else which)
    outs = [None] * len(xs) if outs is None else list(outs)
    if operation != "SUM" or not _native_sum([dy], outs):
        return _eltwise_backward_ref(dy, xs, operation, coeff, y, argmax, stable_prod_grad,
                                     which, outs=outs)
    dxs = [None] * len(xs)
    for k in which:
        dxs[k] = np.empty_like(dy) if outs[k] is None else outs[k]
    lib.eltwise_scatter(dy, [dxs[k] for k in which],
                        [1.0 if coeff is None else float(coeff[k]) for k in which])
    return dxs


# --- CUDA (kernels/eltwise.cu for MAX; SUM and PROD through CuPy's ufuncs with out=) ------------

from minicnn import cuda  # noqa: E402


@eltwise_forward.impl("cuda", available=cuda.importable)
def _eltwise_forward_cuda(xs, operation="SUM", coeff=None, *, out=None):
    _check_operation(operation)
    cp = cuda.cupy()
    if operation != "MAX":
        if operation == "PROD" or coeff is None or all(c == 1 for c in coeff):
            fn = cp.multiply if operation == "PROD" else cp.add
            y = fn(xs[0], xs[1], out=out)
            for x in xs[2:]:
                fn(y, x, out=y)
            return y, None
        y = xs[0] * xs[0].dtype.type(coeff[0])
        for x, c in zip(xs[1:], coeff[1:]):
            y = y + x * x.dtype.type(c)
        return cuda.finish(out, y), None
    xs = [cuda.contiguous(x) for x in xs]
    y = cuda.output(cuda.distinct(out, *xs[2:]), xs[0].shape, xs[0].dtype)
    argmax = cp.empty(y.shape, np.int32)
    cuda.launch_1d(cuda.kernel("eltwise.cu", "eltwise_max_first", y.dtype), y.size, xs[0], xs[1],
                   y, argmax)
    step = cuda.kernel("eltwise.cu", "eltwise_max_next", y.dtype)
    for k, x in enumerate(xs[2:], start=2):
        cuda.launch_1d(step, y.size, x, y, argmax, np.int32(k))
    return cuda.finish(out, y), argmax


@eltwise_backward.impl("cuda", available=cuda.importable)
def _eltwise_backward_cuda(dy, xs, operation="SUM", coeff=None, y=None, argmax=None,
                           stable_prod_grad=True, which=None, *, outs=None):
    _check_operation(operation)
    cp = cuda.cupy()
    which = list(range(len(xs)) if which is None else which)
    outs = [None] * len(xs) if outs is None else outs
    if operation == "SUM":          # dy may be one of the outs: write that one last
        which.sort(key=lambda k: outs[k] is dy)
    dxs = [None] * len(xs)
    for k in which:
        if operation == "SUM":
            c = 1.0 if coeff is None else coeff[k]
            dxs[k] = cp.multiply(dy, dy.dtype.type(c), out=outs[k])
        elif operation == "PROD":
            if stable_prod_grad:
                partial = cp.ones_like(dy)
                for j, x in enumerate(xs):
                    if j != k:
                        partial = partial * x
            else:
                partial = y / xs[k]
            dxs[k] = dy * partial
        else:
            dy_c, argmax_c = cuda.contiguous(dy, argmax)
            dx = cp.empty_like(dy_c)
            cuda.launch_1d(cuda.kernel("eltwise.cu", "eltwise_max_backward", dy.dtype), dx.size,
                           dy_c, argmax_c, dx, np.int32(k))
            dxs[k] = dx
    if operation != "SUM":          # PROD and MAX read dy for every k: write the outs after
        dxs = [None if dx is None else cuda.finish(outs[k], dx) for k, dx in enumerate(dxs)]
    return dxs
