"""Layers that score predictions against targets: the losses SoftmaxWithLoss, EuclideanLoss,
SigmoidCrossEntropyLoss, MultinomialLogisticLoss, InfogainLoss, HingeLoss and ContrastiveLoss,
and Accuracy.

A loss layer is where backward starts. Its top is the scalar L, and the Net writes the layer's
loss_weight into top[0].diff (d(total loss)/dL), so the loss's backward is the ordinary chain
rule with that number as its dy; a layer used on its own gets it from ``backprop()`` with no
arguments. Labels get no gradient; EuclideanLoss, symmetric in its two bottoms, gives both one."""

import warnings

import numpy as np

from minicnn import cuda, ops
from minicnn.blob import blob_proto_to_array
from minicnn.data.db import resolve_path
from minicnn.errors import LayerError, MinicnnError
from minicnn.layer import Layer, register
from minicnn.ops.sigmoid_cross_entropy import resolve_sce_normalization
from minicnn.ops.softmax import find_bad_label, flag_bad_labels, resolve_normalization, split_shape
from minicnn.ops.weighted_softmax_loss import hard_ratio_index
from minicnn.proto import read_binary


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
    _check_label_values(layer, cuda.to_host(labels), layer.num_classes,
                        getattr(layer, "ignore_label", None))
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
    loss_weight (1 by default).

    Backward is where a net's gradient starts: dx = (p - onehot(label)) * loss_weight / D, D
    the normalization's count (why p - onehot: minicnn/ops/softmax.py). The labels get none
    (asking for one is an error).

    happynear's caffe-windows adds softmax_param.normalize_type (AM-Softmax's auto/ prototxt
    writes "Softmax", its default, which is this layer); its "L2" and "L1" put a Normalize
    layer where the softmax is and are refused. Its third bottom (per-position weights) and
    softmax_param.class_weight, hard_ratio, ... are WeightedSoftmaxWithLossLayer's, which a Net
    makes for such a layer (variant_for)."""
    param_field = "loss_param"
    index_bottom = 1
    exact_num_bottom = 2
    min_num_top, max_num_top = 1, 2
    is_loss = True

    @classmethod
    def variant_for(cls, param):
        if cls is SoftmaxWithLossLayer and (len(param.bottom) == 3
                                            or _happynear_fields(param.softmax_param)):
            return WeightedSoftmaxWithLossLayer
        return cls

    def layer_setup(self, bottom, top):
        given = _happynear_fields(self.param.softmax_param)
        if given and not isinstance(self, WeightedSoftmaxWithLossLayer):
            raise LayerError(
                f"{self.type} layer '{self.name}': softmax_param.{given[0]} is happynear's "
                "caffe-windows SoftmaxWithLoss field (minicnn.layers.loss."
                f"WeightedSoftmaxWithLossLayer, which a Net makes for a SoftmaxWithLoss that "
                f"gives it); {type(self).__name__} does not use it")
        self._setup_loss()

    def _setup_loss(self):
        normalize_type = self.param.softmax_param.normalize_type
        if normalize_type != "Softmax":
            raise LayerError(f"{self.type} layer '{self.name}': softmax_param.normalize_type "
                             f"\"{normalize_type}\" (happynear's caffe-windows: a Normalize "
                             "layer's output as the probabilities) is not implemented; only "
                             "\"Softmax\", the default")
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


HAPPYNEAR_SOFTMAX_FIELDS = ("hard_ratio", "class_weight", "hard_mining_label", "cutting_point",
                            "label_smooth_factor")


def _happynear_fields(softmax_param):
    """The happynear softmax_param fields a layer gives (class_weight when it has values)."""
    return [f for f in HAPPYNEAR_SOFTMAX_FIELDS
            if (len(softmax_param.class_weight) if f == "class_weight"
                else softmax_param.HasField(f))]


class WeightedSoftmaxWithLossLayer(SoftmaxWithLossLayer):
    """happynear's caffe-windows `SoftmaxWithLoss` (softmax_loss_layer.cpp/.cu) with a third
    bottom of per-position weights w (as many as the labels) and softmax_param.class_weight
    (one per class, 4 in the fork's SoftmaxParameter) and hard_ratio (3; default 1, in [0, 1]).
    With the weights bottom, as the fork's CPU code (minicnn.ops.weighted_softmax_loss):
    loss = -sum wc log(max(p_label, FLT_MIN)) / D(sum wc), wc = w cw[label] (cw 1 when
    class_weight is not given), over the positions not ignored with wc != 0; backward
    (p - onehot) wc / D(sum of the non-zero w): the fork's backward counts w alone, so with
    class weights other than 1 under VALID it is not the forward's gradient (kept: the fork
    trained with it; its GPU code has the same counts). D is loss_param's normalizer, at
    least 1 (a VALID sum of weights below 1 gives 1).

    hard_ratio r, with the weights bottom, follows the fork's GPU Backward (its CPU code reads
    r and does nothing with it): the per-position losses of the last forward sorted, the one at
    int(M (1 - r)) the threshold, and the weights below it set to 0 *in bottom[2]'s data* (the
    fork writes them there; a data layer refills them, an Input keeps the zeros), before the
    backward. r = 0 is refused (the fork reads one past its sorted losses).

    Not followed: the GPU backward multiplies position j's diff for class c by class_weight[c]
    where the CPU code (and minicnn) uses class_weight[label]; the fork reads class_weight at
    an ignored position's label (out of its array for 255 or -1), minicnn does not.

    Without the weights bottom the fork uses neither field (both read; class_weight's length
    checked): minicnn does the same (plain SoftmaxWithLoss) and warns that they do nothing.
    hard_mining_label (5), cutting_point (6) and label_smooth_factor (8, non-zero) act only in
    the fork's GPU code and no published prototxt was found using them: refused. No gradient
    for the weights (the fork computes none). Host only."""
    exact_num_bottom = None
    min_num_bottom, max_num_bottom = 2, 3
    host_only = True

    def layer_setup(self, bottom, top):
        sp = self.param.softmax_param
        where = f"SoftmaxWithLoss layer '{self.name}'"
        for field in ("hard_mining_label", "cutting_point"):
            if sp.HasField(field):
                raise LayerError(f"{where}: softmax_param.{field} (happynear's caffe-windows, "
                                 "used only by its GPU code) is not implemented")
        if sp.label_smooth_factor != 0:
            raise LayerError(f"{where}: softmax_param.label_smooth_factor "
                             f"{sp.label_smooth_factor:g} (happynear's caffe-windows, used "
                             "only by its GPU code) is not implemented; only 0")
        self.hard_ratio = float(sp.hard_ratio) if sp.HasField("hard_ratio") else None
        if self.hard_ratio is not None and not 0 <= self.hard_ratio <= 1:
            raise LayerError(f"{where}: softmax_param.hard_ratio must be in [0, 1], got "
                             f"{self.hard_ratio:g}")
        if self.hard_ratio == 0 and len(bottom) == 3:
            raise LayerError(f"{where}: softmax_param.hard_ratio 0 (the fork reads the loss one "
                             "past its sorted losses as the threshold) is refused")
        self.class_weight = np.asarray(sp.class_weight, np.float64)
        self._setup_loss()
        axis = self.canonical_axis(bottom[0], sp.axis, "softmax_param.axis")
        if self.class_weight.size and self.class_weight.size != bottom[0].shape[axis]:
            raise LayerError(f"{where}: {self.class_weight.size} softmax_param.class_weight "
                             f"values for {bottom[0].shape[axis]} classes (axis {axis} of the "
                             f"scores, shape {bottom[0].shape}): give one per class")
        if len(bottom) == 2:
            unused = [f for f in ("hard_ratio", "class_weight") if f in _happynear_fields(sp)]
            if unused:
                warnings.warn(f"{where}: softmax_param.{' and '.join(unused)} do nothing "
                              "without a third bottom (per-position weights), as in "
                              "happynear's caffe-windows", stacklevel=2)

    def reshape(self, bottom, top):
        super().reshape(bottom[:2], top)
        if len(bottom) < 3:
            return
        scores, labels, weights = bottom
        if weights.count != labels.count:
            raise LayerError(f"SoftmaxWithLoss layer '{self.name}': {weights.count} loss weights "
                             f"(bottom 2, shape {weights.shape}) for {labels.count} labels "
                             f"(shape {labels.shape}): give one per label")
        if self.class_weight.size and (self.class_weight.size != self.num_classes
                                       or len(scores.shape) < 2
                                       or scores.shape[1] != self.class_weight.size):
            raise LayerError(f"SoftmaxWithLoss layer '{self.name}': {self.class_weight.size} "
                             f"softmax_param.class_weight values for scores of shape "
                             f"{scores.shape} (the fork checks them against axis "
                             f"{self.axis} and against axis 1)")

    def _kw(self, bottom):
        cw = self.class_weight if self.class_weight.size else np.ones(self.num_classes)
        return {"weight": bottom[2].data, "class_weight": cw, "axis": self.axis,
                "ignore_label": self.ignore_label, "normalization": self.normalization}

    def forward(self, bottom, top):
        if len(bottom) < 3:
            return super().forward(bottom, top)
        scores, labels = bottom[:2]
        _check_label_values(self, labels.data, self.num_classes, self.ignore_label)
        loss, self.prob, self.position_loss = ops.weighted_softmax_loss_forward(
            scores.data, labels.data, **self._kw(bottom))
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if len(bottom) < 3:
            return super().backward(top, propagate_down, bottom)
        if propagate_down[1]:
            raise LayerError("SoftmaxWithLoss cannot backpropagate to labels (bottom 1); "
                             "set propagate_down: false for them")
        if not propagate_down[0]:
            return
        if self.hard_ratio is not None:
            k = hard_ratio_index(self.position_loss.size, self.hard_ratio)
            if k >= self.position_loss.size:
                raise LayerError(f"SoftmaxWithLoss layer '{self.name}': hard_ratio "
                                 f"{self.hard_ratio:g} puts the threshold at loss {k} of "
                                 f"{self.position_loss.size} (past the last)")
            bottom[2].data[...] = ops.weighted_softmax_loss_mine(
                self.position_loss, bottom[2].data, self.hard_ratio)
        bottom[0].diff[...] = ops.weighted_softmax_loss_backward(
            self.prob, bottom[1].data, loss_weight=top[0].diff, **self._kw(bottom))

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0                           # no gradient for labels or weights


@register("Accuracy")
class AccuracyLayer(Layer):
    """Caffe `Accuracy`: the fraction of positions whose label is among the top_k scores.

    A position counts as correct when fewer than top_k *other* classes score >= the labelled
    one, so ties count against it. Positions labelled ignore_label are left out. top[0]: the
    accuracy, shape (); an optional top[1]: per-class accuracy, shape (C,), 0 for classes
    that do not occur. No backward.

    accuracy_param.min_is_better (happynear's caffe-windows; AM-Softmax's auto/ prototxt writes
    false) ranks the classes by ascending score (distances): the top_k *lowest* scores count,
    ties again against the label (the fork sorts (score, class) pairs, so its ties go to the
    lower class index; minicnn keeps BVLC's rule in both directions)."""
    param_field = "accuracy_param"
    exact_num_bottom = 2
    index_bottom = 1
    min_num_top, max_num_top = 1, 2

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k, self.ignore_label = p.top_k, _ignore_label(p)
        self.min_is_better = p.min_is_better

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
            -scores.data if self.min_is_better else scores.data, labels.data, axis=self.axis,
            top_k=self.top_k,
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
    that the Net puts in top[0].diff: d/da = (a - b) / N (the 1/2 cancels the square's 2), and
    d/db = -(a - b) / N."""
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


def _check_item_labels(scores, labels, what="labels"):
    """One label per item, as Caffe's N x 1 x 1 x 1 label blob: N values, first axis N."""
    n = scores.shape[0] if scores.shape else None
    if n is None or not labels.shape or labels.shape[0] != n or labels.count != n:
        raise LayerError(f"the {what} (shape {labels.shape}) must hold one value per item of the "
                         f"predictions (shape {scores.shape}): shape (N,) or (N, 1, ...) with "
                         f"N = {n}")


def _no_label_gradient(layer, propagate_down, index=1, what="labels"):
    if propagate_down[index]:
        raise LayerError(f"{layer.type} cannot backpropagate to {what} (bottom {index}); set "
                         "propagate_down: false for them")


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(Layer):
    """Caffe `MultinomialLogisticLoss`: -sum log(max(p[label], 1e-20)) / N of probabilities.

    bottom[0]: probabilities p, N x C or N x C x 1 x 1 (e.g. a Softmax layer's top; Caffe reads
    each item's count / N values as its classes); bottom[1]: one label per item, integers in
    [0, C). top[0]: the loss, shape (). The gradient -loss_weight / (N max(p, 1e-20)) goes to
    the labelled class only; labels get none. No ignore_label or normalization: Caffe reads no
    loss_param here. SoftmaxWithLoss computes the same loss from scores, and more stably."""
    exact_num_bottom, exact_num_top = 2, 1
    index_bottom = 1
    is_loss = True

    def reshape(self, bottom, top):
        probs, labels = bottom
        _check_item_labels(probs, labels)
        self.num_classes = probs.count // probs.shape[0]
        top[0].reshape(())

    def forward(self, bottom, top):
        probs, labels = bottom
        _check_label_values(self, labels.data, self.num_classes, None)
        top[0].data[...] = ops.multinomial_logistic_loss_forward(probs.data, labels.data)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if propagate_down[0]:
            bottom[0].diff[...] = ops.multinomial_logistic_loss_backward(
                bottom[0].data, bottom[1].data, loss_weight=top[0].diff)

    def raise_deferred(self, bottom):
        _raise_bad_labels(self, bottom[1].data)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1                           # labels have no gradient


@register("InfogainLoss")
class InfogainLossLayer(Layer):
    """Caffe `InfogainLoss` (BVLC master): a softmax loss whose terms are weighed by the rows
    of a C x C infogain matrix H: -sum_l H[label, l] log(max(softmax(x)_l, 1e-20)) / D.

    bottom[0]: scores (not probabilities: the softmax is inside the layer since 2017) with the
    classes along infogain_loss_param.axis (default 1); bottom[1]: labels, one per other position,
    as SoftmaxWithLoss; an optional bottom[2]: H, C * C values (row = the label). Without it,
    H is read once from infogain_loss_param.source, a BlobProto .binaryproto file (a relative
    path: the current directory, then the prototxt's folder). top[0]: the loss, shape (); an
    optional top[1]: the softmax probabilities. loss_param: ignore_label, normalization (VALID
    by default, FULL, BATCH_SIZE, NONE); the deprecated normalize is refused, as in Caffe.
    The gradient (p * sum_k H[label, k] - H[label, :]) * loss_weight / D goes to the scores
    only (neither labels nor H get one). H = identity gives SoftmaxWithLoss."""
    param_field = "infogain_loss_param"
    index_bottom = 1
    min_num_bottom, max_num_bottom = 2, 3
    min_num_top, max_num_top = 1, 2
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.loss_param
        if p.HasField("normalize"):
            raise LayerError("loss_param.normalize is deprecated and Caffe's InfogainLoss "
                             "refuses it: use loss_param.normalization (VALID, the default, "
                             "FULL, BATCH_SIZE or NONE)")
        self.ignore_label = _ignore_label(p)
        self.normalization = p.normalization
        self.infogain = None if len(bottom) > 2 else self._read_infogain()

    def _read_infogain(self):
        p = self.param.infogain_loss_param
        if not p.HasField("source"):
            raise LayerError("infogain_loss_param.source must name the infogain matrix (a "
                             "BlobProto .binaryproto file), or the matrix must be bottom 2")
        try:
            path = resolve_path(p.source, self.source_dir, what="infogain matrix file")
            return blob_proto_to_array(read_binary(path, "BlobProto")).astype(self.dtype)
        except MinicnnError as e:
            raise LayerError(f"infogain_loss_param.source: cannot read the infogain matrix: "
                             f"{e}") from None

    def _matrix(self, bottom):
        if len(bottom) > 2:
            return bottom[2].data
        if cuda.is_device_array(bottom[0].data) and not cuda.is_device_array(self.infogain):
            # once: a copy each step would also wait for the GPU (pageable host memory)
            self.infogain = cuda.to_device(self.infogain, bottom[0].device)
        return self.infogain

    def reshape(self, bottom, top):
        scores, labels = bottom[:2]
        self.axis = self.canonical_axis(scores, self.param.infogain_loss_param.axis,
                                        "infogain_loss_param.axis")
        if scores.shape[:1] != labels.shape[:1]:        # Caffe's LossLayer check
            raise LayerError(f"the predictions (shape {scores.shape}) and the labels (shape "
                             f"{labels.shape}) must have the same first dimension")
        _check_label_count(scores, labels, self.axis)
        c = self.num_classes = scores.shape[self.axis]
        h = self._matrix(bottom)
        if h.size != c * c:
            where = "bottom 2" if len(bottom) > 2 else \
                f"infogain_loss_param.source {self.param.infogain_loss_param.source!r}"
            raise LayerError(f"the infogain matrix H ({where}, shape {h.shape}) must hold "
                             f"{c} x {c} = {c * c} values for the {c} classes along axis "
                             f"{self.axis} of the predictions (shape {scores.shape})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(scores.shape)

    def forward(self, bottom, top):
        scores, labels = bottom[:2]
        _check_label_values(self, labels.data, self.num_classes, self.ignore_label)
        loss, self.prob = ops.infogain_loss_forward(
            scores.data, labels.data, self._matrix(bottom), axis=self.axis,
            ignore_label=self.ignore_label, normalization=self.normalization)
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if len(bottom) > 2:
            _no_label_gradient(self, propagate_down, 2, "the infogain matrix")
        if propagate_down[0]:
            bottom[0].diff[...] = ops.infogain_loss_backward(
                self.prob, bottom[1].data, self._matrix(bottom), axis=self.axis,
                ignore_label=self.ignore_label, normalization=self.normalization,
                loss_weight=top[0].diff)

    def raise_deferred(self, bottom):
        _raise_bad_labels(self, bottom[1].data)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0                           # labels and H have no gradient


@register("HingeLoss")
class HingeLossLayer(Layer):
    """Caffe `HingeLoss`: one-vs-all hinges h = max(0, 1 + t x), t = -1 at the label and +1
    elsewhere; loss = sum(h) / N (hinge_loss_param.norm L1, the default) or sum(h^2) / N (L2).

    bottom[0]: scores, N x C (Caffe reads each item's count / N values as its classes);
    bottom[1]: one label per item, integers in [0, C). top[0]: the loss, shape (). The
    gradient t sign(h) / N (L1) or 2 t h / N (L2), times the loss_weight, goes to the scores;
    labels get none. No ignore_label or normalization: Caffe reads no loss_param here."""
    param_field = "hinge_loss_param"
    index_bottom = 1
    exact_num_bottom, exact_num_top = 2, 1
    is_loss = True

    def layer_setup(self, bottom, top):
        self.norm = self.param.hinge_loss_param.norm

    def reshape(self, bottom, top):
        scores, labels = bottom
        _check_item_labels(scores, labels)
        self.num_classes = scores.count // scores.shape[0]
        top[0].reshape(())

    def forward(self, bottom, top):
        scores, labels = bottom
        _check_label_values(self, labels.data, self.num_classes, None)
        loss, self._hinges = ops.hinge_loss_forward(scores.data, labels.data, norm=self.norm)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if propagate_down[0]:
            bottom[0].diff[...] = ops.hinge_loss_backward(
                self._hinges, bottom[1].data, norm=self.norm,
                loss_weight=top[0].diff).reshape(bottom[0].shape)

    def raise_deferred(self, bottom):
        _raise_bad_labels(self, bottom[1].data)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1                           # labels have no gradient


@register("ContrastiveLoss")
class ContrastiveLossLayer(Layer):
    """Caffe `ContrastiveLoss`: for pairs (a, b) at distance d = ||a - b|| and similarity y,
    sum(y d^2 + (1 - y) max(margin - d, 0)^2) / (2 N); legacy_version puts
    max(margin - d^2, 0) in the second term (contrastive_loss_param: margin 1, legacy false).

    bottom[0], bottom[1]: features a and b, N x C (or N x C x 1 x 1); bottom[2]: y, one per
    pair; a pair is similar when y truncated to an integer is nonzero (Caffe's cast: 0.5 is
    dissimilar). top[0]: the loss, shape (). a and b get opposite gradients, times the
    loss_weight; y gets zero. Caffe's dissimilar gradient divides by d + 1e-4 rather than d
    (finite at d = 0, off the exact derivative by a relative 1e-4 / (d + 1e-4)); so does this."""
    param_field = "contrastive_loss_param"
    exact_num_bottom, exact_num_top = 3, 1
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.contrastive_loss_param
        self.margin, self.legacy_version = p.margin, p.legacy_version

    def reshape(self, bottom, top):
        a, b, y = bottom
        pairs = []
        for i, blob in enumerate((a, b)):
            shape = blob.shape
            if not 1 <= len(shape) <= 4 or any(d != 1 for d in shape[2:]):
                raise LayerError(f"bottom {i} (shape {shape}) must hold features as N x C or "
                                 "N x C x 1 x 1")
            pairs.append((shape[0], shape[1] if len(shape) > 1 else 1))
        if pairs[0] != pairs[1]:
            raise LayerError(f"the two features must have the same N x C: bottom 0 has shape "
                             f"{a.shape}, bottom 1 {b.shape}")
        _check_item_labels(a, y, "similarities (bottom 2)")
        top[0].reshape(())

    def forward(self, bottom, top):
        a, b, y = bottom
        loss, self._diff, self._dist_sq = ops.contrastive_loss_forward(
            a.data, b.data, y.data, margin=self.margin, legacy_version=self.legacy_version)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        da = ops.contrastive_loss_backward(
            self._diff, self._dist_sq, bottom[2].data, margin=self.margin,
            legacy_version=self.legacy_version, loss_weight=top[0].diff)
        for sign, down, blob in ((1, propagate_down[0], bottom[0]),
                                 (-1, propagate_down[1], bottom[1])):
            if down:
                blob.diff[...] = (da if sign > 0 else -da).reshape(blob.shape)
        if propagate_down[2]:             # the loss is a step function of y: zero a.e.
            bottom[2].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2                           # similarities have no gradient
