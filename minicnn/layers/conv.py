"""Convolution layers: Caffe's `Convolution` (the math is in minicnn.ops.conv)."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.conv import ConvGeometry


@register("Convolution")
class ConvolutionLayer(Layer):
    """Caffe `Convolution`: y = w * x + b over (N, C, H, W) bottoms, 2 spatial axes (axis 1).

    blobs[0]  weights (num_output, C/group, kh, kw), filled by weight_filler (default constant 0)
    blobs[1]  bias (num_output,) when bias_term (default true), filled by bias_filler

    group splits channels and outputs into contiguous blocks: group == channels is a depthwise
    convolution. dilation > 1 spaces the kernel taps apart: an atrous (dilated) convolution;
    pad = dilation * (kernel - 1) / 2 keeps the size at stride 1 ("same"). As in Caffe, several
    bottoms of one shape may be given, each with its own top; they share the weights.
    """
    param_field = "convolution_param"
    min_num_bottom = min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.type_param
        if len(bottom) != len(top):
            raise LayerError(f"Convolution needs one top per bottom, got {len(bottom)} bottom(s) "
                             f"and {len(top)} top(s)")
        shape = bottom[0].shape
        if len(shape) != 4 or not -4 <= p.axis < 4 or p.axis % 4 != 1:
            raise LayerError(f"minicnn's Convolution supports 2 spatial axes only: a 4-D "
                             f"(N, C, H, W) bottom with axis 1, got axis {p.axis} and a bottom "
                             f"of shape {shape}")
        self.geom = ConvGeometry.from_param(p)
        self.num_output, self.group, self.channels = p.num_output, p.group, shape[1]
        if self.num_output < 1:
            raise LayerError(f"num_output must be > 0, got {self.num_output}")
        if self.group < 1:
            raise LayerError(f"group must be > 0, got {self.group}")
        if self.channels % self.group or self.num_output % self.group:
            raise LayerError(f"channels {self.channels} and num_output {self.num_output} must "
                             f"both be divisible by group {self.group}")
        expected = 1 + bool(p.bias_term)
        if self.blobs and len(self.blobs) != expected:
            raise LayerError(f"{len(self.blobs)} parameter blob(s) given, but a Convolution with "
                             f"bias_term {str(p.bias_term).lower()} has {expected}")
        self.init_param(0, (self.num_output, self.channels // self.group, *self.geom.kernel),
                        p.weight_filler, "weights")
        if p.bias_term:
            self.init_param(1, (self.num_output,), p.bias_filler, "bias")

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if b.shape != bottom[0].shape:
                raise LayerError(f"all bottoms must have one shape: bottom[0] is "
                                 f"{bottom[0].shape}, bottom[{i}] is {b.shape}")
        n, _, h, w = self._check_input(bottom[0].shape)
        for t in top:
            t.reshape((n, self.num_output, *self.geom.out_hw(h, w)))

    def _check_input(self, shape):
        if len(shape) != 4:
            raise LayerError(f"Convolution needs a 4-D (N, C, H, W) bottom, got shape {shape}")
        if shape[1] != self.channels:
            raise LayerError(f"the bottom has {shape[1]} channels, but the weights were made "
                             f"for {self.channels}")
        return shape

    def forward(self, bottom, top):
        w = self.blobs[0].data
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        for x, y in zip(bottom, top):
            y.data[...] = ops.conv2d_forward(x.data, w, b, geom=self.geom, group=self.group)

    def backward(self, top, propagate_down, bottom):
        has_bias = len(self.blobs) > 1
        need_w = self.param_propagate_down[0]
        need_b = has_bias and self.param_propagate_down[1]
        for y, down, x in zip(top, propagate_down, bottom):
            if not (down or need_w or need_b):
                continue
            dx, dw, db = ops.conv2d_backward(y.diff, x.data, self.blobs[0].data, geom=self.geom,
                                             group=self.group, need=(down, need_w, need_b))
            if need_w:
                self.blobs[0].diff += dw           # parameter diffs accumulate (I1)
            if need_b:
                self.blobs[1].diff += db
            if down:
                x.diff[...] = dx                   # bottom diffs are assigned (I1)
