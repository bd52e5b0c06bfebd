"""Sigmoid cross-entropy loss op: against the textbook definition, every normalization,
ignore_label (with Caffe's integer truncation of targets), finite differences, large |x|."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from minicnn.ops.sigmoid_cross_entropy import (
    resolve_sce_normalization,
    sigmoid_cross_entropy_backward,
    sigmoid_cross_entropy_forward,
)
from minicnn.testing import numerical_grad

forward = sigmoid_cross_entropy_forward.impls["ref"]
backward = sigmoid_cross_entropy_backward.impls["ref"]
MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]


def naive_loss(x, t, ignore_label, mode):
    """-sum(t log p + (1 - t) log(1 - p)) / D with plain Python floats, loop by loop."""
    total, valid = 0.0, 0
    for xi, ti in zip(x.reshape(-1), t.reshape(-1)):
        if ignore_label is not None and int(ti) == ignore_label:
            continue
        p = 1 / (1 + math.exp(-xi))
        total -= ti * math.log(p) + (1 - ti) * math.log(1 - p)
        valid += 1
    n = x.shape[0]
    d = {"FULL": x.size, "VALID": valid, "BATCH_SIZE": n, "NONE": 1}[mode]
    return total / max(1, d)


@st.composite
def cases(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = 3 * rng.standard_normal(shape)
    t = rng.random(shape) if draw(st.booleans()) else rng.integers(0, 2, shape).astype(float)
    ignore = draw(st.sampled_from([None, -1, 1]))
    if ignore == -1:
        t[rng.random(shape) < 0.3] = -1
    return x, t, ignore, draw(st.sampled_from(MODES))


@given(cases())
def test_forward_matches_the_definition(case):
    x, t, ignore, mode = case
    loss, prob = forward(x, t, ignore_label=ignore, normalization=mode)
    assert loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(loss, naive_loss(x, t, ignore, mode), rtol=1e-10, atol=1e-12)
    # Caffe's tanh form of the sigmoid: 0.5 tanh(x/2) + 0.5 cancels to an absolute error of a
    # few 1e-17 where the probability is small (1.3e-12 relative at x = -11)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-x)), rtol=1e-12, atol=1e-16)


@given(cases(), st.sampled_from([1.0, 0.5, 3.0]))
def test_backward_matches_finite_differences(case, weight):
    x, t, ignore, mode = case
    _, prob = forward(x, t, ignore_label=ignore, normalization=mode)
    dx = backward(prob, t, ignore_label=ignore, normalization=mode, loss_weight=weight)
    def loss():
        return weight * float(forward(x, t, ignore_label=ignore, normalization=mode)[0])
    numeric = numerical_grad(loss, x)
    # the summed loss can be a few hundred: its rounding (a few ulps of each of up to 256
    # terms) over central differences of 1e-6 reaches ~1e-7 (1.3e-7 drawn at a loss of ~300)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-7 * max(1.0, abs(loss()) / 50))


def test_ignored_targets_count_nowhere_and_targets_are_truncated():
    x = np.array([[0.5, -1.0, 2.0, 3.0]])
    t = np.array([[1.0, 0.0, 0.7, 1.0]])
    # ignore_label 0: the soft target 0.7 truncates to 0 and is ignored too (Caffe's int cast)
    loss, prob = forward(x, t, ignore_label=0, normalization="VALID")
    kept = [0, 3]
    np.testing.assert_allclose(loss, naive_loss(x[:, kept], t[:, kept], None, "NONE") / 2)
    dx = backward(prob, t, ignore_label=0, normalization="VALID")
    np.testing.assert_array_equal(dx[0, [1, 2]], [0.0, 0.0])
    np.testing.assert_allclose(dx[0, kept], (prob[0, kept] - 1) / 2)


def test_everything_ignored_divides_by_one():
    x, t = np.ones((2, 3)), np.full((2, 3), 5.0)
    loss, prob = forward(x, t, ignore_label=5, normalization="VALID")
    assert loss == 0.0
    np.testing.assert_array_equal(backward(prob, t, ignore_label=5, normalization="VALID"), 0)


@pytest.mark.parametrize("mode, divisor", [("FULL", 12), ("VALID", 12), ("BATCH_SIZE", 2),
                                           ("NONE", 1)])
def test_normalizers(mode, divisor):
    x = np.linspace(-2, 2, 12).reshape(2, 3, 2)
    t = (x > 0.3).astype(float)
    loss, _ = forward(x, t, normalization=mode)
    np.testing.assert_allclose(loss, naive_loss(x, t, None, "NONE") / divisor)


def test_default_normalization_is_batch_size():
    assert resolve_sce_normalization() == "BATCH_SIZE"
    assert resolve_sce_normalization(normalize=True) == "VALID"
    assert resolve_sce_normalization(normalize=False) == "BATCH_SIZE"
    assert resolve_sce_normalization("FULL", normalize=True) == "FULL"    # normalization wins
    assert resolve_sce_normalization("NONE") == "NONE"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_scores_are_stable(dtype):
    x = np.array([[-1000.0, 1000.0, -1000.0, 1000.0, 0.0]], dtype)
    t = np.array([[0.0, 1.0, 1.0, 0.0, 1.0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no overflow warnings
        loss, prob = forward(x, t, normalization="NONE")
        dx = backward(prob, t, normalization="NONE")
    assert loss.dtype == dtype and prob.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(loss, 2000 + math.log(2), rtol=1e-6)   # two wrong by 1000 each
    np.testing.assert_allclose(dx, [[0.0, 0.0, -1.0, 1.0, -0.5]])


def test_all_ignored_gives_plus_zero_loss():
    """Nothing to sum: the loss is +0, as Caffe's sum from 0 (a log would show "-0")."""
    loss, _ = forward(np.array([[2.0, -3.0]]), np.array([[1.0, 1.0]]), ignore_label=1)
    assert loss == 0 and not np.signbit(loss)
