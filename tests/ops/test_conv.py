"""Convolution op: reference against a naive loop, finite differences, adjoints, geometry rules."""

import contextlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.ops.conv import (
    ConvGeometry,
    col2im_ref,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_backward_filter,
    conv2d_forward,
    im2col_ref,
)
from minicnn.proto import caffe_pb2, parse_text
from minicnn.testing import numerical_grad
from tests.kernel_choice import run_with_kernel

forward = conv2d_forward.impls["ref"]
backward = conv2d_backward.impls["ref"]


def naive_conv(x, w, b, geom, group):
    """Caffe's caffe_conv: one output element at a time, straight from the definition."""
    n_img, _, h, wd = x.shape
    f, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.pad, geom.dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    fg = f // group
    y = np.zeros((n_img, f, oh, ow))
    for n in range(n_img):
        for o in range(f):
            g = o // fg
            for yy in range(oh):
                for xx in range(ow):
                    total = 0.0 if b is None else b[o]
                    for k in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                r, s = yy * sh - ph + i * dh, xx * sw - pw + j * dw
                                if 0 <= r < h and 0 <= s < wd:
                                    total += w[o, k, i, j] * x[n, g * cg + k, r, s]
                    y[n, o, yy, xx] = total
    return y


@st.composite
def conv_cases(draw, max_hw=7):
    """Small cases: odd sizes, stride > kernel, pad > 0, dilation up to 3, groups and depthwise,
    non-square kernels/strides/pads, with or without a bias."""
    group = draw(st.sampled_from([1, 2, 3]))
    c = group * draw(st.integers(1, 2))                    # c == group: depthwise
    f = group * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    geom = ConvGeometry(kernel, stride, pad, dilation)
    assume(all(size + 2 * p >= e for size, p, e in zip((h, w), pad, geom.extent)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 2))
    b = rng.standard_normal(f) if draw(st.booleans()) else None
    return (rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c // group, *kernel)), b,
            geom, group)


def make_case(n, c, hw, f, kernel, stride=1, pad=0, dilation=1, group=1, bias=True, seed=0):
    geom = ConvGeometry(kernel, stride, pad, dilation)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, *hw)), rng.standard_normal((f, c // group, *geom.kernel)),
            rng.standard_normal(f) if bias else None, geom, group)


# Pinned cases, so each feature is covered whatever hypothesis draws.
PINNED = {
    "plain": make_case(2, 3, (6, 5), 4, 3),
    "stride_gt_kernel": make_case(1, 2, (7, 7), 3, 2, stride=3, pad=1),
    "non_square": make_case(2, 2, (5, 7), 2, (3, 1), stride=(1, 2), pad=(0, 2), bias=False),
    "atrous_same": make_case(1, 2, (7, 6), 2, 3, pad=3, dilation=3),
    "grouped": make_case(2, 4, (5, 5), 6, 3, stride=2, pad=1, group=2),
    "group3_dilated": make_case(1, 6, (6, 7), 3, (2, 3), dilation=(2, 1), group=3),
    "depthwise": make_case(2, 3, (5, 6), 3, 3, pad=1, group=3, bias=False),
    "depthwise_multiplier": make_case(1, 2, (4, 5), 4, 2, stride=(2, 1), dilation=2, group=2),
    "pad_gt_kernel": make_case(1, 1, (3, 2), 2, 1, stride=2, pad=(2, 3)),
    # kernel > 4 * size + 16: tap_ranges lists only the taps that reach the image
    "kernel_far_wider_than_image": make_case(1, 2, (2, 3), 2, (25, 1), pad=(12, 0)),
}


@pytest.mark.parametrize("case", PINNED.values(), ids=PINNED.keys())
def test_pinned_cases(case):
    check_forward_against_naive(case)
    check_backward_against_finite_differences(case)


@given(conv_cases())
def test_forward_matches_naive_loop(case):
    check_forward_against_naive(case)


@given(conv_cases(max_hw=6))
def test_backward_matches_finite_differences(case):
    check_backward_against_finite_differences(case)


def check_forward_against_naive(case):
    x, w, b, geom, group = case
    np.testing.assert_allclose(forward(x, w, b, geom=geom, group=group),
                               naive_conv(x, w, b, geom, group), rtol=1e-10, atol=1e-12)


def check_backward_against_finite_differences(case):
    x, w, b, geom, group = case                             # float64 on purpose
    dy = np.random.default_rng(0).standard_normal(forward(x, w, b, geom=geom, group=group).shape)
    dx, dw, db = backward(dy, x, w, geom=geom, group=group)

    def loss():                                             # d(loss)/dy == dy
        return float(np.sum(forward(x, w, b, geom=geom, group=group) * dy))

    checks = [("x", x, dx), ("w", w, dw)] + ([("b", b, db)] if b is not None else [])
    for name, array, grad in checks:
        # The loss is linear in each of x, w and b, so a central difference is exact for any
        # step: a large one keeps the rounding error of the loss (~1e-15 * |loss| / eps) far
        # below the tolerance on every BLAS.
        np.testing.assert_allclose(grad, numerical_grad(loss, array, eps=0.5), rtol=1e-6,
                                   atol=1e-8, err_msg=name)
    if b is None:                                           # db is still d(loss)/d(a zero bias)
        np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)))


@given(conv_cases())
def test_col2im_is_the_adjoint_of_im2col(case):
    x, _, _, geom, _ = case
    cols = np.random.default_rng(1).standard_normal(im2col_ref(x, geom).shape)
    lhs = np.sum(im2col_ref(x, geom) * cols)
    rhs = np.sum(x * col2im_ref(cols, x.shape[2:], geom))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


@given(conv_cases())
def test_backward_data_and_filter_are_adjoints_of_forward(case):
    """What Deconvolution relies on: backward_data is the transpose of the linear map x -> y."""
    x, w, _, geom, group = case
    y = forward(x, w, None, geom=geom, group=group)
    r = np.random.default_rng(2).standard_normal(y.shape)
    dx = conv2d_backward_data.impls["ref"](r, w, x_hw=x.shape[2:], geom=geom, group=group)
    dw = conv2d_backward_filter.impls["ref"](r, x, geom=geom, group=group)
    np.testing.assert_allclose(np.sum(y * r), np.sum(x * dx), rtol=1e-10)
    np.testing.assert_allclose(np.sum(y * r), np.sum(w * dw), rtol=1e-10)


def test_im2col_layout_and_padding():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    cols = im2col_ref(x, ConvGeometry(3, 1, 1))             # (1, 1, 3, 3, 3, 3)
    np.testing.assert_array_equal(cols[0, 0, 1, 1], x[0, 0])   # centre tap sees the image
    np.testing.assert_array_equal(cols[0, 0, 0, 0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
    # col2im of all ones counts how many windows read each pixel
    counts = col2im_ref(np.ones_like(cols), (3, 3), ConvGeometry(3, 1, 1))
    np.testing.assert_array_equal(counts[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


def test_depthwise_atrous_same_padding_keeps_size_and_channels_apart():
    c, d = 3, 2
    x = np.random.default_rng(3).standard_normal((1, c, 7, 7))
    w = np.zeros((c, 1, 3, 3))
    w[:, 0, 1, 1] = [1.0, 2.0, 3.0]                          # centre tap only: scale channel
    y = forward(x, w, None, geom=ConvGeometry(3, 1, d, d), group=c)   # pad = d (k - 1) / 2
    np.testing.assert_allclose(y, x * np.array([1.0, 2.0, 3.0])[:, None, None])


def test_need_skips_parts_of_backward():
    x, w = np.ones((1, 2, 4, 4)), np.ones((3, 2, 2, 2))
    dy = np.ones((1, 3, 3, 3))
    dx, dw, db = backward(dy, x, w, geom=ConvGeometry(2), need=(False, True, False))
    assert dx is None and db is None and dw.shape == w.shape


def test_dispatch_on_numpy_arrays():
    x, w, b = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), np.zeros(1)
    np.testing.assert_array_equal(conv2d_forward(x, w, b, geom=ConvGeometry(2)),
                                  np.full((1, 1, 2, 2), 4.0))


def test_float32_stays_float32():
    geom = ConvGeometry((3, 2), (2, 1), (1, 0), (1, 2))
    x = np.ones((2, 4, 5, 6), np.float32)
    w, b = np.ones((2, 2, 3, 2), np.float32), np.ones(2, np.float32)
    y = conv2d_forward(x, w, b, geom=geom, group=2)
    dx, dw, db = conv2d_backward(y, x, w, geom=geom, group=2)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(np.float32)}
    assert im2col_ref(x, geom).dtype == np.float32
    assert col2im_ref(im2col_ref(x, geom), (5, 6), geom).dtype == np.float32
    assert forward(x.astype(np.float64), w.astype(np.float64), None, geom=geom,
                   group=2).dtype == np.float64


def test_ops_do_not_write_their_inputs():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 3, 3)), np.ones(2)
    copies = [a.copy() for a in (x, w, b)]
    y = forward(x, w, b, geom=ConvGeometry(3, 1, 1), group=1)
    dy = y.copy()
    backward(dy, x, w, geom=ConvGeometry(3, 1, 1))
    for a, c in zip((x, w, b, dy), copies + [y]):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("x_shape, w_shape, b_shape, group, match", [
    ((1, 3, 5, 5), (2, 3, 3, 3), None, 2, "channels 3 and filters 2 .* group 2"),
    ((1, 4, 5, 5), (2, 4, 3, 3), None, 2, r"expected \(2, 2, 3, 3\)"),
    ((1, 4, 5, 5), (3, 2, 3, 3), None, 2, "channels 4 and filters 3 .* group 2"),
    ((1, 4, 5, 5), (2, 4, 2, 2), None, 1, "kernel 3x3"),
    ((1, 4, 5, 5), (2, 4, 3, 3), (3,), 1, r"bias of shape \(3,\) .* 2 filters"),
    ((4, 5, 5), (2, 4, 3, 3), None, 1, r"4-D x, got one of shape \(4, 5, 5\)"),
])
def test_forward_shape_errors(x_shape, w_shape, b_shape, group, match):
    b = None if b_shape is None else np.zeros(b_shape)
    with pytest.raises(LayerError, match=match):
        forward(np.zeros(x_shape), np.zeros(w_shape), b, geom=ConvGeometry(3), group=group)


def test_backward_rejects_a_dy_of_the_wrong_shape():
    with pytest.raises(LayerError, match=r"dy of shape \(1, 2, 4, 4\) .* \(1, 2, 3, 3\)"):
        backward(np.zeros((1, 2, 4, 4)), np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3)),
                 geom=ConvGeometry(3))


# --- geometry ------------------------------------------------------------------------------------

def conv_param(text):
    return parse_text(text, "ConvolutionParameter")


@pytest.mark.parametrize("text, kernel, stride, pad, dilation", [
    ("kernel_size: 3", (3, 3), (1, 1), (0, 0), (1, 1)),
    ("kernel_size: 3 kernel_size: 5 stride: 2 pad: 1", (3, 5), (2, 2), (1, 1), (1, 1)),
    ("kernel_size: 3 stride: 1 stride: 2 pad: 2 pad: 0 dilation: 2 dilation: 3",
     (3, 3), (1, 2), (2, 0), (2, 3)),
    ("kernel_h: 1 kernel_w: 7 stride_h: 2 stride_w: 3 pad_h: 0 pad_w: 3 dilation: 2",
     (1, 7), (2, 3), (0, 3), (2, 2)),
    ("kernel_size: 2 pad_h: 1", (2, 2), (1, 1), (1, 0), (1, 1)),     # unset pad_w reads as 0
])
def test_geometry_from_param(text, kernel, stride, pad, dilation):
    assert ConvGeometry.from_param(conv_param(text)) == ConvGeometry(kernel, stride, pad, dilation)


@pytest.mark.parametrize("text, match", [
    ("num_output: 2", "no kernel size: give kernel_size .* or kernel_h and kernel_w"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3",
     "either kernel_size or kernel_h/kernel_w .*not both"),
    ("kernel_size: 3 stride: 2 stride_h: 2", "either stride or stride_h/stride_w .*not both"),
    ("kernel_size: 3 pad: 1 pad_w: 1", "either pad or pad_h/pad_w .*not both"),
    ("kernel_size: 1 kernel_size: 2 kernel_size: 3",
     (r"kernel_size must be specified once, or once per spatial dimension \(kernel_size "
      r"specified 3 times; 2 spatial dims\)")),
    ("kernel_size: 3 stride: 1 stride: 1 stride: 1", "stride specified 3 times"),
    ("kernel_size: 3 pad: 0 pad: 0 pad: 0", "pad specified 3 times"),
    ("kernel_size: 3 dilation: 1 dilation: 1 dilation: 1", "dilation specified 3 times"),
    ("kernel_h: 3", "kernel dimensions must be nonzero, got 3x0"),
    ("kernel_size: 0", "kernel dimensions must be nonzero, got 0x0"),
    ("kernel_size: 3 stride_h: 2", "stride dimensions must be nonzero, got 2x0"),
    ("kernel_size: 3 stride: 0", "stride dimensions must be nonzero"),
    ("kernel_size: 3 dilation: 0", "dilation must be nonzero"),
])
def test_geometry_from_param_errors(text, match):
    with pytest.raises(LayerError, match=match):
        ConvGeometry.from_param(conv_param(text))


def test_geometry_reads_a_message_built_in_python():
    p = caffe_pb2.ConvolutionParameter(kernel_size=[5, 3], stride=[2], dilation=[2])
    assert ConvGeometry.from_param(p) == ConvGeometry((5, 3), (2, 2), (0, 0), (2, 2))


@given(st.integers(1, 12), st.integers(1, 4), st.integers(1, 3), st.integers(0, 3),
       st.integers(1, 3))
def test_out_hw_formula(size, k, s, p, d):
    geom = ConvGeometry(k, s, p, d)
    extent = d * (k - 1) + 1
    if size + 2 * p < extent:
        with pytest.raises(LayerError, match="convolution output would be"):
            geom.out_hw(size, size)
        return
    out = geom.out_hw(size, size)[0]
    assert out == (size + 2 * p - extent) // s + 1
    # the last window fits, one more would not
    assert (out - 1) * s + extent <= size + 2 * p < out * s + extent
    # Deconvolution's size maps back to the same output, unless the pad eats all of it (a 1x1
    # kernel at stride 3 with pad 1 maps 1 -> 1, but a 1x1 Deconvolution cannot undo pad 1)
    back = s * (out - 1) + extent - 2 * p
    if back < 1:
        with pytest.raises(LayerError, match="deconvolution output would be"):
            geom.transposed_out_hw(out, out)
        return
    assert geom.transposed_out_hw(out, out)[0] == back and geom.out_hw(back, back)[0] == out


def test_out_hw_error_names_the_numbers():
    with pytest.raises(LayerError, match=r"output would be 0x5: the 4x9 input padded by 1x1 is "
                                         r"smaller than the kernel extent 7x7 \(kernel 4x4, "
                                         r"dilation 2x2\)"):
        ConvGeometry(4, 1, 1, 2).out_hw(4, 9)


def test_geometry_accepts_ints_and_rejects_bad_values():
    assert ConvGeometry(3, 2) == ConvGeometry((3, 3), (2, 2), (0, 0), (1, 1))
    with pytest.raises(LayerError, match="pad must be >= 0"):
        ConvGeometry(3, pad=(-1, 0))
    with pytest.raises(LayerError, match="kernel must be an int or an"):
        ConvGeometry((1, 2, 3))


# --- fast paths against the reference (I2) -------------------------------------------------------

FAST_KINDS = [kind for kind in conv2d_forward.impls if kind == "cpu"]
fast = pytest.mark.parametrize("kind", FAST_KINDS)


def check_fast_path(kind, case, dtype):
    """Forward, the three parts of backward, and the two backward ops Deconvolution uses, each
    equal to the reference: to float32 rounding, or to 1e-10 in float64."""
    x, w, b, geom, group = (a.astype(dtype) if isinstance(a, np.ndarray) else a for a in case)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = conv2d_forward.impls[kind](x, w, b, geom=geom, group=group)
    want = forward(x, w, b, geom=geom, group=group)
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, **tol)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    got = conv2d_backward.impls[kind](dy, x, w, geom=geom, group=group)
    for name, g, r in zip(("dx", "dw", "db"), got, backward(dy, x, w, geom=geom, group=group)):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, r, err_msg=name, **tol)
    dx, dw, db = conv2d_backward.impls[kind](dy, x, w, geom=geom, group=group,
                                             need=(False, True, False))
    assert dx is None and db is None
    np.testing.assert_allclose(dw, got[1], **tol)
    np.testing.assert_allclose(
        conv2d_backward_data.impls[kind](dy, w, x_hw=x.shape[2:], geom=geom, group=group),
        got[0], **tol)
    np.testing.assert_allclose(conv2d_backward_filter.impls[kind](dy, x, geom=geom, group=group),
                               got[1], **tol)


FAST_PINNED = dict(PINNED, **{
    "pointwise": make_case(3, 5, (4, 6), 7, 1),
    # too many dropped positions for the direct product, whole filter panels: the default
    # takes the kept positions' product instead of the packed one (forward, input gradient)
    "kept_instead_of_packed": make_case(2, 8, (9, 9), 32, 3, pad=4, dilation=4),
    "pointwise_grouped": make_case(2, 4, (3, 5), 6, 1, group=2),
    # 1x1 maps: an InnerProduct's kernels (batch of 3, and one image through the AVX2 passes
    # over w), with groups the GEMM's
    "pointwise_on_1x1_maps": make_case(3, 37, (1, 1), 29, 1),
    "pointwise_on_1x1_maps_one_image": make_case(1, 70, (1, 1), 50, 1, bias=False),
    "pointwise_on_1x1_maps_grouped": make_case(2, 6, (1, 1), 4, 1, group=2),
    "pointwise_on_1x1_maps_no_images": make_case(0, 5, (1, 1), 3, 1),   # an empty batch
    "no_images": make_case(0, 3, (5, 5), 4, 3, pad=1),
    # few positions and a large dw (csrc/conv_gemm.cpp, few_positions): its filter gradient
    # added into dw tile by tile in place; filters and channels past whole tiles, and groups
    "pointwise_few_positions": make_case(2, 370, (2, 3), 359, 1),
    "pointwise_few_positions_grouped": make_case(1, 728, (2, 2), 724, 1, group=2),
    "pointwise_strided": make_case(2, 3, (5, 5), 2, 1, stride=2),
    # no bias and whole micro tiles per image (32 or 64 positions): the packed forward's
    # micro-kernel writes y itself (csrc/conv_gemm.cpp, OutputTiles), and the filters past
    # whole 6-row panels go through the store; groups, a 3x3, and row blocks of 48 filters
    "pointwise_straight_to_y": make_case(3, 5, (4, 8), 14, 1, bias=False),
    "pointwise_straight_to_y_grouped": make_case(2, 6, (8, 8), 20, 1, group=2, bias=False),
    "straight_to_y_3x3": make_case(2, 3, (8, 4), 7, 3, pad=1, bias=False),
    "straight_to_y_100_filters": make_case(2, 4, (8, 8), 100, 1, bias=False),
    # a 1x1 at a stride without padding runs as the pointwise convolution of the subsampled
    # input (csrc/conv_gemm.cpp, strided_pointwise): a stride per axis with dilation (which a
    # 1x1 ignores), groups, a filter gradient with few positions into a large dw, and enough
    # planes (64 x 15 x 15 x 4 > 2^16) for the threads to share the subsampling
    "pointwise_stride_2x3_dilated": make_case(2, 5, (9, 10), 7, 1, stride=(2, 3), dilation=2),
    "pointwise_strided_grouped": make_case(3, 6, (7, 8), 9, 1, stride=2, group=3),
    "pointwise_strided_few_positions": make_case(1, 370, (5, 6), 359, 1, stride=2),
    "pointwise_strided_many_planes": make_case(4, 64, (30, 29), 8, 1, stride=2),
    # strides 2 and 4 over rows long enough for the vectorized strided gather (and its tail)
    "conv1_like_stride4": make_case(2, 3, (27, 95), 5, 11, stride=4, pad=1),
    "stride2_7x7": make_case(1, 3, (15, 77), 4, 7, stride=2, pad=3),
    "one_channel": make_case(3, 1, (6, 7), 4, (2, 3), stride=(1, 2), pad=1),
    "depthwise_strided_atrous": make_case(2, 4, (9, 8), 4, 3, stride=2, pad=2, dilation=2,
                                          group=4),
    "depthwise_x3_non_square": make_case(2, 3, (7, 9), 9, (3, 1), stride=(1, 3), pad=(1, 0),
                                         group=3),
    # strided depthwise with wider outputs (csrc/depthwise.cpp's channel blocks)
    "depthwise_stride2_wide": make_case(2, 3, (9, 28), 3, 3, stride=2, pad=1, group=3),
    "depthwise_stride3_atrous_x2": make_case(1, 2, (8, 41), 4, 3, stride=(2, 3), pad=(1, 2),
                                             dilation=2, group=2),
    # "same" depthwise geometries: float32 3x3 ones from 33 columns on the row loops (their
    # masked flat loop and the border rows), the others on the channel blocks
    "depthwise_same_wide": make_case(2, 3, (9, 70), 3, 3, pad=1, group=3),
    "depthwise_same_atrous": make_case(1, 2, (11, 40), 2, 3, pad=2, dilation=2, group=2),
    "depthwise_same_x2": make_case(2, 2, (6, 37), 4, 3, pad=1, group=2),
    "depthwise_same_5x5": make_case(1, 3, (8, 81), 3, 5, pad=2, group=3, bias=False),
    "depthwise_same_tiny": make_case(1, 2, (2, 3), 2, 3, pad=1, group=2),
    # widths whose columns under a 16-wide chunk repeat quickly (56: every 7 chunks, 16: every
    # chunk, 7: chunks across rows) have a mask table for the row loops (3x3 from 33 columns)
    "depthwise_same_56": make_case(2, 3, (9, 56), 3, 3, pad=1, group=3),
    "depthwise_same_16_atrous": make_case(1, 2, (10, 16), 2, 3, pad=2, dilation=2, group=2),
    "depthwise_same_7_rows": make_case(3, 2, (7, 7), 2, 3, pad=1, group=2),
    "depthwise_same_28_5x5_x2": make_case(1, 2, (12, 28), 4, 5, pad=2, group=2),
    # 3x3 has its own unrolled masked loop (two chunks at a time, then one): widths with an
    # odd number of chunks, dilation, and a multiplier (backward data accumulates over it)
    "depthwise_same_3x3_48_atrous3": make_case(1, 2, (11, 48), 2, 3, pad=3, dilation=3,
                                               group=2),
    "depthwise_same_3x3_56_x2": make_case(2, 2, (9, 56), 4, 3, pad=1, group=2),
    "depthwise_same_3x3_14_x3": make_case(1, 2, (5, 14), 6, 3, pad=1, group=2),
    # enough output positions (>= 512 per thread) for the filter gradient to split them
    # between threads (partial sums added in thread order), ungrouped and 3 groups in turn
    "positions_split": make_case(3, 4, (23, 19), 5, 3, pad=1),
    "positions_split_grouped": make_case(2, 6, (24, 25), 9, 3, stride=1, pad=1, group=3),
    "positions_split_pointwise": make_case(2, 8, (30, 31), 7, 1),
    # filter counts that leave the filter gradient's 32-wide dy panels partly filled (its
    # AVX-512 gather packs 16 filters at a time): 24 (16 + 8) and 40 (32, then 8)
    "filters_24": make_case(2, 3, (6, 7), 24, 3, pad=1),
    "filters_40_pointwise": make_case(1, 5, (9, 4), 40, 1),
    # a pointwise filter gradient through the packed product (more than 64 filters): channels
    # in whole 6-row panels (AVX2's 6 x 8 interleave) and a partial one, 63 positions an image
    # (8-position steps and a tail, runs ending at image ends inside a block), and filters
    # filling 16-wide dy panels partly (the AVX2 8 x 8 transposes with zero rows)
    "pointwise_filter_panels": make_case(3, 14, (7, 9), 70, 1),
    "pointwise_filter_panels_grouped": make_case(2, 24, (5, 11), 132, 1, group=2),
})


@fast
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FAST_PINNED.values(), ids=FAST_PINNED.keys())
def test_fast_path_pinned_cases(kind, dtype, case):
    check_fast_path(kind, case, dtype)


@fast
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=conv_cases(max_hw=10))
def test_fast_path_matches_reference(kind, dtype, case):
    check_fast_path(kind, case, dtype)


@st.composite
def depthwise_wide_cases(draw):
    """Depthwise convolutions on wide rows: "same" geometries 16-90 wide (from 33 columns the
    3x3 ones take csrc/depthwise.cpp's row loops: chunks of 16 outputs, two or four at a time,
    edge masks per chunk phase; the rest its channel blocks), and strides 2-3 with outputs 12
    and more wide; 3x3 most often, dilation up to 3, a channel multiplier up to 3 (the input
    gradient accumulates over it)."""
    channels, multiplier = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = draw(st.sampled_from([3, 3, 3, 5, (3, 5)]))
    dilation = draw(st.integers(1, 3))
    if draw(st.booleans()):                                  # "same": output == input
        stride = 1
        extent = ConvGeometry(k, 1, 0, dilation).extent
        pad = tuple((e - 1) // 2 for e in extent)            # odd extents
        h, w = draw(st.integers(1, 9)), draw(st.integers(16, 90))
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(2, 3)))
        pad = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        extent = ConvGeometry(k, stride, pad, dilation).extent
        low = max(extent[0] - 2 * pad[0], 1)
        h = draw(st.integers(low, low + 8))
        w = draw(st.integers(max(extent[1] - 2 * pad[1], 12 * stride[1]), 70))
    return make_case(draw(st.integers(1, 2)), channels, (h, w), channels * multiplier, k,
                     stride=stride, pad=pad, dilation=dilation, group=channels,
                     bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@fast
@settings(max_examples=60, deadline=None)
@given(case=depthwise_wide_cases())
def test_depthwise_wide_rows_match_reference(kind, case):
    check_fast_path(kind, case, np.float32)


@st.composite
def depthwise_block_cases(draw):
    """Depthwise convolutions for csrc/depthwise.cpp's channel blocks (eight channels at a time
    in one zero-padded buffer): channel counts off the block size, a channel multiplier (the
    input gradient then sums m filters per channel), kernels of 1-5 on each axis and now and
    then more than 49 taps, strides and dilations up to 3, pads from none to past the kernel's
    reach (where the stride-1 input gradient cannot be the flipped forward)."""
    channels, multiplier = draw(st.integers(1, 19)), draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:
        k = (draw(st.integers(6, 9)), draw(st.integers(9, 11)))
    else:
        k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    extent = ConvGeometry(k, 1, 0, dilation).extent
    pad = tuple(draw(st.integers(0, e)) for e in extent)
    hw = tuple(draw(st.integers(max(e - 2 * p, 1), max(e - 2 * p, 1) + 24))
               for e, p in zip(extent, pad))
    return make_case(draw(st.integers(1, 2)), channels, hw, channels * multiplier, k,
                     stride=stride, pad=pad, dilation=dilation, group=channels,
                     bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def check_poisoned_outputs(kind, case, dtype):
    """The forward and the input gradient written into arrays filled with NaN: every element
    must be written."""
    x, w, b, geom, group = (a.astype(dtype) if isinstance(a, np.ndarray) else a for a in case)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    want = forward(x, w, b, geom=geom, group=group)
    y = np.full(want.shape, np.nan, dtype)
    assert conv2d_forward.impls[kind](x, w, b, geom=geom, group=group, out=y) is y
    np.testing.assert_allclose(y, want, **tol)
    dy = np.random.default_rng(6).standard_normal(y.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    got, _, _ = conv2d_backward.impls[kind](dy, x, w, geom=geom, group=group,
                                            need=(True, False, False), dx_out=dx)
    assert got is dx
    np.testing.assert_allclose(dx, backward(dy, x, w, geom=geom, group=group)[0], **tol)


DEPTHWISE_BLOCK_PINNED = {
    # nine channels: a whole block and a block of one lane
    "blocks_9_channels_stride2": make_case(2, 9, (14, 14), 9, 3, stride=2, pad=1, group=9),
    # MobileNet's last depthwise layer's shape, shrunk: 7x7 planes, eight whole blocks
    "blocks_7x7": make_case(2, 64, (7, 7), 64, 3, pad=1, group=64),
    # a channel multiplier of 3 at stride 2: the blocks scatter three filters per channel
    "blocks_multiplier_3": make_case(1, 5, (9, 11), 15, 3, stride=2, pad=1, group=5),
    # 9x11 taps (more than 49), dilated, pad past nothing
    "blocks_99_taps": make_case(1, 10, (12, 14), 10, (9, 11), pad=(4, 5), group=10),
    # pad past the kernel's reach at stride 1: no flipped forward for the input gradient
    "blocks_pad_past_kernel": make_case(2, 8, (5, 6), 8, 3, pad=3, group=8),
    # a 3x3 "same" plane 57 wide: no mask table for the row loops (57 / gcd(57, 16) > 16)
    "blocks_same_57": make_case(1, 8, (5, 57), 8, 3, pad=1, group=8),
    # 5x5 "same" and atrous "same" 40 wide: the blocks, not the row loops
    "blocks_same_5x5": make_case(1, 11, (6, 40), 11, 5, pad=2, group=11),
    "blocks_same_atrous_odd": make_case(1, 3, (9, 33), 3, 3, pad=6, dilation=6, group=3),
    # and the row loops' side of the rule: 3x3 "same" 48 and 64 wide
    "rows_same_48": make_case(1, 16, (4, 48), 16, 3, pad=1, group=16),
    "rows_same_64_multiplier": make_case(1, 4, (3, 64), 8, 3, pad=1, group=4),
}


@fast
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", DEPTHWISE_BLOCK_PINNED.values(), ids=DEPTHWISE_BLOCK_PINNED)
def test_depthwise_blocks_pinned(kind, dtype, case):
    check_fast_path(kind, case, dtype)
    check_poisoned_outputs(kind, case, dtype)


@fast
@settings(max_examples=60, deadline=None)
@given(case=depthwise_block_cases(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_depthwise_blocks_match_reference(kind, case, dtype):
    check_fast_path(kind, case, dtype)
    check_poisoned_outputs(kind, case, dtype)


# The direct stride-1 products (csrc/conv_gemm.cpp) on the padded input: forced at every stride-1
# convolution (mode 2) and turned off (mode 0), so both native paths meet the reference whatever
# the heuristic picks for a shape.
DIRECT_PINNED = {
    # more than 256 taps (two inner blocks) and more than 96 filters (two row blocks)
    "direct_blocks": make_case(2, 30, (9, 11), 100, 3, pad=1),
    # one micro tile for the whole batch: the filters are split between threads instead
    "direct_one_tile": make_case(1, 8, (5, 5), 40, 3, pad=1),
    # positions rounded up to whole tiles per image, tiles ending inside padded rows
    "direct_images_and_tiles": make_case(3, 5, (13, 13), 7, 3, pad=1),
    "direct_grouped_atrous": make_case(3, 8, (12, 10), 6, 3, pad=2, dilation=2, group=2),
    "direct_5x5_uneven_pad": make_case(2, 3, (8, 9), 4, 5, pad=(2, 1), bias=False),
    "direct_no_pad": make_case(2, 4, (7, 9), 5, (3, 2)),
    # more padding than the kernel reaches: the input gradient is no stride-1 convolution of dy
    "direct_pad_past_kernel": make_case(1, 2, (5, 5), 3, 3, pad=3),
    # rows of 40 positions: the filter gradient's inner blocks split padded rows
    "direct_long_rows": make_case(2, 6, (21, 40), 9, 3, pad=1),
    # the kept positions' product: two stretches of positions (tiles across images), and one
    # image whose panels of filters (3 of 32 or 5 of 16, the last one short) are split between
    # threads: only where there are fewer stretches than threads, so one micro tile of
    # positions (6; 20 positions make two stretches of 2 tiles instead)
    "kept_stretches": make_case(4, 8, (20, 20), 64, 3, pad=1),
    "kept_filter_ranges": make_case(1, 6, (4, 5), 70, 3, pad=1),
    "kept_filter_ranges_one_tile": make_case(1, 6, (2, 3), 70, 3, pad=1),
    # the kernel rows on the border skipped (KeptOrder): edge rows of several images in one
    # tile, runs across two inner blocks (300 taps), dilated rows at a stride, and whole rows
    # of outputs that read nothing but the border
    "kept_border_rows": make_case(3, 32, (7, 6), 33, 3, pad=(2, 1)),
    "kept_border_dilated_strided": make_case(2, 4, (11, 9), 8, 3, stride=2, pad=3,
                                             dilation=2),
    "kept_border_only": make_case(2, 3, (4, 4), 5, (3, 2), pad=(4, 1)),
    # 48-wide filter panels (6 x 48 micro tiles): 48 and 144 filters a group in the forward,
    # 48 input channels a group in the input gradient (CaffeNet conv2's)
    "kept_48_filters": make_case(2, 5, (8, 7), 48, 3, pad=1),
    "kept_144_filters_grouped": make_case(1, 4, (6, 9), 288, 3, pad=1, group=2),
    "kept_48_channels": make_case(2, 96, (7, 7), 64, 5, pad=2, group=2, bias=False),
}


@contextlib.contextmanager
def conv_direct(mode, chunk=None):
    """The native convolution's direct products in this mode (and padded-image budget)."""
    from minicnn.native import lib
    previous = lib.set_conv_direct(mode)
    previous_chunk = lib.set_conv_direct_chunk(chunk) if chunk else None
    try:
        yield
    finally:
        lib.set_conv_direct(previous)
        if previous_chunk:
            lib.set_conv_direct_chunk(previous_chunk)


direct_modes = pytest.mark.parametrize("mode", [2, 3, 0], ids=["direct", "kept", "packed"])


@fast
@direct_modes
@pytest.mark.parametrize("case", {**FAST_PINNED, **DIRECT_PINNED}.values(),
                         ids={**FAST_PINNED, **DIRECT_PINNED}.keys())
def test_direct_and_packed_products_pinned(kind, mode, case):
    with conv_direct(mode):
        check_fast_path(kind, case, np.float32)


@fast
@direct_modes
@given(case=conv_cases(max_hw=12))
def test_direct_and_packed_products_match_reference(kind, mode, case):
    with conv_direct(mode):
        check_fast_path(kind, case, np.float32)


@fast
@direct_modes
def test_direct_product_in_chunks_of_images(kind, mode):
    """Padded images taken a few at a time (here one: a budget of one float); the filter
    gradient adds each chunk's onto dw (kept_stretches: in 16 x 16 blocks, 64 filters)."""
    with conv_direct(mode, chunk=1):
        for name in ("direct_images_and_tiles", "direct_grouped_atrous", "plain",
                     "kept_stretches"):
            check_fast_path(kind, {**FAST_PINNED, **DIRECT_PINNED}[name], np.float32)


@fast
def test_direct_mode_is_checked(kind):
    from minicnn.native import lib
    with pytest.raises(ValueError, match="mode 0, 1, 2 or 3"):
        lib.set_conv_direct(4)


# --- Winograd F(2x2, 3x3) and F(2x2, 5x5) (csrc/winograd.cpp) -----------------------------------

WINOGRAD_PINNED = {
    # 13x13: tile rows of 7 (the AVX-512 transforms take two at once), grouped, blocks of 32
    # tiles that end mid-row and mid-image
    "wino_13x13_grouped": make_case(3, 8, (13, 13), 12, 3, pad=1, group=2),
    # tile rows of 15 (one AVX-512 input transform, one output-gradient one) and of 33 (15 + 15
    # + 3 and 16 + 16 + 1); even output width
    "wino_rows_of_15": make_case(2, 5, (9, 30), 7, 3, pad=1),
    "wino_rows_of_33": make_case(1, 2, (5, 65), 3, 3, pad=1),
    # tile rows of 8: the output gradient's AVX-512 transform takes two rows at once (16 tiles)
    "wino_rows_of_8": make_case(3, 3, (6, 16), 4, 3, pad=1),
    # no padding and a wider one, different per axis; odd output sizes drop half a tile
    "wino_pad_0_2": make_case(2, 4, (10, 17), 6, 3, pad=(0, 2)),
    "wino_pad_2_0": make_case(2, 3, (4, 7), 5, 3, pad=(2, 0), bias=False),
    "wino_one_pixel": make_case(2, 3, (1, 1), 2, 3, pad=1),
    "wino_no_images": make_case(0, 3, (5, 5), 2, 3, pad=1),
    # 40 filters (6 full filter panels and a partial one) over 108 tiles (3 full blocks and 12);
    # 13 channels a group (a partial channel panel in the input gradient)
    "wino_40_filters": make_case(3, 6, (12, 11), 40, 3, pad=1, bias=False),
    "wino_13_channels": make_case(2, 39, (8, 9), 6, 3, pad=1, group=3),
    # 5x5 by F(2x2, 5x5), 6x6 windows: tile rows of 6 (the AVX-512 input transform takes two
    # at once; not 7, whose windows span 18 columns), grouped; rows of 14 (one AVX-512 input
    # transform; the input gradient's adjoint in chunks of 6 + 6 + 2) and of 15 (14 + 1),
    # unpadded on the right so the last tile reads image columns; no padding, a partial
    # channel panel (13 a group); 40 filters; pads differing per axis
    "wino_5x5_grouped": make_case(2, 8, (9, 11), 6, 5, pad=2, group=2),
    "wino_5x5_rows_of_7": make_case(2, 3, (9, 17), 4, 5),
    "wino_5x5_rows_of_14": make_case(2, 4, (7, 27), 5, 5, pad=2),
    "wino_5x5_rows_of_15": make_case(1, 3, (6, 34), 4, 5, pad=(2, 0), bias=False),
    "wino_5x5_no_pad": make_case(3, 26, (12, 13), 6, 5, group=2),
    "wino_5x5_40_filters": make_case(2, 5, (10, 10), 40, 5, pad=(1, 3)),
    # other kernels as 3x3 pieces (taps past the kernel's edge zero): 7x7 (9 pieces), 4x4 and
    # 2x2 and 1x1 (one piece, mostly zeros), non-square
    "wino_7x7": make_case(1, 3, (8, 9), 4, 7, pad=3),
    "wino_4x4_2x2_1x1": make_case(2, 3, (6, 7), 5, (4, 2), pad=(1, 0), bias=False),
    "wino_1x1": make_case(2, 4, (5, 3), 3, 1),
    "wino_5x1_wide": make_case(1, 2, (7, 33), 3, (5, 1), pad=(2, 0)),
    # dilated, by Winograd on the "space to batch" phases (conv.py, _atrous_winograd): ASPP's
    # same-size 3x3 (rate 2 on 9x11: phases of 6 and 5 rows and columns, four calls); rates and
    # pads differing per axis, pads not multiples of the rate; no padding; fewer outputs than
    # the rate (residues 2-4 make none: their input rows get a zero gradient); grouped;
    # dilated 5x5 (F(2x2, 5x5)) and 7x7 (3x3 pieces)
    "atrous_rate_2": make_case(2, 5, (9, 11), 4, 3, pad=2, dilation=2),
    "atrous_rates_3_2": make_case(2, 3, (10, 7), 5, 3, pad=(1, 3), dilation=(3, 2)),
    "atrous_no_pad": make_case(1, 4, (9, 12), 3, 3, dilation=(2, 4), bias=False),
    "atrous_few_outputs": make_case(2, 3, (4, 6), 2, 3, pad=4, dilation=5),
    "atrous_grouped": make_case(2, 6, (8, 8), 4, 3, pad=3, dilation=3, group=2),
    "atrous_5x5": make_case(1, 3, (11, 9), 4, 5, pad=4, dilation=2),
    "atrous_7x7": make_case(1, 2, (13, 14), 3, 7, pad=(3, 6), dilation=(1, 2)),
}


@contextlib.contextmanager
def winograd(mode):
    """minicnn.ops.conv.WINOGRAD_MODE set to ``mode`` inside the block (hypothesis tests take
    no function-scoped monkeypatch)."""
    import minicnn.ops.conv as conv_module
    previous, conv_module.WINOGRAD_MODE = conv_module.WINOGRAD_MODE, mode
    try:
        yield
    finally:
        conv_module.WINOGRAD_MODE = previous


def check_winograd(case):
    """Every pass by Winograd, against the float64 reference to a few float32 roundings of
    the largest value (outputs poisoned first: an unwritten value is NaN). F(2x2, 5x5)'s
    larger transform coefficients round more, and in proportion to the magnitudes summed
    rather than to the sum (a float32 dot product's error bound): its passes are held to
    4e-6 (6e-6 for the filter gradient) of the largest value of the same convolution on |x|
    and |w| (|dy| with |w| or |x| backward). Over 1,500 drawn 5x5 cases the worst was
    1.5e-6 / 1.6e-6 / 2.0e-6 of that, while of the largest output it reached 9.1e-6 (one
    channel, small outputs); F(2x2, 3x3)'s worst was 1.4e-6 of the largest output."""
    import minicnn.ops.conv as conv_module
    x, w, b, geom, group = (a.astype(np.float32) if isinstance(a, np.ndarray) else a
                            for a in case)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want_y = forward(x64, w64, None if b is None else b.astype(np.float64), geom=geom,
                     group=group)
    dy = np.random.default_rng(7).standard_normal(want_y.shape).astype(np.float32)
    want = (want_y, *backward(dy.astype(np.float64), x64, w64, geom=geom, group=group)[:2])
    y = np.full(want_y.shape, np.nan, np.float32)
    conv2d_forward.impls["cpu"](x, w, b, geom=geom, group=group, out=y)
    dx = np.full(x.shape, np.nan, np.float32)
    _, dw, _ = conv2d_backward.impls["cpu"](dy, x, w, geom=geom, group=group, dx_out=dx)
    five = geom.kernel == (5, 5)
    if five:   # its roundings scale with the magnitudes summed: |x| * |w| (|dy| with |w|, |x|)
        size = (forward(np.abs(x64), np.abs(w64), None, geom=geom, group=group),
                *backward(np.abs(dy).astype(np.float64), np.abs(x64), np.abs(w64), geom=geom,
                          group=group)[:2])
    else:
        size = want
    for name, got, ref, magnitude in zip(("y", "dx", "dw"), (y, dx, dw), want, size):
        scale = max(1.0, np.abs(magnitude).max(initial=0.0))
        error = np.abs(got - ref).max(initial=0.0)
        bound = (6e-6 if name == "dw" else 4e-6) if five else 2e-6
        assert np.all(np.isfinite(got)), name
        assert error <= bound * scale, (name, error, scale)
    runs = conv_module._atrous_winograd if geom.dilation != (1, 1) else conv_module._winograd
    assert all(runs(x.shape, w.shape, group, geom, np.float32, part)
               for part in ("forward", "data", "filter"))


@fast
@pytest.mark.parametrize("case", WINOGRAD_PINNED.values(), ids=WINOGRAD_PINNED.keys())
def test_winograd_pinned(kind, case, monkeypatch):
    from minicnn.native import lib
    calls = []
    for name in ("winograd_forward", "winograd_backward_data", "winograd_backward_filter"):
        monkeypatch.setattr(lib, name, lambda *a, _f=getattr(lib, name), _n=name:
                            calls.append(_n) or _f(*a))
    with winograd("2"):
        check_winograd(case)
    assert sorted(set(calls)) == ["winograd_backward_data", "winograd_backward_filter",
                                  "winograd_forward"]


@st.composite
def winograd_cases(draw, sizes=(3, 3, 5, 1, 2, 4, 6, 7)):
    group = draw(st.integers(1, 3))
    kernel = (draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes)))
    pad = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h, w = (draw(st.integers(max(1, k - 2 * p), 20)) for k, p in zip(kernel, pad))
    return make_case(draw(st.integers(1, 3)), group * draw(st.integers(1, 9)), (h, w),
                     group * draw(st.integers(1, 9)), kernel, pad=pad, group=group,
                     bias=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


@fast
@given(case=winograd_cases())
def test_winograd_matches_reference(kind, case):
    with winograd("2"):
        check_winograd(case)


@fast
@given(case=winograd_cases(sizes=(5,)))
def test_winograd_5x5_matches_reference(kind, case):
    """F(2x2, 5x5) on drawn shapes (the test above draws 5x5 in one case of 64)."""
    with winograd("2"):
        check_winograd(case)


@st.composite
def atrous_cases(draw):
    """Dilated stride-1 convolutions: rates 1-6 per axis (at least one above 1), any pad."""
    group = draw(st.integers(1, 2))
    kernel = (draw(st.sampled_from((3, 3, 5, 2))), draw(st.sampled_from((3, 3, 5, 1))))
    dilation = (draw(st.integers(1, 6)), draw(st.integers(2, 6)))
    if draw(st.booleans()):
        dilation = dilation[::-1]
    pad = (draw(st.integers(0, 7)), draw(st.integers(0, 7)))
    low = [max(1, d * (k - 1) + 1 - 2 * p) for k, p, d in zip(kernel, pad, dilation)]
    h, w = (draw(st.integers(lo, max(lo, 20))) for lo in low)
    channels = group * draw(st.integers(1 if group == 1 else 2, 5))     # not depthwise
    return make_case(draw(st.integers(1, 3)), channels, (h, w),
                     group * draw(st.integers(1, 5)), kernel, pad=pad, dilation=dilation,
                     group=group, bias=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


@fast
@given(case=atrous_cases())
def test_atrous_winograd_matches_reference(kind, case):
    with winograd("2"):
        check_winograd(case)


@fast
@pytest.mark.parametrize("name", ["atrous_rate_2", "atrous_few_outputs", "atrous_grouped"])
def test_atrous_winograd_single_passes(kind, name):
    """conv2d_backward_data (Deconvolution's forward) and conv2d_backward_filter alone take the
    split as the whole backward does."""
    x, w, _, geom, group = (a.astype(np.float32) if isinstance(a, np.ndarray) else a
                            for a in WINOGRAD_PINNED[name])
    dy = np.random.default_rng(2).standard_normal(
        (x.shape[0], w.shape[0], *geom.out_hw(*x.shape[2:]))).astype(np.float32)
    dx_ref, dw_ref, _ = backward(dy.astype(np.float64), x.astype(np.float64),
                                 w.astype(np.float64), geom=geom, group=group)
    with winograd("2"):
        dx = conv2d_backward_data.impls[kind](dy, w, x_hw=x.shape[2:], geom=geom, group=group)
        dw = conv2d_backward_filter.impls[kind](dy, x, geom=geom, group=group)
    for got, ref in ((dx, dx_ref), (dw, dw_ref)):
        assert np.abs(got - ref).max() <= 2e-6 * max(1.0, np.abs(ref).max())


def test_atrous_phase_runs():
    """The split of one axis worked out by hand. 33 rows padded by 4 at rate 4: residues 0-3
    read 11, 10, 10, 10 padded rows and make 9, 8, 8, 8 outputs (5 tiles against 4: two
    runs); at rate 6 and pad 6, 8, 8, 8, 7, 7, 7 rows and 6 or 5 outputs, 3 tiles each (one
    run, at 8 rows); 4 rows padded by 4 at rate 5 make 2 outputs (residues 0 and 1 only)."""
    import minicnn.ops.conv as conv_module
    assert conv_module._phase_runs(33, 4, 4, 3) == [(0, 1, 11, 9), (1, 4, 10, 8)]
    assert conv_module._phase_runs(33, 6, 6, 3) == [(0, 6, 8, 6)]
    assert conv_module._phase_runs(4, 4, 5, 3) == [(0, 2, 3, 1)]
    assert conv_module._phase_runs(9, 0, 2, 3) == [(0, 1, 5, 3), (1, 2, 4, 2)]
    # taps reading the image: 33 outputs at rate 18 (pad 18) read 15 + 33 + 15 of them
    assert conv_module._taps_inside(33, 18, 18, 3, 33) == 63
    assert conv_module._taps_inside(33, 2, 2, 3, 33) == 95


@fast
def test_atrous_winograd_runs_where_it_measured_faster(kind, monkeypatch):
    """The default: ASPP's 3x3 at rates 2, 4 and 6 on 33x33 maps with 256 channels takes the
    split in every pass; rates 12 and 18 (whose taps mostly read padding, which the direct
    product skips), small maps, fewer than 128 channels or filters a group, other kernels,
    strides, depthwise, float64 and mode 0 do not. The filter gradient keeps _winograd's limit
    on one image's transforms (the phases of one image counted as images)."""
    import minicnn.ops.conv as conv_module
    from minicnn.native import lib
    monkeypatch.setattr(conv_module, "WINOGRAD_MODE", "1")
    parts = ("forward", "data", "filter")

    def takes(rate, x_shape=(8, 256, 33, 33), w_shape=(256, 256, 3, 3), group=1, stride=1,
              dtype=np.float32):
        geom = ConvGeometry(w_shape[2:], stride, rate, rate)
        return [conv_module._atrous_winograd(x_shape, w_shape, group, geom, dtype, p)
                for p in parts]

    for rate in (2, 4, 6):
        assert takes(rate) == [True] * 3, rate
    assert takes(12) == [False] * 3 and takes(18) == [False] * 3
    assert takes(2, (8, 256, 17, 17)) == [False] * 3     # 648 tiles in 4 calls: slower
    assert takes(2, (4, 128, 65, 65), (128, 128, 3, 3)) == [True] * 2 + [False]   # 4.7 MB
    assert takes(2, (8, 64, 33, 33), (64, 64, 3, 3)) == [False] * 3
    wide = lib.gemm_kernel().startswith("avx512")   # AVX2's tiles: the filter gradient direct
    assert takes(2, (8, 256, 33, 33), (256, 128, 3, 3), group=2) == [True] * 2 + [wide]
    assert takes(2, (8, 128, 33, 33), (128, 128, 3, 3)) == [True] * 2 + [wide]  # 128 channels
    assert takes(2, (8, 256, 33, 33), (256, 64, 3, 3), group=4) == [False] * 3   # 64 a group
    assert takes(2, w_shape=(256, 256, 5, 5)) == [False] * 3
    assert takes(2, stride=2) == [False] * 3
    assert takes(2, (8, 256, 33, 33), (256, 1, 3, 3), group=256) == [False] * 3
    assert takes(2, dtype=np.float64) == [False] * 3
    assert takes(1) == [False] * 3                          # undilated: _winograd's business
    monkeypatch.setattr(conv_module, "WINOGRAD_MODE", "0")
    assert takes(2) == [False] * 3


@fast
def test_phases_gather_and_scatter(kind):
    """The split's copies against NumPy slicing: phase (ia, ib) of the runs from residues
    (a0, b0) holds rows a0 + ia, a0 + ia + dh, ... of the planes shifted by the offset, zeros
    outside; scattering the images back restores the planes where the phases cover them."""
    from minicnn.native import lib
    rng = np.random.default_rng(3)
    planes = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    count_h, count_w, dh, dw, a0, b0, off_h, off_w = 2, 3, 3, 4, 1, 0, 2, 1
    size_h, size_w = 4, 3
    images = np.full((count_h * count_w * 2, 3, size_h, size_w), np.nan, np.float32)
    split = (count_h, count_w, dh, dw, a0, b0, off_h, off_w)
    lib.phases_gather(planes, images, split)
    padded = np.zeros((2, 3, 7 + 20, 9 + 20), np.float32)
    padded[:, :, off_h:off_h + 7, off_w:off_w + 9] = planes
    want = np.stack([padded[:, :, a0 + ia::dh, b0 + ib::dw][:, :, :size_h, :size_w]
                     for ia in range(count_h) for ib in range(count_w)])
    np.testing.assert_array_equal(images, want.reshape(images.shape))
    back = np.full(planes.shape, -1.0, np.float32)
    lib.phases_scatter(images, back, split)
    covered = np.zeros(padded.shape, bool)
    for ia in range(count_h):
        for ib in range(count_w):
            covered[:, :, a0 + ia::dh, b0 + ib::dw][:, :, :size_h, :size_w] = True
    covered = covered[:, :, off_h:off_h + 7, off_w:off_w + 9]
    np.testing.assert_array_equal(back[covered], planes[covered])
    assert np.all(back[~covered] == -1.0) and covered.sum() > 0 and (~covered).sum() > 0
    with pytest.raises(ValueError, match="count_h \\* count_w \\* N"):
        lib.phases_gather(planes, images[1:], split)
    with pytest.raises(ValueError, match="split"):
        lib.phases_scatter(images, back, split[:7])


@fast
def test_winograd_filter_gradient_in_chunks_of_one_image(kind):
    """The filter gradient holds a chunk of images' transforms at a time (here one image: a
    budget of one byte) and adds the chunks' products up."""
    from minicnn.native import lib
    previous = lib.set_winograd_filter_chunk(1)
    try:
        with winograd("2"):
            for name in ("wino_13x13_grouped", "wino_5x5_grouped", "wino_40_filters"):
                check_winograd(WINOGRAD_PINNED[name])
    finally:
        lib.set_winograd_filter_chunk(previous)
    with pytest.raises(ValueError, match="bytes >= 1"):
        lib.set_winograd_filter_chunk(0)


@fast
def test_winograd_filter_gradient_with_a_shorter_last_chunk(kind):
    """Chunks of two (then three) images over a batch of five: the last chunk holds only the
    images left, and reads nothing past the batch (x and dy are the first five images of
    larger arrays, whose images beyond are 1e3)."""
    import minicnn.ops.conv as conv_module
    from minicnn.native import lib
    rng = np.random.default_rng(9)
    n, c, f, geom = 5, 4, 4, ConvGeometry(3, 1, 1)
    x_all = np.full((n + 3, c, 6, 6), 1e3, np.float32)
    dy_all = np.full((n + 3, f, 6, 6), 1e3, np.float32)
    x_all[:n], dy_all[:n] = rng.standard_normal((2, n, c, 6, 6))
    x, dy = x_all[:n], dy_all[:n]
    want = backward(dy.astype(np.float64), x.astype(np.float64),
                    np.zeros((f, c, 3, 3)), geom=geom)[1]
    per_image = 16 * (c + f) * 9 * 4     # bytes: 16 elements x (c + f) rows x 9 tiles, float32
    previous = lib.set_winograd_filter_chunk(per_image)
    try:
        with winograd("2"):
            assert conv_module._winograd(x.shape, (f, c, 3, 3), 1, geom, np.float32, "filter")
            for images in (2, 3):
                lib.set_winograd_filter_chunk(images * per_image)
                dw = conv2d_backward_filter.impls[kind](dy, x, geom=geom)
                np.testing.assert_allclose(dw, want, rtol=1e-4, atol=1e-3, err_msg=images)
    finally:
        lib.set_winograd_filter_chunk(previous)


@fast
def test_winograd_runs_where_it_measured_faster(kind, monkeypatch):
    """The default (MINICNN_CONV_WINOGRAD=1): CaffeNet's conv3-5 and 5x5 conv2 at batch 16 and
    LeNet's conv2 at batch 64 take it in every pass (with AVX2's 16-wide tiles, the 3x3 filter
    gradient only from 256 channels, or 128 on maps of 28x28 and up, and no 3x3 pass under 192
    tiles); few tiles, other geometries, float64 and mode 0 do not."""
    import minicnn.ops.conv as conv_module
    from minicnn.native import lib
    monkeypatch.setattr(conv_module, "WINOGRAD_MODE", "1")
    same = ConvGeometry(3, 1, 1)
    parts = ("forward", "data", "filter")

    def takes(x_shape, w_shape, group=1, geom=same, dtype=np.float32):
        return [conv_module._winograd(x_shape, w_shape, group, geom, dtype, p) for p in parts]

    wide = lib.gemm_kernel().startswith("avx512")   # AVX2's tiles: fewer filter gradients
    assert takes((16, 256, 13, 13), (384, 256, 3, 3)) == [True, True, True]         # conv3
    assert takes((16, 384, 13, 13), (384, 192, 3, 3), group=2) == [True, True, wide]  # conv4
    assert takes((16, 384, 13, 13), (256, 192, 3, 3), group=2) == [True, True, wide]  # conv5
    assert takes((8, 64, 28, 28), (64, 64, 3, 3)) == [True, True, wide]
    assert takes((8, 128, 14, 14), (128, 128, 3, 3)) == [True, True, wide]
    assert takes((8, 128, 28, 28), (128, 128, 3, 3)) == [True, True, True]   # 196 tiles an image
    assert takes((8, 256, 14, 14), (256, 256, 3, 3)) == [True, True, True]   # 256 channels
    assert takes((8, 256, 7, 7), (256, 256, 3, 3)) == [wide, wide, False]    # 128 tiles
    assert takes((16, 256, 7, 7), (256, 256, 3, 3)) == [True, True, True]    # 256 tiles
    assert takes((8, 32, 56, 56), (32, 32, 3, 3)) == [True, True, False]   # filter: < 64 ch
    assert takes((8, 64, 56, 56), (64, 64, 3, 3)) == [True, True, False]   # 6.4 MB an image
    assert takes((1, 64, 300, 300), (64, 64, 3, 3))[2] is False  # an image: 184 MB of transforms
    assert takes((1, 256, 7, 7), (256, 256, 3, 3)) == [False] * 3                   # 16 tiles
    assert takes((1, 64, 28, 28), (64, 64, 3, 3))[1] == (lib.num_threads() == 1)   # 1 image
    assert takes((16, 256, 13, 13), (384, 256, 3, 3), dtype=np.float64) == [False] * 3
    five = ConvGeometry(5, 1, 2)
    assert takes((16, 96, 27, 27), (256, 48, 5, 5), group=2, geom=five) == [True] * 3
    assert takes((64, 20, 12, 12), (50, 20, 5, 5), geom=ConvGeometry(5, 1, 0)) == [True] * 3
    assert takes((4, 48, 14, 14), (64, 48, 5, 5), geom=five) == [False] * 3       # 196 tiles
    assert takes((1, 96, 27, 27), (256, 48, 5, 5), group=2, geom=five) == [False] * 3
    assert takes((16, 64, 13, 13), (64, 64, 7, 7), geom=ConvGeometry(7, 1, 3)) == [False] * 3
    assert takes((16, 256, 26, 26), (384, 256, 3, 3), geom=ConvGeometry(3, 2, 1)) == [False] * 3
    assert takes((16, 256, 26, 26), (384, 256, 3, 3),
                 geom=ConvGeometry(3, 1, 2, 2)) == [False] * 3                      # atrous
    assert takes((16, 256, 13, 13), (256, 1, 3, 3), group=256) == [False] * 3       # depthwise
    monkeypatch.setattr(conv_module, "WINOGRAD_MODE", "0")
    assert takes((16, 256, 13, 13), (384, 256, 3, 3)) == [False] * 3


@fast
def test_winograd_checks_its_arguments(kind):
    from minicnn.native import lib
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="output size"):
        lib.winograd_forward(x, np.zeros((2, 4, 5, 5), np.float32), None,
                             np.zeros((1, 2, 5, 5), np.float32), 1, 1, 1)
    with pytest.raises(ValueError, match="output size"):
        lib.winograd_forward(x, np.zeros((2, 4, 3, 3), np.float32), None,
                             np.zeros((1, 2, 4, 4), np.float32), 1, 1, 1)
    with pytest.raises(ValueError, match="split into the groups"):
        lib.winograd_backward_data(np.zeros((1, 2, 5, 5), np.float32),
                                   np.zeros((2, 4, 3, 3), np.float32), x, 2, 1, 1)


@fast
def test_fast_path_in_chunks_of_one_image(kind, monkeypatch):
    """A batch whose columns exceed the scratch budget goes through in several chunks (float64
    runs the chunked im2col + BLAS loop, whose filter gradient adds up over the chunks)."""
    import minicnn.ops.conv as conv_module
    monkeypatch.setattr(conv_module, "COLS_BUDGET", 1)
    for name in ("plain", "grouped", "pointwise", "atrous_same"):
        for dtype in (np.float32, np.float64):
            check_fast_path(kind, FAST_PINNED[name], dtype)


@fast
def test_fast_path_takes_strided_views_and_leaves_inputs_alone(kind):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, 9, 12)).astype(np.float32)[:, ::2, :, ::2]   # a view
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32).transpose(0, 1, 3, 2)
    b = np.arange(4, dtype=np.float32)
    geom = ConvGeometry(3, 1, 1)
    copies = [a.copy() for a in (x, w, b)]
    np.testing.assert_allclose(conv2d_forward.impls[kind](x, w, b, geom=geom),
                               forward(x, w, b, geom=geom), rtol=1e-5, atol=1e-5)
    dy = np.ones((2, 4, 9, 6), np.float32)[..., ::1]
    for got, want in zip(conv2d_backward.impls[kind](dy, x, w, geom=geom),
                         backward(dy, x, w, geom=geom)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


@fast
def test_fast_path_falls_back_on_mixed_dtypes(kind):
    x, w = np.ones((1, 2, 4, 4), np.float32), np.ones((3, 2, 3, 3), np.float64)
    y = conv2d_forward.impls[kind](x, w, None, geom=ConvGeometry(3))
    np.testing.assert_array_equal(y, forward(x, w, None, geom=ConvGeometry(3)))


@fast
def test_fast_path_shape_errors_are_layer_errors(kind):
    with pytest.raises(LayerError, match="must both be divisible by group"):
        conv2d_forward.impls[kind](np.zeros((1, 3, 5, 5), np.float32),
                                   np.zeros((2, 3, 3, 3), np.float32), None,
                                   geom=ConvGeometry(3), group=2)
    with pytest.raises(LayerError, match="dy of shape"):
        conv2d_backward.impls[kind](np.zeros((1, 2, 4, 4), np.float32),
                                    np.zeros((1, 1, 5, 5), np.float32),
                                    np.zeros((2, 1, 3, 3), np.float32), geom=ConvGeometry(3))


@fast
def test_fast_path_backward_data_in_several_chunks(kind):
    """A batch whose window columns exceed the native path's scratch budget (8M floats) goes
    through col2im in chunks of images."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((4, 16, 3, 3)).astype(np.float32)
    geom = ConvGeometry(3, 1, 1)
    dy = rng.standard_normal((64, 4, 32, 32)).astype(np.float32)
    got = conv2d_backward_data.impls[kind](dy, w, x_hw=(32, 32), geom=geom)
    want = conv2d_backward_data.impls["ref"](dy, w, x_hw=(32, 32), geom=geom)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("winograd", ["1", "2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_adds_into_the_parameter_diffs(kind, winograd, dtype, monkeypatch):
    """With dw_acc and db_acc (a layer's parameter diffs, which Caffe accumulates over
    iter_size) the gradients are added onto what they hold, and those arrays are returned, on
    every path: the kernels that add into dw_acc in place (GEMM, direct, Winograd, atrous
    phases, InnerProduct's for 1x1 maps, few positions) and the depthwise one, which writes."""
    import minicnn.ops.conv as conv_module
    monkeypatch.setattr(conv_module, "WINOGRAD_MODE", winograd)     # "2": Winograd wherever
    cases = dict(FAST_PINNED, **WINOGRAD_PINNED)
    rng = np.random.default_rng(8)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, case in cases.items():
        x, w, b, geom, group = (a.astype(dtype) if isinstance(a, np.ndarray) else a
                                for a in case)
        y = conv2d_forward.impls[kind](x, w, b, geom=geom, group=group)
        dy = rng.standard_normal(y.shape).astype(dtype)
        _, dw, db = conv2d_backward.impls[kind](dy, x, w, geom=geom, group=group)
        dw_acc = rng.standard_normal(w.shape).astype(dtype)
        db_acc = rng.standard_normal(w.shape[0]).astype(dtype)
        dw_start, db_start = dw_acc.copy(), db_acc.copy()
        _, dw_got, db_got = conv2d_backward.impls[kind](dy, x, w, geom=geom, group=group,
                                                        dw_acc=dw_acc, db_acc=db_acc)
        assert dw_got is dw_acc and db_got is db_acc, name
        np.testing.assert_allclose(dw_acc, dw_start + dw, err_msg=name, **tol)
        np.testing.assert_allclose(db_acc, db_start + db, err_msg=name, **tol)


@pytest.mark.skipif("cpu" not in conv2d_forward.impls, reason="minicnn._native was not built")
@pytest.mark.parametrize("gemm_kernel", ["avx2", "generic"])
def test_every_gemm_micro_kernel_matches_the_reference(gemm_kernel):
    """The GEMM picks the widest micro-kernel the CPU has; the narrower ones (what other CPUs
    get) run here in a subprocess and must agree too (convolutions and InnerProduct: a few
    backward cases, and every edge case of tests/ops/test_inner_product.py)."""
    code = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, 'tests/ops')\n"
        "from minicnn.native import lib\n"
        f"assert lib.gemm_kernel().startswith({gemm_kernel!r}), lib.gemm_kernel()\n"
        "import test_conv as t\n"
        "for name, case in t.FAST_PINNED.items():\n"
        "    t.check_fast_path('cpu', case, np.float32)\n"
        "lib.set_conv_direct(2)\n"                  # the direct products' kernels too
        "for name, case in dict(t.FAST_PINNED, **t.DIRECT_PINNED).items():\n"
        "    t.check_fast_path('cpu', case, np.float32)\n"
        "lib.set_conv_direct(1)\n"
        "import minicnn.ops.conv as c\n"        # Winograd's portable transforms
        "c.WINOGRAD_MODE = '2'\n"
        "for name, case in t.WINOGRAD_PINNED.items():\n"
        "    t.check_winograd(case)\n"
        "c.WINOGRAD_MODE = '1'\n"
        "from minicnn.ops.inner_product import inner_product_backward as ip\n"
        "rng = np.random.default_rng(0)\n"
        "for m, k, n, tr in [(16, 70, 45, False), (16, 70, 45, True), (7, 300, 100, False),\n"
        "                    (70, 50, 40, False)]:\n"
        "    x = rng.standard_normal((m, k)).astype(np.float32)\n"
        "    w = rng.standard_normal((k, n) if tr else (n, k)).astype(np.float32)\n"
        "    dy = rng.standard_normal((m, n)).astype(np.float32)\n"
        "    got, want = (ip.impls[kind](dy, x, w, transpose=tr) for kind in ('cpu', 'ref'))\n"
        "    for g, r in zip(got, want):\n"
        "        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3)\n"
        "import test_inner_product as ti\n"     # InnerProduct's edges, both ways round
        "for m, k, n in ti.EDGE_CASES:\n"
        "    for tr in (False, True):\n"
        "        ti.test_fast_kernels_at_their_block_edges('cpu', m, k, n, tr)\n"
        "print('ok')\n")
    assert "ok" in run_with_kernel(code, gemm_kernel)


@pytest.mark.skipif("cpu" not in conv2d_forward.impls, reason="minicnn._native was not built")
def test_depthwise_3x3_vector_loops_agree_to_the_bit():
    """csrc/depthwise.cpp's 3x3 masked loops, AVX-512 (four chunks of 16 at a time), AVX2 (two)
    and the portable one (two, in the widest clone GCC built for this CPU), sum each output in
    the same order with fused multiply-adds: the same bits whichever runs
    (MINICNN_GEMM_KERNEL narrows it). On "same" planes whose interior leaves the wider loops
    a pair of chunks or none (the portable pair was a lambda compiled for the default target,
    unfused: other bits); forward, input and filter gradients, a channel multiplier."""
    import os
    import tempfile
    code = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, 'tests/ops')\n"
        "import test_conv as t\n"
        "from minicnn.ops.conv import conv2d_forward, conv2d_backward\n"
        "out = {}\n"
        # (H, W): interior chunks (W (H - 2) - 2) // 16 = 5, 8, 13, 4, 9, 5, 11, 27, 0
        "for i, (h, w, m) in enumerate([(4, 48, 1), (5, 48, 2), (6, 56, 1), (7, 16, 3),\n"
        "                               (6, 40, 1), (5, 32, 2), (6, 48, 1), (9, 64, 2),\n"
        "                               (7, 7, 1)]):\n"
        "    x, wt, b, geom, group = t.make_case(2, 3, (h, w), 3 * m, 3, pad=1, group=3,\n"
        "                                        seed=i)\n"
        "    x, wt, b = (a.astype(np.float32) for a in (x, wt, b))\n"
        "    y = conv2d_forward.impls['cpu'](x, wt, b, geom=geom, group=group)\n"
        "    dy = np.random.default_rng(i).standard_normal(y.shape).astype(np.float32)\n"
        "    dx, dw = conv2d_backward.impls['cpu'](dy, x, wt, geom=geom, group=group,\n"
        "                                          need=(True, True, False))[:2]\n"
        "    out[f'y{i}'], out[f'dx{i}'], out[f'dw{i}'] = y, dx, dw\n"
        "np.savez(sys.argv[1], **out)\n")
    results = []
    for kernel in (None, "avx2", "generic"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.npz")
            run_with_kernel(code, kernel, path)
            with np.load(path) as data:
                results.append({name: data[name] for name in data.files})
    widest = results[0]
    for other, kernel in zip(results[1:], ("avx2", "generic")):
        for name in widest:
            np.testing.assert_array_equal(widest[name].view(np.int32),
                                          other[name].view(np.int32), err_msg=f"{kernel} {name}")
