"""InnerProduct op: reference against an explicit sum and finite differences (float64)."""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.inner_product import inner_product_backward, inner_product_forward
from minicnn.testing import numerical_grad

forward = inner_product_forward.impls["ref"]
backward = inner_product_backward.impls["ref"]


@st.composite
def cases(draw):
    """(x, w, b, axis, transpose): x of 1-4 axes, axis anywhere in it (negative too)."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    transpose, bias = draw(st.booleans()), draw(st.booleans())
    n = draw(st.integers(1, 4))
    k = math.prod(shape[axis:])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((k, n) if transpose else (n, k))
    b = rng.standard_normal(n) if bias else None
    return rng.standard_normal(shape), w, b, axis, transpose


def naive_inner_product(x, w, b, axis, transpose):
    axis %= x.ndim
    lead = x.shape[:axis]
    n = w.shape[1] if transpose else w.shape[0]
    y = np.zeros(lead + (n,))
    for m in np.ndindex(*lead):
        features = x[m].reshape(-1)
        for j in range(n):
            y[m + (j,)] = sum(features[i] * (w[i, j] if transpose else w[j, i])
                              for i in range(features.size))
            if b is not None:
                y[m + (j,)] += b[j]
    return y


@given(cases())
def test_forward_matches_explicit_sum(case):
    x, w, b, axis, transpose = case
    y = forward(x, w, b, axis=axis, transpose=transpose)
    np.testing.assert_allclose(y, naive_inner_product(x, w, b, axis, transpose), rtol=1e-12,
                               atol=1e-12)


@given(cases())
def test_backward_matches_finite_differences(case):
    x, w, b, axis, transpose = case
    dy = np.random.default_rng(0).standard_normal(forward(x, w, b, axis=axis,
                                                          transpose=transpose).shape)
    dx, dw, db = backward(dy, x, w, axis=axis, transpose=transpose)

    def loss():
        return float(np.sum(forward(x, w, b, axis=axis, transpose=transpose) * dy))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-8)
    if b is not None:
        np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-8)


def test_transposed_weights_give_the_same_product():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 2)), rng.standard_normal((4, 6)), rng.standard_normal(4)
    np.testing.assert_allclose(forward(x, w, b), forward(x, w.T.copy(), b, transpose=True))
    assert forward(x, w, b).shape == (2, 4)
    assert forward(x, rng.standard_normal((4, 2)), None, axis=2).shape == (2, 3, 4)


def test_unneeded_gradients_are_not_computed():
    x, w, dy = np.ones((2, 3)), np.ones((4, 3)), np.ones((2, 4))
    dx, dw, db = backward(dy, x, w, need_dx=False, need_db=False)
    assert dx is None and db is None and dw.shape == (4, 3)


def test_float32_stays_float32():
    x, w, b = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(4, np.float32)
    assert inner_product_forward(x, w, b).dtype == np.float32
    assert all(g.dtype == np.float32 for g in inner_product_backward(np.ones((2, 4), np.float32),
                                                                      x, w))
