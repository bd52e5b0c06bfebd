"""Hinge loss, Caffe's "HingeLoss": one-vs-all hinges of the scores x (read as (N, count / N))
against the labelled class, N = x.shape[0].

    t[n, j] = -1 if j == label_n else +1                    (the labelled class must score high)
    h       = max(0, 1 + t * x)                             (the hinges, one per class)
    loss    = sum(h) / N            (norm L1, the default)
            = sum(h^2) / N          (norm L2; no 1/2)
    dx      = loss_weight * t * sign(h) / N                 (L1; sign(0) = 0 at the kink)
            = loss_weight * t * 2 h / N                     (L2)

Caffe keeps the hinges in bottom[0]'s diff between forward and backward; here forward returns
them and backward takes them. No ignore_label and no normalization modes: Caffe's HingeLoss
reads no loss_param, and labels are integers in [0, count / N) (the layer checks).
Impls: ref; cuda (CuPy: the same expressions, the loss weight read on the device).
"""

import numpy as np

from minicnn.ops._dispatch import Op

hinge_loss_forward = Op("hinge_loss_forward")
hinge_loss_backward = Op("hinge_loss_backward")

HINGE_NORMS = ("L1", "L2")


def _signs(shape, label, dtype):
    """t of the docstring, (N, count / N): -1 at each item's label, +1 elsewhere."""
    n = shape[0]
    t = np.ones((n, int(np.prod(shape)) // n), dtype)
    t[np.arange(n), np.asarray(label).reshape(n).astype(np.int64)] = -1
    return t


def _check_norm(norm):
    if norm not in HINGE_NORMS:
        raise ValueError(f"hinge norm must be one of {HINGE_NORMS}, not {norm!r}")


@hinge_loss_forward.impl("ref")
def _hinge_loss_forward_ref(x, label, *, norm="L1"):
    """(loss as a 0-d array of x's dtype, the hinges h of shape (N, count / N))."""
    _check_norm(norm)
    n = x.shape[0]
    h = np.maximum(0, 1 + _signs(x.shape, label, x.dtype) * x.reshape(n, -1))
    total = np.sum(h, dtype=x.dtype) if norm == "L1" else np.sum(h * h, dtype=x.dtype)
    return np.asarray(total / x.dtype.type(n), dtype=x.dtype), h


@hinge_loss_backward.impl("ref")
def _hinge_loss_backward_ref(h, label, *, norm="L1", loss_weight=1.0):
    """d(loss_weight * loss)/dx from the forward's hinges, shape (N, count / N)."""
    _check_norm(norm)
    dtype = h.dtype.type
    n = h.shape[0]
    t = _signs(h.shape, label, h.dtype)
    if norm == "L1":
        return t * np.sign(h) * (dtype(float(loss_weight)) / dtype(n))
    return t * h * (dtype(float(loss_weight)) * dtype(2) / dtype(n))


# --- CUDA (CuPy) --------------------------------------------------------------------------------
# The reference's expressions on device arrays (labels through cuda_label_classes: a bad one,
# which flag_bad_labels reports, is read as class 0); the scale stays a device scalar.

from minicnn import cuda  # noqa: E402
from minicnn.ops.softmax import cuda_label_classes  # noqa: E402


def _cuda_signs(n, c, label, dtype):
    cp = cuda.cupy()
    idx, _ = cuda_label_classes(label.reshape(n), c)
    return (1 - 2 * (cp.arange(c)[None, :] == idx[:, None])).astype(dtype)


@hinge_loss_forward.impl("cuda", available=cuda.importable)
def _hinge_loss_forward_cuda(x, label, *, norm="L1"):
    _check_norm(norm)
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    h = cuda.cupy().maximum(x.dtype.type(0),
                            1 + _cuda_signs(n, x2.shape[1], label, x.dtype) * x2)
    total = h.sum(dtype=x.dtype) if norm == "L1" else (h * h).sum(dtype=x.dtype)
    return (total / x.dtype.type(n)).astype(x.dtype, copy=False), h


@hinge_loss_backward.impl("cuda", available=cuda.importable)
def _hinge_loss_backward_cuda(h, label, *, norm="L1", loss_weight=1.0):
    _check_norm(norm)
    n = h.shape[0]
    t = _cuda_signs(n, h.shape[1], label, h.dtype)
    if norm == "L1":           # w / N; L2: 2 w / N = w / (N / 2), the same quotient in double
        return t * cuda.cupy().sign(h) * cuda.loss_scale(loss_weight, float(n), h.dtype)
    return t * h * cuda.loss_scale(loss_weight, n / 2, h.dtype)
