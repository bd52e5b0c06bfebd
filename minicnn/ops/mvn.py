"""Mean-variance normalization, Caffe's "MVN".

x has shape (N, C, H, W) (fewer axes count as 1, as Caffe's legacy num()/channels(); more axes
fold into the spatial part). Each group is one (n, c) over its H*W values, or one n over its
C*H*W values with across_channels; per group, with m its size:

    mean = E[x],  var = E[(x - mean)^2]          (biased)
    s    = sqrt(var) + eps                        (eps 1e-9 by default, added AFTER the sqrt)
    y    = (x - mean) / s                         with normalize_variance (the default)
    y    = x - mean                               without
    dx   = (dy - E[dy] - y E[y dy]) / s           with normalize_variance
    dx   = dy - E[dy]                             without

The first dx is Caffe's backward, which treats s as sqrt(var): it is the exact derivative when
eps == 0 and off by O(eps / s) of |dy| / s otherwise (nothing at the default eps for data of any
real spread; but a group of two values has y = +-1 up to eps, its exact dx is itself that
small, and the two differ in full). Backward needs y and s, not x, so an in-place layer keeps
what it needs.
No kinks (a group of constant values gives y = 0 and s = eps; NaN if eps is 0, as in Caffe).
Caffe refuses blobs of more than 4 axes here; minicnn folds the extra ones into H*W.
Impls: ref.
"""

import numpy as np

from minicnn.ops._dispatch import Op

mvn_forward, mvn_backward = Op("mvn_forward"), Op("mvn_backward")


def _groups(x, across_channels):
    """x as (groups, m): one row per (n, c), or per n with across_channels."""
    num = x.shape[0] if x.ndim > 0 else 1
    if not across_channels and x.ndim > 1:
        num *= x.shape[1]
    return x.reshape(num, -1)


@mvn_forward.impl("ref")
def _mvn_forward_ref(x, *, normalize_variance=True, across_channels=False, eps=1e-9):
    """Returns (y, s): s is sqrt(var) + eps per group, shape (groups, 1), or None without
    normalize_variance."""
    g = _groups(x, across_channels)
    centred = g - g.mean(axis=1, keepdims=True)
    if not normalize_variance:
        return centred.reshape(x.shape), None
    s = np.sqrt(np.mean(centred * centred, axis=1, keepdims=True)) + eps
    with np.errstate(invalid="ignore"):                   # 0/0 = NaN only if eps == 0, as Caffe
        return (centred / s).reshape(x.shape), s


@mvn_backward.impl("ref")
def _mvn_backward_ref(dy, y, s, *, across_channels=False):
    """dx from the forward's y and s (s None: no variance normalization)."""
    d = _groups(dy, across_channels)
    dx = d - d.mean(axis=1, keepdims=True)
    if s is not None:
        yg = _groups(y, across_channels)
        with np.errstate(invalid="ignore", divide="ignore"):
            dx = (dx - yg * np.mean(yg * d, axis=1, keepdims=True)) / s
    return dx.reshape(dy.shape)


# --- CUDA (CuPy reductions over each group's row, as the reference) -----------------------------

from minicnn import cuda  # noqa: E402


@mvn_forward.impl("cuda", available=cuda.importable)
def _mvn_forward_cuda(x, *, normalize_variance=True, across_channels=False, eps=1e-9):
    cp = cuda.cupy()
    g = _groups(cuda.contiguous(x), across_channels)
    centred = g - g.mean(axis=1, keepdims=True)
    if not normalize_variance:
        return centred.reshape(x.shape), None
    s = cp.sqrt((centred * centred).mean(axis=1, keepdims=True)) + x.dtype.type(eps)
    return (centred / s).reshape(x.shape), s


@mvn_backward.impl("cuda", available=cuda.importable)
def _mvn_backward_cuda(dy, y, s, *, across_channels=False):
    d = _groups(cuda.contiguous(dy), across_channels)
    dx = d - d.mean(axis=1, keepdims=True)
    if s is not None:
        yg = _groups(cuda.contiguous(y), across_channels)
        dx = (dx - yg * (yg * d).mean(axis=1, keepdims=True)) / s
    return dx.reshape(dy.shape)
