"""Focal loss, the softmax form of zimenglan-sysu-512/Focal-Loss (Caffe "FocalLoss"; Lin et al.,
"Focal Loss for Dense Object Detection", 2017), along one axis of x.

x has shape (outer..., C, inner...) around ``axis``; labels hold one class per (outer, inner)
position. p = softmax(x), p_t = p[label], V = positions whose label != ignore_label:
    loss = -sum_{V} alpha (1 - p_t)^gamma log(max(p_t, FLT_MIN)) / D
    dx   = g p_t (p - onehot(label)) * loss_weight / D          (0 at ignored positions)
    g    = -gamma alpha (1 - p_t)^gamma / max(1 - p_t, 1e-10) log(max(p_t, FLT_MIN))
           + alpha (1 - p_t)^gamma / p_t
D as SoftmaxWithLoss's (FULL, VALID, BATCH_SIZE, NONE). g is -dFL/dp_t, so dx is the gradient
away from the two clamps (the fork's, kept: p_t below FLT_MIN, 1 - p_t below 1e-10).
Impls: ref (the layer is a host layer in a GPU net).
"""

import numpy as np

from minicnn.ops._dispatch import Op
from minicnn.ops.softmax import FLT_MIN, _labels, loss_normalizer, softmax_forward, split_shape

focal_loss_forward, focal_loss_backward = Op("focal_loss_forward"), Op("focal_loss_backward")


def _target(prob, label, axis, ignore_label):
    outer, c, inner = split_shape(prob.shape, axis)
    p = prob.reshape(outer, c, inner)
    lab, valid = _labels(label, outer, inner, ignore_label)
    pt = np.take_along_axis(p, lab[:, None, :], axis=1)[:, 0, :]          # (outer, inner)
    return p, lab, valid, pt


@focal_loss_forward.impl("ref")
def _focal_loss_forward_ref(x, label, *, axis=1, alpha=0.25, gamma=2.0, ignore_label=None,
                            normalization="VALID"):
    """Returns (loss, prob)."""
    prob = softmax_forward.impls["ref"](x, axis=axis)
    _, _, valid, pt = _target(prob, label, axis, ignore_label)
    power = alpha * (1 - pt) ** gamma
    terms = -power * np.log(np.maximum(pt, FLT_MIN))
    outer, inner = pt.shape
    d = loss_normalizer(normalization, outer, inner, int(valid.sum()))
    return float(np.sum(terms[valid])) / d, prob


@focal_loss_backward.impl("ref")
def _focal_loss_backward_ref(prob, label, *, axis=1, alpha=0.25, gamma=2.0, ignore_label=None,
                             normalization="VALID", loss_weight=1.0):
    p, lab, valid, pt = _target(prob, label, axis, ignore_label)
    power = alpha * (1 - pt) ** gamma
    with np.errstate(divide="ignore", invalid="ignore"):            # p_t == 0: the fork's inf
        g = -gamma * power / np.maximum(1 - pt, 1e-10) * np.log(np.maximum(pt, FLT_MIN)) \
            + power / pt
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, lab[:, None, :], 1, axis=1)
    dx = (g * pt)[:, None, :] * (p - onehot)
    dx *= valid[:, None, :]
    outer, inner = pt.shape
    dx *= float(np.asarray(loss_weight).reshape(-1)[0]) / \
        loss_normalizer(normalization, outer, inner, int(valid.sum()))
    return dx.reshape(prob.shape)
