"""The face-recognition forks' layers: CenterLoss (ydwen/caffe-face), SphereFace's
MarginInnerProduct (A-Softmax), AM-Softmax's LabelSpecificAdd, and happynear's Normalize (which
a "Normalize" layer without SSD's norm_param is, see FaceNormalizeLayer), ChannelScale,
GlobalLSEMargin (AM-Softmax's auto/ net) and Flip. The math is minicnn.ops.face; all compute with
NumPy (host layers in a GPU net) but Flip, an indexing that runs on either kind of array."""

import math

import numpy as np

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.layers.loss import _check_item_labels, _check_label_values, _no_label_gradient


def _int_labels(layer, labels, num_classes):
    _check_label_values(layer, labels, num_classes, None)
    return labels.reshape(-1).astype(np.int64)


def _positive(layer, message, field):
    value = getattr(getattr(layer.param, message), field)
    if value <= 0:
        raise LayerError(f"{layer.type} layer '{layer.name}': {message}.{field} must be > 0, "
                         f"got {value}")
    return value


@register("CenterLoss")
class CenterLossLayer(Layer):
    """ydwen/caffe-face's `CenterLoss` (Wen et al., ECCV 2016): loss = sum_i ||x_i - c_{y_i}||^2
    / (2 M), pulling each item's features x_i towards a learned centre of its class.

    bottom[0]: features, M items (the first axis) of K = count from center_loss_param.axis
    (default 1) on; bottom[1]: one label per item (M or M x 1 x 1 x 1). blobs[0]: the centres,
    num_output x K, filled by center_filler. top[0]: the loss, shape ().

    Backward as the fork: the features get the gradient, loss_weight * (x_i - c_{y_i}) / M. The
    centres' diff is the fork's update rule, not the gradient: row j is set to
    sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), n_j the items of class j, 0 for a class the batch
    lacks, not scaled by loss_weight; the solver then moves the centres by lr * lr_mult times it
    (lr_mult is the paper's alpha). Like the fork (its GPU code), the diff is assigned, not
    added: with iter_size > 1 only the last pass's update counts, as in the fork."""
    param_field = "center_loss_param"
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True
    index_bottom = 1
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.center_loss_param
        self.num_classes = _positive(self, "center_loss_param", "num_output")
        axis = self.canonical_axis(bottom[0], p.axis, "center_loss_param.axis")
        self.K = math.prod(bottom[0].shape[axis:])
        self.init_param(0, (self.num_classes, self.K), p.center_filler, "centers")

    def reshape(self, bottom, top):
        x, labels = bottom
        axis = self.canonical_axis(x, self.param.center_loss_param.axis, "center_loss_param.axis")
        k = math.prod(x.shape[axis:])
        if k != self.K or x.shape[0] * k != x.count:
            raise LayerError(f"CenterLoss reads its features (shape {x.shape}) as {x.shape[0]} "
                             f"items of K = {self.K} values (the count from "
                             f"center_loss_param.axis on, fixed at setup), but they hold "
                             f"{x.count} values with {k} from axis {axis} on")
        _check_item_labels(x, labels)
        top[0].reshape(())

    def forward(self, bottom, top):
        x, labels = bottom
        self._labels = _int_labels(self, labels.data, self.num_classes)
        loss, self._distance = ops.center_loss_forward(
            x.data.reshape(x.shape[0], self.K), self._labels, self.blobs[0].data)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if not (propagate_down[0] or self.param_propagate_down[0]):
            return
        dx, dcenters = ops.center_loss_backward(self._distance, self._labels, self.num_classes,
                                                float(top[0].diff))
        if self.param_propagate_down[0]:
            self.blobs[0].diff[...] = dcenters           # assigned, as the fork's update rule
        if propagate_down[0]:
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("MarginInnerProduct")
class MarginInnerProductLayer(Layer):
    """SphereFace's `MarginInnerProduct` (A-Softmax, wy1iu/sphereface): an inner product with
    unit-length weight rows, whose target logit |x| cos(theta) becomes |x| psi(theta),
    psi = (-1)^k cos(m theta) - 2k, m = 1, 2, 3, 4 for type SINGLE, DOUBLE, TRIPLE, QUADRUPLE;
    mixed as (lambda x.w + |x| psi) / (1 + lambda) to anneal from the plain softmax.

    bottom[0]: features (M items of K from margin_inner_product_param.axis, default 1, on);
    bottom[1]: one label per item. blobs[0]: weights, num_output x K (weight_filler); no bias.
    top[0]: bottom.shape[:axis] + (num_output,); an optional top[1]: lambda, shape (1,).

    As the fork: every forward first counts an iteration (starting from `iteration`, default 0;
    TEST forwards count too; a solver's snapshot keeps the count, which the fork's does not, so a
    resumed run continues the annealing) and sets lambda = max(base * (1 + gamma * iter)^-power,
    lambda_min); then it rescales the weight rows to unit length in place, so the stored
    weights are the normalised ones. SINGLE is the plain x w^T (lambda unused).

    Backward as the fork, which is not the gradient of its forward for DOUBLE, TRIPLE and
    QUADRUPLE (SphereFace's models were trained so; minicnn follows): the weights get dy^T x,
    the plain inner product's diff, for every type (the margin and the normalisation are left
    out); the features get dy w for the non-target classes and, for the target one, the
    gradient's two coefficients (of w_t and of x) rescaled to unit length, plus the lambda
    part. SINGLE's features diff is the gradient with the normalised weights held fixed.

    Where the fork differs: its forward writes top[1] even when there is none (out of
    bounds); minicnn writes lambda only to a top[1] that is there. Labels that are not
    classes are an error. A zero feature row or weight row gives NaN, as in the fork."""
    param_field = "margin_inner_product_param"
    counters = ("iter",)                 # lambda / margin annealing
    exact_num_bottom = 2
    min_num_top, max_num_top = 1, 2
    index_bottom = 1
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.margin_inner_product_param
        self.num_classes = _positive(self, "margin_inner_product_param", "num_output")
        self.margin_type = p.type
        axis = self._axis(bottom[0])
        self.K = math.prod(bottom[0].shape[axis:])
        self.init_param(0, (self.num_classes, self.K), p.weight_filler, "weights")
        self.iter = p.iteration
        self.lam = 0.0

    def _axis(self, blob):
        return self.canonical_axis(blob, self.param.margin_inner_product_param.axis,
                                   "margin_inner_product_param.axis")

    def reshape(self, bottom, top):
        x, labels = bottom
        axis = self._axis(x)
        k = math.prod(x.shape[axis:])
        if k != self.K:
            raise LayerError(f"MarginInnerProduct's input (shape {x.shape}) has K = {k} values "
                             f"from axis {axis} on, but the weights were set up for K = {self.K}")
        self.axis, self.M = axis, math.prod(x.shape[:axis])
        if labels.shape[:1] != x.shape[:1] or labels.count != self.M:
            raise LayerError(f"MarginInnerProduct needs one label per item: {self.M} labels with "
                             f"first dimension {x.shape[0]} for features of shape {x.shape}, "
                             f"got labels of shape {labels.shape}")
        top[0].reshape(x.shape[:axis] + (self.num_classes,))
        if len(top) > 1:
            top[1].reshape((1,))

    def lambda_at(self, iteration):
        p = self.param.margin_inner_product_param
        return ops.face.margin_lambda(iteration, base=p.base, gamma=p.gamma, power=p.power,
                                      lambda_min=p.lambda_min)

    def forward(self, bottom, top):
        x, labels = bottom
        self._labels = _int_labels(self, labels.data, self.num_classes)
        self.iter += 1
        self.lam = self.lambda_at(self.iter)
        if len(top) > 1:
            top[1].data[...] = self.lam
        w = self.blobs[0].data
        w /= np.sqrt(np.sum(w * w, axis=1, keepdims=True))             # in place, as the fork
        y, self._x_norm = ops.margin_inner_product_forward(
            x.data.reshape(self.M, self.K), w, self._labels, lam=self.lam,
            margin_type=self.margin_type)
        top[0].data[...] = y.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if not (propagate_down[0] or self.param_propagate_down[0]):
            return
        x = bottom[0]
        dx, dw = ops.margin_inner_product_backward(
            top[0].diff.reshape(self.M, self.num_classes), x.data.reshape(self.M, self.K),
            self.blobs[0].data, self._labels, self._x_norm, lam=self.lam,
            margin_type=self.margin_type)
        if self.param_propagate_down[0]:
            self.blobs[0].diff += dw
        if propagate_down[0]:
            x.diff[...] = dx.reshape(x.shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("LabelSpecificAdd")
class LabelSpecificAddLayer(Layer):
    """AM-Softmax's `LabelSpecificAdd` (happynear's forks; CosFace's additive margin): adds
    label_specific_add_param.bias (the margin, negative: -0.35 in AM-Softmax's prototxts) to
    each item's target score, where that score is above -bias (the fork's condition), in TRAIN.

    bottom[0]: scores, N items (the first axis) of count / N classes; bottom[1]: one label per
    item. top[0]: bottom[0]'s shape (in place allowed). Backward passes the diff through
    unchanged, the gradient of the shift.

    The fork's transform_test has no effect: its setup keeps it only in TRAIN, and its forward
    returns early in TEST unless it is kept, so TEST never adds the bias. minicnn follows.

    Annealing (happynear's caffe-windows, when bias_base is given): each TRAIN forward sets
    bias = bias_base + (1 + bias_gamma * iter)^bias_power - 1, clamped to [bias_min, bias_max]
    (min first, then max, as the fork), then counts the iteration (from `iteration`, default
    0; kept by a solver's snapshot); TEST forwards neither anneal nor count. An optional
    top[1], shape (1,), is the bias used, written in TRAIN only (in TEST the fork returns
    before writing it: it keeps its last value)."""
    param_field = "label_specific_add_param"
    counters = ("iter",)                 # lambda / margin annealing
    exact_num_bottom = 2
    min_num_top, max_num_top = 1, 2
    index_bottom = 1
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.label_specific_add_param
        self.bias = float(p.bias)
        self.anneal = p.HasField("bias_base")
        self.iter = p.iteration

    def reshape(self, bottom, top):
        x, labels = bottom
        _check_item_labels(x, labels)
        self.num_classes = x.count // x.shape[0]
        if top[0] is not x:
            top[0].reshape(x.shape)
        if len(top) > 1:
            top[1].reshape((1,))

    def forward(self, bottom, top):
        x, labels = bottom
        n = x.shape[0]
        label_ints = _int_labels(self, labels.data, self.num_classes)
        if self.phase != "TRAIN":                       # transform_test: see the docstring
            if top[0] is not x:
                top[0].data[...] = x.data
            return
        if self.anneal:
            p = self.param.label_specific_add_param
            self.bias = ops.face.label_specific_add_bias(
                self.iter, base=p.bias_base, gamma=p.bias_gamma, power=p.bias_power,
                bias_min=p.bias_min, bias_max=p.bias_max)
            self.iter += 1
        if len(top) > 1:
            top[1].data[...] = self.bias
        top[0].data[...] = ops.label_specific_add_forward(
            x.data.reshape(n, self.num_classes), label_ints, bias=self.bias).reshape(x.shape)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


class FaceNormalizeLayer(Layer):
    """happynear's `Normalize` (caffe-windows; AM-Softmax's and NormFace's norm1): y = x / |x|
    over the channels at each place, |x| = sqrt(sum_c x^2 + 1e-12) (normalize_type "L2", the
    default) or sum_c |x| + 1e-6 ("L1"). An fc feature (N x K) is normalised per item.

    Caffe type "Normalize", shared with SSD's layer: a Net makes this one when the layer has
    normalize_param or no parameter block at all (AM-Softmax writes a bare
    `type: "Normalize"`), and SSD's when it has norm_param (SSD's prototxts always write it).
    It has no parameter blobs.

    As the fork: the top is 4-D, N x C x H x W from the legacy accessors (an N x K bottom gives
    N x K x 1 x 1; more than 4 axes is an error); an optional top[1] is the norm, N x 1 x H x W.
    Backward is the gradient, dx = (dy - g <y, dy>) / |x| with g = y (L2) or sign(x) (L1);
    fix_gradient leaves out the division by |x| (the fork's GPU code; its CPU code ignores
    fix_gradient, and uses eps 1e-6 for L2: minicnn follows the GPU code, which trained the
    published models); bp_norm, with two tops, adds top[1]'s diff times g (the norm's
    gradient), else top[1]'s diff is ignored. Safe in place (backward reads y and the norm)."""
    type = "Normalize"
    param_field = "normalize_param"
    backward_reads_data = ("top",)
    exact_num_bottom = 1
    min_num_top, max_num_top = 1, 2
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.normalize_param
        if p.normalize_type not in ("L2", "L1"):
            raise LayerError(f"Normalize layer '{self.name}': normalize_param.normalize_type "
                             f"must be \"L2\" or \"L1\", got \"{p.normalize_type}\"")
        self.normalize_type, self.fix_gradient = p.normalize_type, p.fix_gradient
        self.bp_norm = p.bp_norm and len(top) == 2
        if self.blobs:
            raise LayerError(f"Normalize layer '{self.name}' (happynear's, normalize_param or no "
                             f"block) has no parameter blobs, but {len(self.blobs)} were given; "
                             "SSD's Normalize, which has a scale blob, needs norm_param")
        self._norm = None

    def reshape(self, bottom, top):
        from minicnn.layers.ssd import _legacy_4d
        n, c, h, w = _legacy_4d(self, bottom[0], "its bottom")
        top[0].reshape((n, c, h, w))
        if len(top) > 1:
            top[1].reshape((n, 1, h, w))

    def forward(self, bottom, top):
        n, c, h, w = top[0].shape
        y, norm = ops.face_normalize_forward(bottom[0].data.reshape(n, c, h * w),
                                             normalize_type=self.normalize_type)
        self._norm = norm
        top[0].data[...] = y.reshape(top[0].shape)
        if len(top) > 1:
            top[1].data[...] = norm.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n, c, h, w = top[0].shape
        dnorm = top[1].diff.reshape(n, 1, h * w) if self.bp_norm else None
        dx = ops.face_normalize_backward(
            top[0].diff.reshape(n, c, h * w), top[0].data.reshape(n, c, h * w), self._norm,
            normalize_type=self.normalize_type, fix_gradient=self.fix_gradient, dnorm=dnorm)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register("ChannelScale")
class ChannelScaleLayer(Layer):
    """happynear's `ChannelScale` (caffe-windows; AM-Softmax's face_train_test_wo_fn.prototxt,
    which scales the cosines by the feature norm from Normalize's top[1]): y[n, c, s] =
    x[n, c, s] * scale[n, s].

    bottom[0]: x, read as N x C x H x W (legacy accessors: missing axes 1, at most 4);
    bottom[1]: the scale, one value per item and place (count N*H*W, first axis N). top[0]:
    x's shape. Backward as the fork: dx = dy * scale (dy itself with do_backward_feature
    false), dscale = sum_c dy * x (0 with do_backward_scale false): the gradient. do_forward
    false copies x.

    global_scale (as the fork's GPU code, which trained its models): a parameter blob, one
    value starting at -1, with lr_mult 0 (added when no param is given; any other lr_mult is an
    error, as the fork). Each TRAIN forward sets it to m = mean |bottom[1]| the first time
    (while negative), else to 0.99 * it + 0.01 * m, then clamps it to max_global_scale and
    min_global_scale; TEST forwards use it unchanged. y = it * x; an optional top[1] (shape
    (1,)) is it. Backward stays the per-place one above, with bottom[1]'s values, not the
    global scale (the fork's). The fork's CPU code differs: it only clamps the stored value,
    never updating it. init_global_scale is read by no code of the fork, nor by minicnn. Safe
    in place: forward then keeps a copy of x for the scale's gradient."""
    param_field = "channel_scale_param"
    exact_num_bottom = 2
    min_num_top, max_num_top = 1, 2
    host_only = True

    def layer_setup(self, bottom, top):
        from minicnn.proto.caffe_pb2 import FillerParameter
        p = self.param.channel_scale_param
        self.global_scale, self._x = p.global_scale, None
        if len(top) > 1 and not self.global_scale:
            raise LayerError(f"ChannelScale layer '{self.name}': a second top (the global "
                             "scale) needs channel_scale_param.global_scale: true")
        if self.global_scale:
            self.init_param(0, (1,), FillerParameter(type="constant", value=-1.0),
                            what="global scale")
            specs = self.param.param
            if not specs:
                specs.add(lr_mult=0, decay_mult=0)
            elif specs[0].lr_mult != 0:
                raise LayerError(f"ChannelScale layer '{self.name}': the global scale is a "
                                 f"statistic, not a learned parameter: param 0 has lr_mult "
                                 f"{specs[0].lr_mult:g}, it must be 0")
        elif self.blobs:
            raise LayerError(f"ChannelScale layer '{self.name}' has a parameter blob only with "
                             f"global_scale: true, but {len(self.blobs)} were given")

    def reshape(self, bottom, top):
        from minicnn.layers.ssd import _legacy_4d
        x, scale = bottom
        n, c, h, w = _legacy_4d(self, x, "bottom[0]")
        if scale.shape[:1] != (n,) or scale.count != n * h * w:
            raise LayerError(f"ChannelScale needs one scale per item and place: bottom[1] with "
                             f"first dimension {n} and {n} x {h * w} = {n * h * w} values for "
                             f"bottom[0] of shape {x.shape}, got shape {scale.shape}")
        self.shape3 = (n, c, h * w)
        top[0].reshape(x.shape)
        if len(top) > 1:
            top[1].reshape((1,))

    def forward(self, bottom, top):
        x, scale = bottom
        p = self.param.channel_scale_param
        # in place, the scale's gradient still needs x, which y is about to overwrite
        self._x = x.data.copy() if x is top[0] and self.backward_needed else None
        if not p.do_forward:
            top[0].data[...] = x.data
            return
        if self.global_scale:
            g = self.blobs[0].data
            if self.phase == "TRAIN":
                mean_norm = np.abs(scale.data).sum() / scale.count
                g[0] = mean_norm if g[0] < 0 else g[0] * 0.99 + mean_norm * 0.01
                g[0] = max(min(g[0], p.max_global_scale), p.min_global_scale)
            if len(top) > 1:
                top[1].data[...] = g[0]
            top[0].data[...] = x.data * g[0]
            return
        n, c, s = self.shape3
        y = ops.channel_scale_forward(x.data.reshape(n, c, s), scale.data.reshape(n, 1, s))
        top[0].data[...] = y.reshape(x.shape)

    def backward(self, top, propagate_down, bottom):
        if not any(propagate_down[:2]):
            return
        x, scale = bottom
        p = self.param.channel_scale_param
        n, c, s = self.shape3
        x_data = self._x if self._x is not None else x.data
        dx, dscale = ops.channel_scale_backward(
            top[0].diff.reshape(n, c, s), x_data.reshape(n, c, s), scale.data.reshape(n, 1, s),
            backward_feature=p.do_backward_feature, backward_scale=p.do_backward_scale)
        if propagate_down[1]:
            scale.diff[...] = dscale.reshape(scale.shape)
        if propagate_down[0]:
            x.diff[...] = dx.reshape(x.shape)


@register("GlobalLSEMargin")
class GlobalLSEMarginLayer(Layer):
    """happynear's `GlobalLSEMargin` (caffe-windows; AM-Softmax's prototxt/auto/, the margin
    found automatically): y = s (x - m onehot(label)) on cosines x, N items of count / N
    classes, with m a running margin and s a learned scale.

    Per item the fork measures margin_n = x_t - LSE_n, x_t the target cosine and LSE_n =
    log(sum_{c != t} exp(s (x_c - M_n))) / s + M_n, M_n the largest other cosine floored at -1
    (minicnn.ops.face.global_lse_margin_stats). m is blobs[1] (shape (1,), starts at 0): while
    it is 0 a forward sets it to the mean shift (margin_mean_shift) of the batch's margins from
    their mean, 20 passes; after that each forward sets m = 0.9 m + 0.1 (one pass from m); a NaN
    batch value leaves m alone. Every forward updates it, TEST ones too (the fork does not look
    at the phase). The target is shifted only while m > 0.

    s is blobs[0] (shape (1,)): 30, or scale_param.filler's value, clamped by each forward to
    [scale_param.min_value, scale_param.max_value] (unset: 0 and FLT_MAX). With a third bottom
    (one feature norm per item, Normalize's top[1]) each item is scaled by its norm instead, and
    s is neither used nor learned. Parameter specs, when the prototxt gives none: s lr_mult 1
    (0 with the norm bottom), decay_mult 0; m lr_mult 0, decay_mult 0 (added when one is given).

    top[0]: bottom[0]'s shape. Optional top[1], shape (5,): s (or the batch's mean norm), the
    mean target cosine, the mean LSE, the mean largest other cosine, m. Backward as the fork:
    dx = s dy (m held constant: it is a statistic, not a function of this batch's gradient);
    the norm bottom gets sum_c dy y / norm per item; s's diff is sum(dy y) / s, the gradient,
    which the fork *assigns* rather than adds (minicnn follows: with iter_size > 1 or a shared
    s only the last pass's counts, as in the fork).

    As the fork's GPU code (its CPU Forward/Backward are NOT_IMPLEMENTED). Its MeanShift would
    loop forever when no margin lies within 0.1 of the mean of all (or one is NaN); minicnn
    returns that mean there. The fork's abs in MeanShift is taken as the float one (MSVC's and
    CUDA's headers overload it for float). Labels: one per item, in [0, C); C >= 2."""
    param_field = "scale_param"
    backward_reads_data = ("top",)
    min_num_bottom, max_num_bottom = 2, 3
    min_num_top, max_num_top = 1, 2
    index_bottom = 1
    host_only = True

    def layer_setup(self, bottom, top):
        from minicnn.proto.caffe_pb2 import FillerParameter
        p = self.param.scale_param
        self.original_norm = len(bottom) == 3
        filler = p.filler if p.HasField("filler") else \
            FillerParameter(type="constant", value=30.0)
        self.init_param(0, (1,), filler, what="scale")
        self.init_param(1, (1,), FillerParameter(type="constant", value=0.0), what="margin")
        self.min_scale = float(p.min_value) if p.HasField("min_value") else 0.0
        self.max_scale = float(p.max_value) if p.HasField("max_value") else \
            float(np.finfo(np.float32).max)
        specs = self.param.param
        if not specs:
            specs.add(lr_mult=0 if self.original_norm else 1, decay_mult=0)
        if len(specs) == 1:
            specs.add(lr_mult=0, decay_mult=0)

    def reshape(self, bottom, top):
        x, labels = bottom[:2]
        _check_item_labels(x, labels)
        n = x.shape[0]
        self.num_classes = x.count // n
        if self.num_classes < 2:
            raise LayerError(f"GlobalLSEMargin layer '{self.name}' needs at least 2 classes per "
                             f"item (the LSE is over the non-target ones), got bottom shape "
                             f"{x.shape}")
        if self.original_norm:
            _check_item_labels(x, bottom[2], what="feature norms (bottom 2)")
        if top[0] is not x:
            top[0].reshape(x.shape)
        if len(top) > 1:
            top[1].reshape((5,))

    def _s(self, bottom):
        return bottom[2].data.reshape(-1) if self.original_norm else float(self.blobs[0].data[0])

    def forward(self, bottom, top):
        x, labels = bottom[:2]
        n, c = x.shape[0], self.num_classes
        label_ints = _int_labels(self, labels.data, c)
        scale, margin = self.blobs[0].data, self.blobs[1].data
        scale[0] = min(max(scale[0], self.min_scale), self.max_scale)
        cos = x.data.reshape(n, c)
        s = self._s(bottom)
        target, lse, max_negative = ops.face.global_lse_margin_stats(cos, label_ints, s)
        margins = target - lse
        if margin[0] == 0:                                      # the fork's initialisation
            batch = ops.face.margin_mean_shift(margins, float(margins.mean()), 20)
            if not math.isnan(batch):
                margin[0] = batch
        else:
            batch = ops.face.margin_mean_shift(margins, float(margin[0]), 1)
            if not math.isnan(batch):
                margin[0] = 0.9 * margin[0] + 0.1 * batch
        y = ops.global_lse_margin_forward(cos, label_ints, margin=float(margin[0]), s=s)
        top[0].data[...] = y.reshape(top[0].shape)
        if len(top) > 1:
            top[1].data[...] = [np.mean(s) if self.original_norm else scale[0], target.mean(),
                                lse.mean(), max_negative.mean(), margin[0]]

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        n, c = bottom[0].shape[0], self.num_classes
        dy, y = top[0].diff.reshape(n, c), top[0].data.reshape(n, c)
        dx, ds = ops.global_lse_margin_backward(dy, y, s=self._s(bottom))
        if self.original_norm:
            if propagate_down[2]:
                bottom[2].diff[...] = ds.reshape(bottom[2].shape)
        elif self.param_propagate_down[0]:
            self.blobs[0].diff[...] = ds                 # assigned, as the fork (see above)
        if propagate_down[0]:
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1


@register("Flip")
class FlipLayer(Layer):
    """happynear's `Flip` (caffe-windows; AM-Softmax's face_deploy_mirror_normalize.prototxt
    puts each face beside its mirror image, then adds their features): y[n, c, h, w] =
    x[n, c, h', w'], w' = W - 1 - w with flip_param.flip_width (default true), h' = H - 1 - h
    with flip_height (default false); with neither, y is a copy of x.

    bottom[0]: read as N x C x H x W by the legacy accessors, as the fork (missing axes are 1:
    an N x K blob has W = 1, so it is copied unchanged; more than 4 axes is an error). top[0]:
    bottom[0]'s shape. Backward as the fork: dx is dy flipped the same way (the gradient; a
    flip is its own inverse). In place is refused: the fork's loop reads the bottom while it
    writes the top, so in place it would mirror one half of the blob onto the other."""
    param_field = "flip_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.flip_param
        self.flip_width, self.flip_height = bool(p.flip_width), bool(p.flip_height)
        if bottom[0] is top[0]:
            raise LayerError(f"Flip layer '{self.name}' cannot run in place (the fork's loop "
                             "would overwrite the values it still reads): give it its own top")

    def reshape(self, bottom, top):
        from minicnn.layers.ssd import _legacy_4d
        _legacy_4d(self, bottom[0], "its bottom")
        top[0].reshape(bottom[0].shape)

    def _flipped(self, a):
        from minicnn.layers.ssd import _legacy_4d
        x = a.reshape(_legacy_4d(self, a, "its bottom"))
        return x[:, :, ::-1 if self.flip_height else 1, ::-1 if self.flip_width else 1]

    def forward(self, bottom, top):
        top[0].data[...] = self._flipped(bottom[0].data).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self._flipped(top[0].diff).reshape(bottom[0].shape)
