"""SPP-net's explicit pyramid (spp_param bins, rule "sppnet") against a loop written from the
paper's rule, next to Caffe's power-of-two rule on the same odd sizes; the layer's fields,
gradients, errors and fixed output length over input sizes."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.layers import SPPLayer
from minicnn.ops.spp import spp_backward, spp_features, spp_forward, spp_levels, sppnet_geometry
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient, numerical_grad
from tests.ops.test_spp import distinct, naive_spp

forward, backward = spp_forward.impls["ref"], spp_backward.impls["ref"]


def naive_sppnet(x, pool, levels):
    """He et al. 2014, section 2.3: for n bins, window ceil(a / n) and stride floor(a / n), n
    windows per axis starting at 0; one window at a time. None where a < n (stride 0)."""
    n_img, c, h, w = x.shape
    parts = []
    for n in levels:
        if h < n or w < n:
            return None
        kh, kw = math.ceil(h / n), math.ceil(w / n)
        sh, sw = h // n, w // n
        y = np.zeros((n_img, c, n, n))
        for img in range(n_img):
            for ch in range(c):
                for i in range(n):
                    for j in range(n):
                        window = x[img, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
                        assert window.shape == (kh, kw)          # never past the input
                        y[img, ch, i, j] = window.max() if pool == "MAX" else window.mean()
        parts.append(y.reshape(n_img, -1))
    return np.concatenate(parts, axis=1)


ODD_SIZES = [(13, 13), (13, 9), (7, 11), (17, 5), (9, 15), (21, 19), (6, 13)]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw", ODD_SIZES)
def test_sppnet_rule_matches_the_paper_loop_on_odd_sizes(pool, hw):
    x = distinct((2, 3, *hw), 7) - 9.0
    levels = [1, 2, 3, 5] if min(hw) < 6 else [1, 2, 3, 6]
    y, masks = forward(x, levels=levels, pool=pool, rule="sppnet")
    np.testing.assert_allclose(y, naive_sppnet(x, pool, levels), rtol=1e-12)
    assert y.shape == (2, 3 * sum(n * n for n in levels))
    assert (masks is None) == (pool == "AVE")


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw", [(13, 13), (9, 15), (11, 7), (21, 19)])
def test_caffe_rule_matches_its_loop_on_the_same_odd_sizes(pool, hw):
    x = distinct((2, 3, *hw), 8) - 9.0
    levels = spp_levels(3)
    np.testing.assert_allclose(forward(x, levels=levels, pool=pool)[0],
                               naive_spp(x, pool, levels), rtol=1e-12)


@given(st.integers(1, 16), st.integers(1, 16), st.lists(st.integers(1, 7), min_size=1,
                                                        max_size=4),
       st.sampled_from(["MAX", "AVE"]), st.integers(0, 2**32 - 1))
def test_drawn_sizes_and_pyramids_match_the_loop_or_are_refused(h, w, levels, pool, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    expected = naive_sppnet(x, pool, levels)
    if expected is None:
        with pytest.raises(LayerError, match="needs at least"):
            forward(x, levels=levels, pool=pool, rule="sppnet")
        return
    np.testing.assert_allclose(forward(x, levels=levels, pool=pool, rule="sppnet")[0],
                               expected, rtol=1e-12)


def test_the_rules_agree_where_bins_divide_the_size_and_differ_elsewhere():
    x = distinct((1, 2, 12, 12), 3)
    for levels in ([1, 2, 4], [1, 3, 6]):
        np.testing.assert_array_equal(forward(x, levels=levels, pool="AVE")[0],
                                      forward(x, levels=levels, pool="AVE", rule="sppnet")[0])
    odd = distinct((1, 1, 17, 17), 4)
    caffe = forward(odd, levels=[6], pool="MAX")[0]
    paper = forward(odd, levels=[6], pool="MAX", rule="sppnet")[0]
    assert caffe.shape == paper.shape == (1, 36)
    assert not np.array_equal(caffe, paper)


def test_sppnet_leaves_the_last_rows_unpooled_when_the_remainder_is_two_or_more():
    """17 = 6 * 2 + 5: windows of 3 at stride 2 end at row 12, so rows 13..16 never count."""
    assert sppnet_geometry(17, 17, 6).kernel == (3, 3)
    assert sppnet_geometry(17, 17, 6).stride == (2, 2)
    x = np.zeros((1, 1, 17, 17))
    x[0, 0, 13:, :] = 100.0                        # only in the rows no window reaches
    y, _ = forward(x, levels=[6], pool="MAX", rule="sppnet")
    assert y.max() == 0.0
    y, _ = forward(x, levels=[6], pool="MAX")      # Caffe's padded tiling reaches them
    assert y.max() == 100.0


def test_sppnet_takes_sizes_caffe_refuses():
    x = distinct((1, 1, 5, 5), 5)
    with pytest.raises(LayerError, match="4 bins needs pad 2 >= kernel 2"):
        forward(x, levels=[4], pool="MAX")
    y, _ = forward(x, levels=[4], pool="MAX", rule="sppnet")    # windows 2 at stride 1
    np.testing.assert_array_equal(y.reshape(4, 4), naive_sppnet(x, "MAX", [4]).reshape(4, 4))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw, levels", [((7, 5), [1, 2, 3]), ((11, 9), [2, 6]),
                                        ((17, 8), [1, 6])])
def test_sppnet_backward_matches_finite_differences(pool, hw, levels):
    x = distinct((1, 2, *hw), 6) * 0.1 - 3.0
    y, masks = forward(x, levels=levels, pool=pool, rule="sppnet")
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx = backward(dy, x.shape, levels=levels, pool=pool, masks=masks, rule="sppnet")

    def loss():
        return float(np.sum(forward(x, levels=levels, pool=pool, rule="sppnet")[0] * dy))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_features_and_errors():
    assert spp_features(13, 13, [1, 2, 3, 6], "sppnet") == 50
    assert spp_features(13, 13, [1, 2, 4]) == 21
    with pytest.raises(LayerError, match="rule must be one of"):
        spp_features(13, 13, [1], "paper")
    with pytest.raises(LayerError, match="3-pixel w axis into 6 bins needs at least 6 pixels"):
        forward(np.zeros((1, 1, 8, 3)), levels=[6], pool="MAX", rule="sppnet")


# --- through the layer -------------------------------------------------------------------------

def test_bins_from_prototxt_flatten_and_keep_one_length_over_sizes():
    layer = SPPLayer(parse_text('name: "spp" type: "SPP" bottom: "x" top: "y" '
                                'spp_param { bins: 1 bins: 2 bins: 3 bins: 6 pool: MAX }',
                                "LayerParameter"))
    for hw in ((6, 6), (13, 13), (9, 21), (40, 7)):
        x = distinct((2, 4, *hw), sum(hw))
        y = layer(x)
        assert y.shape == (2, 4 * 50)
        np.testing.assert_array_equal(y, naive_sppnet(x, "MAX", [1, 2, 3, 6]))
        assert layer.backprop(np.ones(y.shape)).shape == x.shape
    assert SPPLayer(bins=[1])(distinct((2, 3, 4, 5), 0)).shape == (2, 3)   # flattened


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_bins_layer_gradient(pool):
    x = distinct((2, 2, 7, 9), 11) * 0.1
    check_layer_gradient(lambda: SPPLayer(bins=[1, 2, 3], pool=pool), [x])


@pytest.mark.parametrize("fields, shape, match", [
    ({"bins": [1, 2], "pyramid_height": 2}, (1, 1, 8, 8), "pyramid_height .* or bins .* not both"),
    ({"bins": [1, 0]}, (1, 1, 8, 8), r"bins must be >= 1, got \[1, 0\]"),
    ({"bins": [1, 6]}, (1, 1, 5, 9), "5-pixel h axis into 6 bins"),
    ({}, (1, 1, 4, 4), "or give spp_param bins"),
])
def test_bins_errors(fields, shape, match):
    layer = SPPLayer(**fields)
    with pytest.raises(LayerError, match=match):
        layer(np.zeros(shape))
