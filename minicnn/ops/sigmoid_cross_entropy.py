"""Sigmoid cross-entropy loss, Caffe's "SigmoidCrossEntropyLoss": independent binary (or soft)
targets t for scores x of the same count, N = x.shape[0] the batch.

    p    = sigmoid(x) = 0.5 tanh(x / 2) + 0.5
    loss = -sum_{V} [x (t - 1{x >= 0}) - log(1 + exp(x - 2 x 1{x >= 0}))] / D
    dx   = (p - t) * loss_weight / D                       (0 where t is ignored)
    D    = max(1, FULL: count | VALID: |V| | BATCH_SIZE: N | NONE: 1)

The summand is -(t log p + (1 - t) log(1 - p)) written so that exp's argument is never positive:
finite for any |x| (x = +-1000 included) without overflow. V holds the elements whose target,
truncated to an integer as Caffe's static_cast<int>, is not ignore_label (so with ignore_label 0
a soft target 0.5 is ignored too, as in Caffe). The default normalization is BATCH_SIZE, unlike
SoftmaxWithLoss (the layer resolves it; see ``resolve_sce_normalization``).
Impls: ref.
"""

import numpy as np

from minicnn.ops._dispatch import Op
from minicnn.ops.softmax import cuda_normalizer, loss_normalizer, resolve_normalization

sigmoid_cross_entropy_forward = Op("sigmoid_cross_entropy_forward")
sigmoid_cross_entropy_backward = Op("sigmoid_cross_entropy_backward")


def resolve_sce_normalization(normalization=None, normalize=None):
    """As ``resolve_normalization`` (fields given as None when unset), but BATCH_SIZE when
    neither is set: Caffe's SigmoidCrossEntropyLoss default."""
    if normalization is None and normalize is None:
        return "BATCH_SIZE"
    return resolve_normalization(normalization, normalize)


def _valid(target, ignore_label):
    if ignore_label is None:
        return np.ones(target.shape, bool)
    with np.errstate(invalid="ignore"):
        return np.trunc(target) != ignore_label               # Caffe casts the target to int


def log_likelihood(x, t):
    """Per element t log p + (1 - t) log(1 - p), p = sigmoid(x), in Caffe's form whose exp never
    overflows (the summand above without its minus sign)."""
    pos = x >= 0
    return x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos))


def _normalizer(x, valid, normalization):
    outer = x.shape[0] if x.ndim else 1
    return loss_normalizer(normalization, outer, x.size // max(outer, 1), int(valid.sum()))


@sigmoid_cross_entropy_forward.impl("ref")
def _sigmoid_cross_entropy_forward_ref(x, target, *, ignore_label=None,
                                       normalization="BATCH_SIZE"):
    """Returns (loss as a 0-d array of x's dtype, p = sigmoid(x)); target has x's count."""
    t = np.asarray(target, dtype=x.dtype).reshape(x.shape)
    valid = _valid(t, ignore_label)
    loss = np.sum(-log_likelihood(x, t), where=valid, dtype=x.dtype) / _normalizer(
        x, valid, normalization)
    return np.asarray(loss, dtype=x.dtype), 0.5 * np.tanh(0.5 * x) + 0.5


@sigmoid_cross_entropy_backward.impl("ref")
def _sigmoid_cross_entropy_backward_ref(prob, target, *, ignore_label=None,
                                        normalization="BATCH_SIZE", loss_weight=1.0):
    """d(loss_weight * loss)/dx from the forward's p."""
    t = np.asarray(target, dtype=prob.dtype).reshape(prob.shape)
    valid = _valid(t, ignore_label)
    scale = float(loss_weight) / _normalizer(prob, valid, normalization)
    return np.where(valid, prob - t, 0) * prob.dtype.type(scale)


# --- CUDA (kernels/sigmoid_cross_entropy.cu) ----------------------------------------------------

from minicnn import cuda  # noqa: E402


def _cuda_target(target, x):
    cp = cuda.cupy()
    t = target if cuda.is_device_array(target) else cuda.to_device(target)
    return cp.ascontiguousarray(t.reshape(x.shape), dtype=x.dtype)


def _cuda_ignore(ignore_label, dtype):
    return np.int32(ignore_label is not None), dtype.type(0 if ignore_label is None
                                                          else ignore_label)


def _cuda_normalizer(x, valid_count, normalization, dtype):
    outer = x.shape[0] if x.ndim else 1
    return cuda_normalizer(normalization, outer, x.size // max(outer, 1), valid_count, dtype)


@sigmoid_cross_entropy_forward.impl("cuda", available=cuda.importable)
def _sigmoid_cross_entropy_forward_cuda(x, target, *, ignore_label=None,
                                        normalization="BATCH_SIZE"):
    cp = cuda.cupy()
    x = cuda.contiguous(x)
    t = _cuda_target(target, x)
    nll, prob = cp.empty_like(x), cp.empty_like(x)
    valid = cp.empty(x.shape, np.int32)
    cuda.launch_1d(cuda.kernel("sigmoid_cross_entropy.cu", "sigmoid_cross_entropy_forward",
                               x.dtype), x.size, x, t, nll, prob, valid,
                   *_cuda_ignore(ignore_label, x.dtype))
    count = valid.sum() if resolve_normalization(normalization) == "VALID" else 0
    loss = nll.sum(dtype=x.dtype) / _cuda_normalizer(x, count, normalization, x.dtype)
    return loss.astype(x.dtype, copy=False), prob


@sigmoid_cross_entropy_backward.impl("cuda", available=cuda.importable)
def _sigmoid_cross_entropy_backward_cuda(prob, target, *, ignore_label=None,
                                         normalization="BATCH_SIZE", loss_weight=1.0):
    prob = cuda.contiguous(prob)
    t = _cuda_target(target, prob)
    count = 0
    if resolve_normalization(normalization) == "VALID":
        count = prob.size if ignore_label is None else \
            (cuda.cupy().trunc(t) != prob.dtype.type(ignore_label)).sum()
    scale = cuda.loss_scale(
        loss_weight, _cuda_normalizer(prob, count, normalization, np.float64), prob.dtype)
    dx = cuda.cupy().empty_like(prob)
    cuda.launch_1d(cuda.kernel("sigmoid_cross_entropy.cu", "sigmoid_cross_entropy_backward",
                               prob.dtype), prob.size, prob, t, dx,
                   *_cuda_ignore(ignore_label, prob.dtype), scale)
    return dx
