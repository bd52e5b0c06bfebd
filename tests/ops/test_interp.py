"""Interp op (the DeepLab/PSPNet fork's corner-aligned bilinear resize): output-size rules, hand
examples, a naive per-pixel loop, the adjoint, finite differences and cropping pads."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.ops.interp import interp_backward, interp_forward, interp_output_hw
from minicnn.testing import numerical_grad

forward, backward = interp_forward.impls["ref"], interp_backward.impls["ref"]


def naive_interp(x, out_hw, pad_beg=0, pad_end=0):
    """The fork's caffe_cpu_interp2, one output pixel at a time (in float64)."""
    n_img, c, h, w = x.shape
    h1, w1 = h + pad_beg + pad_end, w + pad_beg + pad_end
    h2, w2 = out_hw
    rh = (h1 - 1) / (h2 - 1) if h2 > 1 else 0.0
    rw = (w1 - 1) / (w2 - 1) if w2 > 1 else 0.0
    y = np.zeros((n_img, c, h2, w2))
    for i in range(h2):
        src_h = rh * i
        i0 = int(src_h)
        step_h = 1 if i0 < h1 - 1 else 0
        lh = src_h - i0
        for j in range(w2):
            src_w = rw * j
            j0 = int(src_w)
            step_w = 1 if j0 < w1 - 1 else 0
            lw = src_w - j0
            r, q = i0 - pad_beg, j0 - pad_beg
            y[:, :, i, j] = ((1 - lh) * ((1 - lw) * x[:, :, r, q] + lw * x[:, :, r, q + step_w])
                             + lh * ((1 - lw) * x[:, :, r + step_h, q]
                                     + lw * x[:, :, r + step_h, q + step_w]))
    return y


# --- output size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hw, fields, expected", [
    ((5, 6), {"zoom_factor": 2}, (9, 11)),                 # H + (H - 1)(z - 1)
    ((5, 6), {"zoom_factor": 1}, (5, 6)),
    ((33, 17), {"zoom_factor": 8}, (257, 129)),            # DeepLab: 33 -> 257
    ((5, 6), {"shrink_factor": 2}, (3, 3)),                # (H - 1) // s + 1
    ((513, 512), {"shrink_factor": 8}, (65, 64)),
    ((5, 6), {"shrink_factor": 2, "zoom_factor": 3}, (7, 7)),   # shrink first, then zoom
    ((5, 6), {"height": 2, "width": 10}, (2, 10)),
    ((5, 6), {"size_hw": (4, 1)}, (4, 1)),                 # a second bottom's H, W
    ((7, 8), {"zoom_factor": 2, "pad_beg": -1, "pad_end": -2}, (7, 9)),   # on H_eff = 4, W_eff 5
    ((7, 8), {"shrink_factor": 2, "pad_beg": -1}, (3, 4)),
    ((7, 8), {"height": 3, "width": 3, "pad_end": -5}, (3, 3)),
])
def test_output_size_rules(hw, fields, expected):
    assert interp_output_hw(*hw, **fields) == expected


@pytest.mark.parametrize("fields, match", [
    ({"zoom_factor": 2, "pad_beg": 1}, "only pad_beg <= 0 and pad_end <= 0 .* got pad_beg 1"),
    ({"zoom_factor": 2, "pad_end": 2}, "pad_end 2"),
    ({"zoom_factor": 2, "pad_beg": -3, "pad_end": -2}, "crops the 5x6 input to 0x1"),
    ({"zoom_factor": 0}, "zoom_factor must be >= 1, got 0"),
    ({"shrink_factor": -1}, "shrink_factor must be >= 1, got -1"),
    ({"shrink_factor": 2, "zoom_factor": 0}, "zoom_factor must be >= 1, got 0"),
    ({"height": 3}, "needs both height and width, got height 3 and width None"),
    ({"width": 3}, "needs both height and width"),
    ({"height": 3, "width": 3, "zoom_factor": 2}, "height and width .* or zoom_factor"),
    ({"height": 0, "width": 3}, "output size must be positive, got 0x3"),
    ({"size_hw": (3, 3), "zoom_factor": 2}, "second bottom .* zoom_factor must not be given"),
    ({"size_hw": (3, 3), "height": 3, "width": 3}, "height, width must not be given"),
    ({}, "Interp needs its output size"),
])
def test_output_size_errors(fields, match):
    with pytest.raises(LayerError, match=match):
        interp_output_hw(5, 6, **fields)


# --- values --------------------------------------------------------------------------------------

def test_zoom_2x2_to_3x3_gives_the_exact_midpoints():
    a, b, c, d = 1.0, 2.0, 5.0, 11.0
    y = forward(np.array([[[[a, b], [c, d]]]]), out_hw=(3, 3))[0, 0]
    np.testing.assert_array_equal(y, [[a, (a + b) / 2, b],
                                      [(a + c) / 2, (a + b + c + d) / 4, (b + d) / 2],
                                      [c, (c + d) / 2, d]])


def test_equal_sizes_are_the_identity():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 7))
    np.testing.assert_array_equal(forward(x, out_hw=(4, 7)), x)
    np.testing.assert_array_equal(backward(x, x.shape), x)


def test_corners_are_aligned_and_shrinking_samples_exact_pixels():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 9))
    y = forward(x, out_hw=(8, 13))
    for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        np.testing.assert_allclose(y[:, :, i, j], x[:, :, i, j], rtol=1e-12)
    np.testing.assert_allclose(forward(x, out_hw=interp_output_hw(5, 9, shrink_factor=2)),
                               x[:, :, ::2, ::2], rtol=1e-12)      # 5 -> 3, 9 -> 5
    np.testing.assert_allclose(forward(x, out_hw=(1, 1)), x[:, :, :1, :1])   # ratio 0
    row = forward(x[:, :, :1], out_hw=(3, 9))                     # H_eff 1: repeated
    np.testing.assert_allclose(row, np.repeat(x[:, :, :1], 3, axis=2), rtol=1e-12)


def test_one_dimensional_linear_ramp():
    x = np.arange(4.0).reshape(1, 1, 1, 4) * 3                    # 0 3 6 9
    np.testing.assert_allclose(forward(x, out_hw=(1, 7))[0, 0, 0], np.arange(7.0) * 1.5)
    np.testing.assert_allclose(forward(x, out_hw=(1, 3))[0, 0, 0], [0, 4.5, 9])


@st.composite
def interp_cases(draw, max_hw=7):
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    pad_beg = -draw(st.integers(0, min(h, w) - 1))
    pad_end = -draw(st.integers(0, min(h, w) - 1 + pad_beg))
    out_hw = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(
        (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w))
    return x, out_hw, pad_beg, pad_end


@given(interp_cases())
def test_forward_matches_the_naive_loop(case):
    x, out_hw, pad_beg, pad_end = case
    np.testing.assert_allclose(forward(x, out_hw=out_hw, pad_beg=pad_beg, pad_end=pad_end),
                               naive_interp(x, out_hw, pad_beg, pad_end), rtol=1e-12, atol=1e-14)


@given(interp_cases())
def test_backward_is_the_adjoint(case):
    x, out_hw, pad_beg, pad_end = case
    y = forward(x, out_hw=out_hw, pad_beg=pad_beg, pad_end=pad_end)
    r = np.random.default_rng(2).standard_normal(y.shape)
    dx = backward(r, x.shape, pad_beg=pad_beg, pad_end=pad_end)
    assert dx.shape == x.shape
    np.testing.assert_allclose(np.sum(y * r), np.sum(x * dx), rtol=1e-10, atol=1e-12)


@given(interp_cases(max_hw=5))
def test_backward_matches_finite_differences(case):
    x, out_hw, pad_beg, pad_end = case
    dy = np.random.default_rng(3).standard_normal((*x.shape[:2], *out_hw))

    def loss():
        return float(np.sum(forward(x, out_hw=out_hw, pad_beg=pad_beg, pad_end=pad_end) * dy))

    np.testing.assert_allclose(backward(dy, x.shape, pad_beg=pad_beg, pad_end=pad_end),
                               numerical_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_negative_pads_crop_before_resizing():
    x = np.random.default_rng(4).standard_normal((1, 2, 7, 8))
    pad_beg, pad_end = -1, -2
    cropped = x[:, :, 1:5, 1:6]                                   # H_eff 4, W_eff 5
    out_hw = interp_output_hw(7, 8, zoom_factor=3, pad_beg=pad_beg, pad_end=pad_end)
    assert out_hw == (10, 13)
    np.testing.assert_allclose(forward(x, out_hw=out_hw, pad_beg=pad_beg, pad_end=pad_end),
                               forward(cropped, out_hw=out_hw), rtol=1e-12)
    dy = np.ones((1, 2, *out_hw))
    dx = backward(dy, x.shape, pad_beg=pad_beg, pad_end=pad_end)
    np.testing.assert_allclose(dx[:, :, 1:5, 1:6], backward(dy, cropped.shape), rtol=1e-12)
    dx[:, :, 1:5, 1:6] = 0
    assert not dx.any()                                           # cropped pixels get no diff


def test_against_torch_align_corners():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 7))
    for out_hw in ((9, 13), (3, 4), (8, 7), (1, 5)):
        theirs = torch.nn.functional.interpolate(torch.from_numpy(x), size=out_hw,
                                                 mode="bilinear", align_corners=True).numpy()
        np.testing.assert_allclose(forward(x, out_hw=out_hw), theirs, rtol=1e-10, atol=1e-12)


def test_dtype_follows_the_input():
    for dtype in (np.float32, np.float64):
        x = np.ones((1, 1, 3, 4), dtype)
        y = interp_forward(x, out_hw=(5, 7))
        assert y.dtype == dtype and interp_backward(y, x.shape).dtype == dtype
        np.testing.assert_allclose(y, 1.0, rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: forward(np.zeros((3, 4, 5)), out_hw=(2, 2)), r"4-D .* input, got shape \(3, 4, 5\)"),
    (lambda: forward(np.zeros((1, 1, 3, 3)), out_hw=(0, 2)), "two positive sizes, got"),
    (lambda: backward(np.zeros((1, 2, 3, 3)), (1, 1, 3, 3)),
     r"dy of shape \(1, 2, 3, 3\) does not fit an input of shape \(1, 1, 3, 3\)"),
    (lambda: forward(np.zeros((1, 1, 3, 3)), out_hw=(2, 2), pad_beg=1), "pad_beg 1"),
])
def test_op_errors(call, match):
    with pytest.raises(LayerError, match=match):
        call()
