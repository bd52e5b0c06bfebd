"""Layers that route blobs (Split, Concat, Slice, Flatten, Reshape, Permute, Silence, Tile), pick
items of a batch (BatchReindex, Filter), hold a blob of their own (Parameter), combine them
elementwise (Eltwise, whose math is in minicnn.ops.eltwise) or reduce them (Reduction)."""

import warnings

import numpy as np

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register


def _axis_or_legacy_dim(layer, bottom, p, legacy_field):
    """Concat's and Slice's axis: ``axis`` (negative counts from the end), or the legacy
    concat_dim / slice_dim where given, an unsigned index with no counting from the end."""
    if not p.HasField(legacy_field):
        return layer.canonical_axis(bottom, p.axis)
    dim, shape = getattr(p, legacy_field), bottom.shape
    if dim >= len(shape):
        raise LayerError(f"{legacy_field} {dim} is out of range for a bottom of shape {shape} "
                         f"({len(shape)} axes)")
    return dim


@register("Split")
class SplitLayer(Layer):
    """Caffe `Split`: copies one blob to several tops. The Net inserts one wherever a blob feeds
    several layers; its backward *sums* the tops' diffs, which is how fan-out gradients add up."""
    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        for t in top:           # as Caffe's ShareData: the tops *are* the bottom's values
            t.alias_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:           # nothing to copy, unless something replaced a top's array
            if t.data is not bottom[0].data:
                t.alias_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        if len(top) == 1:
            np.copyto(diff, top[0].diff)
            return
        ops.eltwise_forward([t.diff for t in top], "SUM", out=diff)    # the diffs' sum


@register("Eltwise")
class EltwiseLayer(Layer):
    """Caffe `Eltwise`: SUM (with one coeff per bottom, or none), PROD or MAX of same-shaped
    bottoms. MAX ties go to bottom 1 over bottom 0, and to an earlier bottom otherwise.
    Backward (minicnn/ops/eltwise.py): SUM gives bottom k coeff_k * dy (a residual connection
    passes dy through unchanged); PROD gives dy times the other bottoms' product; MAX routes dy
    to the bottom that won, as max pooling does."""
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
        # PROD's backward reads the product from the top (as Caffe's does)
        self.backward_reads_data = ("top",) if self.operation == "PROD" else ()
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
        _, self._argmax = ops.eltwise_forward([b.data for b in bottom], self.operation,
                                              self.coeff, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        which = [i for i, down in enumerate(propagate_down) if down]
        if not which:
            return
        ops.eltwise_backward(top[0].diff, [b.data for b in bottom], self.operation, self.coeff,
                             top[0].data, self._argmax, self.stable_prod_grad, which,
                             outs=[b.diff for b in bottom])     # bottom diffs are assigned


@register("Concat")
class ConcatLayer(Layer):
    """Caffe `Concat`: joins bottoms along concat_param.axis (default 1, negative allowed) or
    the legacy concat_dim; every other dim must match. Backward hands each bottom its slice of
    the top diff: concatenation only moves values, so a value's gradient is the top diff at
    the place it moved to."""
    param_field = "concat_param"
    min_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise LayerError(f"give concat_param axis ({p.axis}) or concat_dim "
                             f"({p.concat_dim}), not both")

    def reshape(self, bottom, top):
        shape0 = bottom[0].shape
        self.axis = _axis_or_legacy_dim(self, bottom[0], self.param.concat_param, "concat_dim")
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
    one. end_axis may be axis - 1, an empty range: as in Caffe (count(axis, axis) = 1) that
    inserts an axis of size 1 before `axis`. Not in place (Caffe refuses it too)."""
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
        if end < start - 1:
            raise LayerError(f"Flatten end_axis {p.end_axis} (axis {end}) comes more than one "
                             f"axis before axis {p.axis} (axis {start}) for a bottom of shape "
                             f"{shape}")
        flat = int(np.prod(shape[start:end + 1], dtype=np.int64))
        top[0].reshape(shape[:start] + (flat,) + shape[end + 1:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Permute")
class PermuteLayer(Layer):
    """SSD's `Permute`: reorders the axes; permute_param.order lists, for each top axis, the
    bottom axis it takes (e.g. 0 2 3 1: N x C x H x W -> N x H x W x C); axes it leaves out
    follow in increasing order. Not in place."""
    param_field = "permute_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise LayerError("Permute does not allow in-place computation")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.order = ops.permute.permute_order(self.param.permute_param.order, len(shape))
        top[0].reshape(tuple(shape[a] for a in self.order))

    def forward(self, bottom, top):
        top[0].data[...] = ops.permute_forward(bottom[0].data, self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.permute_backward(top[0].diff, self.order)


@register("Reorg")
class ReorgLayer(Layer):
    """YOLOv2's `Reorg` (the passthrough layer of the YOLOv2 Caffe ports, reorg_param: stride,
    required, and reverse): Darknet's reorg, N x C x H x W -> N x C s^2 x H/s x W/s, by
    Darknet's index arithmetic (minicnn.ops.permute: not a plain space-to-depth; OpenCV's
    importer does the same). reverse: N x C/s^2 x H s x W s, the scatter by the same map.
    C must divide by s^2, and H and W by s (without reverse). Backward is the inverse
    permutation. Not in place."""
    param_field = "reorg_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.reorg_param
        if bottom[0] is top[0]:
            raise LayerError("Reorg does not allow in-place computation (the top's shape "
                             "differs)")
        if not p.HasField("stride") or p.stride < 1:
            raise LayerError(f"Reorg layer '{self.name}': reorg_param.stride is required and "
                             "must be at least 1 (the ports' field has no default)")
        self.stride, self.reverse = p.stride, p.reverse

    def reshape(self, bottom, top):
        shape, s = bottom[0].shape, self.stride
        if len(shape) != 4:
            raise LayerError(f"Reorg takes N x C x H x W, got shape {shape}")
        if shape[1] % (s * s) or (not self.reverse and (shape[2] % s or shape[3] % s)):
            need = f"C divisible by {s * s}" + ("" if self.reverse else f", H and W by {s}")
            raise LayerError(f"Reorg with stride {s} needs {need}; the bottom has shape {shape}")
        top[0].reshape(ops.permute.reorg_shape(shape, s, self.reverse))

    def forward(self, bottom, top):
        top[0].data[...] = ops.reorg_forward(bottom[0].data, self.stride, self.reverse)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.reorg_backward(top[0].diff, bottom[0].shape, self.stride,
                                                     self.reverse)


@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """ShuffleNet's `ShuffleChannel` (a fork layer: farmingyard's and camel007's Caffe, field
    164 shuffle_channel_param): the C channels as shuffle_channel_param.group (default 1)
    groups of C/group, interleaved, so top channel k * group + g is bottom channel
    g * C/group + k (minicnn.ops.permute). Backward applies the inverse shuffle. The channels
    must split evenly into the groups. In place is allowed, as in the forks."""
    param_field = "shuffle_channel_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.group = self.param.shuffle_channel_param.group
        if self.group < 1:
            raise LayerError(f"ShuffleChannel layer '{self.name}': shuffle_channel_param.group "
                             f"must be at least 1, got {self.group}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2:
            raise LayerError(f"ShuffleChannel layer '{self.name}': the bottom (shape {shape}) "
                             "has no channel axis")
        if shape[1] % self.group:
            raise LayerError(f"ShuffleChannel layer '{self.name}': the bottom's {shape[1]} "
                             f"channels (shape {shape}) do not split into {self.group} groups")
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = ops.channel_shuffle(bottom[0].data, self.group)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            channels = top[0].shape[1]
            bottom[0].diff[...] = ops.channel_shuffle(top[0].diff, channels // self.group)


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


@register("Slice")
class SliceLayer(Layer):
    """Caffe `Slice`, Concat's inverse: cuts the bottom along slice_param.axis (default 1,
    negative allowed) or the legacy slice_dim (no counting from the end; not both) into one top
    per piece. slice_point gives the len(top) - 1 cut positions, strictly increasing inside
    (0, dim); without it the axis is split evenly into len(top) parts. Backward concatenates the
    tops' diffs into the bottom. A single top is a copy (Caffe shares the data instead).

    Caffe itself accepts a last slice_point equal to dim (an empty last top); minicnn refuses it
    as a mistake. In place only with a single top."""
    param_field = "slice_param"
    exact_num_bottom = 1
    min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise LayerError(f"give slice_param axis ({p.axis}) or slice_dim ({p.slice_dim}), "
                             "not both")
        if len(top) > 1 and top[0] is bottom[0]:
            raise LayerError(f"Slice with {len(top)} tops cannot run in place (top[0] is "
                             "bottom[0])")
        self.slice_points = [int(s) for s in p.slice_point]
        if self.slice_points and len(self.slice_points) != len(top) - 1:
            raise LayerError(f"Slice with {len(self.slice_points)} slice_point values "
                             f"({self.slice_points}) needs {len(self.slice_points) + 1} tops, "
                             f"got {len(top)}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = _axis_or_legacy_dim(self, bottom[0], self.param.slice_param, "slice_dim")
        dim = shape[self.axis]
        if self.slice_points:
            cuts = [0, *self.slice_points, dim]
            if any(a >= b for a, b in zip(cuts, cuts[1:])):
                raise LayerError(f"slice_point {self.slice_points} must be strictly increasing "
                                 f"and inside (0, {dim}) for axis {self.axis} of a bottom of "
                                 f"shape {shape}")
            self.sizes = [b - a for a, b in zip(cuts, cuts[1:])]
        else:
            if dim % len(top):
                raise LayerError(f"Slice into {len(top)} tops without slice_point needs axis "
                                 f"{self.axis} (size {dim}, bottom shape {shape}) to be "
                                 f"divisible by {len(top)}")
            self.sizes = [dim // len(top)] * len(top)
        for t, size in zip(top, self.sizes):
            t.reshape(shape[:self.axis] + (size,) + shape[self.axis + 1:])

    def forward(self, bottom, top):
        parts = np.split(bottom[0].data, np.cumsum(self.sizes)[:-1], axis=self.axis)
        for t, part in zip(top, parts):
            t.data[...] = part

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = np.concatenate([t.diff for t in top], axis=self.axis)


@register("Reshape")
class ReshapeLayer(Layer):
    """Caffe `Reshape`: the bottom's data under a new shape (same count, same order).

    reshape_param.shape replaces the bottom axes [start, end): start = axis (default 0; a
    negative axis counts from after the last axis, start = ndim + axis + 1, so -1 replaces
    nothing at the end), end = start + num_axes (default -1: to the end). The axes before and
    after the range are kept. In shape, a 0 copies the bottom's dim at the same position
    counted from start, and one -1 is inferred from the count. Caffe's top shares the bottom's
    memory; minicnn copies the data into the top (and the diff back), so it is not in place.

    caffe.proto's comment lists ``shape { dim: 2 dim: 4 } axis: -3`` among the ways to make a
    2x8 blob 2x2x4; by Caffe's code (and here) that is a count error, -2 is what works
    (BVLC/caffe PR #6936 corrects the comment)."""
    param_field = "reshape_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise LayerError("Reshape does not allow in-place computation (minicnn copies the "
                             "data into a separate top)")
        self.dims = [int(d) for d in self.param.reshape_param.shape.dim]
        inferred = [i for i, d in enumerate(self.dims) if d == -1]
        if len(inferred) > 1:
            raise LayerError(f"reshape shape {self.dims} has {len(inferred)} dims of -1 (at "
                             f"positions {inferred}); at most one may be inferred")
        if any(d < -1 for d in self.dims):
            raise LayerError(f"reshape shape {self.dims} has a dim below -1 (only 0 = copy and "
                             "-1 = infer are special)")
        self.inferred = inferred[0] if inferred else None
        self.copy_axes = [i for i, d in enumerate(self.dims) if d == 0]

    def reshape(self, bottom, top):
        p = self.param.reshape_param
        shape, n = bottom[0].shape, len(bottom[0].shape)
        count = bottom[0].count
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise LayerError(f"reshape axis {p.axis} is out of range for a bottom of shape "
                             f"{shape} ({n} axes)")
        if p.num_axes < -1:
            raise LayerError(f"reshape num_axes must be >= 0, or -1 for all; got {p.num_axes}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise LayerError(f"reshape axis {p.axis} + num_axes {p.num_axes} = {end} is past "
                             f"the {n} axes of a bottom of shape {shape}")
        new = list(shape[:start]) + self.dims + list(shape[end:])
        for i in self.copy_axes:
            # Caffe copies from bottom axis start + i, even past the replaced range
            if start + i >= n:
                raise LayerError(f"reshape shape {self.dims} has a 0 at position {i} with no "
                                 f"corresponding bottom axis to copy (axis {start + i} of a "
                                 f"bottom of shape {shape})")
            new[start + i] = shape[start + i]
        if self.inferred is not None:
            k = start + self.inferred
            known = int(np.prod(new[:k] + new[k + 1:], dtype=np.int64))
            if known == 0 or count % known:
                raise LayerError(f"cannot infer the -1 in reshape shape {self.dims}: bottom "
                                 f"shape {shape} has count {count}, which the product of the "
                                 f"other dims ({known}) does not divide")
            new[k] = count // known
        if int(np.prod(new, dtype=np.int64)) != count:
            raise LayerError(f"reshape of bottom shape {shape} (count {count}) to shape "
                             f"{tuple(new)} (requested {self.dims}, count "
                             f"{int(np.prod(new, dtype=np.int64))}): the counts must match")
        top[0].reshape(new)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Crop")
class CropLayer(Layer):
    """Caffe `Crop`: bottom[0] cut down to bottom[1]'s size on every axis from crop_param.axis
    (default 2, negative allowed) on; earlier axes are kept whole. offset: none (all 0), one (used
    on every cropped axis) or one per cropped axis. FCN uses it to align an upsampled score map
    with the input. Backward pads the diff with zeros back to bottom[0]'s shape; bottom[1] only
    lends its shape and gets no diff."""
    param_field = "crop_param"
    exact_num_bottom, exact_num_top = 2, 1

    def layer_setup(self, bottom, top):
        p = self.param.crop_param
        self.axis = self.canonical_axis(bottom[0], p.axis)
        ndim = len(bottom[0].shape)
        self.offset = list(p.offset)
        if len(self.offset) > 1 and len(self.offset) != ndim - self.axis:
            raise LayerError(f"Crop takes one offset, or one per cropped axis: {len(self.offset)} "
                             f"offsets for the {ndim - self.axis} axes from axis {self.axis} of "
                             f"a bottom of shape {bottom[0].shape}")
        if bottom[0] is top[0]:
            raise LayerError("Crop does not allow in-place computation")

    def reshape(self, bottom, top):
        shape, size = bottom[0].shape, bottom[1].shape
        if len(size) < len(shape):
            raise LayerError(f"Crop from axis {self.axis}: bottom[1] of shape {size} needs at "
                             f"least the {len(shape)} axes of bottom[0] {shape}")
        offsets = [0] * len(shape)
        for i in range(self.axis, len(shape)):
            if self.offset:
                offsets[i] = self.offset[0] if len(self.offset) == 1 else \
                    self.offset[i - self.axis]
            if offsets[i] + size[i] > shape[i]:
                raise LayerError(f"Crop on axis {i} is out of bounds: offset {offsets[i]} + size "
                                 f"{size[i]} > {shape[i]} (bottom[0] {shape}, bottom[1] {size})")
        out = tuple(shape[:self.axis]) + tuple(size[self.axis:len(shape)])
        self.region = tuple(slice(o, o + d) for o, d in zip(offsets, out))
        top[0].reshape(out)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.region]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.region] = top[0].diff
        if propagate_down[1]:              # the output does not depend on its values
            bottom[1].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0          # bottom[1] only gives the size


@register("Parameter")
class ParameterLayer(Layer):
    """Caffe `Parameter`: a learnable blob of parameter_param.shape as a top, for nets that
    use a parameter as data (a learned bias map fed to Eltwise, a learned embedding table).

    blobs[0]  the parameter: zeros until a .caffemodel or training gives it values (Caffe's
              layer has no filler); shared across layers by ``param { name }`` as any blob

    Forward copies it into the top; backward adds the top's diff onto its diff (Caffe shares
    data and diff with the top instead: the same values, without a parameter written through
    the top by an in-place layer above it).
    """
    param_field = "parameter_param"
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        dims = tuple(self.type_param.shape.dim)
        if any(d < 0 for d in dims):
            raise LayerError(f"parameter_param.shape {list(dims)} has a negative dimension")
        self.init_param(0, dims, None, "parameter")

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff            # parameter diffs accumulate (I1)


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """Caffe `BatchReindex`: top[i] = bottom[0][index[i]] along the first axis, index being
    bottom[1], a 1-D blob of item numbers (a permutation, a subset, repeats: any of them).

    Backward sums the top's diffs back onto the items they came from (an item picked twice gets
    both diffs; one never picked gets 0). The indices get no gradient (Caffe refuses one). An
    index that is not a whole number in [0, N) is a LayerError (Caffe casts 1.5 to 1, and checks
    the range only in debug builds).
    """
    exact_num_bottom = 2
    index_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        data, index = bottom
        if len(index.shape) != 1:
            raise LayerError(f"the index (bottom 1) must be 1-D, got shape {index.shape}")
        if len(data.shape) < 1:
            raise LayerError("the data (bottom 0) must have a first axis to pick items from, "
                             "got a scalar")
        top[0].reshape((index.shape[0], *data.shape[1:]))

    def forward(self, bottom, top):
        ops.batch_reindex_forward(bottom[0].data, bottom[1].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("BatchReindex cannot backpropagate to its index (bottom 1)")
        if propagate_down[0]:
            ops.batch_reindex_backward(top[0].diff, bottom[1].data, bottom[0].shape[0],
                                       dx_out=bottom[0].diff)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("Filter")
class FilterLayer(Layer):
    """Caffe `Filter`: keeps the items (first-axis entries) whose selector is nonzero.

    bottoms: blobs to filter (each with the selector's first axis), then the selector, of shape
    (N,) or (N, 1, ...); tops: one per filtered bottom, (number selected, ...). A top's shape thus
    depends on the selector's values: it is set at every forward (when the net is set up, before
    any data, it is N, as in Caffe). Backward copies each kept item's diff back; items dropped
    get 0, and the selector no gradient. A batch that selects nothing gives empty tops, which
    the next layer refuses (a NetError naming it).
    """
    min_num_bottom = 2
    min_num_top = 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise LayerError(f"Filter needs one top per filtered bottom: {len(bottom) - 1} "
                             f"bottom(s) before the selector, {len(top)} top(s)")
        self._first_reshape = True
        self._num_bottoms = len(bottom)

    def reshape(self, bottom, top):
        selector = bottom[-1]
        if len(selector.shape) < 1 or any(d != 1 for d in selector.shape[1:]):
            raise LayerError(f"the selector (last bottom) must be (N,) or (N, 1, ...), got shape "
                             f"{selector.shape}")
        for i, b in enumerate(bottom[:-1]):
            if len(b.shape) < 1 or b.shape[0] != selector.shape[0]:
                raise LayerError(f"bottom {i} of shape {b.shape} must have the selector's "
                                 f"{selector.shape[0]} items on its first axis")
        if self._first_reshape:              # set-up time: the selector holds no data yet
            self._first_reshape = False
            for b, t in zip(bottom, top):
                t.reshape(b.shape)
        else:
            self._select(bottom, top)

    def _select(self, bottom, top):
        """The kept items' numbers from the selector's values, and the tops' shapes."""
        self.kept = np.flatnonzero(np.asarray(bottom[-1].data).reshape(-1) != 0) \
            .astype(np.float64)
        for b, t in zip(bottom, top):
            t.reshape((len(self.kept), *b.shape[1:]))

    def forward(self, bottom, top):
        self._select(bottom, top)           # again: a layer driven by hand skips reshape
        for b, t in zip(bottom, top):
            ops.batch_reindex_forward(b.data, self.kept, out=t.data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise LayerError("Filter cannot backpropagate to its selector (the last bottom)")
        for t, down, b in zip(top, propagate_down, bottom):
            if down:
                ops.batch_reindex_backward(t.diff, self.kept, b.shape[0], dx_out=b.diff)

    def allow_force_backward(self, bottom_index):
        return bottom_index != self._num_bottoms - 1


@register("Reduction")
class ReductionLayer(Layer):
    """Caffe `Reduction`: each item's values from reduction_param.axis on (default 0: the whole
    blob) reduced to one number by operation SUM (default), ASUM (sum of |x|), SUMSQ (sum of
    x^2) or MEAN, times coeff (default 1). The top keeps the axes before axis: shape
    bottom.shape[:axis], a scalar (shape ()) for axis 0. Only tail axes can be reduced, as in
    Caffe (there is no end axis). Used to build losses: SUMSQ with coeff 0.5 is half the squared
    norm. Not in place (the shapes differ)."""
    param_field = "reduction_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise LayerError("Reduction does not allow in-place computation (the top has "
                             "fewer axes)")
        p = self.param.reduction_param
        self.operation, self.coeff = p.operation, p.coeff

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(bottom[0], self.param.reduction_param.axis,
                                        "reduction_param.axis")
        top[0].reshape(bottom[0].shape[:self.axis])

    def forward(self, bottom, top):
        top[0].data[...] = ops.reduction_forward(bottom[0].data, self.operation, self.axis,
                                                 self.coeff)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.reduction_backward(top[0].diff, bottom[0].data,
                                                         self.operation, self.axis, self.coeff)


@register("Tile")
class TileLayer(Layer):
    """Caffe `Tile`: the sub-blob from tile_param.axis (default 1, negative allowed) on,
    repeated tile_param.tiles times (required, > 0) along that axis: a (2, 3) bottom with
    axis 1 and tiles 2 gives (2, 6), each row written twice in a row (numpy.tile, not
    numpy.repeat). Backward sums the copies' diffs. Not in place."""
    param_field = "tile_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise LayerError("Tile does not allow in-place computation (the top is larger)")
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise LayerError(f"Tile layer '{self.name}': tile_param.tiles is required (the "
                             "number of copies)")
        if p.tiles < 1:
            raise LayerError(f"Tile layer '{self.name}': tile_param.tiles must be positive, "
                             f"got {p.tiles}")
        self.tiles = p.tiles

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(bottom[0], self.param.tile_param.axis,
                                        "tile_param.axis")
        top[0].reshape(ops.tile.tile_shape(bottom[0].shape, self.axis, self.tiles))

    def forward(self, bottom, top):
        top[0].data[...] = ops.tile_forward(bottom[0].data, self.axis, self.tiles)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.tile_backward(top[0].diff, self.axis, self.tiles)
