"""Spatial pyramid pooling, Caffe's "SPP": pool the whole image into a grid of bins at several
levels, flatten each level and concatenate them.

Caffe's levels are l = 0 .. pyramid_height - 1 with bins = 2^l per axis (1, 2, 4, ...): only powers
of two; the SPP-net paper's {1, 2, 3, 6} pyramid cannot be written in Caffe's prototxt (minicnn's
extension field ``spp_param { bins: 1 bins: 2 bins: 3 bins: 6 }`` writes it, with the paper's
rule below). Here a pyramid is a list of bin counts (``levels``) and a ``rule``.

rule "caffe" (pyramid_height). Per level and per axis, with input size H (Caffe's
SPPLayer::GetPoolingParam):

    kernel = ceil(H / bins)      stride = kernel      pad = (kernel * bins - H + 1) // 2

and the window is pooled by Caffe's Pooling rules (minicnn.ops.pool): CEIL rounding, the last
window dropped if it would start in the padding, MAX ties to the first maximum, AVE dividing by
the window clipped to the padded extent. Caffe's Pooling refuses pad >= kernel, which happens
when the input is small against the bins (H = 1 with 2 bins; H = 5 with 4 bins): a LayerError.

rule "sppnet" (bins). The SPP-net paper's binning (He et al. 2014, section 2.3): per level with n
bins and per axis, window and stride

    kernel = ceil(H / n)         stride = floor(H / n)         pad = 0

and exactly n windows, window i covering rows i * stride .. i * stride + kernel - 1. They always
fit: with H = q n + r (0 <= r < n) the last one ends at n q + (r > 0) <= H. H < n has stride 0
and is a LayerError. How the two rules differ, where n does not divide H:
  - coverage: Caffe's windows tile a padded input, so every pixel is in a window and the pad
    splits the overshoot between both ends (AVE counts padding zeros in its divisor); SPP-net's
    windows start at 0 and never pad, and its last r - 1 rows (r = H mod n, when r >= 2) are in no
    window at all: H = 17, n = 6 gives windows of 3 at stride 2 over rows 0..12, and rows 13..16
    are never pooled at that level (H = 13, n = 6 covers every row).
  - overlap: SPP-net's windows overlap by kernel - stride (0 or 1) pixels; Caffe's never overlap.
  - sizes: Caffe's rule refuses small inputs with pad >= kernel (H = 5, n = 4) and SPP-net's only
    H < n; for H = 5, n = 4 SPP-net pools windows of 2 at stride 1 (rows 0-1, 1-2, 2-3, 3-4).
Where n divides H both are the same plain tiling (kernel = stride = H / n, pad 0).

    y = concat_l( pool_l(x).reshape(N, C * oh_l * ow_l) )          (N, C * sum_l oh_l * ow_l)
    dx = sum_l pool_l_backward(dy_l)                               (the levels share x)

oh_l = ow_l = bins under both rules (for every size each accepts), so y has C * sum_l bins_l^2
columns: C * sum_l 4^l for Caffe's pyramid. MAX's kink is the pooling one (ties go to the first
maximum).
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

__all__ = ["spp_backward", "spp_features", "spp_forward", "spp_geometry", "spp_levels",
           "sppnet_geometry"]

RULES = ("caffe", "sppnet")

spp_forward, spp_backward = Op("spp_forward"), Op("spp_backward")


def spp_levels(pyramid_height):
    """Caffe's pyramid: bins 2^l for l = 0 .. pyramid_height - 1."""
    if not 1 <= pyramid_height <= 31:            # 2^31 bins per axis fit no image
        raise LayerError(f"SPP pyramid_height must be between 1 and 31, got {pyramid_height} "
                         "(or give spp_param bins, SPP-net's pyramid)")
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


def sppnet_geometry(h, w, bins):
    """SPP-net's pooling geometry of one level (kernel ceil(size / bins), stride
    floor(size / bins), no pad, FLOOR rounding); the level keeps its first ``bins`` x ``bins``
    windows."""
    if h < 1 or w < 1 or bins < 1:
        raise LayerError(f"SPP needs a non-empty input and bins >= 1, got {h}x{w} and {bins}")
    for axis, size in zip("hw", (h, w)):
        if size < bins:
            raise LayerError(f"SPP-net binning of the {size}-pixel {axis} axis into {bins} bins "
                             f"needs at least {bins} pixels (stride floor({size} / {bins}) is 0): "
                             f"the {h}x{w} input is too small for {bins} bins")
    kernel = tuple(math.ceil(size / bins) for size in (h, w))
    stride = tuple(size // bins for size in (h, w))
    return PoolGeometry(kernel, stride, (0, 0), ceil=False)


def _level(h, w, bins, rule):
    """(pooling geometry, (oh, ow) kept) of one level."""
    if rule == "sppnet":
        return sppnet_geometry(h, w, bins), (bins, bins)
    geom = spp_geometry(h, w, bins)
    return geom, geom.out_hw(h, w)


def spp_features(h, w, levels, rule="caffe"):
    """Columns per channel of the flattened output: sum over levels of oh * ow."""
    _check_rule(rule)
    return sum(math.prod(_level(h, w, bins, rule)[1]) for bins in levels)


def _check_rule(rule):
    if rule not in RULES:
        raise LayerError(f"SPP rule must be one of {RULES}, not {rule!r}")


def _check(x_shape, pool, rule="caffe"):
    if len(x_shape) != 4:
        raise LayerError(f"SPP needs a 4-D (N, C, H, W) input, got shape {tuple(x_shape)}")
    if pool not in ("MAX", "AVE"):
        raise LayerError(f"SPP pool must be MAX or AVE, not {pool}")
    _check_rule(rule)


def _check_backward(dy, x_shape, levels, pool, masks, rule):
    _check(x_shape, pool, rule)
    n, c, h, w = x_shape
    if pool == "MAX" and (masks is None or len(masks) != len(levels)):
        raise LayerError(f"SPP MAX backward needs one mask per level ({len(levels)}), "
                         f"got {None if masks is None else len(masks)}")
    expected = (n, c * spp_features(h, w, levels, rule))
    if tuple(dy.shape) != expected:
        raise LayerError(f"dy of shape {tuple(dy.shape)} does not match the SPP output "
                         f"{expected}")


@spp_forward.impl("ref")
def _spp_forward_ref(x, *, levels, pool="MAX", rule="caffe"):
    """(N, C, H, W) -> y (N, C * features) and masks: one argmax mask per level for MAX (what
    backward needs), None for AVE."""
    _check(x.shape, pool, rule)
    n, _, h, w = x.shape
    parts, masks = [], []
    for bins in levels:
        geom, (oh, ow) = _level(h, w, bins, rule)
        if pool == "MAX":
            y, mask = max_pool2d_forward(x, geom=geom)
            mask = mask[:, :, :oh, :ow]                # SPP-net keeps the first bins windows
            masks.append(mask)
        else:
            y = ave_pool2d_forward(x, geom=geom)
        y = y[:, :, :oh, :ow]
        parts.append(y.reshape(n, -1))                 # (N, C*oh*ow), channel-major as Flatten
    return np.concatenate(parts, axis=1), (masks if pool == "MAX" else None)


@spp_backward.impl("ref")
def _spp_backward_ref(dy, x_shape, *, levels, pool="MAX", masks=None, rule="caffe"):
    """dy (N, C * features) -> dx (N, C, H, W): each level's slice through its pooling backward,
    summed (every level reads all of x, as Caffe's Split before the levels)."""
    _check_backward(dy, x_shape, levels, pool, masks, rule)
    n, c, h, w = x_shape
    dx, start = np.zeros(x_shape, dy.dtype), 0
    for i, bins in enumerate(levels):
        geom, (oh, ow) = _level(h, w, bins, rule)
        dy_level = dy[:, start:start + c * oh * ow].reshape(n, c, oh, ow)
        start += c * oh * ow
        if pool == "MAX":
            dx += max_pool2d_backward(np.ascontiguousarray(dy_level),
                                      np.ascontiguousarray(masks[i]), x_shape)
        else:                  # windows SPP-net drops (past the first bins) get no gradient
            full = np.zeros((n, c, *geom.out_hw(h, w)), dy.dtype)
            full[:, :, :oh, :ow] = dy_level
            dx += ave_pool2d_backward(full, x_shape, geom=geom)
    return dx


# --- CUDA (the pooling kernels of kernels/pooling.cu, per level) --------------------------------

from minicnn import cuda  # noqa: E402


@spp_forward.impl("cuda", available=cuda.importable)
def _spp_forward_cuda(x, *, levels, pool="MAX", rule="caffe"):
    _check(x.shape, pool, rule)
    n, _, h, w = x.shape
    parts, masks = [], []
    for bins in levels:
        geom, (oh, ow) = _level(h, w, bins, rule)
        if pool == "MAX":
            y, mask = max_pool2d_forward(x, geom=geom)
            masks.append(mask[:, :, :oh, :ow])
        else:
            y = ave_pool2d_forward(x, geom=geom)
        parts.append(y[:, :, :oh, :ow].reshape(n, -1))
    return cuda.cupy().concatenate(parts, axis=1), (masks if pool == "MAX" else None)


@spp_backward.impl("cuda", available=cuda.importable)
def _spp_backward_cuda(dy, x_shape, *, levels, pool="MAX", masks=None, rule="caffe"):
    _check_backward(dy, x_shape, levels, pool, masks, rule)
    n, c, h, w = x_shape
    cp = cuda.cupy()
    dx, start = cp.zeros(x_shape, dy.dtype), 0
    for i, bins in enumerate(levels):
        geom, (oh, ow) = _level(h, w, bins, rule)
        dy_level = dy[:, start:start + c * oh * ow].reshape(n, c, oh, ow)
        start += c * oh * ow
        if pool == "MAX":
            dx += max_pool2d_backward(cp.ascontiguousarray(dy_level),
                                      cp.ascontiguousarray(masks[i]), x_shape, geom=geom)
        else:
            full = cp.zeros((n, c, *geom.out_hw(h, w)), dy.dtype)
            full[:, :, :oh, :ow] = dy_level
            dx += ave_pool2d_backward(full, x_shape, geom=geom)
    return dx
