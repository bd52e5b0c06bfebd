"""Scale ops: reference against an element loop and finite differences."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.scale import scale_backward, scale_forward
from minicnn.testing import numerical_grad

forward = scale_forward.impls["ref"]
backward = scale_backward.impls["ref"]


@st.composite
def cases(draw):
    """x of 1-4 axes, a scale covering axes axis .. axis+k (k may be 0: a scalar), maybe a bias."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    axis = draw(st.integers(0, len(shape)))
    k = draw(st.integers(0, len(shape) - axis))
    axis = 0 if k == 0 else min(axis, len(shape) - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = rng.standard_normal(shape[axis:axis + k])
    bias = rng.standard_normal(scale.shape) if draw(st.booleans()) else None
    return rng.standard_normal(shape), scale, bias, axis


def naive_scale(x, scale, bias, axis):
    y = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        where = idx[axis:axis + scale.ndim]
        y[idx] = x[idx] * scale[where] + (bias[where] if bias is not None else 0.0)
    return y


@given(cases())
def test_forward_matches_element_loop(case):
    x, scale, bias, axis = case
    np.testing.assert_allclose(forward(x, scale, bias, axis), naive_scale(x, scale, bias, axis),
                               rtol=1e-12, atol=1e-12)


@given(cases())
def test_backward_matches_finite_differences(case):
    x, scale, bias, axis = case
    dy = np.random.default_rng(0).standard_normal(x.shape)
    dx, dscale, dbias = backward(dy, x, scale, axis, bias_term=bias is not None)

    def loss():
        return float(np.sum(forward(x, scale, bias, axis) * dy))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    assert dscale.shape == scale.shape
    np.testing.assert_allclose(dscale, numerical_grad(loss, scale), rtol=1e-6, atol=1e-8)
    if bias is None:
        assert dbias is None
    else:
        np.testing.assert_allclose(dbias, numerical_grad(loss, bias), rtol=1e-6, atol=1e-8)


def test_scalar_scale_multiplies_everything():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(forward(x, np.array(2.0), np.array(1.0), 0), 2 * x + 1)
    _, dscale, dbias = backward(np.ones_like(x), x, np.array(2.0), 0, bias_term=True)
    assert dscale.shape == dbias.shape == ()
    assert dscale == x.sum() and dbias == 6


def test_float32_stays_float32():
    x = np.ones((2, 3), np.float32)
    s = np.full(3, 2, np.float32)
    assert forward(x, s, s, 1).dtype == np.float32
    assert all(a.dtype == np.float32 for a in backward(x, x, s, 1, bias_term=True))


# --- fast paths against the reference (I2), out= and accumulators ---------------------------------

FAST_KINDS = [kind for kind in scale_forward.impls if kind == "cpu"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 40)),
       bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fast_paths_match_the_reference(kind, dtype, shape, bias, seed):
    rng = np.random.default_rng(seed)
    x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    scale, b = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
    b = b if bias else None
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale_forward.impls[kind](x, scale, b),
                               scale_forward.impls["ref"](x, scale, b), **tol)
    for got, want in zip(scale_backward.impls[kind](dy, x, scale, 1, bias),
                         scale_backward.impls["ref"](dy, x, scale, 1, bias)):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("kind", ["ref"] + FAST_KINDS)
def test_backward_in_place_and_into_accumulators(kind):
    """dx_out may be dy itself (an in-place Scale); dscale and dbias are added to the given
    arrays (the layer's parameter diffs)."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    scale = rng.standard_normal(3)
    want = scale_backward.impls["ref"](dy.copy(), x, scale, 1, True)
    acc_s, acc_b, g = np.ones(3), np.ones(3), dy.copy()
    dx, dscale, dbias = scale_backward.impls[kind](g, x, scale, 1, True, dx_out=g,
                                                   dscale_acc=acc_s, dbias_acc=acc_b)
    assert dx is g and dscale is acc_s and dbias is acc_b
    np.testing.assert_allclose(dx, want[0])
    np.testing.assert_allclose(dscale, want[1] + 1)
    np.testing.assert_allclose(dbias, want[2] + 1)
