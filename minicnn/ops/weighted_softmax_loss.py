"""happynear's caffe-windows SoftmaxWithLoss with a third bottom: per-position weights w, times
softmax_param.class_weight of the labelled class, and softmax_param.hard_ratio's mining.

p = softmax(x) along axis; V = positions not labelled ignore_label whose wc = w * cw[label] != 0:
    loss = -sum_{V} wc log(max(p[label], FLT_MIN)) / D(sum_{V} wc)
    dx   = (p - onehot(label)) * wc * loss_weight / D(sum_{w != 0} w)   (0 where ignored)
with D Caffe's normalizer (at least 1; VALID counts the weights, FULL, BATCH_SIZE, NONE as
usual). The two counts differ as in the fork (its forward counts w * cw, its backward w alone),
so with class weights other than 1 and VALID the backward is not the forward's gradient.

Hard mining (hard_ratio r, the fork's GPU Backward: its CPU code reads r and does nothing): the
per-position losses wc (-log max(p[label], FLT_MIN)) (0 off V) sorted ascending, the threshold
the one at int(M (1 - r)) (M positions, float32 arithmetic), and w set to 0 where the loss is
below it, before the backward above.

Impls: ref.
"""

import numpy as np

from minicnn.ops._dispatch import Op
from minicnn.ops.softmax import FLT_MIN, _labels, _softmax_forward_ref, loss_normalizer, split_shape

weighted_softmax_loss_forward = Op("weighted_softmax_loss_forward")
weighted_softmax_loss_backward = Op("weighted_softmax_loss_backward")
weighted_softmax_loss_mine = Op("weighted_softmax_loss_mine")


def _weights(weight, class_weight, idx, outer, inner, dtype):
    """(w, w * cw[label]) per position, both (outer, inner)."""
    w = np.asarray(weight, dtype).reshape(outer, inner)
    cw = np.asarray(class_weight, dtype)
    return w, w * cw[idx]


@weighted_softmax_loss_forward.impl("ref")
def _weighted_softmax_loss_forward_ref(x, label, weight, class_weight, *, axis=1,
                                       ignore_label=None, normalization="VALID"):
    """Returns (loss as a 0-d array of x's dtype, prob, per-position loss (outer, inner))."""
    outer, c, inner = split_shape(x.shape, axis)
    prob = _softmax_forward_ref(x, axis)
    idx, valid = _labels(label, outer, inner, ignore_label)
    _, wc = _weights(weight, class_weight, idx, outer, inner, x.dtype)
    valid &= wc != 0
    p = np.take_along_axis(prob.reshape(outer, c, inner), idx[:, None, :], axis=1)[:, 0, :]
    per = np.where(valid, -wc * np.log(np.maximum(p, x.dtype.type(FLT_MIN))), 0).astype(x.dtype)
    d = loss_normalizer(normalization, outer, inner, float(np.sum(wc, where=valid)))
    return np.asarray(per.sum(dtype=x.dtype) / d, dtype=x.dtype), prob, per


@weighted_softmax_loss_backward.impl("ref")
def _weighted_softmax_loss_backward_ref(prob, label, weight, class_weight, *, axis=1,
                                        ignore_label=None, normalization="VALID",
                                        loss_weight=1.0):
    """d(loss_weight * loss)/dx from the forward's prob, with the fork's backward count."""
    outer, c, inner = split_shape(prob.shape, axis)
    idx, valid = _labels(label, outer, inner, ignore_label)
    w, wc = _weights(weight, class_weight, idx, outer, inner, prob.dtype)
    p3 = prob.reshape(outer, c, inner)
    onehot = np.arange(c)[None, :, None] == idx[:, None, :]
    d = loss_normalizer(normalization, outer, inner, float(np.sum(w, where=valid & (w != 0))))
    dx = (p3 - onehot) * np.where(valid, wc, 0)[:, None, :]
    return (dx * prob.dtype.type(float(loss_weight) / d)).reshape(prob.shape)


def hard_ratio_index(count, hard_ratio):
    """The fork's (int)(outer_num_ * inner_num_ * (1 - hard_ratio_)), in float32."""
    return int(np.float32(count) * (np.float32(1) - np.float32(hard_ratio)))


@weighted_softmax_loss_mine.impl("ref")
def _weighted_softmax_loss_mine_ref(per_position_loss, weight, hard_ratio):
    """The weights with 0 where the position's loss is below the hard_ratio threshold (the
    loss at int(M (1 - r)) of the losses sorted ascending)."""
    per = np.asarray(per_position_loss).reshape(-1)
    k = hard_ratio_index(per.size, hard_ratio)
    threshold = np.sort(per)[k]
    w = np.asarray(weight)
    return np.where(per.reshape(w.shape) < threshold, w.dtype.type(0), w)
