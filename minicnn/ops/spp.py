"""Spatial pyramid pooling, Caffe's "SPP": pool the whole image into a grid of bins at several
levels, flatten each level and concatenate them.

Caffe's levels are l = 0 .. pyramid_height - 1 with bins = 2^l per axis (1, 2, 4, ...): only powers
of two; the SPP-net paper's {1, 2, 3, 6} pyramid cannot be written in a prototxt. Here a pyramid
is a list of bin counts (``levels``), so such a pyramid is one list away. Per level and per axis,
with input size H (Caffe's SPPLayer::GetPoolingParam):

    kernel = ceil(H / bins)      stride = kernel      pad = (kernel * bins - H + 1) // 2

and the window is pooled by Caffe's Pooling rules (minicnn.ops.pool): CEIL rounding, the last
window dropped if it would start in the padding, MAX ties to the first maximum, AVE dividing by
the window clipped to the padded extent. Caffe's Pooling refuses pad >= kernel, which happens
when the input is small against the bins (H = 1 with 2 bins; H = 5 with 4 bins): a LayerError.
The SPP-net paper's own binning (window ceil(H/n), stride floor(H/n), no pad) differs from this
for sizes that bins do not divide.

    y = concat_l( pool_l(x).reshape(N, C * oh_l * ow_l) )          (N, C * sum_l oh_l * ow_l)
    dx = sum_l pool_l_backward(dy_l)                               (the levels share x)

oh_l = ow_l = bins for every size this rule accepts, so y has C * sum_l 4^l columns for Caffe's
pyramid. MAX's kink is the pooling one (ties go to the first maximum).
Impls: ref (the pooling op per level).
"""

import math

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op
from minicnn.ops.pool import (
    PoolGeometry,
    ave_pool2d_backward,
    ave_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)

__all__ = ["spp_backward", "spp_features", "spp_forward", "spp_geometry", "spp_levels"]

spp_forward, spp_backward = Op("spp_forward"), Op("spp_backward")


def spp_levels(pyramid_height):
    """Caffe's pyramid: bins 2^l for l = 0 .. pyramid_height - 1."""
    if not 1 <= pyramid_height <= 31:            # 2^31 bins per axis fit no image
        raise LayerError(f"SPP pyramid_height must be between 1 and 31, got {pyramid_height}")
    return [2 ** level for level in range(pyramid_height)]


def spp_geometry(h, w, bins):
    """The pooling geometry of one level: ``bins`` windows per axis covering an (h, w) input."""
    if h < 1 or w < 1 or bins < 1:
        raise LayerError(f"SPP needs a non-empty input and bins >= 1, got {h}x{w} and {bins}")
    kernel = tuple(math.ceil(size / bins) for size in (h, w))
    # the kernel overshoots the input by kernel * bins - size; pad splits that, rounding up
    pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (h, w)))
    for axis, size, k, p in zip("hw", (h, w), kernel, pad):
        if p >= k:               # Caffe's Pooling setup: CHECK_LT(pad, kernel)
            raise LayerError(f"SPP level with {bins} bins needs pad {p} >= kernel {k} on the "
                             f"{size}-pixel {axis} axis, which Caffe's Pooling refuses: the "
                             f"{h}x{w} input is too small for {bins} bins")
    return PoolGeometry(kernel, kernel, pad, ceil=True)


def spp_features(h, w, levels):
    """Columns per channel of the flattened output: sum over levels of oh * ow."""
    return sum(math.prod(spp_geometry(h, w, bins).out_hw(h, w)) for bins in levels)


def _check(x_shape, pool):
    if len(x_shape) != 4:
        raise LayerError(f"SPP needs a 4-D (N, C, H, W) input, got shape {tuple(x_shape)}")
    if pool not in ("MAX", "AVE"):
        raise LayerError(f"SPP pool must be MAX or AVE, not {pool}")


@spp_forward.impl("ref")
def _spp_forward_ref(x, *, levels, pool="MAX"):
    """(N, C, H, W) -> y (N, C * features) and masks: one argmax mask per level for MAX (what
    backward needs), None for AVE."""
    _check(x.shape, pool)
    n, _, h, w = x.shape
    parts, masks = [], []
    for bins in levels:
        geom = spp_geometry(h, w, bins)
        if pool == "MAX":
            y, mask = max_pool2d_forward(x, geom=geom)
            masks.append(mask)
        else:
            y = ave_pool2d_forward(x, geom=geom)
        parts.append(y.reshape(n, -1))                 # (N, C*oh*ow), channel-major as Flatten
    return np.concatenate(parts, axis=1), (masks if pool == "MAX" else None)


@spp_backward.impl("ref")
def _spp_backward_ref(dy, x_shape, *, levels, pool="MAX", masks=None):
    """dy (N, C * features) -> dx (N, C, H, W): each level's slice through its pooling backward,
    summed (every level reads all of x, as Caffe's Split before the levels)."""
    _check(x_shape, pool)
    n, c, h, w = x_shape
    if pool == "MAX" and (masks is None or len(masks) != len(levels)):
        raise LayerError(f"SPP MAX backward needs one mask per level ({len(levels)}), "
                         f"got {None if masks is None else len(masks)}")
    expected = (n, c * spp_features(h, w, levels))
    if tuple(dy.shape) != expected:
        raise LayerError(f"dy of shape {tuple(dy.shape)} does not match the SPP output "
                         f"{expected}")
    dx, start = np.zeros(x_shape, dy.dtype), 0
    for i, bins in enumerate(levels):
        geom = spp_geometry(h, w, bins)
        oh, ow = geom.out_hw(h, w)
        dy_level = dy[:, start:start + c * oh * ow].reshape(n, c, oh, ow)
        start += c * oh * ow
        if pool == "MAX":
            dx += max_pool2d_backward(dy_level, masks[i], x_shape)
        else:
            dx += ave_pool2d_backward(dy_level, x_shape, geom=geom)
    return dx
