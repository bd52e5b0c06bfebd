"""Multinomial logistic loss, Caffe's "MultinomialLogisticLoss": the negative log-likelihood of
probabilities the net has already computed (a Softmax layer below it, say), N = prob.shape[0].

    loss = -sum_n log(max(p[n, label_n], 1e-20)) / N
    dp   = -loss_weight / (N * max(p[n, label_n], 1e-20))   at (n, label_n), 0 elsewhere

The clamp (Caffe's kLOG_THRESHOLD, 1e-20 in float and double) keeps log and the division finite
when a probability is 0; below it the gradient is that of the clamped value, not zero.
p is read as (N, count / N): Caffe indexes the row of item n by the label, so for N x C x 1 x 1
and N x C alike the classes are the C values of an item. No ignore_label, no normalization
modes (Caffe reads no loss_param here). Labels are integers in [0, count / N): the layer checks.
Impls: ref; cuda (CuPy: the same expressions, the loss weight read on the device).
"""

import numpy as np

from minicnn.ops._dispatch import Op

multinomial_logistic_loss_forward = Op("multinomial_logistic_loss_forward")
multinomial_logistic_loss_backward = Op("multinomial_logistic_loss_backward")

KLOG_THRESHOLD = 1e-20              # Caffe's kLOG_THRESHOLD (loss_layer.hpp)


def _picked(prob, label):
    """(rows, label indices, max(p[n, label_n], threshold)) with prob seen as (N, count / N)."""
    n = prob.shape[0]
    p = prob.reshape(n, -1)
    idx = np.asarray(label).reshape(n).astype(np.int64)       # truncates, as Caffe's cast
    rows = np.arange(n)
    return rows, idx, np.maximum(p[rows, idx], prob.dtype.type(KLOG_THRESHOLD))


@multinomial_logistic_loss_forward.impl("ref")
def _multinomial_logistic_loss_forward_ref(prob, label):
    """The loss as a 0-d array of prob's dtype."""
    _, _, p = _picked(prob, label)
    # Caffe's loss -= log(p) from 0: +0, not -0, when every p is 1
    loss = (0 - np.sum(np.log(p), dtype=prob.dtype)) / prob.dtype.type(prob.shape[0])
    return np.asarray(loss, dtype=prob.dtype)


@multinomial_logistic_loss_backward.impl("ref")
def _multinomial_logistic_loss_backward_ref(prob, label, loss_weight=1.0):
    """d(loss_weight * loss)/dprob: nonzero only at each item's labelled class."""
    dtype = prob.dtype.type
    rows, idx, p = _picked(prob, label)
    scale = -dtype(float(loss_weight)) / dtype(prob.shape[0])   # Caffe: -top_diff / num
    dx = np.zeros((prob.shape[0], prob.size // prob.shape[0]), prob.dtype)
    dx[rows, idx] = scale / p
    return dx.reshape(prob.shape)


# --- CUDA (CuPy) --------------------------------------------------------------------------------
# The reference's expressions on device arrays; the labels (checked by flag_bad_labels, read
# with the loss) index through cuda_label_classes, so a bad one reads class 0, and the scale
# -loss_weight / N stays a device scalar (cuda.loss_scale).

from minicnn import cuda  # noqa: E402
from minicnn.ops.softmax import cuda_label_classes  # noqa: E402


def _cuda_picked(prob, label):
    cp = cuda.cupy()
    n = prob.shape[0]
    p = prob.reshape(n, -1)
    idx, _ = cuda_label_classes(label.reshape(n), p.shape[1])
    picked = cp.take_along_axis(p, idx[:, None], axis=1)[:, 0]
    return idx, cp.maximum(picked, prob.dtype.type(KLOG_THRESHOLD))


@multinomial_logistic_loss_forward.impl("cuda", available=cuda.importable)
def _multinomial_logistic_loss_forward_cuda(prob, label):
    _, p = _cuda_picked(prob, label)
    loss = (0 - cuda.cupy().log(p).sum(dtype=prob.dtype)) / prob.dtype.type(prob.shape[0])
    return loss.astype(prob.dtype, copy=False)


@multinomial_logistic_loss_backward.impl("cuda", available=cuda.importable)
def _multinomial_logistic_loss_backward_cuda(prob, label, loss_weight=1.0):
    cp = cuda.cupy()
    n = prob.shape[0]
    idx, p = _cuda_picked(prob, label)
    scale = cuda.loss_scale(loss_weight, float(n), prob.dtype)
    onehot = (cp.arange(prob.size // n)[None, :] == idx[:, None]).astype(prob.dtype)
    return (onehot * (-scale / p)[:, None]).reshape(prob.shape)
