"""Neuron layers: one output element per input element (ReLU, ...)."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register


class NeuronLayer(Layer):
    """One bottom, one top of the same shape (Caffe's NeuronLayer)."""
    exact_num_bottom = exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register("ReLU")
class ReLULayer(NeuronLayer):
    """Caffe `ReLU`: max(x, 0) + negative_slope * min(x, 0) (leaky when negative_slope > 0).

    Safe in place (top == bottom) when negative_slope >= 0: backward then reads y for x, which
    has the same sign."""
    param_field = "relu_param"

    def layer_setup(self, bottom, top):
        self.negative_slope = self.param.relu_param.negative_slope
        if bottom[0] is top[0] and self.negative_slope < 0:
            raise LayerError("an in-place ReLU needs negative_slope >= 0 (its backward reads "
                             "the output in place of the input)")

    def forward(self, bottom, top):
        top[0].data[...] = ops.relu_forward(bottom[0].data, self.negative_slope)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.relu_backward(top[0].diff, bottom[0].data,
                                                    self.negative_slope)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """Caffe `Dropout` (inverted): in the TRAIN phase each element is kept with probability
    1 - dropout_ratio and scaled by 1 / (1 - dropout_ratio), the mask drawn from ``self.rng``
    at every forward and reused by backward; in the TEST phase it is the identity.

    Safe in place: neither pass reads the input again."""
    param_field = "dropout_param"

    def layer_setup(self, bottom, top):
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise LayerError(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.mask = None

    def forward(self, bottom, top):
        if self.phase == "TRAIN":
            self.mask = ops.dropout_mask(self.rng, bottom[0].shape, self.ratio)
            top[0].data[...] = ops.dropout_forward(bottom[0].data, self.mask, self.ratio)
        elif bottom[0] is not top[0]:
            top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase == "TRAIN":
            bottom[0].diff[...] = ops.dropout_backward(top[0].diff, self.mask, self.ratio)
        elif bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff
