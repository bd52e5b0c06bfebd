"""Pooling layers: Caffe's `Pooling` (MAX, AVE; global_pooling; CEIL or FLOOR rounding), SPP,
and the forks' `Upsample` (max-unpooling through a Pooling mask, or nearest-neighbour).
The math, and why MAX's backward sends each dy to its window's argmax, is in
minicnn/ops/pool.py."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.pool import PoolGeometry

# PoolingParameter fields whose presence matters (Caffe's has_*() checks), passed on only if set
_GEOMETRY_FIELDS = ("kernel_size", "kernel_h", "kernel_w", "stride", "stride_h", "stride_w",
                    "pad", "pad_h", "pad_w")


@register("Pooling")
class PoolingLayer(Layer):
    """Caffe `Pooling`: bottom (N, C, H, W) -> top (N, C, oh, ow).

    MAX may have a second top, the mask: the argmax of each window as a float flat index
    h * W + w into its input plane (-1 for a window with no input pixel), as Caffe writes it.
    STOCHASTIC is refused: Caffe itself only has it on the GPU."""
    param_field = "pooling_param"
    exact_num_bottom = 1
    min_num_top, max_num_top = 1, 2

    def layer_setup(self, bottom, top):
        p = self.param.pooling_param
        if p.pool == "STOCHASTIC":
            raise LayerError("STOCHASTIC pooling is not supported (Caffe has no CPU version "
                             "of it); use MAX or AVE")
        if len(top) > 1 and p.pool != "MAX":
            raise LayerError(f"only MAX pooling has a mask top; {p.pool} pooling takes 1 top, "
                             f"got {len(top)}")
        if any(t is bottom[0] for t in top):
            raise LayerError("Pooling does not allow in-place computation")
        self.pool = p.pool
        given = {f: getattr(p, f) for f in _GEOMETRY_FIELDS if p.HasField(f)}
        self.geom = PoolGeometry.from_fields(**given, global_pooling=p.global_pooling,
                                             round_mode=p.round_mode)
        self.mask = None

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise LayerError(f"Pooling needs a 4-axis (N, C, H, W) input, got shape "
                             f"{bottom[0].shape}")
        n, c, h, w = bottom[0].shape
        shape = (n, c, *self.geom.out_hw(h, w))
        for t in top:                                       # the mask top has y's shape
            t.reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        y = top[0].data if bottom[0] is not top[0] else None   # in place: no aliasing
        if self.pool == "MAX":
            y, self.mask = ops.max_pool2d_forward(x, geom=self.geom, out=y)
            if len(top) > 1:
                top[1].data[...] = self.mask                # float indices, like Caffe
        else:
            y = ops.ave_pool2d_forward(x, geom=self.geom, out=y)
        if y is not top[0].data:
            top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff if bottom[0] is not top[0] else None   # assigned (I1)
        if self.pool == "MAX":     # the mask top has no gradient: it is piecewise constant
            dx = ops.max_pool2d_backward(top[0].diff, self.mask, bottom[0].shape,
                                         geom=self.geom, out=dx)
        else:
            dx = ops.ave_pool2d_backward(top[0].diff, bottom[0].shape, geom=self.geom, out=dx)
        if dx is not bottom[0].diff:
            bottom[0].diff[...] = dx


@register("SPP")
class SPPLayer(Layer):
    """Caffe `SPP` (spatial pyramid pooling): bottom (N, C, H, W) -> top (N, C * sum_l 4^l).

    Level l = 0 .. pyramid_height - 1 pools the whole input into 2^l x 2^l bins with Caffe's
    Pooling (kernel ceil(H / bins), stride = kernel, pad (kernel * bins - H + 1) // 2; see
    minicnn.ops.spp), flattens it and the levels are concatenated. As real Caffe does,
    pyramid_height 1 returns the pooled blob unflattened: N x C x 1 x 1. pool is MAX or AVE;
    STOCHASTIC is refused (Caffe has it on the GPU only). An input too small for the finest
    level (a pad >= kernel, which Caffe's Pooling refuses) is a LayerError.

    minicnn extension: ``bins`` (repeated, e.g. ``bins: 1 bins: 2 bins: 3 bins: 6``) gives the
    SPP-net paper's pyramid instead of pyramid_height (not both), with the paper's rule: per
    level of n bins, windows of ceil(H / n) at stride floor(H / n), no padding, exactly n per
    axis (minicnn.ops.spp says how the rules differ). The top is always flattened:
    (N, C * sum n^2). An input smaller than n on an axis is a LayerError."""
    param_field = "spp_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.type_param
        if p.pool == "STOCHASTIC":
            raise LayerError("STOCHASTIC SPP pooling is not supported (Caffe has no CPU version "
                             "of it); use MAX or AVE")
        self.pool = p.pool
        if len(p.bins):
            if p.HasField("pyramid_height"):
                raise LayerError(f"give spp_param pyramid_height ({p.pyramid_height}, Caffe's "
                                 f"powers of two) or bins ({', '.join(map(str, p.bins))}, "
                                 "SPP-net's rule), not both")
            if min(p.bins) < 1:
                raise LayerError(f"spp_param bins must be >= 1, got {list(p.bins)}")
            self.levels, self.rule, self.flatten = [int(b) for b in p.bins], "sppnet", True
        else:
            self.levels, self.rule = ops.spp_levels(p.pyramid_height), "caffe"
            self.flatten = len(self.levels) > 1
        self.masks = None

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise LayerError(f"SPP needs a 4-axis (N, C, H, W) input, got shape "
                             f"{bottom[0].shape}")
        n, c, h, w = bottom[0].shape
        features = ops.spp_features(h, w, self.levels, self.rule)
        top[0].reshape((n, c * features) if self.flatten else (n, c, 1, 1))

    def forward(self, bottom, top):
        y, self.masks = ops.spp_forward(bottom[0].data, levels=self.levels, pool=self.pool,
                                        rule=self.rule)
        top[0].data[...] = y.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(top[0].shape[0], -1)
            bottom[0].diff[...] = ops.spp_backward(dy, bottom[0].shape, levels=self.levels,
                                                   pool=self.pool, masks=self.masks,
                                                   rule=self.rule)


@register("Upsample")
class UpsampleLayer(Layer):
    """The forks' `Upsample` (upsample_param, field 149 as in the YOLOv3 ports; SegNet's fork
    numbered it 138, BVLC's tile_param), by its bottoms:

    - two bottoms, SegNet's max-unpooling: bottom[0] the values, bottom[1] the mask top of the
      MAX Pooling being undone (same shape); each value goes to the place its window took the
      max from, zeros elsewhere (minicnn.ops.upsample). The top is upsample_h x upsample_w when
      both are given, else the bottom's size times scale_h and scale_w (or scale, default 2),
      less 1 where pad_out_h / pad_out_w is set (only with a scale of 2: an odd-sized input of
      the pooling). A mask naming a place outside the top is an error (SegNet: a fatal log).
    - one bottom, the YOLOv3 ports' nearest-neighbour upsampling by scale (or scale_h and
      scale_w): each value repeated over a block; backward sums the block.

    No gradient for the mask. Not in place."""
    param_field = "upsample_param"
    min_num_bottom, max_num_bottom = 1, 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        if top[0] in bottom:
            raise LayerError("Upsample does not allow in-place computation (the top is larger)")
        p = self.param.upsample_param
        self.unpool = len(bottom) == 2
        exact = p.HasField("upsample_h") or p.HasField("upsample_w")
        if exact and not (p.HasField("upsample_h") and p.HasField("upsample_w")):
            raise LayerError(f"Upsample layer '{self.name}': upsample_param.upsample_h and "
                             "upsample_w go together")
        if p.HasField("scale_h") != p.HasField("scale_w"):
            raise LayerError(f"Upsample layer '{self.name}': upsample_param.scale_h and "
                             "scale_w go together")
        if p.HasField("scale_h") and p.HasField("scale"):
            raise LayerError(f"Upsample layer '{self.name}': give upsample_param.scale or "
                             "scale_h and scale_w, not both")
        self.scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        self.exact = (p.upsample_h, p.upsample_w) if exact else None
        if not self.unpool and (exact or any(self.pad_out)):
            raise LayerError(f"Upsample layer '{self.name}': one bottom is nearest-neighbour "
                             "upsampling by scale; upsample_h, upsample_w and pad_out_* belong "
                             "to max-unpooling, which takes the Pooling mask as bottom 1")
        if self.exact is not None:
            if min(self.exact) < 1:
                raise LayerError(f"Upsample layer '{self.name}': upsample_h and upsample_w "
                                 f"must be positive, got {self.exact[0]}x{self.exact[1]}")
        elif min(self.scale) < 1 or (self.unpool and min(self.scale) < 2):
            raise LayerError(f"Upsample layer '{self.name}': the scale must be at least "
                             f"{2 if self.unpool else 1}, got {self.scale[0]}x{self.scale[1]}")
        for pad, scale, axis in zip(self.pad_out, self.scale, "hw"):
            if pad and scale != 2 and self.exact is None:
                raise LayerError(f"Upsample layer '{self.name}': pad_out_{axis} needs scale "
                                 f"2 on that axis (else the output size is ill-defined), got "
                                 f"{scale}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise LayerError(f"Upsample takes (N, C, H, W) bottoms, got shape {shape}")
        if self.unpool and bottom[1].shape != shape:
            raise LayerError(f"Upsample: the mask (bottom 1, shape {bottom[1].shape}) must "
                             f"have the values' shape {shape}")
        if self.exact is not None:
            out = self.exact
        else:
            out = tuple(d * s - pad for d, s, pad in zip(shape[2:], self.scale, self.pad_out))
        top[0].reshape((*shape[:2], *out))

    def forward(self, bottom, top):
        if self.unpool:
            top[0].data[...] = ops.max_unpool2d_forward(bottom[0].data, bottom[1].data,
                                                        top[0].shape[2:])
        else:
            top[0].data[...] = ops.nearest_upsample_forward(bottom[0].data, *self.scale)

    def backward(self, top, propagate_down, bottom):
        if self.unpool and len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0                     # the mask is piecewise constant
        if not propagate_down[0]:
            return
        if self.unpool:
            bottom[0].diff[...] = ops.max_unpool2d_backward(top[0].diff, bottom[1].data)
        else:
            bottom[0].diff[...] = ops.nearest_upsample_backward(top[0].diff, *self.scale)
