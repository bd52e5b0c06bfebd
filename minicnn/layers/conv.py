"""Convolution layers: Caffe's `Convolution` and `Deconvolution`, the depthwise aliases of
Caffe forks (`ConvolutionDepthwise`, `DepthwiseConvolution`), `Im2col`, a convolution's first
half on its own, and `Local`, a convolution with different filters at every place. The math is
in minicnn.ops.conv, minicnn.ops.im2col and minicnn.ops.local."""

from minicnn import ops
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.conv import ConvGeometry


def check_two_spatial_axes(type_name, axis, shape):
    """minicnn's convolutions take (N, C, H, W) bottoms with the channels on axis 1."""
    if len(shape) != 4 or not -4 <= axis < 4 or axis % 4 != 1:
        raise LayerError(f"minicnn's {type_name} supports 2 spatial axes only: a 4-D "
                         f"(N, C, H, W) bottom with axis 1, got axis {axis} and a bottom "
                         f"of shape {shape}")


@register("Convolution")
class ConvolutionLayer(Layer):
    """Caffe `Convolution`: y = w * x + b over (N, C, H, W) bottoms, 2 spatial axes (axis 1).

    blobs[0]  weights (num_output, C/group, kh, kw), filled by weight_filler (default constant 0)
    blobs[1]  bias (num_output,) when bias_term (default true), filled by bias_filler

    group splits channels and outputs into contiguous blocks: group == channels is a depthwise
    convolution. dilation > 1 spaces the kernel taps apart: an atrous (dilated) convolution;
    pad = dilation * (kernel - 1) / 2 keeps the size at stride 1 ("same"). As in Caffe, several
    bottoms of one shape may be given, each with its own top; they share the weights. In place
    (top == bottom, same shape), forward keeps a copy of x for the weight gradient.

    Here w * x is cross-correlation (no kernel flip), written per element in minicnn/ops/conv.py
    with its backward (dw from dy and im2col's columns, dx by col2im: a transposed convolution).
    What follows is about speed only.

    On the CPU, float32 3x3 and 5x5 stride-1 convolutions with enough output tiles run by
    Winograd's F(2x2, 3x3) or F(2x2, 5x5) (minicnn/ops/conv.py, csrc/winograd.cpp), and so do
    atrous 3x3 ones with 128+ channels on large enough maps, split into the input's dilation x
    dilation phases (each an undilated convolution): a few float32 roundings apart from the
    direct product; MINICNN_CONV_WINOGRAD=0 keeps every one direct. engine is read and ignored
    (minicnn picks its algorithm per shape, as measured). Its transforms add several inputs
    before any product, so x (or dy, for the input gradient) beyond about FLT_MAX / 4 for 3x3
    (8e37; about 1e37 for 5x5) overflows there to inf/NaN where Caffe's im2col product is finite.
    """
    param_field = "convolution_param"
    min_num_bottom = min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.type_param
        if len(bottom) != len(top):
            raise LayerError(f"{self.type} needs one top per bottom, got {len(bottom)} bottom(s) "
                             f"and {len(top)} top(s)")
        shape = bottom[0].shape
        check_two_spatial_axes(self.type, p.axis, shape)
        self.geom = ConvGeometry.from_param(p)
        self.channels = shape[1]
        self.num_output, self.group = self._outputs_and_group(p)
        if self.num_output < 1:
            raise LayerError(f"num_output must be > 0, got {self.num_output}")
        if self.group < 1:
            raise LayerError(f"group must be > 0, got {self.group}")
        if self.channels % self.group or self.num_output % self.group:
            raise LayerError(f"channels {self.channels} and num_output {self.num_output} must "
                             f"both be divisible by group {self.group}")
        expected = 1 + bool(p.bias_term)
        if self.blobs and len(self.blobs) != expected:
            raise LayerError(f"{len(self.blobs)} parameter blob(s) given, but a {self.type} with "
                             f"bias_term {str(p.bias_term).lower()} has {expected}")
        self.init_param(0, self._weight_shape(), p.weight_filler, "weights")
        if p.bias_term:
            self.init_param(1, (self.num_output,), p.bias_filler, "bias")
        self._kept = {}           # in place: bottom index -> x, which forward overwrites with y

    def _keep_input(self, i, x):
        """Keep a copy of bottom ``i``'s data before an in-place forward overwrites it: the
        weight gradient needs x, not y (Caffe's own in-place use would read y)."""
        if self.backward_needed:
            self._kept[i] = x.data.copy()

    def _input(self, i, x):
        """Bottom ``i``'s data as forward saw it."""
        return self._kept.get(i, x.data)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if b.shape != bottom[0].shape:
                raise LayerError(f"all bottoms must have one shape: bottom[0] is "
                                 f"{bottom[0].shape}, bottom[{i}] is {b.shape}")
        n, _, h, w = self._check_input(bottom[0].shape)
        for t in top:
            t.reshape((n, self.num_output, *self._out_hw(h, w)))

    def _outputs_and_group(self, p):
        """(num_output, group) from the ConvolutionParameter."""
        return p.num_output, p.group

    def _weight_shape(self):
        return (self.num_output, self.channels // self.group, *self.geom.kernel)

    def _out_hw(self, h, w):
        return self.geom.out_hw(h, w)

    def _check_input(self, shape):
        if len(shape) != 4:
            raise LayerError(f"{self.type} needs a 4-D (N, C, H, W) bottom, got shape {shape}")
        if shape[1] != self.channels:
            raise LayerError(f"the bottom has {shape[1]} channels, but the weights were made "
                             f"for {self.channels}")
        return shape

    def forward(self, bottom, top):
        w = self.blobs[0].data
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        self._kept = {}
        for i, (x, y) in enumerate(zip(bottom, top)):
            if x is y:        # in place (as Caffe allows): kernels must not read what they write
                self._keep_input(i, x)
                y.data[...] = ops.conv2d_forward(x.data, w, b, geom=self.geom, group=self.group)
            else:
                ops.conv2d_forward(x.data, w, b, geom=self.geom, group=self.group, out=y.data)

    def backward(self, top, propagate_down, bottom):
        has_bias = len(self.blobs) > 1
        need_w = self.param_propagate_down[0]
        need_b = has_bias and self.param_propagate_down[1]
        for i, (y, down, x) in enumerate(zip(top, propagate_down, bottom)):
            if not (down or need_w or need_b):
                continue
            # bottom diffs are assigned, parameter diffs accumulate (I1): the op adds onto
            # dw_acc and db_acc
            dx, _, _ = ops.conv2d_backward(y.diff, self._input(i, x), self.blobs[0].data,
                                           geom=self.geom, group=self.group,
                                           need=(down, need_w, need_b),
                                           dx_out=x.diff if down and x is not y else None,
                                           dw_acc=self.blobs[0].diff if need_w else None,
                                           db_acc=self.blobs[1].diff if need_b else None)
            if down and x is y:
                x.diff[...] = dx


@register("ConvolutionDepthwise", "DepthwiseConvolution")
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """The depthwise convolution type of Caffe forks used by published MobileNet prototxts:
    `ConvolutionDepthwise` (its fork ignores group and num_output: weights (C, 1, kh, kw), C
    outputs) and `DepthwiseConvolution` (whose prototxts set group: C). Here it is a Convolution
    with group = the bottom's channels C when group is unset, and num_output = C when that is
    unset; num_output may be a multiple of C (a channel multiplier, weights (num_output, 1, kh,
    kw)). A group other than C, or a num_output that C does not divide, is a LayerError."""

    def _outputs_and_group(self, p):
        c, name = self.channels, self.param.type or self.type     # the alias the net used
        group = p.group if p.HasField("group") else c
        num_output = p.num_output if p.HasField("num_output") else c
        if group != c:
            raise LayerError(f"{name} is depthwise: group must be the {c} input channels "
                             f"(or unset), got group {group}")
        if num_output < 1 or num_output % c:
            raise LayerError(f"{name} needs num_output equal to the {c} input channels or a "
                             f"multiple of them (a channel multiplier), got num_output "
                             f"{num_output}")
        return num_output, group


@register("Deconvolution")
class DeconvolutionLayer(ConvolutionLayer):
    """Caffe `Deconvolution` (transposed convolution): the adjoint of a Convolution's x -> y.

    blobs[0]  weights (C, num_output/group, kh, kw): a Convolution's layout with input and output
              swapped (a Convolution from num_output channels to C has weights of that shape)
    blobs[1]  bias (num_output,) when bias_term (default true)

    Output size per axis s*(in - 1) + d*(k - 1) + 1 - 2p: the smallest input that a Convolution
    of this geometry maps to the bottom's size (the next s - 1 sizes map there too, by the
    Convolution's floor; Caffe has no output_padding to pick them). Duality with that
    Convolution (call it K, from num_output to C channels with these weights; its y = K x):

        forward       top = K^T bottom + b       = conv2d_backward_data(bottom, w)
        bottom diff   K dtop                     = conv2d_forward(dtop, w, no bias)
        weight diff   the filter gradient of K with x = dtop and dy = bottom
                                                 = conv2d_backward_filter(bottom, dtop)
        bias diff     sum of dtop over N, H, W

    so no new arithmetic is needed. FCN's bilinear upsampling by a factor f: kernel 2f - f%2,
    stride f, pad ceil((f - 1) / 2), group = num_output = C, bias_term false, weight_filler
    bilinear (and lr_mult 0): output f*H x f*W, each channel upsampled on its own.
    """

    def _weight_shape(self):
        return (self.channels, self.num_output // self.group, *self.geom.kernel)

    def _out_hw(self, h, w):
        return self.geom.transposed_out_hw(h, w)

    def forward(self, bottom, top):
        w = self.blobs[0].data
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        self._kept = {}
        for i, (x, y) in enumerate(zip(bottom, top)):
            out = ops.conv2d_backward_data(x.data, w, x_hw=y.shape[2:], geom=self.geom,
                                           group=self.group)
            if x is y:
                self._keep_input(i, x)
            if b is not None:
                out += b.reshape(1, -1, 1, 1)
            y.data[...] = out

    def backward(self, top, propagate_down, bottom):
        has_bias = len(self.blobs) > 1
        need_w = self.param_propagate_down[0]
        need_b = has_bias and self.param_propagate_down[1]
        w = self.blobs[0].data
        for i, (y, down, x) in enumerate(zip(top, propagate_down, bottom)):
            if need_w:                             # parameter diffs accumulate (I1)
                self.blobs[0].diff += ops.conv2d_backward_filter(self._input(i, x), y.diff,
                                                                 geom=self.geom, group=self.group)
            if need_b:
                self.blobs[1].diff += y.diff.sum(axis=(0, 2, 3))
            if down:                               # bottom diffs are assigned (I1)
                x.diff[...] = ops.conv2d_forward(y.diff, w, None, geom=self.geom,
                                                 group=self.group)


@register("Im2col")
class Im2colLayer(Layer):
    """Caffe `Im2col`: every kernel window of the bottom as a column, the lowering that turns a
    convolution into a matrix product (a Convolution's output is its weights, as a
    (num_output, C*kh*kw) matrix, times these columns, plus the bias).

    top (N, C*kh*kw, oh, ow): channel (c*kh + i)*kw + j holds tap (i, j) of input channel c at
    every output position; 0 where the window lies on padding. Backward is col2im: each entry's
    diff added back onto the pixel it came from (pixels in several windows sum their diffs).

    Reads convolution_param's kernel, stride, pad and dilation (num_output, group, the fillers
    and bias_term are ignored, as Caffe does: the layer has no parameters); 2 spatial axes.
    """
    param_field = "convolution_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.type_param
        check_two_spatial_axes(self.type, p.axis, bottom[0].shape)
        self.geom = ConvGeometry.from_param(p)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise LayerError(f"Im2col needs a 4-D (N, C, H, W) bottom, got shape {shape}")
        n, c, h, w = shape
        kh, kw = self.geom.kernel
        top[0].reshape((n, c * kh * kw, *self.geom.out_hw(h, w)))

    def forward(self, bottom, top):
        top[0].data[...] = ops.im2col_forward(bottom[0].data, geom=self.geom)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.im2col_backward(top[0].diff, x_hw=bottom[0].shape[2:],
                                                      geom=self.geom)


@register("Local")
class LocalLayer(Layer):
    """A locally connected layer (Darknet's [local]: YOLOv1's full model, written by ``minicnn
    convert darknet``): a convolution whose filters differ at each of the OH x OW output places.

    blobs[0]  weights (OH*OW, num_output, C*k*k), place-major as Darknet stores them, filled by
              weight_filler per place (fan-in C*k*k; default constant 0)
    blobs[1]  bias (num_output, OH, OW), one per output value, when bias_term (default true)

    local_param: num_output, kernel_size (1), stride (1), pad (0), bias_term, weight_filler,
    bias_filler. The weights fix the input's height and width: a bottom of another size is an
    error. y[n, f, l] = sum_k w[l, f, k] cols[n, k, l] + b[f, l] over the im2col columns
    (minicnn.ops.local); backward gives dx, dw and db."""
    param_field = "local_param"
    exact_num_bottom = exact_num_top = 1
    host_only = True                  # no CUDA kernel yet: a GPU net runs it on host copies

    def layer_setup(self, bottom, top):
        p = self.param.local_param
        if bottom[0] is top[0]:
            raise LayerError(f"Local layer '{self.name}' cannot run in place (its backward needs "
                             "its input)")
        if p.num_output < 1:
            raise LayerError(f"Local layer '{self.name}': local_param.num_output must be at "
                             "least 1")
        self.geom = ConvGeometry(p.kernel_size, p.stride, p.pad)
        shape = bottom[0].shape
        check_two_spatial_axes("Local", 1, shape)
        self.in_hw = tuple(shape[2:])
        oh, ow = self.geom.out_hw(*self.in_hw)
        k = shape[1] * p.kernel_size ** 2
        want = (oh * ow, p.num_output, k)
        if self.blobs:
            self.init_param(0, want, what="weights")
        else:                               # fan-in k: filled as (L*F) rows of k, reshaped
            filled = self.init_param(0, (oh * ow * p.num_output, k), p.weight_filler)
            self.blobs[0] = Blob.from_array(filled.data.reshape(want), self.dtype)
        if p.bias_term:
            self.init_param(1, (p.num_output, oh, ow), p.bias_filler, "bias")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        check_two_spatial_axes("Local", 1, shape)
        if tuple(shape[2:]) != self.in_hw or shape[1] * self.geom.kernel[0] ** 2 != \
                self.blobs[0].shape[2]:
            raise LayerError(f"Local layer '{self.name}' was set up for C x {self.in_hw[0]} x "
                             f"{self.in_hw[1]} inputs with {self.blobs[0].shape[2]} values per "
                             f"window; got shape {shape} (its weights differ per place)")
        top[0].reshape((shape[0], self.blobs[0].shape[1], *self.geom.out_hw(*shape[2:])))

    def forward(self, bottom, top):
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        top[0].data[...] = ops.local_forward(bottom[0].data, self.blobs[0].data, b,
                                             geom=self.geom)

    def backward(self, top, propagate_down, bottom):
        has_bias = len(self.blobs) > 1
        dx, dw, db = ops.local_backward(top[0].diff, bottom[0].data, self.blobs[0].data,
                                        geom=self.geom, bias=has_bias)
        if propagate_down[0]:
            bottom[0].diff[...] = dx
        if self.param_propagate_down[0]:
            self.blobs[0].diff[...] += dw
        if has_bias and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += db
