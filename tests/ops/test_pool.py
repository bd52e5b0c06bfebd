"""Pooling ops: reference against a naive loop with Caffe's window rules, finite differences,
output sizes (CEIL, FLOOR, the drop-last-window rule), ties, masks and the AVE divisor."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.ops.pool import (
    PoolGeometry,
    ave_pool2d_backward,
    ave_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from minicnn.testing import numerical_grad
from tests.kernel_choice import run_with_kernel

FLT_MAX = float(np.finfo(np.float32).max)
max_fwd, max_bwd = max_pool2d_forward.impls["ref"], max_pool2d_backward.impls["ref"]
ave_fwd, ave_bwd = ave_pool2d_forward.impls["ref"], ave_pool2d_backward.impls["ref"]


# --- the naive definition, one window at a time ------------------------------------------------

def naive_out(size, k, s, p, ceil, any_pad):
    span = (size + 2 * p - k) / s
    n = (math.ceil(span) if ceil else math.floor(span)) + 1
    if any_pad and (n - 1) * s >= size + p:
        n -= 1
    return n


def naive_pool(x, kernel, stride, pad, method, ceil=True):
    """Caffe's PoolingLayer::Forward_cpu as loops; returns (y, mask)."""
    n_, c_, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    any_pad = ph > 0 or pw > 0
    oh, ow = naive_out(H, kh, sh, ph, ceil, any_pad), naive_out(W, kw, sw, pw, ceil, any_pad)
    y, mask = np.zeros((n_, c_, oh, ow)), np.full((n_, c_, oh, ow), -1)
    for n in range(n_):
        for c in range(c_):
            for a in range(oh):
                for b in range(ow):
                    h0, w0 = a * sh - ph, b * sw - pw
                    h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
                    divisor = (h1 - h0) * (w1 - w0)           # counts padding, not overhang
                    rows = range(max(h0, 0), min(h1, H))
                    cols = range(max(w0, 0), min(w1, W))
                    if method == "MAX":
                        best, arg = -FLT_MAX, -1
                        for h in rows:
                            for w in cols:
                                if x[n, c, h, w] > best:      # strict: the first max wins
                                    best, arg = x[n, c, h, w], h * W + w
                        y[n, c, a, b], mask[n, c, a, b] = best, arg
                    else:
                        total = sum(x[n, c, h, w] for h in rows for w in cols)
                        y[n, c, a, b] = total / divisor if rows and cols else 0.0
    return y, mask


@st.composite
def pool_cases(draw, distinct=False):
    """(x float64, geom, (kernel, stride, pad, ceil)) with small shapes; ``distinct`` draws
    distinct values (no MAX ties), else small integers (many ties)."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    ceil = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:                               # global pooling
        geom = PoolGeometry.from_fields(global_pooling=True, round_mode="CEIL")
        kernel, stride, pad = (h, w), (1, 1), (0, 0)
    else:
        kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        pad = (draw(st.integers(0, kernel[0] - 1)), draw(st.integers(0, kernel[1] - 1)))
        any_pad = pad != (0, 0)
        assume(naive_out(h, kernel[0], stride[0], pad[0], ceil, any_pad) >= 1)
        assume(naive_out(w, kernel[1], stride[1], pad[1], ceil, any_pad) >= 1)
        geom = PoolGeometry(kernel, stride, pad, ceil)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if distinct:                                  # gaps of 0.25 >> the finite-difference step
        x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 0.25 - 2.0
    else:
        x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float64)
    return x, geom, (kernel, stride, pad, ceil)


# --- forward against the loops -----------------------------------------------------------------

@given(pool_cases())
def test_max_forward_matches_naive_loop_ties_included(case):
    x, geom, (kernel, stride, pad, ceil) = case
    y, mask = max_fwd(x, geom=geom)
    want_y, want_mask = naive_pool(x, kernel, stride, pad, "MAX", ceil)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mask, want_mask)


@given(pool_cases())
def test_ave_forward_matches_naive_loop(case):
    x, geom, (kernel, stride, pad, ceil) = case
    want, _ = naive_pool(x, kernel, stride, pad, "AVE", ceil)
    np.testing.assert_allclose(ave_fwd(x, geom=geom), want, rtol=1e-12, atol=1e-12)


# --- backward against finite differences (float64) ---------------------------------------------

@given(pool_cases(distinct=True))
def test_max_backward_matches_finite_differences(case):
    x, geom, _ = case
    y, mask = max_fwd(x, geom=geom)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    dy[mask < 0] = 0        # y = -FLT_MAX there: constant, but it would swamp the difference
    dx = max_bwd(dy, mask, x.shape)
    numeric = numerical_grad(lambda: float(np.sum(max_fwd(x, geom=geom)[0] * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@given(pool_cases())
def test_ave_backward_matches_finite_differences(case):
    x, geom, _ = case
    dy = np.random.default_rng(0).standard_normal(ave_fwd(x, geom=geom).shape)
    dx = ave_bwd(dy, x.shape, geom=geom)
    numeric = numerical_grad(lambda: float(np.sum(ave_fwd(x, geom=geom) * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


# --- output sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("size, k, s, p, ceil, want", [
    (112, 3, 2, 0, True, 56),     # GoogLeNet pool1: ceil gives 56 ...
    (112, 3, 2, 0, False, 55),    # ... where floor (round_mode FLOOR) gives 55
    (55, 3, 2, 0, True, 27),      # CaffeNet pool1
    (13, 3, 2, 0, True, 6),       # CaffeNet pool5
    (64, 3, 2, 1, True, 33),      # pad 1: ceil 33, floor 32
    (64, 3, 2, 1, False, 32),
    (5, 2, 2, 1, True, 3),        # ceil gives 4, but window 3 would start in the pad: dropped
    (3, 2, 2, 1, True, 2),        # same rule
    (4, 2, 2, 1, True, 3),        # the last window starts on the last pixel: kept
    (56, 1, 2, 0, True, 29),      # stride > kernel, pad 0: no drop, the last window is empty
    (5, 1, 3, 0, True, 3),
    (5, 1, 3, 0, False, 2),
    (6, 2, 3, 0, True, 3),
    (5, 5, 1, 0, True, 1),        # kernel == input
    (5, 5, 3, 0, True, 1),
    (5, 5, 2, 2, True, 3),
    (2, 3, 2, 0, True, 1),        # kernel past the input: ceil(-1/2) + 1 = 1, as Caffe
])
def test_output_size(size, k, s, p, ceil, want):
    geom = PoolGeometry((k, k), (s, s), (p, p), ceil)
    assert geom.out_hw(size, size) == (want, want)
    assert naive_out(size, k, s, p, ceil, p > 0) == want


def test_drop_rule_checks_both_dims_when_either_pad_is_set():
    # pad_w is 0 but pad_h is not: Caffe still drops the empty last column window
    assert PoolGeometry((2, 1), (2, 2), (0, 0)).out_hw(4, 4) == (2, 3)
    assert PoolGeometry((2, 1), (2, 2), (1, 0)).out_hw(4, 4) == (3, 2)


def test_global_pooling_takes_the_input_size():
    geom = PoolGeometry.from_fields(global_pooling=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5))
    assert geom.out_hw(4, 5) == (1, 1) and geom.out_hw(7, 2) == (1, 1)
    y, mask = max_fwd(x, geom=geom)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(mask[..., 0, 0], x.reshape(2, 3, -1).argmax(axis=2))
    np.testing.assert_allclose(ave_fwd(x, geom=geom)[..., 0, 0], x.mean(axis=(2, 3)))


def test_kernel_that_cannot_fit_is_refused():
    with pytest.raises(LayerError, match="kernel 3 .* size 1"):
        PoolGeometry((3, 3), (1, 1), (0, 0)).out_hw(1, 1)


@pytest.mark.parametrize("fields, match", [
    ({"global_pooling": True, "kernel_size": 2}, "kernel_size 2"),
    ({"global_pooling": True, "pad": 1}, "pad 1"),
    ({"global_pooling": True, "stride": 2}, "stride 2"),
    ({}, "kernel_size"),
    ({"kernel_h": 2}, "kernel_h 2, kernel_w None"),
    ({"kernel_size": 2, "kernel_h": 2, "kernel_w": 3}, "not both"),
    ({"kernel_size": 0}, "zero"),
    ({"kernel_size": 2, "pad": 2}, "pad 2 x 2 .* kernel 2 x 2"),
    ({"kernel_h": 3, "kernel_w": 2, "pad_h": 1, "pad_w": 2}, "pad 1 x 2"),
    ({"kernel_h": 2, "kernel_w": 3, "pad_h": 2, "pad_w": 0}, "pad 2 x 0"),
    ({"kernel_size": 2, "pad": 1, "pad_h": 1, "pad_w": 1}, "not a mix"),
    ({"kernel_size": 2, "stride_h": 2}, "not a mix"),
    ({"kernel_size": 2, "stride": 0}, "stride 0 x 0"),
])
def test_geometry_errors(fields, match):
    with pytest.raises(LayerError, match=match):
        PoolGeometry.from_fields(**fields)


def test_geometry_from_fields():
    g = PoolGeometry.from_fields(kernel_h=3, kernel_w=2, stride_h=2, stride_w=1, pad_h=1, pad_w=0,
                                 round_mode="FLOOR")
    assert g == PoolGeometry((3, 2), (2, 1), (1, 0), ceil=False)
    assert PoolGeometry.from_fields(kernel_size=3, kernel_h=5).kernel == (3, 3)  # Caffe's choice


# --- hand-worked examples ----------------------------------------------------------------------

def test_max_ties_go_to_the_first_maximum_in_row_major_order():
    x = np.array([[3.0, 1.0], [3.0, 3.0]]).reshape(1, 1, 2, 2)
    y, mask = max_fwd(x, geom=PoolGeometry((2, 2)))
    assert y.item() == 3.0 and mask.item() == 0
    x = np.array([[1.0, 3.0], [3.0, 1.0]]).reshape(1, 1, 2, 2)
    y, mask = max_fwd(x, geom=PoolGeometry((2, 2)))
    assert mask.item() == 1                                    # (0, 1) before (1, 0)
    dx = max_bwd(np.ones_like(y), mask, x.shape)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_mask_values_with_ceil_overhang_and_padding():
    x = np.array([[1, 9, 2], [4, 3, 8], [7, 6, 5]], np.float64).reshape(1, 1, 3, 3)
    y, mask = max_fwd(x, geom=PoolGeometry((2, 2), (2, 2)))          # ceil: 2 x 2 windows
    np.testing.assert_array_equal(y[0, 0], [[9, 8], [7, 5]])
    np.testing.assert_array_equal(mask[0, 0], [[1, 5], [6, 8]])
    dx = max_bwd(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), mask, x.shape)
    np.testing.assert_array_equal(dx[0, 0], [[0, 1, 0], [0, 0, 2], [3, 0, 4]])
    # padding is -inf: an all-negative border window still picks an image pixel
    y, mask = max_fwd(-x, geom=PoolGeometry((2, 2), (2, 2), (1, 1)))
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -3]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 2], [3, 4]])


def test_overlapping_windows_add_their_gradients():
    x = np.array([[0.0, 5.0, 1.0]]).reshape(1, 1, 1, 3)
    _, mask = max_fwd(x, geom=PoolGeometry((1, 2), (1, 1)))           # both windows pick 5
    np.testing.assert_array_equal(mask.ravel(), [1, 1])
    dx = max_bwd(np.array([[[[2.0, 3.0]]]]), mask, x.shape)
    np.testing.assert_array_equal(dx.ravel(), [0, 5, 0])


def test_window_wholly_outside_the_image():
    # stride 3 > kernel 1 with pad 0: ceil gives windows at 0, 3 and 6, the last one empty
    x = np.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    geom = PoolGeometry((1, 1), (1, 3))
    y, mask = max_fwd(x, geom=geom)
    np.testing.assert_array_equal(y.ravel(), [1, 4, -FLT_MAX])       # Caffe's initial value
    np.testing.assert_array_equal(mask.ravel(), [0, 3, -1])
    np.testing.assert_array_equal(max_bwd(np.ones((1, 1, 1, 3)), mask, x.shape).ravel(),
                                  [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(ave_fwd(x, geom=geom).ravel(), [1, 4, 0])
    np.testing.assert_array_equal(ave_bwd(np.ones((1, 1, 1, 3)), x.shape, geom=geom).ravel(),
                                  [1, 0, 0, 1, 0])


def test_ave_divisor_at_the_padded_border():
    # 4 x 4 ones, kernel 3, stride 2, pad 1 -> windows start at rows -1, 1, 3. Their divisor
    # factors: 3 (row -1 is padding and counts), 3, and 2 (rows 3 and 4; row 5 lies past the
    # padding and does not count). Pixels in them: 2, 3, 1.
    x = np.ones((1, 1, 4, 4))
    geom = PoolGeometry((3, 3), (2, 2), (1, 1))
    want = [[4 / 9, 6 / 9, 2 / 6],
            [6 / 9, 9 / 9, 3 / 6],
            [2 / 6, 3 / 6, 1 / 4]]
    np.testing.assert_allclose(ave_fwd(x, geom=geom)[0, 0], want, rtol=1e-15)
    dx = ave_bwd(np.ones((1, 1, 3, 3)), x.shape, geom=geom)[0, 0]
    assert dx[0, 0] == pytest.approx(1 / 9)                      # only window (0, 0)
    assert dx[3, 3] == pytest.approx((1 / 3 + 1 / 2) ** 2)       # windows 1, 2 in each dim


def test_float32_stays_float32_and_inputs_are_not_written():
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 5)).astype(np.float32)
    keep = x.copy()
    geom = PoolGeometry((3, 3), (2, 2), (1, 1))
    y, mask = max_pool2d_forward(x, geom=geom)
    assert y.dtype == np.float32
    assert max_pool2d_backward(y, mask, x.shape).dtype == np.float32
    z = ave_pool2d_forward(x, geom=geom)
    assert z.dtype == np.float32
    assert ave_pool2d_backward(z, x.shape, geom=geom).dtype == np.float32
    np.testing.assert_array_equal(x, keep)


# --- fast paths against the reference (I2) -------------------------------------------------------

FAST_KINDS = [kind for kind in max_pool2d_forward.impls if kind == "cpu"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=pool_cases())
def test_fast_paths_match_the_reference(kind, dtype, case):
    """MAX forward (values and argmax, ties included) and AVE forward are bit-identical; the
    backward passes add the same terms in another order."""
    x, geom, _ = case
    x = (x + np.random.default_rng(7).standard_normal(x.shape) * 0.1).astype(dtype)
    x[..., ::3] = np.round(x[..., ::3])            # keep some ties
    y, mask = max_pool2d_forward.impls[kind](x, geom=geom)
    want_y, want_mask = max_fwd(x, geom=geom)
    assert y.dtype == dtype and mask.dtype == np.int64
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mask, want_mask)
    dy = np.random.default_rng(8).standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(max_pool2d_backward.impls[kind](dy, mask, x.shape),
                               max_bwd(dy, mask, x.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ave_pool2d_forward.impls[kind](x, geom=geom),
                                  ave_fwd(x, geom=geom))
    np.testing.assert_allclose(ave_pool2d_backward.impls[kind](dy, x.shape, geom=geom),
                               ave_bwd(dy, x.shape, geom=geom), rtol=1e-6, atol=1e-6)


WIDE_ROWS = [(3, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 1), (5, 2, 2)]
SPECIAL_VALUES = [(3, 2, 0), (3, 2, 1), (2, 2, 1), (4, 3, 2), (3, 1, 1)]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("kernel, stride, pad", WIDE_ROWS)
def test_fast_max_over_wide_rows(kind, kernel, stride, pad):
    """Rows wide enough for the vectorized interior of a row (and its tail and edges), ties
    included: values and argmax equal the reference's."""
    rng = np.random.default_rng(kernel * 10 + stride)
    x = np.round(rng.standard_normal((2, 3, 11, 83)) * 2).astype(np.float32)   # many ties
    geom = PoolGeometry((kernel, kernel), (stride, stride), (pad, pad))
    y, mask = max_pool2d_forward.impls[kind](x, geom=geom)
    want_y, want_mask = max_fwd(x, geom=geom)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mask, want_mask)


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("kernel, stride, pad", SPECIAL_VALUES)
def test_fast_max_with_nan_infinities_and_ceil_overhang(kind, kernel, stride, pad):
    """The windows taken 16 and four at a time and the clipped ones one at a time keep the
    reference's rule: NaN never wins, -inf and -FLT_MAX lose to the start value (mask -1 for
    a window with nothing larger), ties go to the first maximum."""
    rng = np.random.default_rng(kernel * 100 + pad)
    x = np.round(rng.standard_normal((2, 2, 9, 38)) * 2).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    x[0, 0, :, 5:17] = np.nan                                # whole windows of NaN
    x[0, 1, :, 20:30] = -np.finfo(np.float32).max
    for ceil in (True, False):
        geom = PoolGeometry((kernel, kernel), (stride, stride), (pad, pad), ceil=ceil)
        y, mask = max_pool2d_forward.impls[kind](x, geom=geom)
        want_y, want_mask = max_fwd(x, geom=geom)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(mask, want_mask)


@pytest.mark.skipif(not FAST_KINDS, reason="minicnn._native was not built")
@pytest.mark.parametrize("gemm_kernel", ["avx2", "generic"])
def test_fast_max_on_every_vector_loop(gemm_kernel):
    """csrc/pool.cpp takes a row's inner windows 16 at a time with AVX-512, 8 with AVX2, or
    four in its portable loop, picking the widest the CPU runs; MINICNN_GEMM_KERNEL narrows the
    choice (csrc/simd_level.h), so the narrower loops (what other CPUs run) are held to the
    reference here too, in a subprocess: the wide rows and special values above, values and
    argmax bit for bit. (The AVX-512 loop ignored the variable: on an AVX-512 machine the AVX2
    one never ran in the tests.)"""
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests/ops')\n"
        "from minicnn.native import lib\n"
        f"assert lib.gemm_kernel().startswith({gemm_kernel!r}), lib.gemm_kernel()\n"
        "import test_pool as t\n"
        "for case in t.WIDE_ROWS:\n"
        "    t.test_fast_max_over_wide_rows('cpu', *case)\n"
        "for case in t.SPECIAL_VALUES:\n"
        "    t.test_fast_max_with_nan_infinities_and_ceil_overhang('cpu', *case)\n"
        "print('ok')\n")
    assert "ok" in run_with_kernel(code, gemm_kernel)


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_fast_path_on_a_strided_view_and_a_bad_mask(kind):
    x = np.random.default_rng(9).standard_normal((2, 6, 9, 9)).astype(np.float32)[:, ::2]
    geom = PoolGeometry((3, 3), (2, 2), (1, 1))
    y, mask = max_pool2d_forward.impls[kind](x, geom=geom)
    np.testing.assert_array_equal(y, max_fwd(x, geom=geom)[0])
    mask[0, 0, 0, 0] = 81                                      # past the 9x9 plane
    with pytest.raises(ValueError, match="mask index out of range"):
        max_pool2d_backward.impls[kind](np.ones_like(y), mask, x.shape)
    # checked plane by plane in the threads: a bad entry in the last plane of a batch large
    # enough to run in parallel
    x = np.random.default_rng(10).standard_normal((4, 16, 40, 40)).astype(np.float32)
    y, mask = max_pool2d_forward.impls[kind](x, geom=geom)
    mask[-1, -1, -1, -1] = 40 * 40
    with pytest.raises(ValueError, match="mask index out of range"):
        max_pool2d_backward.impls[kind](np.ones_like(y), mask, x.shape)


@pytest.mark.parametrize("kind", ["ref", *FAST_KINDS])
def test_max_pool_skips_nan_as_caffe(kind):
    """Caffe's strict > never takes a NaN: the window's largest number wins, and a window of
    NaNs keeps -FLT_MAX with no argmax (mask -1, no gradient)."""
    nan = np.nan
    x = np.array([[[[nan, 1, nan, nan], [2, nan, nan, nan]]]], np.float32)
    y, mask = max_pool2d_forward.impls[kind](x, geom=PoolGeometry((2, 2), (2, 2)))
    np.testing.assert_array_equal(y.ravel(), [2, np.finfo(np.float32).min])
    np.testing.assert_array_equal(mask.ravel(), [4, -1])
