"""Elementwise neuron ops (PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, Threshold):
the reference against definitions written here with the math module, and finite differences."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from minicnn.ops import neurons as nr
from minicnn.testing import numerical_grad

seeds = st.integers(0, 2**32 - 1)
shapes = array_shapes(min_dims=1, max_dims=4, max_side=4)


def ref(op):
    return op.impls["ref"]


def elementwise(f, x):
    """f applied to each element with Python floats: the naive definition."""
    return np.array([f(float(v)) for v in x.reshape(-1)]).reshape(x.shape)


def away_from(x, kink, gap=1e-2):
    """x with values closer than gap to kink pushed off it (gradient checks avoid kinks)."""
    return np.where(np.abs(x - kink) < gap, kink + np.where(x >= kink, gap, -gap), x)


def check_grad(forward, backward, x, rtol=1e-6, atol=1e-8, seed=0):
    """backward(dy, x) against central differences of sum(forward(x) * dy), in float64."""
    dy = np.random.default_rng(seed).standard_normal(x.shape)
    numeric = numerical_grad(lambda: float(np.sum(forward(x) * dy)), x)
    np.testing.assert_allclose(backward(dy, x), numeric, rtol=rtol, atol=atol)


def draw_x(seed, shape, low=-3.0, high=3.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


# --- PReLU ----------------------------------------------------------------------------------------

@st.composite
def prelu_cases(draw):
    shape = draw(array_shapes(min_dims=2, max_dims=4, max_side=4))
    rng = np.random.default_rng(draw(seeds))
    shared = draw(st.booleans())
    slope = rng.uniform(-1, 1, () if shared else (shape[1],))
    return away_from(rng.uniform(-3, 3, shape), 0.0), slope


def prelu_loop(x, slope):
    y = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        a = slope if slope.ndim == 0 else slope[idx[1]]
        y[idx] = max(x[idx], 0) + a * min(x[idx], 0)
    return y


@given(prelu_cases())
def test_prelu_forward_matches_definition(case):
    x, slope = case
    np.testing.assert_allclose(ref(nr.prelu_forward)(x, slope), prelu_loop(x, slope), rtol=1e-15)


@given(prelu_cases())
def test_prelu_backward_matches_finite_differences(case):
    x, slope = case
    dy = np.random.default_rng(1).standard_normal(x.shape)
    dx, dslope = ref(nr.prelu_backward)(dy, x, slope)
    np.testing.assert_allclose(
        dx, numerical_grad(lambda: float(np.sum(prelu_loop(x, slope) * dy)), x), rtol=1e-6,
        atol=1e-8)
    slope = slope.copy()
    numeric = numerical_grad(lambda: float(np.sum(ref(nr.prelu_forward)(x, slope) * dy)), slope)
    assert dslope.shape == slope.shape
    np.testing.assert_allclose(dslope, numeric, rtol=1e-6, atol=1e-8)


def test_prelu_kink_takes_the_slope_branch_and_shared_slope_sums_everything():
    x = np.array([[-2.0, 0.0, 3.0]])                    # (N=1, C=3)
    dx, dslope = ref(nr.prelu_backward)(np.ones_like(x), x, np.array(0.25))
    np.testing.assert_array_equal(dx, [[0.25, 0.25, 1.0]])
    assert dslope.shape == () and dslope == -2.0        # only x <= 0 counts: -2 + 0
    dx, dslope = ref(nr.prelu_backward)(np.ones_like(x), x, np.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(dx, [[0.1, 0.2, 1.0]])
    np.testing.assert_array_equal(dslope, [-2.0, 0.0, 0.0])


# --- ELU, Sigmoid, TanH ---------------------------------------------------------------------------

alphas = st.sampled_from([1.0, 0.3, 2.5, 0.0, -0.5])


@given(shapes, seeds, alphas)
def test_elu_forward_and_backward(shape, seed, alpha):
    x = away_from(draw_x(seed, shape), 0.0)

    def definition(v):
        return v if v > 0 else alpha * (math.exp(v) - 1)

    y = ref(nr.elu_forward)(x, alpha)
    np.testing.assert_allclose(y, elementwise(definition, x), rtol=1e-12, atol=1e-15)
    check_grad(lambda v: elementwise(definition, v),
               lambda dy, v: ref(nr.elu_backward)(dy, v, ref(nr.elu_forward)(v, alpha), alpha), x)
    # y stands in for x in place: same sign when alpha >= 0
    if alpha >= 0:
        np.testing.assert_array_equal(ref(nr.elu_backward)(x, y, y, alpha),
                                      ref(nr.elu_backward)(x, x, y, alpha))


@given(shapes, seeds)
def test_sigmoid_and_tanh(shape, seed):
    x = draw_x(seed, shape, -6, 6)
    y = ref(nr.sigmoid_forward)(x)
    np.testing.assert_allclose(y, elementwise(lambda v: 1 / (1 + math.exp(-v)), x), rtol=1e-12)
    check_grad(ref(nr.sigmoid_forward),
               lambda dy, v: ref(nr.sigmoid_backward)(dy, ref(nr.sigmoid_forward)(v)), x)
    np.testing.assert_allclose(ref(nr.tanh_forward)(x), elementwise(math.tanh, x), rtol=1e-12)
    check_grad(ref(nr.tanh_forward),
               lambda dy, v: ref(nr.tanh_backward)(dy, ref(nr.tanh_forward)(v)), x)


# --- AbsVal ---------------------------------------------------------------------------------------

@given(shapes, seeds)
def test_absval(shape, seed):
    x = away_from(draw_x(seed, shape), 0.0)
    np.testing.assert_array_equal(ref(nr.absval_forward)(x), elementwise(abs, x))
    check_grad(ref(nr.absval_forward), ref(nr.absval_backward), x)


def test_absval_derivative_is_zero_at_zero():
    x = np.array([-1.5, 0.0, 2.0])
    np.testing.assert_array_equal(ref(nr.absval_backward)(np.full(3, 2.0), x), [-2.0, 0.0, 2.0])


# --- Power, Exp, Log ------------------------------------------------------------------------------

@st.composite
def affine_cases(draw, powers):
    """(x, power, scale, shift) with u = shift + scale*x in [0.2, 3] (inside every domain)."""
    shape = draw(shapes)
    power = draw(powers)
    scale = draw(st.sampled_from([1.0, -2.0, 0.5, 3.0]))
    shift = draw(st.sampled_from([0.0, 1.0, -0.5]))
    u = draw_x(draw(seeds), shape, 0.2, 3.0)
    return (u - shift) / scale, power, scale, shift


@given(affine_cases(st.sampled_from([1.0, 2.0, 3.0, 0.5, -1.0, 1.5, 0.0, -2.5])))
def test_power(case):
    x, power, scale, shift = case
    y = ref(nr.power_forward)(x, power, scale, shift)
    np.testing.assert_allclose(y, elementwise(lambda v: math.pow(shift + scale * v, power), x),
                               rtol=1e-13)
    check_grad(lambda v: ref(nr.power_forward)(v, power, scale, shift),
               lambda dy, v: ref(nr.power_backward)(dy, v, power, scale, shift), x, rtol=1e-5)


@given(shapes, seeds, st.sampled_from([2.0, 3.0, -1.0]), st.sampled_from([-1.5, 0.5]))
def test_power_of_negative_bases_with_integer_powers(shape, seed, power, scale):
    x = away_from(draw_x(seed, shape, -2, 2), 0.0, 0.2)
    np.testing.assert_allclose(ref(nr.power_forward)(x, power, scale, 0.0),
                               elementwise(lambda v: math.pow(scale * v, power), x), rtol=1e-13)
    check_grad(lambda v: ref(nr.power_forward)(v, power, scale, 0.0),
               lambda dy, v: ref(nr.power_backward)(dy, v, power, scale, 0.0), x, rtol=1e-5)


def test_power_special_cases():
    x = np.array([-1.0, 0.0, 2.0])
    dy = np.ones(3)
    # the direct derivative exists at u = 0 (Caffe's shortcut power*y/x gives NaN there)
    np.testing.assert_array_equal(ref(nr.power_backward)(dy, x, 2.0, 1.0, 0.0), [-2.0, 0.0, 4.0])
    np.testing.assert_array_equal(ref(nr.power_backward)(dy, x, 3.0, 1.0, 0.0), [3.0, 0.0, 12.0])
    # power 0: y = 1 everywhere (even 0^0), dx = 0; scale 0: y = shift^power, dx = 0
    np.testing.assert_array_equal(ref(nr.power_forward)(x, 0.0, 2.0, 0.0), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ref(nr.power_backward)(dy, x, 0.0, 2.0, 0.0), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(ref(nr.power_forward)(x, 2.0, 0.0, 3.0), [9.0, 9.0, 9.0])
    np.testing.assert_array_equal(ref(nr.power_backward)(dy, x, 0.5, 0.0, 0.0), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(ref(nr.power_backward)(dy, x, 1.0, -3.0, 5.0), [-3.0] * 3)


bases = st.sampled_from([-1.0, 2.0, 0.5, 10.0])


@given(affine_cases(bases))
def test_exp(case):
    x, base, scale, shift = case
    x = x / 2                                           # keep base^u moderate
    e = math.e if base == -1 else base
    y = ref(nr.exp_forward)(x, base, scale, shift)
    np.testing.assert_allclose(y, elementwise(lambda v: e ** (shift + scale * v), x), rtol=1e-13)
    check_grad(lambda v: ref(nr.exp_forward)(v, base, scale, shift),
               lambda dy, v: ref(nr.exp_backward)(dy, ref(nr.exp_forward)(v, base, scale, shift),
                                                  base, scale, shift), x, rtol=1e-5)


@given(affine_cases(bases))
def test_log(case):
    x, base, scale, shift = case
    e = math.e if base == -1 else base
    y = ref(nr.log_forward)(x, base, scale, shift)
    np.testing.assert_allclose(y, elementwise(lambda v: math.log(shift + scale * v, e), x),
                               rtol=1e-12, atol=1e-15)
    check_grad(lambda v: ref(nr.log_forward)(v, base, scale, shift),
               lambda dy, v: ref(nr.log_backward)(dy, v, base, scale, shift), x, rtol=1e-5)


def test_exp_of_base_one_is_constant():
    x = np.array([-3.0, 0.0, 5.0])
    np.testing.assert_array_equal(ref(nr.exp_forward)(x, 1.0, 2.0, 1.0), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ref(nr.exp_backward)(np.ones(3), np.ones(3), 1.0, 2.0, 1.0),
                                  [0.0, 0.0, 0.0])


# --- BNLL, Threshold ------------------------------------------------------------------------------

@given(shapes, seeds)
def test_bnll(shape, seed):
    x = draw_x(seed, shape, -20, 20)
    y = ref(nr.bnll_forward)(x)
    np.testing.assert_allclose(y, elementwise(lambda v: math.log1p(math.exp(v)), x), rtol=1e-12)
    check_grad(ref(nr.bnll_forward), ref(nr.bnll_backward), x, atol=1e-7)   # y up to 20


def test_bnll_at_large_inputs_matches_caffe_clamp():
    x = np.array([-1000.0, -60.0, 49.0, 50.0, 1000.0])
    y = ref(nr.bnll_forward)(x)
    assert np.all(np.isfinite(y)) and y[-1] == 1000.0 and y[0] == 0.0
    dx = ref(nr.bnll_backward)(np.ones(5), x)
    np.testing.assert_array_equal(dx[3:], [1.0, 1.0])       # e^50 / (e^50 + 1) rounds to 1
    assert dx[0] == 0.0 and 0 < dx[1] < 1e-25


@given(shapes, seeds, st.sampled_from([0.0, 0.5, -1.25]))
def test_threshold(shape, seed, threshold):
    x = draw_x(seed, shape)
    x.reshape(-1)[0] = threshold                           # equal is not above
    np.testing.assert_array_equal(ref(nr.threshold_forward)(x, threshold),
                                  elementwise(lambda v: 1.0 if v > threshold else 0.0, x))


# --- dtypes and warnings --------------------------------------------------------------------------

FORWARDS = {
    "prelu": lambda x: nr.prelu_forward(x, np.full(x.shape[1], 0.25, x.dtype)),
    "elu": lambda x: nr.elu_forward(x, 0.5), "sigmoid": nr.sigmoid_forward,
    "tanh": nr.tanh_forward, "absval": nr.absval_forward,
    "power": lambda x: nr.power_forward(x, 2.0, 0.5, 1.0),
    "power0": lambda x: nr.power_forward(x, 0.0, 0.5, 1.0),
    "exp": lambda x: nr.exp_forward(x, 2.0, 0.5, 1.0),
    "log": lambda x: nr.log_forward(x, 10.0, 0.5, 5.0), "bnll": nr.bnll_forward,
    "threshold": lambda x: nr.threshold_forward(x, 0.1),
}
BACKWARDS = {
    "prelu": lambda d, x: nr.prelu_backward(d, x, np.full(x.shape[1], 0.25, x.dtype))[0],
    "prelu_slope": lambda d, x: nr.prelu_backward(d, x, np.full(x.shape[1], 0.25, x.dtype))[1],
    "elu": lambda d, x: nr.elu_backward(d, x, x, 0.5), "sigmoid": nr.sigmoid_backward,
    "tanh": nr.tanh_backward, "absval": nr.absval_backward,
    "power": lambda d, x: nr.power_backward(d, x, 2.5, 0.5, 1.0),
    "exp": lambda d, x: nr.exp_backward(d, x, 2.0, 0.5, 1.0),
    "log": lambda d, x: nr.log_backward(d, x, 10.0, 0.5, 5.0), "bnll": nr.bnll_backward,
}


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_forward_keeps_float32(name):
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(2, 3, 2)
    assert FORWARDS[name](x).dtype == np.float32
    assert FORWARDS[name](x.astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize("name", sorted(BACKWARDS))
def test_backward_keeps_float32(name):
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(2, 3, 2)
    assert BACKWARDS[name](x, x).dtype == np.float32


def test_extreme_inputs_give_no_warnings():
    x = np.array([[-1000.0, -88.0, 0.0, 88.0, 1000.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("elu", "sigmoid", "tanh", "bnll", "prelu", "absval", "threshold"):
            assert np.all(np.isfinite(FORWARDS[name](x))), name
        np.testing.assert_array_equal(nr.sigmoid_forward(x)[0, [0, -1]], [0.0, 1.0])
        for name in ("elu", "sigmoid", "tanh", "bnll", "absval"):
            assert np.all(np.isfinite(BACKWARDS[name](np.ones_like(x), x))), name
        # outside a domain or past float range: Caffe's NaN/inf, quietly
        assert np.isinf(nr.exp_forward(x, -1.0, 1.0, 0.0)[0, -1])
        assert nr.exp_forward(x, -1.0, 1.0, 0.0)[0, 0] == 0.0
        log = nr.log_forward(x, -1.0, 1.0, 0.0)
        assert np.isnan(log[0, 0]) and log[0, 2] == -np.inf
        assert np.isnan(nr.power_forward(x, 0.5, 1.0, 0.0)[0, 0])
        assert np.isinf(nr.power_backward(np.ones_like(x), x, 0.5, 1.0, 0.0)[0, 2])
