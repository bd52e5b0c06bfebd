"""Deconvolution (transposed convolution), built from the conv ops by DeconvolutionLayer: its
forward against a naive scatter loop, its backward against finite differences, the duality
with Convolution, and FCN's bilinear-upsampling recipe."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import DeconvolutionLayer
from minicnn.ops.conv import ConvGeometry, conv2d_forward
from minicnn.testing import numerical_grad


def naive_deconv(x, w, b, geom, group):
    """Scatter every input pixel, times its kernel, into the output (Caffe's definition: the
    transpose of convolution), then cut the padding off the border."""
    n_img, c, h, wd = x.shape
    _, fg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.pad, geom.dilation
    oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow = sw * (wd - 1) + dw * (kw - 1) + 1 - 2 * pw
    cg = c // group
    y = np.zeros((n_img, fg * group, oh, ow))
    for n in range(n_img):
        for ci in range(c):
            g = ci // cg
            for i in range(h):
                for j in range(wd):
                    for o in range(fg):
                        for ki in range(kh):
                            for kj in range(kw):
                                r, s = i * sh - ph + ki * dh, j * sw - pw + kj * dw
                                if 0 <= r < oh and 0 <= s < ow:
                                    y[n, g * fg + o, r, s] += x[n, ci, i, j] * w[ci, o, ki, kj]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def deconv_layer(w, b, geom, group):
    """A DeconvolutionLayer holding the given weights (C, F/G, kh, kw) and bias."""
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.pad
    layer = DeconvolutionLayer(num_output=w.shape[1] * group, kernel_h=kh, kernel_w=kw,
                               stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw,
                               dilation=list(geom.dilation), group=group,
                               bias_term=b is not None)
    layer.blobs = [Blob.from_array(w)] + ([Blob.from_array(b)] if b is not None else [])
    return layer


def out_size(size, k, s, p, d):
    return s * (size - 1) + d * (k - 1) + 1 - 2 * p


@st.composite
def deconv_cases(draw, max_hw=5):
    """Odd sizes, stride > kernel, pad, dilation up to 3, groups and depthwise, non-square
    geometry, with or without a bias."""
    group = draw(st.sampled_from([1, 2, 3]))
    c = group * draw(st.integers(1, 2))                    # c == group: depthwise
    f = group * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    assume(all(out_size(size, k, s, p, d) >= 1
               for size, k, s, p, d in zip((h, w), kernel, stride, pad, dilation)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = rng.standard_normal(f) if draw(st.booleans()) else None
    return (rng.standard_normal((draw(st.integers(1, 2)), c, h, w)),
            rng.standard_normal((c, f // group, *kernel)), b,
            ConvGeometry(kernel, stride, pad, dilation), group)


def make_case(n, c, hw, f, kernel, stride=1, pad=0, dilation=1, group=1, bias=True, seed=0):
    geom = ConvGeometry(kernel, stride, pad, dilation)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, *hw)), rng.standard_normal((c, f // group, *geom.kernel)),
            rng.standard_normal(f) if bias else None, geom, group)


PINNED = {
    "plain": make_case(2, 3, (4, 3), 2, 3),
    "stride_gt_kernel": make_case(1, 2, (3, 4), 3, 2, stride=3),
    "stride_pad": make_case(2, 2, (3, 3), 4, 4, stride=2, pad=1),
    "non_square": make_case(1, 2, (3, 5), 2, (3, 1), stride=(1, 2), pad=(1, 0), bias=False),
    "dilated": make_case(1, 2, (3, 4), 2, 3, stride=2, pad=2, dilation=2),
    "grouped": make_case(2, 4, (3, 3), 6, 3, stride=2, pad=1, group=2),
    "depthwise": make_case(1, 3, (4, 3), 3, 3, stride=2, pad=1, group=3, bias=False),
    "channel_multiplier": make_case(1, 2, (3, 3), 4, 2, stride=2, group=2),
    "pad_eats_border": make_case(1, 1, (2, 2), 1, 5, stride=1, pad=2),
}


@pytest.mark.parametrize("case", PINNED.values(), ids=PINNED.keys())
def test_pinned_cases(case):
    check_forward_against_naive(case)
    check_backward_against_finite_differences(case)


@given(deconv_cases())
def test_forward_matches_naive_scatter_loop(case):
    check_forward_against_naive(case)


@given(deconv_cases(max_hw=4))
def test_backward_matches_finite_differences(case):
    check_backward_against_finite_differences(case)


def check_forward_against_naive(case):
    x, w, b, geom, group = case
    np.testing.assert_allclose(deconv_layer(w, b, geom, group)(x),
                               naive_deconv(x, w, b, geom, group), rtol=1e-10, atol=1e-12)


def check_backward_against_finite_differences(case):
    x, w, b, geom, group = case                             # float64 on purpose
    layer = deconv_layer(w, b, geom, group)
    y = layer(x)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx = layer.backprop(dy).copy()

    def loss():                                             # d(loss)/dy == dy
        return float(np.sum(layer(x) * dy))

    checks = [("x", x, dx)] + [(name, blob.data, blob.diff.copy())
                               for name, blob in zip(("w", "b"), layer.blobs)]
    for name, array, grad in checks:
        np.testing.assert_allclose(grad, numerical_grad(loss, array), rtol=1e-6, atol=1e-8,
                                   err_msg=name)


@given(deconv_cases())
def test_deconvolution_is_the_transpose_of_convolution(case):
    """<deconv(x), r> == <x, conv(r)> with the same weights (and no bias): the duality the layer
    is built on, a Convolution from num_output channels back to C."""
    x, w, _, geom, group = case
    y = deconv_layer(w, None, geom, group)(x)
    r = np.random.default_rng(2).standard_normal(y.shape)
    back = conv2d_forward(r, w, None, geom=geom, group=group)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(y * r), np.sum(x * back), rtol=1e-10)


@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 4), st.integers(0, 3),
       st.integers(1, 3))
def test_output_size(size, k, s, p, d):
    x = np.zeros((1, 1, size, size))
    w = np.zeros((1, 1, k, k))
    geom = ConvGeometry(k, s, p, d)
    expected = out_size(size, k, s, p, d)
    if expected < 1:
        with pytest.raises(LayerError, match="deconvolution output would be"):
            deconv_layer(w, None, geom, 1)(x)
        return
    assert deconv_layer(w, None, geom, 1)(x).shape == (1, 1, expected, expected)


@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 4), st.integers(0, 3),
       st.integers(1, 3))
def test_output_size_is_the_smallest_convolution_input_of_that_size(size, k, s, p, d):
    """The docstrings' claim: a Convolution of the same geometry maps the Deconvolution's output
    size (and the s - 1 sizes after it) back to the input size, and one pixel less to less."""
    geom = ConvGeometry(k, s, p, d)
    out = out_size(size, k, s, p, d)
    assume(out >= 1)
    assert geom.transposed_out_hw(size, size) == (out, out)
    for bigger in range(out, out + s):
        assert geom.out_hw(bigger, bigger) == (size, size)
    if out + 2 * p - geom.extent[0] >= 1:     # out - 1 still holds one window
        assert geom.out_hw(out - 1, out - 1)[0] < size
    assert geom.out_hw(out + s, out + s)[0] > size


# --- FCN's bilinear upsampling ------------------------------------------------------------------

def upsample_layer(factor, channels):
    """FCN's recipe (Caffe's filler.hpp documents it): kernel 2f - f%2, stride f,
    pad ceil((f - 1) / 2), group = num_output = C, no bias, bilinear filler."""
    return DeconvolutionLayer(num_output=channels, group=channels,
                              kernel_size=2 * factor - factor % 2, stride=factor,
                              pad=math.ceil((factor - 1) / 2), bias_term=False,
                              weight_filler={"type": "bilinear"})


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_upsampling_keeps_a_constant_image_constant_inside(factor):
    layer = upsample_layer(factor, 2)
    x = np.full((1, 2, 5, 4), 3.0)
    y = layer(x)
    assert y.shape == (1, 2, 5 * factor, 4 * factor)
    assert layer.blobs[0].shape == (2, 1, 2 * factor - factor % 2, 2 * factor - factor % 2)
    inner = y[:, :, factor:-factor, factor:-factor]         # away from the zero-padded border
    np.testing.assert_allclose(inner, 3.0, rtol=1e-12)
    assert np.all(y <= 3.0 + 1e-12) and np.any(y < 3.0)    # the border fades towards the pad


def test_bilinear_upsampling_by_two_reproduces_fcn_on_a_hand_example():
    """Kernel taps (1/4, 3/4, 3/4, 1/4) per axis, stride 2, pad 1: rows are mixed as
    [3/4 a, 3/4 a + 1/4 b, 1/4 a + 3/4 b, 3/4 b] (half-pixel bilinear inside, the missing
    neighbour counting as 0 at the border), and the same along the columns."""
    layer = upsample_layer(2, 1)
    np.testing.assert_allclose(layer(np.zeros((1, 1, 2, 2)))[0, 0], 0)
    np.testing.assert_allclose(layer.blobs[0].data[0, 0, 0], [1 / 16, 3 / 16, 3 / 16, 1 / 16])
    y = layer(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))[0, 0]
    np.testing.assert_allclose(y, [[0.5625, 0.9375, 1.3125, 1.125],
                                   [1.125, 1.75, 2.25, 1.875],
                                   [1.875, 2.75, 3.25, 2.625],
                                   [1.6875, 2.4375, 2.8125, 2.25]], rtol=1e-12)


def test_float32_stays_float32_and_float64_stays_float64():
    x, w, b, geom, group = PINNED["grouped"]
    for dtype in (np.float32, np.float64):
        layer = deconv_layer(w.astype(dtype), b.astype(dtype), geom, group)
        y = layer(x.astype(dtype))
        dx = layer.backprop(np.ones_like(y))
        assert {a.dtype for a in (y, dx, layer.blobs[0].diff, layer.blobs[1].diff)} == \
            {np.dtype(dtype)}
    np.testing.assert_allclose(deconv_layer(w, b, geom, group)(x.astype(np.float32)),
                               naive_deconv(x, w, b, geom, group), rtol=1e-4, atol=1e-5)


FLOAT32_CASES = dict(PINNED, **{
    # a 1x1 at a stride: its filter gradient runs as the pointwise one of the subsampled top
    # diff (csrc/conv_gemm.cpp, strided_pointwise)
    "pointwise_strided": make_case(2, 3, (4, 5), 2, 1, stride=2),
    "pointwise_strided_grouped": make_case(1, 4, (3, 3), 6, 1, stride=(2, 3), group=2),
})


@pytest.mark.parametrize("case", FLOAT32_CASES.values(), ids=FLOAT32_CASES.keys())
def test_float32_layer_matches_float64(case):
    """The float32 layer (minicnn's GEMM kernels) against the float64 one (NumPy/BLAS): top,
    bottom diff and both parameter diffs, to float32 rounding."""
    x, w, b, geom, group = case
    dy = None
    results = []
    for dtype in (np.float64, np.float32):
        layer = deconv_layer(w.astype(dtype), None if b is None else b.astype(dtype), geom,
                             group)
        y = layer(x.astype(dtype))
        if dy is None:
            dy = np.random.default_rng(2).standard_normal(y.shape)
        dx = layer.backprop(dy.astype(dtype)).copy()
        results.append((y, dx, *(blob.diff.copy() for blob in layer.blobs)))
    for name, want, got in zip(("top", "dx", "dw", "db"), *results):
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
