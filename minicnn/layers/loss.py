"""Layers that score predictions against targets: the losses SoftmaxWithLoss, EuclideanLoss and
SigmoidCrossEntropyLoss, and Accuracy."""

import numpy as np

from minicnn import cuda, ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.sigmoid_cross_entropy import resolve_sce_normalization
from minicnn.ops.softmax import find_bad_label, flag_bad_labels, resolve_normalization, split_shape


def _check_label_count(scores, labels, axis):
    outer, _, inner = split_shape(scores.shape, axis)
    if labels.count != outer * inner:
        raise LayerError(
            f"{labels.count} labels (shape {labels.shape}) do not match the predictions (shape "
            f"{scores.shape}): with the class axis {axis}, there must be one label per "
            f"position, {outer} x {inner} = {outer * inner} (e.g. N x H x W labels for "
            "N x C x H x W predictions)")


def _check_label_values(layer, labels, num_classes, ignore_label):
    """Labels on the host are checked now. Labels on the GPU are checked by a kernel whose flag
    the Net reads with the loss (layer.deferred_flag): reading them here would make every
    training step wait for the GPU in the middle; the GPU kernels leave bad labels out."""
    if cuda.is_device_array(labels):
        layer.deferred_flag = flag_bad_labels(labels, num_classes, ignore_label)
        return
    bad = find_bad_label(labels, num_classes, ignore_label)
    if bad is not None:
        index, value = bad
        where = tuple(int(i) for i in np.unravel_index(index, labels.shape)) if labels.shape \
            else ()
        also = f" or the ignore_label {ignore_label}" if ignore_label is not None else ""
        raise LayerError(f"label {value:g} at index {where} of the labels (shape {labels.shape}) "
                         f"is not a class: labels must be integers in [0, {num_classes}){also}")


def _raise_bad_labels(layer, labels):
    """A GPU label check failed: the same error as on the host, from a host copy."""
    _check_label_values(layer, cuda.to_host(labels), layer.num_classes, layer.ignore_label)
    raise LayerError(f"a label of {layer.name} was not a class in [0, {layer.num_classes}) "
                     "when its forward ran (the labels have changed since)")


def _ignore_label(message):
    return message.ignore_label if message.HasField("ignore_label") else None


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    """Caffe `SoftmaxWithLoss`: the mean negative log-probability of the labelled class.

    bottom[0]: scores with classes along softmax_param.axis (default 1); bottom[1]: labels, one
    per other position (N for N x C; N x H x W or N x 1 x H x W for N x C x H x W).
    top[0]: the loss, shape (); an optional top[1]: the probabilities (its diff is not used).
    loss_param: ignore_label, normalization (FULL, VALID (default), BATCH_SIZE, NONE) or the
    deprecated normalize. The gradient is scaled by top[0].diff, where the Net puts the
    loss_weight (1 by default)."""
    param_field = "loss_param"
    exact_num_bottom = 2
    min_num_top, max_num_top = 1, 2
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.loss_param
        self.ignore_label = _ignore_label(p)
        self.normalization = resolve_normalization(
            p.normalization if p.HasField("normalization") else None,
            p.normalize if p.HasField("normalize") else None)

    def reshape(self, bottom, top):
        scores, labels = bottom
        self.axis = self.canonical_axis(scores, self.param.softmax_param.axis, "softmax_param.axis")
        if scores.shape[:1] != labels.shape[:1]:        # Caffe's LossLayer check
            raise LayerError(f"the predictions (shape {scores.shape}) and the labels (shape "
                             f"{labels.shape}) must have the same first dimension")
        _check_label_count(scores, labels, self.axis)
        self.num_classes = scores.shape[self.axis]
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(scores.shape)

    def forward(self, bottom, top):
        scores, labels = bottom
        _check_label_values(self, labels.data, self.num_classes, self.ignore_label)
        loss, self.prob = ops.softmax_loss_forward(
            scores.data, labels.data, axis=self.axis, ignore_label=self.ignore_label,
            normalization=self.normalization)
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("SoftmaxWithLoss cannot backpropagate to labels (bottom 1); "
                             "set propagate_down: false for them")
        if propagate_down[0]:
            bottom[0].diff[...] = ops.softmax_loss_backward(
                self.prob, bottom[1].data, axis=self.axis, ignore_label=self.ignore_label,
                normalization=self.normalization, loss_weight=top[0].diff)

    def raise_deferred(self, bottom):
        _raise_bad_labels(self, bottom[1].data)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1                           # labels have no gradient


@register("Accuracy")
class AccuracyLayer(Layer):
    """Caffe `Accuracy`: the fraction of positions whose label is among the top_k scores.

    A position counts as correct when fewer than top_k *other* classes score >= the labelled
    one, so ties count against it. Positions labelled ignore_label are left out. top[0]: the
    accuracy, shape (); an optional top[1]: per-class accuracy, shape (C,), 0 for classes
    that do not occur. No backward."""
    param_field = "accuracy_param"
    exact_num_bottom = 2
    min_num_top, max_num_top = 1, 2

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k, self.ignore_label = p.top_k, _ignore_label(p)

    def reshape(self, bottom, top):
        scores, labels = bottom
        self.axis = self.canonical_axis(scores, self.param.accuracy_param.axis,
                                        "accuracy_param.axis")
        self.num_classes = scores.shape[self.axis]
        if self.top_k > self.num_classes:
            raise LayerError(f"accuracy_param.top_k = {self.top_k} is more than the "
                             f"{self.num_classes} classes along axis {self.axis} of the "
                             f"predictions (shape {scores.shape})")
        _check_label_count(scores, labels, self.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.num_classes,))

    def forward(self, bottom, top):
        scores, labels = bottom
        _check_label_values(self, labels.data, self.num_classes, self.ignore_label)
        accuracy, per_class = ops.accuracy_forward(
            scores.data, labels.data, axis=self.axis, top_k=self.top_k,
            ignore_label=self.ignore_label)
        top[0].data[...] = accuracy
        if len(top) > 1:
            top[1].data[...] = per_class

    def raise_deferred(self, bottom):
        _raise_bad_labels(self, bottom[1].data)

    def allow_force_backward(self, bottom_index):
        return False


@register("EuclideanLoss")
class EuclideanLossLayer(Layer):
    """Caffe `EuclideanLoss`: sum((a - b)^2) / (2 N), N the batch size (bottom[0].shape[0]).

    The two bottoms must hold the same number of values per item (shapes may differ, e.g.
    (N, 1) against (N,)); both receive a gradient, of opposite signs, scaled by the loss weight
    that the Net puts in top[0].diff."""
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        a, b = bottom
        if not a.shape or not b.shape or a.shape[0] != b.shape[0] or a.count != b.count:
            raise LayerError(f"EuclideanLoss needs two bottoms with the same batch size and "
                             f"number of values, got shapes {a.shape} and {b.shape}")
        top[0].reshape(())

    def forward(self, bottom, top):
        loss, self._diff = ops.euclidean_loss_forward(bottom[0].data, bottom[1].data)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        grad = ops.euclidean_loss_backward(self._diff, top[0].diff)
        for sign, down, blob in ((1, propagate_down[0], bottom[0]),
                                 (-1, propagate_down[1], bottom[1])):
            if down:
                blob.diff[...] = (grad if sign > 0 else -grad).reshape(blob.shape)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(Layer):
    """Caffe `SigmoidCrossEntropyLoss`: binary cross-entropy of sigmoid(scores) against targets.

    bottom[0]: scores x; bottom[1]: targets t in [0, 1], the same count and first dimension.
    top[0]: the loss, shape (). loss_param: normalization (default BATCH_SIZE, unlike
    SoftmaxWithLoss; the deprecated normalize counts only when normalization is unset),
    ignore_label (targets whose integer part equals it count neither in the sum nor in VALID).
    The gradient (sigmoid(x) - t) / D is scaled by top[0].diff, where the Net puts the
    loss_weight; targets get no gradient."""
    param_field = "loss_param"
    exact_num_bottom, exact_num_top = 2, 1
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.loss_param
        self.ignore_label = _ignore_label(p)
        self.normalization = resolve_sce_normalization(
            p.normalization if p.HasField("normalization") else None,
            p.normalize if p.HasField("normalize") else None)
        self.prob = None

    def reshape(self, bottom, top):
        scores, targets = bottom
        if not scores.shape or scores.shape[:1] != targets.shape[:1] \
                or scores.count != targets.count:
            raise LayerError(f"the scores (shape {scores.shape}, {scores.count} values) and the "
                             f"targets (shape {targets.shape}, {targets.count} values) must have "
                             "the same first dimension and the same count")
        top[0].reshape(())

    def forward(self, bottom, top):
        loss, self.prob = ops.sigmoid_cross_entropy_forward(
            bottom[0].data, bottom[1].data, ignore_label=self.ignore_label,
            normalization=self.normalization)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("SigmoidCrossEntropyLoss cannot backpropagate to targets "
                             "(bottom 1); set propagate_down: false for them")
        if propagate_down[0]:
            bottom[0].diff[...] = ops.sigmoid_cross_entropy_backward(
                self.prob, bottom[1].data, ignore_label=self.ignore_label,
                normalization=self.normalization, loss_weight=top[0].diff)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1                           # targets have no gradient
