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
*add* the gradients to (a layer's parameter diffs accumulate). Impls: ref.
"""

import numpy as np

from minicnn.ops._dispatch import Op

__all__ = ["embed_forward", "embed_backward", "embed_indices"]

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
