"""The Softmax layer (the loss built on it, SoftmaxWithLoss, is in loss.py)."""

from minicnn import ops
from minicnn.layer import Layer, register


@register("Softmax")
class SoftmaxLayer(Layer):
    """Caffe `Softmax`: exp(x) / sum exp(x) along softmax_param.axis (default 1, the channels),
    independently at every other position. Safe in place: backward reads only the top."""
    param_field = "softmax_param"
    exact_num_bottom = exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(bottom[0], self.param.softmax_param.axis,
                                        "softmax_param.axis")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = ops.softmax_forward(bottom[0].data, axis=self.axis)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.softmax_backward(top[0].diff, top[0].data, axis=self.axis)
