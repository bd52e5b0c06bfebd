"""MVN op: against per-group loops, Caffe's backward against finite differences (exact when
eps = 0), both modes and across_channels."""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from minicnn.ops.mvn import mvn_backward, mvn_forward
from minicnn.testing import numerical_grad

forward, backward = mvn_forward.impls["ref"], mvn_backward.impls["ref"]
seeds = st.integers(0, 2**32 - 1)
modes = st.tuples(st.booleans(), st.booleans())           # (normalize_variance, across_channels)


def mvn_loop(x, normalize_variance, across_channels, eps):
    """Each (n, c) (or n) normalized with Python floats."""
    x4 = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    y = np.empty_like(x4)
    for n in range(x4.shape[0]):
        groups = [(n, slice(None))] if across_channels else \
            [(n, c) for c in range(x4.shape[1])]
        for g in groups:
            values = [float(v) for v in x4[g].reshape(-1)]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)
            div = math.sqrt(var) + eps if normalize_variance else 1.0
            with np.errstate(invalid="ignore"):         # eps 0, one value: NaN as the op
                y[g] = (x4[g] - mean) / div
    return y.reshape(x.shape)


@given(array_shapes(min_dims=1, max_dims=4, max_side=4), seeds, modes,
       st.sampled_from([1e-9, 0.0, 0.1]))
def test_forward_matches_loop(shape, seed, mode, eps):
    x = 3 + 2 * np.random.default_rng(seed).standard_normal(shape)
    y, s = forward(x, normalize_variance=mode[0], across_channels=mode[1], eps=eps)
    np.testing.assert_allclose(y, mvn_loop(x, *mode, eps), rtol=1e-9, atol=1e-9)
    assert (s is None) == (not mode[0])


@given(array_shapes(min_dims=3, max_dims=4, min_side=2, max_side=4), seeds, modes)
def test_backward_is_exact_with_eps_zero(shape, seed, mode):
    x = np.random.default_rng(seed).standard_normal(shape)
    dy = np.random.default_rng(seed + 1).standard_normal(shape)
    kw = dict(normalize_variance=mode[0], across_channels=mode[1], eps=0.0)
    y, s = forward(x, **kw)
    dx = backward(dy, y, s, across_channels=mode[1])
    numeric = numerical_grad(lambda: float(np.sum(forward(x, **kw)[0] * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-7)


def test_backward_with_eps_is_caffes_formula():
    """With eps > 0 Caffe's backward is not the exact derivative: it is (dy - E[dy] - y E[y dy])
    / (sqrt(var) + eps), which is what minicnn computes."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    y, s = forward(x, eps=0.5)
    dx = backward(dy, y, s)
    g = dy - dy.mean(axis=2, keepdims=True) - y * (y * dy).mean(axis=2, keepdims=True)
    np.testing.assert_allclose(dx, g / s.reshape(2, 3, 1), rtol=1e-12)
    y0, s0 = forward(x, eps=1e-9)                            # the default eps: exact in practice
    numeric = numerical_grad(lambda: float(np.sum(forward(x, eps=1e-9)[0] * dy)), x)
    np.testing.assert_allclose(backward(dy, y0, s0), numeric, rtol=1e-5, atol=1e-7)


def test_constant_groups_give_zero_and_float32_stays():
    x = np.full((2, 2, 3, 3), 4.0, np.float32)
    y, s = forward(x)
    assert y.dtype == np.float32 and s.dtype == np.float32
    np.testing.assert_array_equal(y, 0.0)
    assert backward(x, y, s).dtype == np.float32
    y, s = forward(x, normalize_variance=False, across_channels=True)
    assert s is None and backward(x, y, None, across_channels=True).dtype == np.float32
