"""ReLU op: reference against its definition and finite differences."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minicnn.ops.relu import relu_backward, relu_forward
from minicnn.testing import numerical_grad

slopes = st.sampled_from([0.0, 0.1, -0.5, 2.0])
inputs = arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 5)),
                elements=st.floats(-3, 3).filter(lambda v: abs(v) > 1e-3))   # away from the kink


@given(inputs, slopes)
def test_forward_matches_definition(x, slope):
    y = relu_forward.impls["ref"](x, slope)
    np.testing.assert_array_equal(y, np.maximum(x, 0) + slope * np.minimum(x, 0))


@given(inputs, slopes)
def test_backward_matches_finite_differences(x, slope):
    dy = np.random.default_rng(0).standard_normal(x.shape)
    dx = relu_backward.impls["ref"](dy, x, slope)
    numeric = numerical_grad(lambda: float(np.sum(relu_forward.impls["ref"](x, slope) * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_kink_takes_the_slope_branch():
    dx = relu_backward.impls["ref"](np.ones(3), np.array([-1.0, 0.0, 1.0]), 0.25)
    np.testing.assert_array_equal(dx, [0.25, 0.25, 1.0])


def test_float32_stays_float32():
    x = np.ones(4, np.float32)
    assert relu_forward(x, 0.1).dtype == np.float32
    assert relu_backward(x, x, 0.1).dtype == np.float32


# --- fast paths against the reference (I2) -------------------------------------------------------

FAST_KINDS = [kind for kind in relu_forward.impls if kind == "cpu"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(x=arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 2000)),
                elements=st.floats(-3, 3)), slope=slopes)
def test_fast_paths_match_the_reference_bit_for_bit(kind, dtype, x, slope):
    x = x.astype(dtype)
    x.flat[::7] = 0                                          # the kink: slope branch
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    y = relu_forward.impls[kind](x, slope)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, relu_forward.impls["ref"](x, slope))
    np.testing.assert_array_equal(relu_backward.impls[kind](dy, x, slope),
                                  relu_backward.impls["ref"](dy, x, slope))


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
def test_fast_paths_keep_every_bit_in_place_on_long_arrays(kind, dtype, slope):
    # long enough for the threads and the vector loops (csrc/relu.cpp), an odd length for their
    # tails; signed zeros, infinities and NaNs, whose bits assert_array_equal does not compare
    n = (1 << 17) + 13
    rng = np.random.default_rng(2)
    x = rng.standard_normal(n).astype(dtype)
    x[::11], x[1::11], x[2::11], x[3::11], x[4::11] = 0.0, -0.0, np.inf, -np.inf, np.nan
    x[5::13] = -np.nan
    dy = rng.standard_normal(n).astype(dtype)
    dy[::5], dy[1::17], dy[2::19], dy[3::23] = -0.0, np.nan, np.inf, 0.0
    bits = np.uint32 if dtype == np.float32 else np.uint64
    with np.errstate(invalid="ignore"):                     # inf * 0
        want_y = relu_forward.impls["ref"](x, slope).view(bits)
        want_dx = relu_backward.impls["ref"](dy, x, slope).view(bits)
    y = x.copy()
    assert relu_forward.impls[kind](y, slope, out=y) is y
    np.testing.assert_array_equal(y.view(bits), want_y)
    np.testing.assert_array_equal(relu_forward.impls[kind](x, slope).view(bits), want_y)
    dx = dy.copy()
    assert relu_backward.impls[kind](dx, x, slope, out=dx) is dx
    np.testing.assert_array_equal(dx.view(bits), want_dx)
    np.testing.assert_array_equal(relu_backward.impls[kind](dy, x, slope).view(bits), want_dx)


@pytest.mark.parametrize("kind", ["ref"] + FAST_KINDS)
def test_out_may_be_the_input_as_an_in_place_layer_runs_it(kind):
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    dy = np.array([[1.0, 2.0, 4.0]], np.float32)
    y = relu_forward.impls[kind](x, 0.5, out=x)
    assert y is x
    np.testing.assert_array_equal(x, [[-1.0, 0.0, 3.0]])
    assert relu_backward.impls[kind](dy, x, 0.5, out=dy) is dy
    np.testing.assert_array_equal(dy, [[0.5, 1.0, 4.0]])
    view = np.zeros((1, 6), np.float32)[:, ::2]            # a strided out: still written
    relu_forward.impls[kind](np.ones((1, 3), np.float32), out=view)
    np.testing.assert_array_equal(view, 1.0)
