"""Normalization layers: BatchNorm (statistics only), Scale (the learned gamma and beta that
Caffe nets put after it) and Bias (Scale's additive half on its own); the PSPNet fork's BN (both
in one) and SENet's Axpy."""

import numpy as np

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.proto.caffe_pb2 import FillerParameter


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe `BatchNorm`: y = (x - mean) / sqrt(var + eps) per channel (axis 1). Caffe's BatchNorm
    has no learned gamma and beta: nets follow it with a Scale layer (bias_term: true) for those.
    Backward with batch statistics: dx = (dy - E[dy] - y E[dy y]) / sqrt(var + eps), the two
    extra terms being the paths through the batch's mean and variance (derived in
    minicnn/ops/batch_norm.py); with global statistics dx = dy / sqrt(var + eps).

    blobs: [0] running sum of means (C,), [1] running sum of unbiased variances (C,), [2] the
    scale factor (1,) that both are divided by. They are statistics, not parameters: their
    lr_mult is 0 and their diffs stay 0. use_global_stats unset means batch statistics in TRAIN
    and the stored ones in TEST. Safe in place: forward keeps y and sqrt(var + eps) for
    backward."""
    param_field = "batch_norm_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") \
            else self.phase == "TEST"
        self.moving_average_fraction = p.moving_average_fraction
        self.eps = p.eps
        shape = bottom[0].shape
        if len(shape) == 0:
            raise LayerError("BatchNorm needs a bottom with at least one axis, got shape ()")
        self.channels = shape[1] if len(shape) > 1 else 1          # Caffe: 1-D input is 1 channel
        for k, (blob_shape, what) in enumerate((((self.channels,), "mean sums"),
                                                ((self.channels,), "variance sums"),
                                                ((1,), "scale factor"))):
            self.init_param(k, blob_shape, what=what)
        # Caffe masks the statistics from the solver: missing specs get lr_mult 0, others must
        # already say 0 (the Net reads these after setup).
        specs = self.param.param
        for k in range(len(self.blobs)):
            if k == len(specs):
                specs.add(lr_mult=0)
            elif specs[k].lr_mult != 0:
                raise LayerError("cannot configure batch normalization statistics as layer "
                                 f"parameters: param {k} has lr_mult {specs[k].lr_mult:g}, "
                                 "it must be 0")
        self._y = self._std = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        channels = shape[1] if len(shape) > 1 else 1
        if channels != self.channels:
            raise LayerError(f"BatchNorm was set up for {self.channels} channels, but the bottom "
                             f"now has shape {shape} ({channels} channels)")
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        # y is kept for backward (as Caffe keeps x_norm_): top may be bottom, and a later
        # in-place layer may overwrite top. One pass writes both. A net that never runs this
        # backward (inference) writes y straight into top and keeps nothing.
        if not self.backward_needed:
            self._y = None
            self._normalize(x, out=top[0].data)
        else:
            self._normalize(x, out=self._kept_buffer(x), out2=top[0].data)

    def forward_keeping_y(self, bottom):
        """Forward into the kept y only, top left as it was: for minicnn/fusion.py's training
        chain, where the in-place Scale right after reads y from here and writes top. Returns
        y."""
        x = bottom[0].data
        return self._normalize(x, out=self._kept_buffer(x))

    def _kept_buffer(self, x):
        if self._y is None or self._y.shape != x.shape or self._y.dtype != x.dtype:
            self._y = np.empty_like(x)           # reused while the shape holds
        return self._y

    def _normalize(self, x, out, out2=None):
        mean_acc, var_acc, factor = (b.data for b in self.blobs)
        if self.use_global_stats:
            mean, var = ops.batch_norm_global_stats(mean_acc, var_acc, factor)
            y, _, _, std = ops.batch_norm_forward(x, self.eps, mean, var, out=out, out2=out2)
        else:
            y, mean, var, std = ops.batch_norm_forward(x, self.eps, out=out, out2=out2)
            m = x.size // self.channels
            new = ops.batch_norm_update_stats(mean_acc, var_acc, factor, mean, var, m,
                                              self.moving_average_fraction,
                                              out=(mean_acc, var_acc, factor))
            for blob, value in zip(self.blobs, new):
                if value is not blob.data:          # in place: shared weights see the update
                    blob.data[...] = value
        self._std = std
        return y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            if self._y is None:
                raise LayerError("backward after a forward that kept nothing for it: the net "
                                 "said this layer needs no backward")
            ops.batch_norm_backward(top[0].diff, self._y, self._std, self.use_global_stats,
                                    out=bottom[0].diff)     # safe in place: dy read first


@register("BN")
class ForkBNLayer(Layer):
    """The PSPNet/yjxiong fork's `BN` (bn_param; field 137 there, BVLC's embed_param, so 9137
    here, as Interp's): BatchNorm and Scale in one layer, y = slope * (x - mean) /
    sqrt(var + eps) + bias per channel (minicnn.ops.bn).

    blobs: [0] slope, [1] bias (1 x C x 1 x 1; bn_param.slope_filler and bias_filler, default
    constant 0 as any FillerParameter), [2] running mean, [3] running variance (0 and 0, or 1
    when frozen). TRAIN uses the batch's mean and biased variance and moves the running ones:
    running = (1 - momentum) * batch + momentum * running (momentum 0.9); TEST, and any phase
    with bn_param.frozen, uses the running ones. The statistics get lr_mult and decay_mult 0,
    and frozen gives slope and bias 0 too (the fork's LayerSetUp). Backward with the stored
    statistics is the gradient of that affine map (the fork's TEST-phase backward of an
    unfrozen layer reuses its batch formula). Safe in place: forward keeps x_hat."""
    param_field = "bn_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.bn_param
        shape = bottom[0].shape
        if len(shape) < 2:
            raise LayerError(f"BN needs a channel axis (N x C x ...), got shape {shape}")
        self.frozen, self.momentum, self.eps = p.frozen, p.momentum, p.eps
        if not self.eps > 0:
            raise LayerError(f"bn_param.eps must be positive, got {self.eps:g}")
        self.channels = shape[1]
        blob_shape = (1, self.channels, 1, 1)
        constant = FillerParameter()
        constant.type, constant.value = "constant", 1.0 if self.frozen else 0.0
        for k, (filler, what) in enumerate(((p.slope_filler, "slope"), (p.bias_filler, "bias"),
                                            (FillerParameter(), "running mean"),
                                            (constant, "running variance"))):
            self.init_param(k, blob_shape, filler, what=what)
        specs = self.param.param
        while len(specs) < 4:
            specs.add()
        for k in (0, 1, 2, 3) if self.frozen else (2, 3):
            specs[k].lr_mult, specs[k].decay_mult = 0, 0
        self._x_hat = self._inv_std = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 or shape[1] != self.channels:
            raise LayerError(f"BN was set up for {self.channels} channels, but the bottom now "
                             f"has shape {shape}")
        top[0].reshape(shape)

    def _batch_stats(self):
        return not self.frozen and self.phase == "TRAIN"

    def forward(self, bottom, top):
        slope, bias, mean, var = (b.data for b in self.blobs)
        y, self._x_hat, self._inv_std, batch_mean, batch_var = ops.fork_bn_forward(
            bottom[0].data, slope, bias, mean, var, self.eps, self._batch_stats())
        if batch_mean is not None:                      # the fork's caffe_cpu_axpby
            keep, take = mean.dtype.type(self.momentum), mean.dtype.type(1 - self.momentum)
            mean[...] = take * batch_mean.reshape(mean.shape) + keep * mean
            var[...] = take * batch_var.reshape(var.shape) + keep * var
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if self._x_hat is None:
            raise LayerError("BN backward before its forward")
        dx, dslope, dbias = ops.fork_bn_backward(top[0].diff, self._x_hat, self._inv_std,
                                                 self.blobs[0].data, self._batch_stats())
        if not self.frozen:                             # the fork computes no diffs frozen
            self.blobs[0].diff[...] += dslope.reshape(self.blobs[0].shape)
            self.blobs[1].diff[...] += dbias.reshape(self.blobs[1].shape)
        if propagate_down[0]:
            bottom[0].diff[...] = dx


@register("Axpy")
class AxpyLayer(Layer):
    """SENet's `Axpy` (hujie-frank/SENet's fork; no parameters): top = a * X + Y with
    bottom[0] a, one factor per image and channel (N x C, or N x C x 1 x 1: the excitation's
    sigmoid), bottom[1] X (N x C x ...; the residual branch) and bottom[2] Y (X's shape; the
    shortcut). Backward: da = sum over positions of dtop * X, dX = a * dtop, dY = dtop
    (minicnn.ops.axpy). Not in place (a Net allows it only on bottom 0, a, which backward
    reads and whose shape differs)."""
    exact_num_bottom, exact_num_top = 3, 1

    def layer_setup(self, bottom, top):
        if any(top[0] is b for b in bottom):
            raise LayerError("Axpy does not allow in-place computation (backward reads a and X)")

    def reshape(self, bottom, top):
        a, x, y = (b.shape for b in bottom)
        if len(x) < 2 or x != y:
            raise LayerError(f"Axpy: X (bottom 1, shape {x}) and Y (bottom 2, shape {y}) must "
                             "have one shape, with a channel axis")
        if a[:2] != x[:2] or any(d != 1 for d in a[2:]):
            raise LayerError(f"Axpy: a (bottom 0, shape {a}) must be N x C or N x C x 1 x 1 "
                             f"for X of shape {x}")
        top[0].reshape(x)

    def forward(self, bottom, top):
        top[0].data[...] = ops.axpy_forward(bottom[0].data, bottom[1].data, bottom[2].data)

    def backward(self, top, propagate_down, bottom):
        if not any(propagate_down):
            return
        da, dx, dy = ops.axpy_backward(top[0].diff, bottom[0].data, bottom[1].data,
                                       need=tuple(propagate_down))
        for blob, grad in zip(bottom, (da, dx, dy)):
            if grad is not None:
                blob.diff[...] = grad


@register("Scale")
class ScaleLayer(Layer):
    """Caffe `Scale`: y = x * scale (+ bias), scale broadcast along axes axis .. axis+num_axes.

    One bottom: scale is blobs[0] (shape bottom.shape[axis : axis + num_axes], num_axes -1 = to
    the end, 0 = a scalar; filler default constant 1). Two bottoms: scale is bottom[1]. With
    bias_term a learned bias of the scale's shape follows (blobs[1], or blobs[0] with two
    bottoms; bias_filler default constant 0). Safe in place: forward keeps a copy of x.
    Backward: dx = dy * scale, dscale = dy * x summed over the axes scale is broadcast along,
    dbias = dy summed the same way (minicnn/ops/scale.py). The parameter diffs accumulate, as
    every layer's do; Caffe's own Scale assigns its scale diff where the scale has as many
    values as the bottom, so a shared element-wise scale, or one under iter_size > 1, keeps
    only the last pass's gradient there: minicnn's sum is the true gradient."""
    param_field = "scale_param"
    min_num_bottom, max_num_bottom = 1, 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        for field in ("min_value", "max_value"):
            if p.HasField(field):       # parsed for happynear's GlobalLSEMargin, which reads them
                raise LayerError(f"Scale layer '{self.name}': scale_param.{field} (happynear's "
                                 "caffe-windows clamps the scale with it) is not implemented "
                                 "for Scale; only GlobalLSEMargin reads it")
        x_shape = bottom[0].shape
        self.scale_is_param = len(bottom) == 1
        if self.scale_is_param:
            axis = self.canonical_axis(bottom[0], p.axis)
            if p.num_axes < -1:
                raise LayerError(f"scale_param num_axes must be >= 0, or -1 to extend to the end "
                                 f"of bottom[0]; got {p.num_axes}")
            end = len(x_shape) if p.num_axes == -1 else axis + p.num_axes
            if end > len(x_shape):
                raise LayerError(f"the scale's shape extends past bottom[0]'s shape {x_shape}: "
                                 f"axis {axis} + num_axes {p.num_axes} > {len(x_shape)} axes")
            filler = p.filler if p.HasField("filler") else FillerParameter(type="constant",
                                                                            value=1)
            scale_shape = self.init_param(0, x_shape[axis:end], filler, what="scale").shape
        else:
            scale_shape = bottom[1].shape
        self.bias_term = p.bias_term
        self.bias_index = len(self.blobs) if self.scale_is_param else 0
        if self.bias_term:
            self.init_param(self.bias_index, scale_shape, p.bias_filler, what="bias")
        self._x = self._x_buffer = None     # x as forward saw it (in place); our own copy

    def _scale_blob(self, bottom):
        return self.blobs[0] if self.scale_is_param else bottom[1]

    def reshape(self, bottom, top):
        x_shape, scale_shape = bottom[0].shape, self._scale_blob(bottom).shape
        # a scalar scale multiplies everything, whatever the axis (Caffe sets axis 0)
        self.axis = 0 if len(scale_shape) == 0 else \
            self.canonical_axis(bottom[0], self.param.scale_param.axis)
        covered = x_shape[self.axis:self.axis + len(scale_shape)]
        if covered != scale_shape:
            raise LayerError(f"scale of shape {scale_shape} does not match bottom[0] of shape "
                             f"{x_shape} at axis {self.axis} (dims there: {covered})")
        top[0].reshape(x_shape)

    def forward(self, bottom, top):
        x, keep = bottom[0].data, None
        if bottom[0] is top[0] and self.backward_needed:   # Caffe's in-place Scale keeps x
            if self._x_buffer is None or self._x_buffer.shape != x.shape or \
                    self._x_buffer.dtype != x.dtype:
                self._x_buffer = np.empty_like(x)
            keep = self._x = self._x_buffer               # filled in the same pass as top
        else:
            self._x = None
        bias = self.blobs[self.bias_index].data if self.bias_term else None
        ops.scale_forward(x, self._scale_blob(bottom).data, bias, self.axis, out=top[0].data,
                          keep_x=keep)

    def backward(self, top, propagate_down, bottom):
        x = self._x if self._x is not None else bottom[0].data
        scale = self._scale_blob(bottom)
        need_bias = self.bias_term and self.param_propagate_down[self.bias_index]
        if self.scale_is_param:     # I1: parameter diffs accumulate, bottom diffs are assigned
            need_scale = self.param_propagate_down[0]
            scale_acc = scale.diff if need_scale else None
        else:
            need_scale = len(propagate_down) > 1 and propagate_down[1]
            scale_acc = None
        dx, dscale, _ = ops.scale_backward(
            top[0].diff, x, scale.data, self.axis, need_bias, need_dx=propagate_down[0],
            need_dscale=need_scale, dx_out=bottom[0].diff if propagate_down[0] else None,
            dscale_acc=scale_acc,
            dbias_acc=self.blobs[self.bias_index].diff if need_bias else None)
        if need_scale and not self.scale_is_param:
            scale.diff[...] = dscale                                   # a bottom: assigned


@register("Bias")
class BiasLayer(Layer):
    """Caffe `Bias`: y = x + bias, bias broadcast along axes axis .. axis+num_axes (the additive
    twin of Scale; the math is minicnn.ops.bias).

    One bottom: bias is blobs[0] (shape bottom.shape[axis : axis + num_axes], axis negative ok,
    num_axes -1 = to the end, 0 = a scalar; filler default constant 0). Two bottoms: bias is
    bottom[1], whose shape must equal bottom[0].shape[axis : axis + bottom[1].ndim] (num_axes is
    then ignored; a 0-axis bottom[1] is a scalar). Backward: dx = dy; dbias = dy summed over the
    broadcast axes, added to blobs[0].diff but assigned to bottom[1].diff. Safe in place:
    backward needs only dy."""
    param_field = "bias_param"
    min_num_bottom, max_num_bottom = 1, 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.bias_param
        self.bias_is_param = len(bottom) == 1
        if not self.bias_is_param:
            return
        x_shape = bottom[0].shape
        axis = self.canonical_axis(bottom[0], p.axis)
        if p.num_axes < -1:
            raise LayerError(f"bias_param num_axes must be >= 0, or -1 to extend to the end "
                             f"of bottom[0]; got {p.num_axes}")
        end = len(x_shape) if p.num_axes == -1 else axis + p.num_axes
        if end > len(x_shape):
            raise LayerError(f"the bias's shape extends past bottom[0]'s shape {x_shape}: "
                             f"axis {axis} + num_axes {p.num_axes} > {len(x_shape)} axes")
        # an unset filler is FillerParameter's default, constant 0: Caffe's default too
        self.init_param(0, x_shape[axis:end], p.filler, what="bias")

    def _bias_blob(self, bottom):
        return self.blobs[0] if self.bias_is_param else bottom[1]

    def reshape(self, bottom, top):
        x_shape, bias_shape = bottom[0].shape, self._bias_blob(bottom).shape
        # a scalar bias is added to everything, whatever the axis (Caffe sets axis 0)
        self.axis = 0 if len(bias_shape) == 0 else \
            self.canonical_axis(bottom[0], self.param.bias_param.axis)
        covered = x_shape[self.axis:self.axis + len(bias_shape)]
        if covered != bias_shape:
            raise LayerError(f"bias of shape {bias_shape} does not match bottom[0] of shape "
                             f"{x_shape} at axis {self.axis} (dims there: {covered})")
        top[0].reshape(x_shape)

    def forward(self, bottom, top):
        top[0].data[...] = ops.bias_forward(bottom[0].data, self._bias_blob(bottom).data,
                                            self.axis)

    def backward(self, top, propagate_down, bottom):
        bias = self._bias_blob(bottom)
        want_bias = self.param_propagate_down[0] if self.bias_is_param else \
            len(propagate_down) > 1 and propagate_down[1]
        if not (propagate_down[0] or want_bias):
            return
        dx, dbias = ops.bias_backward(top[0].diff, len(bias.shape), self.axis)
        if want_bias:
            if self.bias_is_param:
                bias.diff += dbias                                     # I1: params accumulate
            else:
                bias.diff[...] = dbias                                 # a bottom: assigned
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = dx            # in place, bottom's diff already is top's diff


@register("MVN")
class MVNLayer(Layer):
    """Caffe `MVN`: mean-variance normalization per (n, c) over H*W, or per n over C*H*W with
    mvn_param.across_channels; y = (x - mean) / (sqrt(var) + eps) with normalize_variance (the
    default, eps 1e-9 added after the square root), else y = x - mean. No parameters.

    Backward is Caffe's (exact when eps == 0; see minicnn.ops.mvn). Safe in place: forward
    keeps y and sqrt(var) + eps for backward."""
    param_field = "mvn_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance, self.across_channels = p.normalize_variance, p.across_channels
        self.eps = p.eps
        self._y = self._s = None

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        self._y, self._s = ops.mvn_forward(
            bottom[0].data, normalize_variance=self.normalize_variance,
            across_channels=self.across_channels, eps=self.eps)
        top[0].data[...] = self._y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.mvn_backward(top[0].diff, self._y, self._s,
                                                   across_channels=self.across_channels)
