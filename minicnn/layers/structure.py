"""Layers that route blobs (Split, Concat, Flatten, Silence) or combine them elementwise
(Eltwise, whose math is in minicnn.ops.eltwise)."""

import warnings

import numpy as np

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register


@register("Split")
class SplitLayer(Layer):
    """Caffe `Split`: copies one blob to several tops. The Net inserts one wherever a blob feeds
    several layers; its backward *sums* the tops' diffs, which is how fan-out gradients add up."""
    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        for t in top:
            t.data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = np.sum([t.diff for t in top], axis=0) if len(top) > 1 \
                else top[0].diff


@register("Eltwise")
class EltwiseLayer(Layer):
    """Caffe `Eltwise`: SUM (with one coeff per bottom, or none), PROD or MAX of same-shaped
    bottoms. MAX ties go to bottom 1 over bottom 0, and to an earlier bottom otherwise."""
    param_field = "eltwise_param"
    min_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        self.operation, self.stable_prod_grad = p.operation, p.stable_prod_grad
        self.coeff = list(p.coeff) or None
        if self.coeff is not None:
            if self.operation == "PROD":
                raise LayerError(f"Eltwise takes coeff only for SUM, not for PROD "
                                 f"(got {len(self.coeff)} coeff values)")
            if len(self.coeff) != len(bottom):
                raise LayerError(f"Eltwise takes one coeff per bottom: {len(self.coeff)} coeff "
                                 f"values for {len(bottom)} bottoms")
            if self.operation == "MAX":      # Caffe accepts and ignores them: say so
                warnings.warn(f"layer '{self.name}': Eltwise MAX ignores coeff (as Caffe does)",
                              stacklevel=2)
                self.coeff = None
        # an in-place PROD would lose x_0, which every other bottom's gradient needs
        if self.operation == "PROD" and bottom[0] is top[0]:
            raise LayerError("an in-place Eltwise PROD is not supported (its backward needs "
                             "the inputs)")
        self._argmax = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], start=1):
            if b.shape != bottom[0].shape:
                raise LayerError(f"Eltwise bottoms must all have one shape: bottom[0] has "
                                 f"{bottom[0].shape}, bottom[{i}] has {b.shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        y, self._argmax = ops.eltwise_forward([b.data for b in bottom], self.operation,
                                              self.coeff)
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        which = [i for i, down in enumerate(propagate_down) if down]
        if not which:
            return
        dxs = ops.eltwise_backward(top[0].diff, [b.data for b in bottom], self.operation,
                                   self.coeff, top[0].data, self._argmax,
                                   self.stable_prod_grad, which)
        for i in which:
            bottom[i].diff[...] = dxs[i]


@register("Concat")
class ConcatLayer(Layer):
    """Caffe `Concat`: joins bottoms along concat_param.axis (default 1, negative allowed) or
    the legacy concat_dim; every other dim must match. Backward hands each bottom its slice."""
    param_field = "concat_param"
    min_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise LayerError(f"give concat_param axis ({p.axis}) or concat_dim "
                             f"({p.concat_dim}), not both")

    def reshape(self, bottom, top):
        p = self.param.concat_param
        shape0 = bottom[0].shape
        if p.HasField("concat_dim"):
            # legacy: an unsigned index, no counting from the end
            if p.concat_dim >= len(shape0):
                raise LayerError(f"concat_dim {p.concat_dim} is out of range for a bottom of "
                                 f"shape {shape0} ({len(shape0)} axes)")
            self.axis = p.concat_dim
        else:
            self.axis = self.canonical_axis(bottom[0], p.axis)
        out = list(shape0)
        for i, b in enumerate(bottom[1:], start=1):
            same = len(b.shape) == len(shape0) and all(
                d == e for j, (d, e) in enumerate(zip(b.shape, shape0)) if j != self.axis)
            if not same:
                raise LayerError(f"Concat along axis {self.axis}: bottom[{i}] has shape "
                                 f"{b.shape} but bottom[0] has {shape0}; all dims but axis "
                                 f"{self.axis} must match")
            out[self.axis] += b.shape[self.axis]
        self.sizes = [b.shape[self.axis] for b in bottom]
        top[0].reshape(out)

    def forward(self, bottom, top):
        top[0].data[...] = np.concatenate([b.data for b in bottom], axis=self.axis)

    def backward(self, top, propagate_down, bottom):
        parts = np.split(top[0].diff, np.cumsum(self.sizes)[:-1], axis=self.axis)
        for b, part, down in zip(bottom, parts, propagate_down):
            if down:
                b.diff[...] = part


@register("Flatten")
class FlattenLayer(Layer):
    """Caffe `Flatten`: merges axes axis .. end_axis (defaults 1 and -1, negative allowed) into
    one. Not in place (Caffe refuses it too)."""
    param_field = "flatten_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise LayerError("Flatten does not allow in-place computation")

    def reshape(self, bottom, top):
        p = self.param.flatten_param
        shape = bottom[0].shape
        start = self.canonical_axis(bottom[0], p.axis)
        end = self.canonical_axis(bottom[0], p.end_axis, "end_axis")
        if end < start:
            raise LayerError(f"Flatten end_axis {p.end_axis} (axis {end}) comes before axis "
                             f"{p.axis} (axis {start}) for a bottom of shape {shape}")
        flat = int(np.prod(shape[start:end + 1], dtype=np.int64))
        top[0].reshape(shape[:start] + (flat,) + shape[end + 1:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Silence")
class SilenceLayer(Layer):
    """Caffe `Silence`: consumes bottoms so they are not net outputs; no tops. Backward gives
    the bottoms a zero diff (they reach no loss through here)."""
    min_num_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
