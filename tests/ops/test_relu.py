"""ReLU op: reference against its definition and finite differences."""

import numpy as np
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
