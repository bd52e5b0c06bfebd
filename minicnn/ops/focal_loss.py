"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", 2017), in three forks'
forms: Caffe "FocalLoss" as zimenglan-sysu-512/Focal-Loss's softmax along one axis of x and as
sciencefans/Focal-Loss's sigmoid (sigmoid_focal_loss_*), and Longqi-S/Focal-Loss's
"SoftmaxWithFocalLoss" (softmax_focal_loss_*), both at the end of this file.

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
from minicnn.ops.sigmoid_cross_entropy import _normalizer, _valid, log_likelihood
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


# --- sigmoid form: sciencefans/Focal-Loss (its GPU code; its CPU code is plain cross-entropy) ---
#
# One independent sigmoid per element of x, t the target of the same element, T = int(t)
# (truncated, as the fork's static_cast), s = sigmoid(x), V = elements whose T != ignore_label:
#     p_t = s if T == 1 else 1 - s,   a_t = alpha if T == 1 else 1 - alpha
#     ce  = -(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])))       (SigmoidCrossEntropy's)
#     loss = sum_V a_t (1 - p_t)^gamma ce / D
#     dx   = (a_t (1 - p_t)^gamma (s - t)
#             + ce a_t gamma (1 - p_t)^(gamma - 1) s (1 - s) (-1 if T == 1 else 1))
#            * loss_weight / D                                          (0 outside V)
# ce takes the float t, the focal factor the truncated T, as the fork. D: FULL and VALID without
# an ignore_label count every element, VALID with one counts V, BATCH_SIZE is x.shape[0], NONE
# is 1 (at least 1).

sigmoid_focal_loss_forward = Op("sigmoid_focal_loss_forward")
sigmoid_focal_loss_backward = Op("sigmoid_focal_loss_backward")


def _sigmoid_parts(x, target, alpha, gamma, ignore_label):
    x = np.asarray(x)
    t = np.asarray(target).reshape(x.shape)
    with np.errstate(invalid="ignore"):
        tt = np.trunc(t)                                     # static_cast<int>
    pos = tt == 1
    valid = _valid(t, ignore_label)
    e = np.exp(-np.abs(x))
    s = np.where(x >= 0, 1 / (1 + e), e / (1 + e))           # sigmoid without overflow
    one_minus_pt = np.where(pos, 1 - s, s)
    a_t = np.where(pos, alpha, 1 - alpha)
    ce = -log_likelihood(x, t)
    return t, pos, valid, s, one_minus_pt, a_t, ce


@sigmoid_focal_loss_forward.impl("ref")
def _sigmoid_focal_loss_forward_ref(x, target, *, alpha=0.25, gamma=2.0, ignore_label=None,
                                    normalization="BATCH_SIZE"):
    """Returns the loss (a float)."""
    _, _, valid, _, omp, a_t, ce = _sigmoid_parts(x, target, alpha, gamma, ignore_label)
    terms = a_t * omp ** gamma * ce
    d = _normalizer(np.asarray(x), valid, normalization)
    return float(np.sum(terms[valid])) / d


@sigmoid_focal_loss_backward.impl("ref")
def _sigmoid_focal_loss_backward_ref(x, target, *, alpha=0.25, gamma=2.0, ignore_label=None,
                                     normalization="BATCH_SIZE", loss_weight=1.0):
    x = np.asarray(x)
    t, pos, valid, s, omp, a_t, ce = _sigmoid_parts(x, target, alpha, gamma, ignore_label)
    e = np.exp(-np.abs(x))
    ds = e / (e * e + 2 * e + 1)                             # s (1 - s), as the fork writes it
    with np.errstate(divide="ignore", invalid="ignore"):     # (1 - p_t)^(gamma - 1) at 0
        second = a_t * gamma * omp ** (gamma - 1) * ds * np.where(pos, -1.0, 1.0) * ce
    dx = a_t * omp ** gamma * (s - t) + second
    dx = np.where(valid, dx, 0.0)
    d = _normalizer(x, valid, normalization)
    return dx * (float(np.asarray(loss_weight).reshape(-1)[0]) / d)


# --- SoftmaxWithFocalLoss: Longqi-S/Focal-Loss (softmax_focal_loss_param) ----------------------
#
# Along one axis as the softmax form above; p_t = max(p[label], FLT_MIN) at each kept position:
#     scale = alpha (1 - p_t)^gamma,  ce = -log p_t,  loss = sum |scale ce| / D
#     dx_c  = (scale (p_c - [c == label])
#              + ce * (-alpha gamma (1 - p_t)^gamma p_t                           if T(c)
#                      alpha gamma (1 - q_c)^(gamma - 1) p_t q_c, q_c = max(p_c, FLT_MIN)  else))
#             * loss_weight / D
# T(c) is the fork's test for the target class, label == c * inner + j (j the position within
# inner): the target exactly when inner == 1 (N x C scores), another class or none otherwise.
# The non-target term has (1 - p_c)^(gamma - 1) where the gradient has (1 - p_t)^(gamma - 1): dx
# is the gradient only for gamma 0 or 1 with inner == 1. Kept, as the fork's training used it.

softmax_focal_loss_forward = Op("softmax_focal_loss_forward")
softmax_focal_loss_backward = Op("softmax_focal_loss_backward")


def _longqi_parts(prob, label, axis, alpha, gamma, ignore_label):
    p, lab, valid, pt = _target(prob, label, axis, ignore_label)
    pt = np.maximum(pt, FLT_MIN)
    scale = alpha * (1 - pt) ** gamma
    ce = -np.log(pt)
    return p, lab, valid, pt, scale, ce


@softmax_focal_loss_forward.impl("ref")
def _softmax_focal_loss_forward_ref(x, label, *, axis=1, alpha=0.25, gamma=2.0,
                                    ignore_label=None, normalization="VALID"):
    """Returns (loss, prob)."""
    prob = softmax_forward.impls["ref"](x, axis=axis)
    _, _, valid, pt, scale, ce = _longqi_parts(prob, label, axis, alpha, gamma, ignore_label)
    outer, inner = pt.shape
    d = loss_normalizer(normalization, outer, inner, int(valid.sum()))
    return float(np.sum(np.abs(scale * ce)[valid])) / d, prob       # caffe_cpu_asum


@softmax_focal_loss_backward.impl("ref")
def _softmax_focal_loss_backward_ref(prob, label, *, axis=1, alpha=0.25, gamma=2.0,
                                     ignore_label=None, normalization="VALID", loss_weight=1.0):
    p, lab, valid, pt, scale, ce = _longqi_parts(prob, label, axis, alpha, gamma, ignore_label)
    outer, c, inner = p.shape
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, lab[:, None, :], 1, axis=1)
    first = (p - onehot) * scale[:, None, :]
    flat = np.arange(c)[:, None] * inner + np.arange(inner)[None, :]     # (C, inner)
    is_target = lab[:, None, :] == flat[None]                            # the fork's test
    q = np.maximum(p, FLT_MIN)
    with np.errstate(divide="ignore", invalid="ignore"):                 # (1 - q)^(gamma-1) at 0
        other = alpha * gamma * (1 - q) ** (gamma - 1) * pt[:, None, :] * q
    target = (-alpha * gamma * (1 - pt) ** gamma * pt)[:, None, :]
    second = np.where(is_target, target, other) * ce[:, None, :]
    dx = (first + second) * valid[:, None, :]
    dx *= float(np.asarray(loss_weight).reshape(-1)[0]) / \
        loss_normalizer(normalization, outer, inner, int(valid.sum()))
    return dx.reshape(prob.shape)
