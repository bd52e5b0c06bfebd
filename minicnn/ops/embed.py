"""Embedding lookup, Caffe's "Embed" layer: InnerProduct on one-hot inputs, done by indexing.

x holds integer indices in [0, K) (stored as floats, as every Caffe blob); w is (K, N), one row
per index (InnerProduct's (N, K) transposed, so that a row is contiguous); b is (N,):

    y[..., :] = w[x[...], :] + b          y.shape = x.shape + (N,)

which is onehot(x) @ w + b. Backward, with DY = dy.reshape(M, N) and M = x.size:

    dw[k, :] = sum of DY[m, :] over the m with x[m] == k     (repeated indices add up)
    db       = DY.sum(0)
    dx       none: y is piecewise constant in x (Caffe refuses to propagate to the indices)

``embed_indices`` turns x into integer indices and finds the first value that is not one, which
Caffe only DCHECKs (a release build reads out of bounds). ``dw_acc``/``db_acc`` name arrays to
*add* the gradients to (a layer's parameter diffs accumulate).

Impls: ref; cuda (kernels/embed.cu): the gather one thread an element of y, dw by atomicAdd
(repeated indices add up, in no fixed order), db a CuPy column sum. On the GPU
``flag_embed_indices`` stands for embed_indices without reading anything back: the indices as
int64 and a device flag (-1 and the flag set where a value is not an index), which the layer
leaves for the Net to read with the loss; the kernels never address w with an index outside
[0, K) (its row of y is the bias alone, and it adds nothing to dw).
"""

import numpy as np

from minicnn.ops._dispatch import Op

__all__ = ["embed_forward", "embed_backward", "embed_indices", "flag_embed_indices"]

embed_forward, embed_backward = Op("embed_forward"), Op("embed_backward")


def embed_indices(x, input_dim):
    """(indices, bad): x as int64 indices, and None, or the (position, value) of the first
    element that is not an integer in [0, input_dim) (NaN and inf included)."""
    idx = np.trunc(x)                         # Caffe's static_cast<int>, then an equality check
    ok = (idx == x) & (idx >= 0) & (idx < input_dim)
    if not ok.all():
        pos = np.unravel_index(int(np.argmin(ok)), x.shape)
        return None, (tuple(int(p) for p in pos), float(x[pos]))
    return idx.astype(np.int64), None


@embed_forward.impl("ref")
def _embed_forward_ref(idx, w, b=None):
    """idx: integer indices (any shape); w: (K, N); b: (N,) or None."""
    y = w[idx]                                # (..., N), a copy
    if b is not None:
        y += b
    return y


@embed_backward.impl("ref")
def _embed_backward_ref(dy, idx, w_shape, *, need_dw=True, need_db=True, dw_acc=None,
                        db_acc=None):
    """(dw, db), each None where not needed; added into dw_acc / db_acc when given."""
    rows = dy.reshape(-1, w_shape[1])          # (M, N)
    dw = db = None
    if need_dw:
        dw = dw_acc if dw_acc is not None else np.zeros(w_shape, dy.dtype)
        np.add.at(dw, idx.reshape(-1), rows)   # unbuffered: a repeated index adds every row
    if need_db:
        db = rows.sum(axis=0)
        if db_acc is not None:
            db_acc += db
            db = db_acc
    return dw, db


# --- CUDA (kernels/embed.cu) --------------------------------------------------------------------

from minicnn import cuda  # noqa: E402


def flag_embed_indices(x, input_dim):
    """embed_indices on the GPU, without waiting for it: (idx, bad), idx x as int64 device
    indices (-1 where a value is not an integer in [0, input_dim)), bad a device int32 array
    (1,) that becomes nonzero if some value is not. Read bad once the GPU has caught up (the
    Net does, with the loss: minicnn.layer.Layer.deferred_flag)."""
    cp = cuda.cupy()
    x = cuda.contiguous(x)
    if x.dtype not in cuda.CTYPES:
        x = x.astype(np.float64)
    idx, bad = cp.empty(x.shape, np.int64), cp.zeros(1, np.int32)
    cuda.launch_1d(cuda.kernel("embed.cu", "embed_indices", x.dtype), x.size, x, idx, bad,
                   np.int64(input_dim))
    return idx, bad


def _cuda_idx(idx):
    return cuda.cupy().ascontiguousarray(idx, dtype=np.int64)


@embed_forward.impl("cuda", available=cuda.importable)
def _embed_forward_cuda(idx, w, b=None):
    idx, w, b = _cuda_idx(idx), *cuda.contiguous(w, b)
    k, n = w.shape
    y = cuda.cupy().empty(idx.shape + (n,), w.dtype)
    cuda.launch_1d(cuda.kernel("embed.cu", "embed_forward", w.dtype), y.size, idx, w,
                   w if b is None else b, y, np.int32(b is not None), np.int64(n), np.int64(k))
    return y


@embed_backward.impl("cuda", available=cuda.importable)
def _embed_backward_cuda(dy, idx, w_shape, *, need_dw=True, need_db=True, dw_acc=None,
                         db_acc=None):
    cp = cuda.cupy()
    k, n = (int(d) for d in w_shape)
    rows = cuda.contiguous(dy).reshape(-1, n)                            # (M, N)
    dw = db = None
    if need_dw:
        direct = dw_acc is not None and dw_acc.flags.c_contiguous and dw_acc.dtype == dy.dtype
        dw = dw_acc if direct else cp.zeros((k, n), dy.dtype)
        cuda.launch_1d(cuda.kernel("embed.cu", "embed_backward", dy.dtype), rows.size, rows,
                       _cuda_idx(idx), dw, np.int64(n), np.int64(k))
        if dw_acc is not None and not direct:
            dw_acc += dw
            dw = dw_acc
    if need_db:
        db = rows.sum(axis=0, dtype=dy.dtype)
        if db_acc is not None:
            db_acc += db
            db = db_acc
    return dw, db
