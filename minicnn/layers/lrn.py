"""Normalization layers: Caffe's `LRN` (ACROSS_CHANNELS, WITHIN_CHANNEL)."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.lrn import check_local_size


@register("LRN")
class LRNLayer(Layer):
    """Caffe `LRN`: bottom (N, C, H, W) -> top of the same shape.

    ACROSS_CHANNELS: y = x * (k + alpha/n * sum of x^2 over n neighbouring channels)^-beta.
    WITHIN_CHANNEL: y = x * (1 + alpha * (sum of x^2 over the n x n patch) / n^2)^-beta, pixels
    outside the image counting as 0 and the divisor n^2 even at the borders (k unused, as in
    Caffe). local_size n must be odd. Safe in place: forward then keeps a copy of x."""
    param_field = "lrn_param"
    caffe_backward_reads_data = ("bottom", "top")   # Caffe keeps no copy of x in place
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        check_local_size(p.local_size, p.norm_region)
        self.settings = {"local_size": p.local_size, "alpha": p.alpha, "beta": p.beta, "k": p.k,
                         "norm_region": p.norm_region}
        self._x = None

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise LayerError(f"LRN needs a 4-axis (N, C, H, W) input, got shape "
                             f"{bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        self._x = x.copy() if bottom[0] is top[0] else None    # backward needs x, not y
        ops.lrn_forward(x, **self.settings, out=top[0].data)      # safe in place

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self._x if self._x is not None else bottom[0].data
            ops.lrn_backward(top[0].diff, x, **self.settings, out=bottom[0].diff)
