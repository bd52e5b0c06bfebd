"""Eltwise ops: SUM/PROD/MAX against their definitions, finite differences, Caffe's tie rule."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.eltwise import eltwise_backward, eltwise_forward
from minicnn.testing import numerical_grad

forward = eltwise_forward.impls["ref"]
backward = eltwise_backward.impls["ref"]


@st.composite
def inputs(draw, away_from_zero=False):
    """2-4 arrays of one small shape, values spread apart so MAX has no near-ties."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    k = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # distinct values per element: a random permutation of a grid spaced 0.1 apart
    grid = (np.arange(k)[:, None] * 0.1 + rng.uniform(0.5, 1.5, (1, int(np.prod(shape)))))
    values = rng.permuted(grid, axis=0) * rng.choice([-1.0, 1.0], grid.shape[1])
    if not away_from_zero:
        values = values + rng.uniform(-1, 1, values.shape[1])
    return [v.reshape(shape) for v in values]


@given(inputs(), st.booleans())
def test_sum_matches_definition_and_finite_differences(xs, with_coeff):
    coeff = list(np.linspace(-1.5, 2.0, len(xs))) if with_coeff else None
    c = coeff or [1.0] * len(xs)
    y, argmax = forward(xs, "SUM", coeff)
    assert argmax is None
    np.testing.assert_allclose(y, sum(ci * x for ci, x in zip(c, xs)), rtol=1e-12)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    dxs = backward(dy, xs, "SUM", coeff)
    for x, dx in zip(xs, dxs):
        numeric = numerical_grad(lambda: float(np.sum(forward(xs, "SUM", coeff)[0] * dy)), x)
        np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@given(inputs(away_from_zero=True), st.booleans())
def test_prod_matches_definition_and_finite_differences(xs, stable):
    y, argmax = forward(xs, "PROD")
    assert argmax is None
    np.testing.assert_allclose(y, np.prod(np.stack(xs), axis=0), rtol=1e-12)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    dxs = backward(dy, xs, "PROD", y=y, stable_prod_grad=stable)
    for x, dx in zip(xs, dxs):
        numeric = numerical_grad(lambda: float(np.sum(forward(xs, "PROD")[0] * dy)), x)
        np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@given(inputs())
def test_max_matches_definition_and_finite_differences(xs):
    y, argmax = forward(xs, "MAX")
    np.testing.assert_array_equal(y, np.max(np.stack(xs), axis=0))
    np.testing.assert_array_equal(argmax, np.argmax(np.stack(xs), axis=0))     # no ties here
    dy = np.random.default_rng(0).standard_normal(y.shape)
    dxs = backward(dy, xs, "MAX", argmax=argmax)
    for x, dx in zip(xs, dxs):
        numeric = numerical_grad(lambda: float(np.sum(forward(xs, "MAX")[0] * dy)), x)
        np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_max_ties_follow_caffe():
    # element:        0    1    2    3    4
    x0 = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
    x1 = np.array([1.0, 1.0, 3.0, 0.0, 4.0])
    x2 = np.array([0.0, 2.0, 3.0, 5.0, 4.0])
    x3 = np.array([1.0, 2.0, 3.0, 5.0, 9.0])
    y, argmax = forward([x0, x1, x2, x3], "MAX")
    np.testing.assert_array_equal(y, [1, 2, 3, 5, 9])
    # 0: x0 == x1 -> bottom 1 (x0 > x1 is false), x3 only ties -> stays 1
    # 1: x0 > x1 -> 0, x2 and x3 only tie -> stay 0
    # 2: all tie -> 1; 3: x2 strictly greater -> 2, x3 ties -> stays 2; 4: x3 greater -> 3
    np.testing.assert_array_equal(argmax, [1, 0, 1, 2, 3])
    dxs = backward(np.ones(5), [x0, x1, x2, x3], "MAX", argmax=argmax)
    np.testing.assert_array_equal(np.stack(dxs), np.eye(4)[:, argmax])


def test_prod_gradient_at_zero():
    xs = [np.array([0.0, 2.0]), np.array([3.0, 4.0])]
    y, _ = forward(xs, "PROD")
    stable = backward(np.ones(2), xs, "PROD", y=y, stable_prod_grad=True)
    np.testing.assert_array_equal(stable[0], [3.0, 4.0])
    # y / x divides by zero, as Caffe's does: that is why stable_prod_grad is the default
    unstable = backward(np.ones(2), xs, "PROD", y=y, stable_prod_grad=False)
    assert np.isnan(unstable[0][0]) and unstable[0][1] == 4.0


def test_which_limits_the_gradients_computed():
    xs = [np.ones(2), np.ones(2), np.ones(2)]
    dxs = backward(np.ones(2), xs, "SUM", which=[1])
    assert dxs[0] is None and dxs[2] is None
    np.testing.assert_array_equal(dxs[1], [1.0, 1.0])


def test_sum_backward_may_write_into_dy():
    """An in-place Eltwise's bottom diff is its top diff: the reference writes that dx last, so
    the others still read the untouched dy (dx_k = coeff_k * dy)."""
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((2, 3)) for _ in range(3)]
    dy = rng.standard_normal((2, 3))
    g = dy.copy()
    dxs = backward(g, xs, "SUM", [2.0, -1.0, 3.0], outs=[g, None, None])
    assert dxs[0] is g
    for dx, c in zip(dxs, (2.0, -1.0, 3.0)):
        np.testing.assert_array_equal(dx, c * dy)


def test_unknown_operation():
    with pytest.raises(ValueError, match="MIN"):
        forward([np.ones(1), np.ones(1)], "MIN")


def test_float32_stays_float32():
    xs = [np.ones(3, np.float32), np.full(3, 2, np.float32)]
    for op in ("SUM", "PROD", "MAX"):
        y, argmax = eltwise_forward(xs, op, [0.5, -1.0] if op == "SUM" else None)
        assert y.dtype == np.float32
        dxs = eltwise_backward(y, xs, op, [0.5, -1.0] if op == "SUM" else None, y, argmax)
        assert all(dx.dtype == np.float32 for dx in dxs)


# --- the fast SUM path against the reference, bit for bit (same operations, same order) -------

FAST_KINDS = [kind for kind in eltwise_forward.impls if kind == "cpu"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), k=st.integers(2, 4),
       with_coeff=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fast_sum_equals_the_reference(kind, dtype, shape, k, with_coeff, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(dtype) for _ in range(k)]
    coeff = list(rng.uniform(-2, 2, k)) if with_coeff else None
    dy = rng.standard_normal(shape).astype(dtype)
    got, _ = eltwise_forward.impls[kind](xs, "SUM", coeff)
    np.testing.assert_array_equal(got, forward(xs, "SUM", coeff)[0])
    for g, w in zip(eltwise_backward.impls[kind](dy, xs, "SUM", coeff),
                    backward(dy, xs, "SUM", coeff)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_fast_sum_in_place_and_into_outs(kind):
    """y may be one of the bottoms (an in-place Eltwise); dy may be one of the outs (the
    bottom diff of an in-place layer), which must then be written last; ``which`` skips."""
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(70000).astype(np.float32) for _ in range(3)]   # > one block
    want = forward([x.copy() for x in xs], "SUM", [1.0, -0.5, 2.0])[0]
    y, _ = eltwise_forward.impls[kind](xs, "SUM", [1.0, -0.5, 2.0], out=xs[1])
    assert y is xs[1]
    np.testing.assert_array_equal(y, want)
    dy = rng.standard_normal(70000).astype(np.float32)
    want = backward(dy.copy(), xs, "SUM", [2.0, 1.0, 3.0])
    g, other = dy.copy(), np.empty_like(dy)
    dxs = eltwise_backward.impls[kind](g, xs, "SUM", [2.0, 1.0, 3.0], outs=[g, other, None],
                                       which=[0, 1])
    assert dxs[0] is g and dxs[1] is other and dxs[2] is None
    np.testing.assert_array_equal(dxs[0], want[0])
    np.testing.assert_array_equal(dxs[1], want[1])


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_fast_path_leaves_prod_max_and_odd_arrays_to_the_reference(kind):
    xs = [np.arange(6.0).reshape(2, 3), np.ones((2, 3))]
    for op in ("PROD", "MAX"):
        np.testing.assert_array_equal(eltwise_forward.impls[kind](xs, op)[0],
                                      forward(xs, op)[0])
    strided = [x[:, ::2] for x in xs]                       # not contiguous
    np.testing.assert_array_equal(eltwise_forward.impls[kind](strided, "SUM")[0],
                                  strided[0] + strided[1])
