"""Infogain loss, Caffe's "InfogainLoss": a softmax loss in which the labelled class's row of a
C x C matrix H weighs the log-probability of every class (H = identity is SoftmaxWithLoss,
but for the clamp). x has shape (outer..., C, inner...) around ``axis``, one label per
(outer, inner) position, as in softmax.py; V = positions whose label != ignore_label.

    p    = softmax(x) along axis
    loss = -sum_{V} sum_l H[label, l] log(max(p_l, 1e-20)) / D
    dx_l = (p_l * sum_k H[label, k] - H[label, l]) * loss_weight / D     (0 at ignored positions)
    D    = max(1, FULL: outer*inner | VALID: |V| (default) | BATCH_SIZE: outer | NONE: 1)

Where Caffe is surprising:
- The softmax is inside the layer (BVLC master since 2017): bottom[0] holds scores, not
  probabilities as in the older InfogainLoss, whose bottom[0] was p (and which had no axis,
  ignore_label or normalization).
- The clamp is kLOG_THRESHOLD (1e-20), not SoftmaxWithLoss's FLT_MIN; the gradient ignores it
  (it is the gradient of the unclamped loss), as SoftmaxWithLoss's does.
- The gradient uses H's row sums: exact only for the loss as written, whatever H holds (H need
  not be symmetric or have rows summing to 1).
Impls: ref; cuda (the softmax's kernels, then CuPy: the same expressions, the normalizer and the
loss weight read on the device).
"""

import numpy as np

from minicnn.ops._dispatch import Op
from minicnn.ops.softmax import loss_normalizer, softmax_forward, split_shape

infogain_loss_forward = Op("infogain_loss_forward")
infogain_loss_backward = Op("infogain_loss_backward")

KLOG_THRESHOLD = 1e-20              # Caffe's kLOG_THRESHOLD (loss_layer.hpp)


def _rows(h, label, outer, c, inner, ignore_label):
    """(H's row of each position's label, (outer, inner, C); the valid mask (outer, inner));
    ignored positions take row 0, so that the gather stays in range."""
    lab = np.asarray(label).reshape(outer, inner).astype(np.int64)   # truncates, as Caffe
    valid = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
    return h.reshape(c, c)[np.where(valid, lab, 0)], valid


@infogain_loss_forward.impl("ref")
def _infogain_loss_forward_ref(x, label, h, *, axis=1, ignore_label=None,
                               normalization="VALID"):
    """(loss as a 0-d array of x's dtype, prob = softmax(x) along axis); h has C * C values."""
    outer, c, inner = split_shape(x.shape, axis)
    prob = softmax_forward.impls["ref"](x, axis)
    rows, valid = _rows(np.asarray(h, x.dtype), label, outer, c, inner, ignore_label)
    log_p = np.log(np.maximum(prob.reshape(outer, c, inner), x.dtype.type(KLOG_THRESHOLD)))
    weighted = np.einsum("oil,oli->oi", rows, log_p)                  # sum over classes l
    d = loss_normalizer(normalization, outer, inner, int(valid.sum()))
    loss = (0 - np.sum(weighted, where=valid, dtype=x.dtype)) / x.dtype.type(d)   # +0, as Caffe
    return np.asarray(loss, dtype=x.dtype), prob


@infogain_loss_backward.impl("ref")
def _infogain_loss_backward_ref(prob, label, h, *, axis=1, ignore_label=None,
                                normalization="VALID", loss_weight=1.0):
    """d(loss_weight * loss)/dx from the forward's prob."""
    dtype = prob.dtype.type
    outer, c, inner = split_shape(prob.shape, axis)
    rows, valid = _rows(np.asarray(h, prob.dtype), label, outer, c, inner, ignore_label)
    row_sums = rows.sum(axis=2, dtype=prob.dtype)                     # (outer, inner)
    p3 = prob.reshape(outer, c, inner)
    dx = p3 * row_sums[:, None, :] - rows.transpose(0, 2, 1)
    dx *= valid[:, None, :]
    d = loss_normalizer(normalization, outer, inner, int(valid.sum()))
    return (dx * (dtype(float(loss_weight)) / dtype(d))).reshape(prob.shape)


# --- CUDA (CuPy after the softmax's kernels) ------------------------------------------------------
# Labels through cuda_label_classes (a bad one, which flag_bad_labels reports, and an ignored one
# take H's row 0 and are left out); the VALID count, the normalizer and the backward's scale stay
# on the device.

from minicnn import cuda  # noqa: E402
from minicnn.ops.softmax import (  # noqa: E402
    cuda_label_classes, cuda_normalizer, resolve_normalization)


def _cuda_rows(h, label, outer, c, inner, ignore_label, dtype):
    cp = cuda.cupy()
    lab = label.reshape(outer, inner)
    idx, valid = cuda_label_classes(lab, c)
    if ignore_label is not None:
        valid &= lab != lab.dtype.type(ignore_label)
    h = h if cuda.is_device_array(h) else cuda.to_device(np.asarray(h))
    return cp.take(h.reshape(c, c).astype(dtype, copy=False), idx, axis=0), valid


def _cuda_normalizer(normalization, outer, inner, valid, dtype):
    count = valid.sum() if resolve_normalization(normalization) == "VALID" else 0
    return cuda_normalizer(normalization, outer, inner, count, dtype)


@infogain_loss_forward.impl("cuda", available=cuda.importable)
def _infogain_loss_forward_cuda(x, label, h, *, axis=1, ignore_label=None,
                                normalization="VALID"):
    cp = cuda.cupy()
    outer, c, inner = split_shape(x.shape, axis)
    prob = softmax_forward(cuda.contiguous(x), axis)
    rows, valid = _cuda_rows(h, label, outer, c, inner, ignore_label, x.dtype)
    log_p = cp.log(cp.maximum(prob.reshape(outer, c, inner), x.dtype.type(KLOG_THRESHOLD)))
    weighted = cp.einsum("oil,oli->oi", rows, log_p)
    total = cp.where(valid, weighted, x.dtype.type(0)).sum(dtype=x.dtype)
    loss = (0 - total) / _cuda_normalizer(normalization, outer, inner, valid, x.dtype)
    return loss.astype(x.dtype, copy=False), prob


@infogain_loss_backward.impl("cuda", available=cuda.importable)
def _infogain_loss_backward_cuda(prob, label, h, *, axis=1, ignore_label=None,
                                 normalization="VALID", loss_weight=1.0):
    outer, c, inner = split_shape(prob.shape, axis)
    rows, valid = _cuda_rows(h, label, outer, c, inner, ignore_label, prob.dtype)
    row_sums = rows.sum(axis=2, dtype=prob.dtype)
    dx = prob.reshape(outer, c, inner) * row_sums[:, None, :] - rows.transpose(0, 2, 1)
    dx = dx * valid[:, None, :].astype(prob.dtype)
    scale = cuda.loss_scale(
        loss_weight, _cuda_normalizer(normalization, outer, inner, valid, np.float64), prob.dtype)
    return (dx * scale).reshape(prob.shape)
