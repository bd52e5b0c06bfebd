"""Contrastive loss, Caffe's "ContrastiveLoss" (Hadsell, Chopra and LeCun 2006): pairs of
features a, b of shape (N, C) and a similarity y per pair, the Siamese-net loss.

    d_n   = ||a_n - b_n||                      (Euclidean distance of pair n)
    loss  = sum_n [ y_n d_n^2 + (1 - y_n) max(margin - d_n, 0)^2 ] / (2 N)
            legacy_version: max(margin - d_n^2, 0) in place of max(margin - d_n, 0)^2
    da_n  = w/N (a_n - b_n)                                    similar pairs
          = -w/N (margin - d_n) / (d_n + 1e-4) (a_n - b_n)     dissimilar, when margin > d_n
          = -w/N (a_n - b_n)                                   legacy, when margin > d_n^2
          = 0                                                  dissimilar, beyond the margin
    db    = -da                                                (w: the loss weight)

Where Caffe is surprising:
- y is a class, not a weight: a pair is similar when y, truncated to an integer (Caffe's
  static_cast<int>), is nonzero, so y = 0.5 counts as dissimilar and y = 2 as similar.
- The dissimilar gradient divides by d + 1e-4, not by d: it is finite for identical features
  (d = 0 gives 0) but is not the exact derivative of the loss; its relative error is
  1e-4 / (d + 1e-4) (1e-4 at d = 1). Caffe's numbers, kept here.
- The loss is the sum divided by N and then by 2, each in the blob's precision.
Impls: ref; cuda (CuPy: the same expressions, the squared distances a row sum rather than
einsum's, the loss weight read on the device).
"""

import numpy as np

from minicnn.ops._dispatch import Op

contrastive_loss_forward = Op("contrastive_loss_forward")
contrastive_loss_backward = Op("contrastive_loss_backward")

DIST_EPS = 1e-4                     # Caffe's guard in the dissimilar gradient's denominator


def similar_pairs(y):
    """Which pairs are similar, as Caffe decides: int(y) != 0 (truncation toward zero)."""
    with np.errstate(invalid="ignore"):
        return np.trunc(np.asarray(y, dtype=np.float64).reshape(-1)) != 0


@contrastive_loss_forward.impl("ref")
def _contrastive_loss_forward_ref(a, b, y, *, margin=1.0, legacy_version=False):
    """(loss as a 0-d array of a's dtype, diff = a - b as (N, C), squared distances (N,))."""
    dtype = a.dtype.type
    n = a.shape[0]
    diff = a.reshape(n, -1) - b.reshape(n, -1)
    dist_sq = np.einsum("nc,nc->n", diff, diff)
    m = dtype(margin)
    if legacy_version:
        apart = np.maximum(m - dist_sq, 0)
    else:
        apart = np.maximum(m - np.sqrt(dist_sq), 0) ** 2
    terms = np.where(similar_pairs(y), dist_sq, apart)
    loss = np.sum(terms, dtype=a.dtype) / dtype(n) / dtype(2)
    return np.asarray(loss, dtype=a.dtype), diff, dist_sq


@contrastive_loss_backward.impl("ref")
def _contrastive_loss_backward_ref(diff, dist_sq, y, *, margin=1.0, legacy_version=False,
                                   loss_weight=1.0):
    """d(loss_weight * loss)/da as (N, C) from the forward's diff and dist_sq (d/db is its
    negative: Caffe computes it with the sign of alpha flipped, which is exact)."""
    dtype = diff.dtype.type
    alpha = dtype(float(loss_weight)) / dtype(diff.shape[0])
    m = dtype(margin)
    if legacy_version:
        inside = m - dist_sq > 0
        beta = np.full(dist_sq.shape, -alpha)
    else:
        dist = np.sqrt(dist_sq)
        inside = m - dist > 0
        beta = -alpha * (m - dist) / (dist + dtype(DIST_EPS))
    coeff = np.where(similar_pairs(y), alpha, np.where(inside, beta, dtype(0)))
    return coeff.astype(diff.dtype)[:, None] * diff


# --- CUDA (CuPy) --------------------------------------------------------------------------------

from minicnn import cuda  # noqa: E402


def _cuda_similar(y):
    return cuda.cupy().trunc(y.reshape(-1)) != 0          # NaN: nonzero, as the reference


@contrastive_loss_forward.impl("cuda", available=cuda.importable)
def _contrastive_loss_forward_cuda(a, b, y, *, margin=1.0, legacy_version=False):
    cp = cuda.cupy()
    dtype = a.dtype.type
    n = a.shape[0]
    diff = a.reshape(n, -1) - b.reshape(n, -1)
    dist_sq = (diff * diff).sum(axis=1, dtype=a.dtype)
    m = dtype(margin)
    if legacy_version:
        apart = cp.maximum(m - dist_sq, dtype(0))
    else:
        apart = cp.maximum(m - cp.sqrt(dist_sq), dtype(0)) ** 2
    terms = cp.where(_cuda_similar(y), dist_sq, apart)
    loss = terms.sum(dtype=a.dtype) / dtype(n) / dtype(2)
    return loss.astype(a.dtype, copy=False), diff, dist_sq


@contrastive_loss_backward.impl("cuda", available=cuda.importable)
def _contrastive_loss_backward_cuda(diff, dist_sq, y, *, margin=1.0, legacy_version=False,
                                    loss_weight=1.0):
    cp = cuda.cupy()
    dtype = diff.dtype.type
    alpha = cuda.loss_scale(loss_weight, float(diff.shape[0]), diff.dtype)
    m = dtype(margin)
    if legacy_version:
        inside = m - dist_sq > 0
        beta = -alpha
    else:
        dist = cp.sqrt(dist_sq)
        inside = m - dist > 0
        beta = -alpha * (m - dist) / (dist + dtype(DIST_EPS))
    coeff = cp.where(_cuda_similar(y), alpha, cp.where(inside, beta, dtype(0)))
    return coeff.astype(diff.dtype)[:, None] * diff
