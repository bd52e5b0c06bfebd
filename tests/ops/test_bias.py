"""Bias ops: reference against an element loop and finite differences."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.bias import bias_backward, bias_forward
from minicnn.testing import numerical_grad

forward = bias_forward.impls["ref"]
backward = bias_backward.impls["ref"]


@st.composite
def cases(draw):
    """x of 1-4 axes and a bias covering axes axis .. axis+k (k may be 0: a scalar)."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    axis = draw(st.integers(0, len(shape)))
    k = draw(st.integers(0, len(shape) - axis))
    axis = 0 if k == 0 else min(axis, len(shape) - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.standard_normal(shape), rng.standard_normal(shape[axis:axis + k]), axis


def naive_bias(x, bias, axis):
    y = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        y[idx] = x[idx] + bias[idx[axis:axis + bias.ndim]]
    return y


@given(cases())
def test_forward_matches_element_loop(case):
    x, bias, axis = case
    np.testing.assert_allclose(forward(x, bias, axis), naive_bias(x, bias, axis),
                               rtol=1e-12, atol=1e-12)


@given(cases())
def test_backward_matches_finite_differences(case):
    x, bias, axis = case
    dy = np.random.default_rng(0).standard_normal(x.shape)
    dx, dbias = backward(dy, bias.ndim, axis)

    def loss():
        return float(np.sum(forward(x, bias, axis) * dy))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    assert dbias.shape == bias.shape
    np.testing.assert_allclose(dbias, numerical_grad(loss, bias), rtol=1e-6, atol=1e-8)


def test_scalar_bias_adds_to_everything():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(forward(x, np.array(1.5), 0), x + 1.5)
    dx, dbias = backward(np.ones_like(x), 0, 0)
    assert dbias.shape == () and dbias == 6
    np.testing.assert_array_equal(dx, np.ones_like(x))


def test_inner_axes_bias():
    x = np.zeros((2, 3, 4))
    bias = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(forward(x, bias, 1), np.broadcast_to(bias, (2, 3, 4)))
    _, dbias = backward(np.ones((2, 3, 4)), 2, 1)
    np.testing.assert_array_equal(dbias, np.full((3, 4), 2.0))


def test_ops_never_write_or_alias_their_inputs():
    x, bias, dy = np.ones((2, 3)), np.arange(3.0), np.full((2, 3), 2.0)
    y = forward(x, bias, 1)
    dx, _ = backward(dy, 1, 1)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(x, 1)
    np.testing.assert_array_equal(dy, 2)


def test_float32_stays_float32():
    x = np.ones((2, 3), np.float32)
    b = np.full(3, 2, np.float32)
    assert forward(x, b, 1).dtype == np.float32
    assert all(a.dtype == np.float32 for a in backward(x, 1, 1))
