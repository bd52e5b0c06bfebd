"""Neuron layers: one output element per input element (ReLU, ...)."""

import math
import warnings

import numpy as np

from minicnn import cuda, ops
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.proto.caffe_pb2 import FillerParameter


class NeuronLayer(Layer):
    """One bottom, one top of the same shape (Caffe's NeuronLayer)."""
    exact_num_bottom = exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register("ReLU")
class ReLULayer(NeuronLayer):
    """Caffe `ReLU`: max(x, 0) + negative_slope * min(x, 0) (leaky when negative_slope > 0).

    Safe in place (top == bottom) when negative_slope >= 0: backward then reads y for x, which
    has the same sign. With negative_slope < 0 in place, y > 0 wherever x != 0, so y no longer
    tells which slope each element took: forward keeps a mask of x > 0 for backward (Caffe
    reads y and gets the gradient of every x < 0 wrong; minicnn warns in a TRAIN net)."""
    param_field = "relu_param"
    backward_reads_data = ("bottom",)
    backward_reads_sign_only = in_place_keeps_sign = True

    def layer_setup(self, bottom, top):
        self.negative_slope = self.param.relu_param.negative_slope
        self.keeps_mask = bottom[0] is top[0] and self.negative_slope < 0
        self.positive = None              # the mask: 1 where x > 0, else 0, in x's dtype
        if self.keeps_mask:               # what the Net's in-place checks read, for this layer
            self.backward_reads_data, self.caffe_backward_reads_data = (), ("bottom",)
            self.in_place_keeps_sign = False          # x < 0 becomes y > 0
            if self.phase == "TRAIN":
                warnings.warn(
                    f"layer '{self.name}' (ReLU in place, negative_slope "
                    f"{self.negative_slope:g} < 0): Caffe's backward reads the output in place "
                    "of the input and computes a wrong gradient wherever x < 0; minicnn keeps "
                    "a mask of x > 0 and computes the true one. Give the ReLU a top of its own "
                    "to have both agree")

    def forward(self, bottom, top):
        if self.keeps_mask and self.backward_needed:     # before the op writes y over x
            x = bottom[0].data
            self.positive = cuda.array_module(x).greater(x, 0).astype(x.dtype)
        # out=: the op writes y straight into the top blob (no temporary); the math is
        # minicnn/ops/relu.py's reference section
        ops.relu_forward(bottom[0].data, self.negative_slope, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # the gradient needs only whether x > 0: the mask, where forward kept one, says so
            x = self.positive if self.keeps_mask else bottom[0].data
            if x is None:
                raise LayerError("backward before any forward: the in-place ReLU with "
                                 "negative_slope < 0 has no mask of x > 0 yet")
            ops.relu_backward(top[0].diff, x, self.negative_slope, out=bottom[0].diff)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """Caffe `Dropout` (inverted): in the TRAIN phase each element is kept with probability
    1 - dropout_ratio and scaled by 1 / (1 - dropout_ratio), the mask drawn from ``self.rng``
    at every forward and reused by backward; in the TEST phase it is the identity.

    ``scale_train: false`` (caffe-fast-rcnn's field, in py-faster-rcnn's prototxts) moves the
    scaling to the other phase, as that fork does: TRAIN keeps x * mask unscaled, and TEST
    multiplies by 1 - dropout_ratio (forward and backward).

    Safe in place: neither pass reads the input again."""
    param_field = "dropout_param"
    in_place_keeps_sign = True       # x * mask * scale: 0 only where the diff is 0 too

    def layer_setup(self, bottom, top):
        p = self.param.dropout_param
        self.ratio = p.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise LayerError(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.scale_train = p.scale_train
        self.mask = None
        self._device_mask = None

    def _test_scale(self, dtype):
        """TEST's factor with scale_train false: 1 / scale, scale = 1 / (1 - ratio) in the
        blob's dtype, as Caffe's caffe_scal(count, 1. / scale_, ...)."""
        return dtype.type(1.0 / dtype.type(1.0 / (1.0 - self.ratio)))

    def forward(self, bottom, top):
        if self.phase == "TRAIN":
            self.mask = ops.dropout_mask(self.rng, bottom[0].shape, self.ratio)
            x = bottom[0].data
            if cuda.is_device_array(x):    # on the GPU: one asynchronous copy, kept for backward
                if self._device_mask is None or self._device_mask.shape != self.mask.shape:
                    self._device_mask = cuda.cupy().empty_like(x, dtype=np.bool_)
                self.mask = cuda.assign(self._device_mask, self.mask)
            top[0].data[...] = ops.dropout_forward(x, self.mask, self._train_ratio())
        elif not self.scale_train:
            top[0].data[...] = bottom[0].data * self._test_scale(bottom[0].data.dtype)
        elif bottom[0] is not top[0]:
            top[0].data[...] = bottom[0].data

    @property
    def in_place_changes_data(self):
        return self.phase == "TRAIN" or not self.scale_train     # TEST: the identity

    def _train_ratio(self):
        return self.ratio if self.scale_train else 0.0      # ratio 0: the op's scale is 1

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase == "TRAIN":
            bottom[0].diff[...] = ops.dropout_backward(top[0].diff, self.mask, self._train_ratio())
        elif not self.scale_train:
            bottom[0].diff[...] = top[0].diff * self._test_scale(top[0].diff.dtype)
        elif bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff


def _input_copy(bottom, top):
    """x for a backward that reads it: a copy when the layer runs in place (forward overwrites
    x with y), else None (backward reads bottom[0].data)."""
    return bottom[0].data.copy() if bottom[0] is top[0] else None


def _base_of(layer, base, log=False):
    """Exp's and Log's base, checked as Caffe does: > 0, or -1 for e (Log also needs != 1)."""
    if base != -1 and not base > 0:
        raise LayerError(f"{layer.param_field}.base must be > 0, or -1 for e; got {base:g}")
    if log and base == 1:
        raise LayerError(f"{layer.param_field}.base must not be 1 (log base 1 is undefined)")
    return base


@register("PReLU")
class PReLULayer(NeuronLayer):
    """Caffe `PReLU`: max(x, 0) + a_c * min(x, 0), a learned slope per channel (axis 1).

    blobs[0]: the slopes, shape (C,), or () with channel_shared (a stored blob only has to have
    the right count); prelu_param.filler defaults to constant 0.25. The bottom needs >= 2 axes.
    Safe in place: forward keeps a copy of x, as Caffe's bottom_memory_."""
    param_field = "prelu_param"

    @staticmethod
    def _check_axes(shape):
        if len(shape) < 2:
            raise LayerError(f"PReLU needs a bottom with at least 2 axes (N, C, ...), got "
                             f"shape {shape}")

    def layer_setup(self, bottom, top):
        p = self.param.prelu_param
        shape = bottom[0].shape
        self._check_axes(shape)
        self.channel_shared = p.channel_shared
        want = () if self.channel_shared else (shape[1],)
        if self.blobs:                                   # from a model: Caffe checks the count
            have = self.blobs[0]
            if have.count != math.prod(want):
                raise LayerError(
                    f"PReLU slopes (blob 0) of shape {have.shape} hold {have.count} values, but "
                    f"channel_shared {str(self.channel_shared).lower()} needs "
                    f"{math.prod(want)} (the bottom has {shape[1]} channels)")
            if have.shape != want:
                self.blobs[0] = Blob.from_array(have.data.reshape(want))
        filler = p.filler if p.HasField("filler") else FillerParameter(type="constant",
                                                                        value=0.25)
        self.init_param(0, want, filler, what="slopes")
        self._x = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self._check_axes(shape)
        if not self.channel_shared and shape[1] != self.blobs[0].count:
            raise LayerError(f"PReLU was set up for {self.blobs[0].count} channels, but the "
                             f"bottom now has shape {shape}")
        top[0].reshape(shape)

    def forward(self, bottom, top):
        self._x = _input_copy(bottom, top)
        top[0].data[...] = ops.prelu_forward(bottom[0].data, self.blobs[0].data)

    def backward(self, top, propagate_down, bottom):
        x = self._x if self._x is not None else bottom[0].data
        dx, dslope = ops.prelu_backward(top[0].diff, x, self.blobs[0].data)
        if self.param_propagate_down[0]:
            self.blobs[0].diff += dslope                  # I1: parameter diffs accumulate
        if propagate_down[0]:
            bottom[0].diff[...] = dx


@register("ELU")
class ELULayer(NeuronLayer):
    """Caffe `ELU`: x if x > 0 else alpha * (exp(x) - 1) (elu_param.alpha, default 1).

    Safe in place: backward reads y (kept from forward) and the sign of x, which y shares when
    alpha >= 0; with alpha < 0 an in-place layer keeps a copy of x."""
    param_field = "elu_param"
    caffe_backward_reads_data = ("bottom", "top")

    def layer_setup(self, bottom, top):
        self.alpha = self.param.elu_param.alpha
        self._x = self._y = None

    def forward(self, bottom, top):
        x = bottom[0].data
        self._y = ops.elu_forward(x, self.alpha)
        self._x = None
        if bottom[0] is top[0]:
            self._x = self._y if self.alpha >= 0 else x.copy()
        top[0].data[...] = self._y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x if self._x is not None else bottom[0].data
            bottom[0].diff[...] = ops.elu_backward(top[0].diff, x, self._y, self.alpha)


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """Caffe `Sigmoid`: 1 / (1 + exp(-x)). Its derivative is y (1 - y), a function of the output
    alone, so backward reads y only (kept from forward) and is safe in place."""
    param_field = "sigmoid_param"
    caffe_backward_reads_data = ("top",)          # Caffe reads y from the top blob
    _y = None                    # y from the last forward

    def forward(self, bottom, top):
        self._y = ops.sigmoid_forward(bottom[0].data)
        top[0].data[...] = self._y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.sigmoid_backward(top[0].diff, self._y)


@register("TanH")
class TanHLayer(NeuronLayer):
    """Caffe `TanH`: tanh(x). Its derivative is 1 - y^2, a function of the output alone, so
    backward reads y only (kept from forward) and is safe in place."""
    param_field = "tanh_param"
    caffe_backward_reads_data = ("top",)          # Caffe reads y from the top blob
    _y = None                    # y from the last forward

    def forward(self, bottom, top):
        self._y = ops.tanh_forward(bottom[0].data)
        top[0].data[...] = self._y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.tanh_backward(top[0].diff, self._y)


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """Caffe `AbsVal`: |x|, with derivative sign(x) (0 at 0). Not in place: Caffe refuses it
    (backward needs the sign of x, which |x| has lost)."""

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise LayerError("AbsVal does not allow in-place computation (its backward needs "
                             "the sign of x); give the top another name")

    def forward(self, bottom, top):
        top[0].data[...] = ops.absval_forward(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.absval_backward(top[0].diff, bottom[0].data)


@register("Power")
class PowerLayer(NeuronLayer):
    """Caffe `Power`: (shift + scale * x)^power (power_param: power 1, scale 1, shift 0).

    Backward uses the direct derivative (Caffe's shortcut gives NaN where shift + scale*x == 0;
    see minicnn.ops.neurons). Safe in place: forward then keeps a copy of x."""
    param_field = "power_param"
    caffe_backward_reads_data = ("bottom", "top")

    def layer_setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift
        self._x = None

    def forward(self, bottom, top):
        self._x = _input_copy(bottom, top)
        top[0].data[...] = ops.power_forward(bottom[0].data, self.power, self.scale, self.shift)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x if self._x is not None else bottom[0].data
            bottom[0].diff[...] = ops.power_backward(top[0].diff, x, self.power, self.scale,
                                                     self.shift)


@register("Exp")
class ExpLayer(NeuronLayer):
    """Caffe `Exp`: base^(shift + scale * x) (exp_param: base -1 = e, scale 1, shift 0; base
    must be > 0). Backward reads y only (kept from forward), so it is safe in place."""
    param_field = "exp_param"
    caffe_backward_reads_data = ("top",)          # Caffe reads y from the top blob

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        self.base, self.scale, self.shift = _base_of(self, p.base), p.scale, p.shift
        self._y = None

    def forward(self, bottom, top):
        self._y = ops.exp_forward(bottom[0].data, self.base, self.scale, self.shift)
        top[0].data[...] = self._y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.exp_backward(top[0].diff, self._y, self.base, self.scale,
                                                   self.shift)


@register("Log")
class LogLayer(NeuronLayer):
    """Caffe `Log`: log_base(shift + scale * x) (log_param: base -1 = e, scale 1, shift 0; base
    must be > 0 and != 1). Safe in place: forward then keeps a copy of x."""
    param_field = "log_param"
    caffe_backward_reads_data = ("bottom",)

    def layer_setup(self, bottom, top):
        p = self.param.log_param
        self.base, self.scale, self.shift = _base_of(self, p.base, log=True), p.scale, p.shift
        self._x = None

    def forward(self, bottom, top):
        self._x = _input_copy(bottom, top)
        top[0].data[...] = ops.log_forward(bottom[0].data, self.base, self.scale, self.shift)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x if self._x is not None else bottom[0].data
            bottom[0].diff[...] = ops.log_backward(top[0].diff, x, self.base, self.scale,
                                                   self.shift)


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """Caffe `BNLL` (binomial normal log likelihood, softplus): log(1 + exp(x)), computed
    stably; derivative sigmoid(x). Safe in place: forward then keeps a copy of x."""
    caffe_backward_reads_data = ("bottom",)

    def layer_setup(self, bottom, top):
        self._x = None

    def forward(self, bottom, top):
        self._x = _input_copy(bottom, top)
        top[0].data[...] = ops.bnll_forward(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x if self._x is not None else bottom[0].data
            bottom[0].diff[...] = ops.bnll_backward(top[0].diff, x)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """Caffe `Threshold`: 1 if x > threshold else 0 (threshold_param.threshold, default 0).

    No backward: asking for a diff of its bottom (propagate_down, or a loss below it) is a
    LayerError, as Caffe's NOT_IMPLEMENTED. force_backward skips it (Caffe would abort).
    Safe in place."""
    param_field = "threshold_param"

    def layer_setup(self, bottom, top):
        self.threshold = self.param.threshold_param.threshold

    def forward(self, bottom, top):
        top[0].data[...] = ops.threshold_forward(bottom[0].data, self.threshold)

    def allow_force_backward(self, bottom_index):
        return False


@register("Clip")
class ClipLayer(NeuronLayer):
    """Caffe `Clip`: max(min, min(x, max)) (clip_param.min and max, both required).

    Backward passes dy where min <= x <= max, the ends included, and 0 elsewhere. Caffe's CPU
    code maps NaN to min (see minicnn.ops.neurons). min > max is allowed, as in Caffe: y is
    then min everywhere and the gradient 0. Caffe rejects a clip_param without min or max; a
    Clip with no clip_param at all runs there as min = max = 0, and minicnn refuses it too.
    Safe in place: forward then keeps a copy of x. Caffe's in-place Clip does not: its
    backward reads y, which lies in [min, max], and so passes dy everywhere; minicnn gives the
    true gradient instead (the same as out of place)."""
    param_field = "clip_param"
    caffe_backward_reads_data = ("bottom",)

    def layer_setup(self, bottom, top):
        p = self.param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            fields = " and ".join(f"clip_param.{f}" for f in missing)
            raise LayerError(f"Clip layer '{self.name}': {fields} "
                             f"{'is' if len(missing) == 1 else 'are'} required (Caffe's "
                             "ClipParameter requires both min and max)")
        self.min, self.max = p.min, p.max
        self._x = None

    def forward(self, bottom, top):
        self._x = _input_copy(bottom, top)
        top[0].data[...] = ops.clip_forward(bottom[0].data, self.min, self.max)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x if self._x is not None else bottom[0].data
            bottom[0].diff[...] = ops.clip_backward(top[0].diff, x, self.min, self.max)


@register("ReLU6")
class ReLU6Layer(NeuronLayer):
    """`ReLU6` (MobileNet v2/v3 ports and the ONNX/PyTorch-to-Caffe converters' layer, which
    OpenCV's Caffe importer reads; no parameters): min(max(x, 0), 6). Backward passes dy where
    0 < x < 6, both kinks excluded (as ReLU at 0); it reads y, which tells the same, so the
    layer is safe in place."""
    backward_reads_data = ("top",)
    in_place_keeps_sign = True

    def forward(self, bottom, top):
        top[0].data[...] = ops.relu6_forward(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.relu6_backward(top[0].diff, top[0].data)


@register("Swish")
class SwishLayer(NeuronLayer):
    """Caffe `Swish`: x * sigmoid(beta * x) (swish_param.beta, default 1; beta 1 is SiLU).

    Backward reads y and sigmoid(beta x), both kept from forward (as Caffe's inner Sigmoid
    layer keeps its output), so it is safe in place."""
    param_field = "swish_param"
    caffe_backward_reads_data = ("top",)          # Caffe reads y from the top blob
    _y = _s = None               # y and sigmoid(beta x) from the last forward

    def layer_setup(self, bottom, top):
        self.beta = self.param.swish_param.beta

    def forward(self, bottom, top):
        self._y, self._s = ops.swish_forward(bottom[0].data, self.beta)
        top[0].data[...] = self._y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.swish_backward(top[0].diff, self._y, self._s, self.beta)
