"""ArgMax: the indices (and optionally values) of the top_k largest inputs."""

import math

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.argmax import argmax_shape


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Caffe `ArgMax` (argmax_param: top_k 1, out_max_val false, axis unset).

    Without axis: per item over the flattened C*H*W values; top (N, 1, top_k) holding indices,
    or (N, 2, top_k) holding indices then values with out_max_val (padded with 1s to the
    bottom's number of axes, as Caffe: (N, 1, top_k, 1) for a 4-axis bottom). With axis: that
    axis becomes top_k long and holds the indices, or the values with out_max_val.
    Among equal values the larger index comes first (Caffe's sort of (value, index) pairs).
    No backward: asking for a diff of its bottom is a LayerError (Caffe's NOT_IMPLEMENTED);
    force_backward skips it."""
    param_field = "argmax_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.argmax_param
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise LayerError(f"argmax_param.top_k must be at least 1, got {self.top_k}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if not shape:
            raise LayerError("ArgMax needs a bottom with at least one axis, got shape ()")
        if self.has_axis:
            self.axis = self.canonical_axis(bottom[0], self.param.argmax_param.axis,
                                            "argmax_param.axis")
            dim, where = shape[self.axis], f"axis {self.axis}"
        else:
            self.axis = None
            dim, where = math.prod(shape[1:]), "each item (C*H*W)"
        if self.top_k > dim:
            raise LayerError(f"argmax_param.top_k = {self.top_k} is more than the {dim} values "
                             f"of {where} of the bottom (shape {shape})")
        top[0].reshape(argmax_shape(shape, self.top_k, self.out_max_val, self.axis))

    def forward(self, bottom, top):
        top[0].data[...] = ops.argmax_forward(bottom[0].data, top_k=self.top_k,
                                              out_max_val=self.out_max_val, axis=self.axis)

    def allow_force_backward(self, bottom_index):
        return False
