"""SPP op: against a naive loop with Caffe's level geometry and pooling windows, finite
differences, the sizes Caffe refuses, and the layer's output shapes."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.layers import SPPLayer
from minicnn.ops.pool import PoolGeometry
from minicnn.ops.spp import (
    spp_backward,
    spp_features,
    spp_forward,
    spp_geometry,
    spp_levels,
)
from minicnn.testing import numerical_grad

forward, backward = spp_forward.impls["ref"], spp_backward.impls["ref"]
FLT_MAX = float(np.finfo(np.float32).max)


def naive_level_geometry(size, bins):
    """Caffe's SPPLayer::GetPoolingParam for one axis: (kernel, stride, pad)."""
    kernel = math.ceil(size / bins)
    return kernel, kernel, (kernel * bins - size + 1) // 2


def naive_pool(x, pool, geometry_h, geometry_w):
    """Caffe's PoolingLayer::Forward_cpu, one window at a time."""
    n_img, c, h, w = x.shape
    (kh, sh, ph), (kw, sw, pw) = geometry_h, geometry_w
    pooled = []
    for size, k, s, p in ((h, kh, sh, ph), (w, kw, sw, pw)):
        out = math.ceil((size + 2 * p - k) / s) + 1
        if (ph or pw) and (out - 1) * s >= size + p:       # Caffe tests it if either pad is set
            out -= 1
        pooled.append(out)
    y = np.zeros((n_img, c, *pooled))
    for n in range(n_img):
        for ch in range(c):
            for i in range(pooled[0]):
                for j in range(pooled[1]):
                    h0, w0 = i * sh - ph, j * sw - pw
                    if pool == "MAX":
                        best = -FLT_MAX
                        for r in range(max(h0, 0), min(h0 + kh, h)):
                            for q in range(max(w0, 0), min(w0 + kw, w)):
                                if x[n, ch, r, q] > best:
                                    best = x[n, ch, r, q]
                        y[n, ch, i, j] = best
                    else:
                        h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
                        divisor = (h1 - h0) * (w1 - w0)
                        total = sum(x[n, ch, r, q] for r in range(max(h0, 0), min(h1, h))
                                    for q in range(max(w0, 0), min(w1, w)))
                        y[n, ch, i, j] = total / divisor
    return y


def naive_spp(x, pool, levels):
    n_img, _, h, w = x.shape
    parts = []
    for bins in levels:
        gh, gw = naive_level_geometry(h, bins), naive_level_geometry(w, bins)
        if gh[2] >= gh[0] or gw[2] >= gw[0]:
            return None                                     # Caffe: CHECK_LT(pad, kernel)
        parts.append(naive_pool(x, pool, gh, gw).reshape(n_img, -1))
    return np.concatenate(parts, axis=1)


def distinct(shape, seed):
    """Distinct values 0.25 apart: no MAX ties, and finite differences stay off the kinks."""
    return np.random.default_rng(seed).permutation(math.prod(shape)).reshape(shape) * 0.25


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw, height", [((5, 7), 2), ((13, 13), 3), ((8, 8), 3), ((6, 9), 3),
                                        ((4, 4), 3), ((1, 1), 1), ((3, 2), 1), ((7, 6), 3)])
def test_forward_matches_naive_loop(pool, hw, height):
    x = distinct((2, 3, *hw), 0) - 4.0
    y, masks = forward(x, levels=spp_levels(height), pool=pool)
    expected = naive_spp(x, pool, spp_levels(height))
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert y.shape == (2, 3 * sum(4 ** level for level in range(height)))
    assert (masks is None) == (pool == "AVE")


@given(st.integers(1, 14), st.integers(1, 14), st.integers(1, 4),
       st.sampled_from(["MAX", "AVE"]), st.integers(0, 2**32 - 1))
def test_drawn_sizes_match_naive_loop_or_are_refused_like_caffe(h, w, height, pool, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    expected = naive_spp(x, pool, spp_levels(height))
    if expected is None:
        with pytest.raises(LayerError, match=r"SPP level with \d+ bins needs pad"):
            forward(x, levels=spp_levels(height), pool=pool)
        return
    np.testing.assert_allclose(forward(x, levels=spp_levels(height), pool=pool)[0], expected,
                               rtol=1e-12)


def test_explicit_bin_lists_work_too():
    """SPP-net's {1, 2, 3, 6} pyramid (not expressible in Caffe's prototxt) through ``levels``."""
    x = distinct((1, 2, 16, 17), 1)
    y, _ = forward(x, levels=[1, 2, 3, 6], pool="MAX")
    assert y.shape == (1, 2 * (1 + 4 + 9 + 36))
    np.testing.assert_array_equal(y, naive_spp(x, "MAX", [1, 2, 3, 6]))


@pytest.mark.parametrize("hw, height, message", [
    ((1, 1), 2, "2 bins needs pad 1 >= kernel 1 on the 1-pixel h axis"),
    ((5, 8), 3, "4 bins needs pad 2 >= kernel 2 on the 5-pixel h axis"),
    ((13, 13), 4, "8 bins needs pad 2 >= kernel 2 on the 13-pixel h axis"),
])
def test_inputs_too_small_for_the_pyramid_are_refused_as_caffe_does(hw, height, message):
    """Caffe's SPP sets up a Pooling layer per level, and Pooling refuses pad >= kernel."""
    with pytest.raises(LayerError, match=message):
        forward(np.zeros((1, 1, *hw)), levels=spp_levels(height), pool="MAX")


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw, height", [((5, 7), 2), ((6, 6), 3), ((3, 4), 1), ((7, 9), 3)])
def test_backward_matches_finite_differences(pool, hw, height):
    x = distinct((1, 2, *hw), 2) * 0.1 - 3.0          # small values: a clean central difference
    levels = spp_levels(height)
    y, masks = forward(x, levels=levels, pool=pool)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx = backward(dy, x.shape, levels=levels, pool=pool, masks=masks)

    def loss():
        return float(np.sum(forward(x, levels=levels, pool=pool)[0] * dy))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["caffe", "sppnet"]),
       st.lists(st.integers(1, 5), min_size=1, max_size=3), st.sampled_from(["MAX", "AVE"]),
       st.integers(0, 2**32 - 1))
def test_drawn_backward_matches_finite_differences(h, w, rule, levels, pool, seed):
    """Drawn sizes and pyramids (any bins, in any order, repeated too), both rules: each level's
    slice of dy goes back through its own windows, and the levels' gradients add up."""
    try:
        spp_features(h, w, levels, rule)
    except LayerError:
        return                                         # refused: the forward tests cover it
    x = distinct((1, 2, h, w), seed % 1000) * 0.1 - 3.0   # no MAX ties, off the kinks
    y, masks = forward(x, levels=levels, pool=pool, rule=rule)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    dx = backward(dy, x.shape, levels=levels, pool=pool, masks=masks, rule=rule)

    def loss():
        return float(np.sum(forward(x, levels=levels, pool=pool, rule=rule)[0] * dy))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_backward_is_the_adjoint_for_ave(h, w, height, seed):
    levels = spp_levels(height)
    try:
        spp_features(h, w, levels)
    except LayerError:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, h, w))
    y, _ = forward(x, levels=levels, pool="AVE")
    r = rng.standard_normal(y.shape)
    np.testing.assert_allclose(np.sum(y * r),
                               np.sum(x * backward(r, x.shape, levels=levels, pool="AVE")),
                               rtol=1e-10)


def test_geometry_is_caffes():
    assert spp_geometry(13, 13, 1) == PoolGeometry((13, 13), (13, 13), (0, 0))
    assert spp_geometry(13, 13, 2) == PoolGeometry((7, 7), (7, 7), (1, 1))
    assert spp_geometry(13, 7, 4) == PoolGeometry((4, 2), (4, 2), (2, 1))
    assert spp_levels(3) == [1, 2, 4]
    assert spp_features(13, 13, [1, 2, 4]) == 21


def test_float32_stays_float32():
    x = distinct((1, 2, 6, 5), 4).astype(np.float32)
    for pool in ("MAX", "AVE"):
        y, masks = spp_forward(x, levels=[1, 2], pool=pool)
        dx = spp_backward(np.ones_like(y), x.shape, levels=[1, 2], pool=pool, masks=masks)
        assert y.dtype == dx.dtype == np.float32


@pytest.mark.parametrize("call, match", [
    (lambda: spp_levels(0), "pyramid_height must be between 1 and 31, got 0"),
    (lambda: forward(np.zeros((2, 3, 4)), levels=[1], pool="MAX"),
     r"4-D \(N, C, H, W\) input, got shape \(2, 3, 4\)"),
    (lambda: forward(np.zeros((1, 1, 4, 4)), levels=[1], pool="STOCHASTIC"),
     "MAX or AVE, not STOCHASTIC"),
    (lambda: backward(np.zeros((1, 4)), (1, 1, 4, 4), levels=[1, 2], pool="AVE"),
     r"dy of shape \(1, 4\) does not match the SPP output \(1, 5\)"),
    (lambda: backward(np.zeros((1, 5)), (1, 1, 4, 4), levels=[1, 2], pool="MAX"),
     "one mask per level"),
])
def test_errors(call, match):
    with pytest.raises(LayerError, match=match):
        call()


# --- output shapes through the layer ------------------------------------------------------------

def test_pyramid_height_1_keeps_the_pooled_blob_unflattened():
    """Real Caffe hands pyramid_height 1 straight to one Pooling layer: N x C x 1 x 1."""
    x = distinct((2, 3, 5, 7), 5)
    y = SPPLayer(pyramid_height=1)(x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(y[:, :, 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_allclose(SPPLayer(pyramid_height=1, pool="AVE")(x)[:, :, 0, 0],
                               x.mean(axis=(2, 3)))


def test_pyramid_height_3_flattens_to_21_bins_per_channel():
    x = distinct((2, 3, 13, 11), 6)
    layer = SPPLayer(pyramid_height=3)
    y = layer(x)
    assert y.shape == (2, 3 * 21)
    np.testing.assert_array_equal(y[:, :3], x.max(axis=(2, 3)))         # level 0 first
    dx = layer.backprop(np.ones_like(y))
    assert dx.shape == x.shape
