"""Softmax, softmax cross-entropy loss and top-k accuracy, along one axis of x.

x has shape (outer..., C, inner...) around ``axis``; labels hold one class per (outer, inner)
position, so label.size == outer * inner (e.g. N x C x H x W scores, N x H x W labels).

Softmax (Caffe "Softmax"), per position, made stable by subtracting the max along the axis:
    y  = exp(x - max x) / sum exp(x - max x)
    dx = y * (dy - sum(dy * y))                      (needs only y, so it is safe in place)
Subtracting the max changes nothing mathematically (it cancels between numerator and
denominator) and keeps exp from overflowing. Why dx: dy_i/dx_j = y_i (delta_ij - y_j), so
dx_j = sum_i dy_i y_i (delta_ij - y_j) = y_j (dy_j - sum_i dy_i y_i).

Softmax loss (Caffe "SoftmaxWithLoss"), p = softmax(x), V = positions whose label != ignore_label:
    loss = -sum_{V} log(max(p[label], FLT_MIN)) / D
    dx   = (p - onehot(label)) * loss_weight / D      (0 at ignored positions)
    D    = max(1, FULL: outer*inner | VALID: |V| | BATCH_SIZE: outer | NONE: 1)
FLT_MIN is the float32 one for both float32 and float64, as in Caffe.
Why dx is p - onehot: per position, -log p[label] = -x[label] + log sum_j exp(x_j), whose
derivative in x_j is -[j == label] + p_j. (Through the softmax's dx above with dy = -1/p at the
label and 0 elsewhere gives the same: the Jacobian cancels the 1/p.) This is why the two are
one layer: the fused gradient is simple and never divides by a tiny p.

Accuracy (Caffe "Accuracy"): a position is correct when fewer than top_k *other* classes score
>= the true class (ties count against it); accuracy = correct / |V| (0 when V is empty), and per
class = correct / count among positions of that class (0 for absent classes).

Labels are float arrays holding integers; callers check them first with ``find_bad_label`` (or
on the GPU ``flag_bad_labels``, read later: the GPU kernels leave unusable labels out).
Impls: ref.
"""

import math

import numpy as np

from minicnn.ops._dispatch import Op

softmax_forward, softmax_backward = Op("softmax_forward"), Op("softmax_backward")
softmax_loss_forward = Op("softmax_loss_forward")
softmax_loss_backward = Op("softmax_loss_backward")
accuracy_forward = Op("accuracy_forward")

FLT_MIN = float(np.finfo(np.float32).tiny)          # Caffe clamps p with FLT_MIN, even in double
NORMALIZATION_MODES = ("FULL", "VALID", "BATCH_SIZE", "NONE")


# --- helpers (plain values in, plain values out) ----------------------------------------------

def split_shape(shape, axis):
    """(outer, channels, inner) of ``shape`` around ``axis`` (negative counts from the end)."""
    axis = axis + len(shape) if axis < 0 else axis
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def resolve_normalization(normalization=None, normalize=None):
    """The normalization mode from LossParameter fields given as None when unset: the
    deprecated ``normalize`` counts only when ``normalization`` is unset (true -> VALID,
    false -> BATCH_SIZE); the default is VALID."""
    if normalization is None:
        if normalize is not None:
            return "VALID" if normalize else "BATCH_SIZE"
        return "VALID"
    if normalization not in NORMALIZATION_MODES:
        raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}, "
                         f"not {normalization!r}")
    return normalization


def loss_normalizer(normalization, outer, inner, valid_count):
    """Caffe's LossLayer::GetNormalizer: what the summed loss is divided by (at least 1)."""
    d = {"FULL": outer * inner, "VALID": valid_count, "BATCH_SIZE": outer,
         "NONE": 1}[resolve_normalization(normalization)]
    return float(max(1, d))


def find_bad_label(label, num_classes, ignore_label=None):
    """The first label that is not an integer in [0, num_classes) and not ``ignore_label``, as
    (flat index, value); None when every label is usable."""
    flat = np.asarray(label).reshape(-1)
    with np.errstate(invalid="ignore"):
        ok = (flat == np.floor(flat)) & (flat >= 0) & (flat < num_classes)   # NaN fails all
    if ignore_label is not None:
        ok |= flat == ignore_label
    bad = np.flatnonzero(~ok)
    return None if bad.size == 0 else (int(bad[0]), float(flat[bad[0]]))


def _labels(label, outer, inner, ignore_label):
    """(class index per position, valid mask), both (outer, inner); ignored positions index 0
    so that gathers stay in range."""
    lab = np.asarray(label).reshape(outer, inner).astype(np.int64)   # truncates, as Caffe's cast
    valid = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
    return np.where(valid, lab, 0), valid


# --- reference: softmax ------------------------------------------------------------------------

@softmax_forward.impl("ref")
def _softmax_forward_ref(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))   # the max term keeps exp from overflowing
    return e / e.sum(axis=axis, keepdims=True)


@softmax_backward.impl("ref")
def _softmax_backward_ref(dy, y, axis=1):
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


# --- reference: softmax loss -------------------------------------------------------------------

@softmax_loss_forward.impl("ref")
def _softmax_loss_forward_ref(x, label, *, axis=1, ignore_label=None, normalization="VALID"):
    """Returns (loss as a 0-d array of x's dtype, prob = softmax(x) along axis)."""
    outer, c, inner = split_shape(x.shape, axis)
    prob = _softmax_forward_ref(x, axis)
    idx, valid = _labels(label, outer, inner, ignore_label)
    p = np.take_along_axis(prob.reshape(outer, c, inner), idx[:, None, :], axis=1)[:, 0, :]
    log_p = np.log(np.maximum(p, x.dtype.type(FLT_MIN)))            # clamp: log(0) = -inf
    d = loss_normalizer(normalization, outer, inner, int(valid.sum()))
    loss = np.sum(-log_p, where=valid, dtype=x.dtype) / d        # 0, not -0, when none valid
    return np.asarray(loss, dtype=x.dtype), prob


@softmax_loss_backward.impl("ref")
def _softmax_loss_backward_ref(prob, label, *, axis=1, ignore_label=None, normalization="VALID",
                               loss_weight=1.0):
    """d(loss_weight * loss)/dx from the forward's prob."""
    outer, c, inner = split_shape(prob.shape, axis)
    idx, valid = _labels(label, outer, inner, ignore_label)
    p3 = prob.reshape(outer, c, inner)
    onehot = np.arange(c)[None, :, None] == idx[:, None, :]
    d = loss_normalizer(normalization, outer, inner, int(valid.sum()))
    dx = (p3 - onehot) * valid[:, None, :]
    return (dx * prob.dtype.type(float(loss_weight) / d)).reshape(prob.shape)


# --- reference: accuracy -----------------------------------------------------------------------

@accuracy_forward.impl("ref")
def _accuracy_forward_ref(x, label, *, axis=1, top_k=1, ignore_label=None):
    """Returns (accuracy as a 0-d array, per-class accuracy of shape (C,)), x's dtype."""
    outer, c, inner = split_shape(x.shape, axis)
    x3 = x.reshape(outer, c, inner)
    idx, valid = _labels(label, outer, inner, ignore_label)
    true = np.take_along_axis(x3, idx[:, None, :], axis=1)          # (outer, 1, inner)
    others_at_least = np.sum(x3 >= true, axis=1) - 1     # - 1: the true class is >= itself
    correct = (others_at_least < top_k) & valid
    count = int(valid.sum())
    accuracy = correct.sum() / count if count else 0.0
    seen = np.bincount(idx[valid], minlength=c)
    hits = np.bincount(idx[correct], minlength=c)
    per_class = np.divide(hits, seen, out=np.zeros(c), where=seen > 0)
    return np.asarray(accuracy, dtype=x.dtype), per_class.astype(x.dtype)


# --- CUDA (kernels/softmax.cu) ------------------------------------------------------------------
# The losses' sums (over a batch's positions), the VALID count and the backward's scale (the
# loss top's diff over the normalizer) stay on the device as CuPy scalars, and labels are checked
# there (flag_bad_labels): nothing in a training step waits for the GPU to hand a value back.

from minicnn import cuda  # noqa: E402


def _cuda_layout(shape, axis):
    outer, c, inner = split_shape(shape, axis)
    return outer, c, inner


def _cuda_ignore(ignore_label):
    return np.int32(ignore_label is not None), np.int64(0 if ignore_label is None
                                                        else int(ignore_label))


def _cuda_labels(label, dtype):
    return cuda.cupy().ascontiguousarray(cuda.to_device(label) if not cuda.is_device_array(label)
                                         else label, dtype=dtype)


@softmax_forward.impl("cuda", available=cuda.importable)
def _softmax_forward_cuda(x, axis=1):
    x = cuda.contiguous(x)
    outer, c, inner = _cuda_layout(x.shape, axis)
    y = cuda.cupy().empty_like(x)
    if _by_rows(c, inner):
        cuda.launch_blocks(cuda.kernel("softmax.cu", "softmax_forward_rows", x.dtype),
                           (min(outer, cuda.MAX_BLOCKS),), (x, y, np.int32(c), np.int64(outer)))
    else:
        cuda.launch_1d(cuda.kernel("softmax.cu", "softmax_forward", x.dtype), outer * inner, x,
                       y, np.int32(c), np.int64(inner))
    return y


CUDA_ROWS_FROM = 64            # classes from which a row of scores (inner 1) gets a block


def _by_rows(c, inner):
    return inner == 1 and c >= CUDA_ROWS_FROM


@softmax_backward.impl("cuda", available=cuda.importable)
def _softmax_backward_cuda(dy, y, axis=1):
    dy, y = cuda.contiguous(dy, y)
    outer, c, inner = _cuda_layout(y.shape, axis)
    dx = cuda.cupy().empty_like(dy)
    if _by_rows(c, inner):
        cuda.launch_blocks(cuda.kernel("softmax.cu", "softmax_backward_rows", dy.dtype),
                           (min(outer, cuda.MAX_BLOCKS),),
                           (dy, y, dx, np.int32(c), np.int64(outer)))
    else:
        cuda.launch_1d(cuda.kernel("softmax.cu", "softmax_backward", dy.dtype), outer * inner,
                       dy, y, dx, np.int32(c), np.int64(inner))
    return dx


def cuda_normalizer(normalization, outer, inner, valid_count, dtype):
    """loss_normalizer for the GPU, as a ``dtype`` scalar: for VALID normalization with a device
    ``valid_count``, the device scalar max(1, count) that no one reads on the host."""
    if resolve_normalization(normalization) != "VALID" or not cuda.is_device_array(valid_count):
        return np.dtype(dtype).type(loss_normalizer(normalization, outer, inner, valid_count))
    return cuda.cupy().maximum(valid_count, 1).astype(dtype)


def flag_bad_labels(label, num_classes, ignore_label=None):
    """find_bad_label on the GPU, without waiting for it: a device int32 array (1,) that becomes
    nonzero if some label is not an integer in [0, num_classes) nor ignore_label. Read it once
    the GPU has caught up (the Net does, with the loss; minicnn.layer.Layer.deferred_flag)."""
    bad = cuda.cupy().zeros(1, np.int32)
    label = cuda.contiguous(label)
    if label.dtype not in cuda.CTYPES:
        label = label.astype(np.float32)
    cuda.launch_1d(cuda.kernel("softmax.cu", "find_bad_labels", label.dtype), label.size, label,
                   bad, np.int32(num_classes), *_cuda_ignore(ignore_label))
    return bad


def cuda_label_classes(label, num_classes):
    """Labels on the GPU as classes for CuPy gathers: (int64 indices, usable), usable where the
    label is an integer in [0, num_classes); elsewhere (bad labels, which flag_bad_labels
    reports, or an ignore_label outside the classes) the index is 0, so a gather stays in range."""
    cp = cuda.cupy()
    label = label if cuda.is_device_array(label) else cuda.to_device(np.asarray(label))
    if label.dtype not in cuda.CTYPES:
        label = label.astype(np.float64)
    usable = (cp.trunc(label) == label) & (label >= 0) & (label < num_classes)
    return cp.where(usable, label, label.dtype.type(0)).astype(np.int64), usable


@softmax_loss_forward.impl("cuda", available=cuda.importable)
def _softmax_loss_forward_cuda(x, label, *, axis=1, ignore_label=None, normalization="VALID"):
    cp = cuda.cupy()
    x = cuda.contiguous(x)
    outer, c, inner = _cuda_layout(x.shape, axis)
    prob = _softmax_forward_cuda(x, axis)
    label = _cuda_labels(label, x.dtype)
    nll = cp.empty(outer * inner, x.dtype)
    valid = cp.empty(outer * inner, np.int32)
    cuda.launch_1d(cuda.kernel("softmax.cu", "softmax_loss_forward", x.dtype), outer * inner,
                   prob, label, nll, valid, np.int32(c), np.int64(inner),
                   *_cuda_ignore(ignore_label))
    count = valid.sum() if resolve_normalization(normalization) == "VALID" else 0
    loss = nll.sum(dtype=x.dtype) / cuda_normalizer(normalization, outer, inner, count, x.dtype)
    return loss.astype(x.dtype, copy=False), prob


@softmax_loss_backward.impl("cuda", available=cuda.importable)
def _softmax_loss_backward_cuda(prob, label, *, axis=1, ignore_label=None, normalization="VALID",
                                loss_weight=1.0):
    prob = cuda.contiguous(prob)
    outer, c, inner = _cuda_layout(prob.shape, axis)
    label = _cuda_labels(label, prob.dtype)
    count = 0
    if resolve_normalization(normalization) == "VALID":
        count = outer * inner if ignore_label is None else \
            (label != prob.dtype.type(ignore_label)).sum()
    scale = cuda.loss_scale(
        loss_weight, cuda_normalizer(normalization, outer, inner, count, np.float64), prob.dtype)
    dx = cuda.cupy().empty_like(prob)
    cuda.launch_1d(cuda.kernel("softmax.cu", "softmax_loss_backward", prob.dtype), prob.size,
                   prob, label, dx, np.int32(c), np.int64(inner), *_cuda_ignore(ignore_label),
                   scale)
    return dx


@accuracy_forward.impl("cuda", available=cuda.importable)
def _accuracy_forward_cuda(x, label, *, axis=1, top_k=1, ignore_label=None):
    cp = cuda.cupy()
    x = cuda.contiguous(x)
    outer, c, inner = _cuda_layout(x.shape, axis)
    label = _cuda_labels(label, x.dtype)
    seen, hits = cp.zeros(c, np.int32), cp.zeros(c, np.int32)
    cuda.launch_1d(cuda.kernel("softmax.cu", "accuracy_forward", x.dtype), outer * inner, x,
                   label, seen, hits, np.int32(c), np.int64(inner), np.int32(top_k),
                   *_cuda_ignore(ignore_label))
    count, correct = seen.sum(), hits.sum()
    accuracy = correct.astype(np.float64) / cp.maximum(count, 1).astype(np.float64)
    per_class = cp.where(seen > 0, hits / cp.maximum(seen, 1), 0.0)
    return accuracy.astype(x.dtype), per_class.astype(x.dtype)
