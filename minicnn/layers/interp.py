"""Resizing layers: the DeepLab/PSPNet fork's `Interp` (the math is in minicnn.ops.interp)."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register

_SIZE_FIELDS = ("zoom_factor", "shrink_factor", "height", "width")


@register("Interp")
class InterpLayer(Layer):
    """`Interp` from the DeepLab / PSPNet Caffe forks (not in BVLC Caffe): corner-aligned bilinear
    resizing of an (N, C, H, W) bottom, after cropping it by pad_beg / pad_end (both <= 0).

    The output size comes from exactly one of: zoom_factor z (H_eff + (H_eff - 1)(z - 1)),
    shrink_factor s ((H_eff - 1) // s + 1), both (shrink, then zoom), height and width, or a
    second bottom, whose H and W are taken (it gets no diff). See minicnn.ops.interp for the
    formulas. In minicnn's schema interp_param is field 9143 of LayerParameter: the forks' own
    number, 143, is BVLC's input_param.
    """
    param_field = "interp_param"
    min_num_bottom, max_num_bottom = 1, 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.type_param
        self.pad_beg, self.pad_end = p.pad_beg, p.pad_end
        if self.pad_beg > 0 or self.pad_end > 0:
            raise LayerError(f"Interp supports only pad_beg <= 0 and pad_end <= 0 (cropping), "
                             f"got pad_beg {self.pad_beg} and pad_end {self.pad_end}")
        if any(t is bottom[0] for t in top):
            raise LayerError("Interp does not allow in-place computation")
        self.size_fields = {f: getattr(p, f) for f in _SIZE_FIELDS if p.HasField(f)}

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if len(b.shape) != 4:
                raise LayerError(f"Interp needs 4-D (N, C, H, W) bottoms, got bottom[{i}] of "
                                 f"shape {b.shape}")
        n, c, h, w = bottom[0].shape
        size_hw = bottom[1].shape[2:] if len(bottom) > 1 else None
        self.out_hw = ops.interp_output_hw(h, w, **self.size_fields, size_hw=size_hw,
                                           pad_beg=self.pad_beg, pad_end=self.pad_end)
        top[0].reshape((n, c, *self.out_hw))

    def forward(self, bottom, top):
        top[0].data[...] = ops.interp_forward(bottom[0].data, out_hw=self.out_hw,
                                              pad_beg=self.pad_beg, pad_end=self.pad_end)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.interp_backward(top[0].diff, bottom[0].shape,
                                                      pad_beg=self.pad_beg, pad_end=self.pad_end)
        if len(bottom) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0        # the output does not depend on its values

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0          # the size bottom only lends its shape
