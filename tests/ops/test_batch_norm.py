"""BatchNorm ops: reference against a per-channel definition, finite differences, statistics."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.batch_norm import (
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_global_stats,
    batch_norm_update_stats,
)
from minicnn.testing import numerical_grad

forward = batch_norm_forward.impls["ref"]
backward = batch_norm_backward.impls["ref"]

# (N,), (N, C) or (N, C, *spatial) with up to two spatial axes
shapes = st.tuples(st.integers(1, 3), st.lists(st.integers(1, 3), max_size=3)).map(
    lambda t: (t[0], *t[1]))
seeds = st.integers(0, 2**32 - 1)


def naive_batch_norm(x, eps):
    """Per channel, by the textbook definition; a 1-D x is one channel."""
    x3 = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    y = np.empty_like(x3)
    for c in range(x3.shape[1]):
        values = x3[:, c, :]
        mean = values.sum() / values.size
        var = ((values - mean) ** 2).sum() / values.size
        y[:, c, :] = (values - mean) / np.sqrt(var + eps)
    return y.reshape(x.shape)


@given(shapes, seeds, st.sampled_from([1e-5, 1e-3, 0.5]))
def test_forward_matches_definition(shape, seed, eps):
    x = 3 + 2 * np.random.default_rng(seed).standard_normal(shape)
    y, mean, var, std = forward(x, eps)
    np.testing.assert_allclose(y, naive_batch_norm(x, eps), rtol=1e-10, atol=1e-12)
    channels = shape[1] if len(shape) > 1 else 1
    assert mean.shape == var.shape == std.shape == (channels,)
    np.testing.assert_allclose(std, np.sqrt(var + eps))


def test_forward_with_given_statistics():
    x = np.arange(12.0).reshape(2, 3, 2)
    mean, var = np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.0, 1.0])
    y, _, _, std = forward(x, 0.25, mean, var)
    want = (x - mean[None, :, None]) / np.sqrt(var + 0.25)[None, :, None]
    np.testing.assert_allclose(y, want)
    np.testing.assert_allclose(std, np.sqrt(var + 0.25))


@given(shapes, seeds)
def test_training_backward_matches_finite_differences(shape, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    y, _, _, std = forward(x, 1e-5)
    dx = backward(dy, y, std, use_global_stats=False)
    # y depends on the whole batch through mean and var: differentiate the full objective
    numeric = numerical_grad(lambda: float(np.sum(forward(x, 1e-5)[0] * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-6)


@given(shapes, seeds)
def test_global_backward_matches_finite_differences(shape, seed):
    rng = np.random.default_rng(seed)
    channels = shape[1] if len(shape) > 1 else 1
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    mean, var = rng.standard_normal(channels), rng.uniform(0.1, 2.0, channels)
    y, _, _, std = forward(x, 1e-5, mean, var)
    dx = backward(dy, y, std, use_global_stats=True)
    numeric = numerical_grad(lambda: float(np.sum(forward(x, 1e-5, mean, var)[0] * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_update_stats_by_hand():
    mean_acc, var_acc, s = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([2.0])
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 6.0])
    new_mean, new_var, new_s = batch_norm_update_stats.impls["ref"](
        mean_acc, var_acc, s, mean, var, 4, 0.9)
    np.testing.assert_allclose(new_mean, [0.9 * 1 + 0.5, 0.9 * 2 - 1.0])
    np.testing.assert_allclose(new_var, [0.9 * 3 + 4 / 3 * 2, 0.9 * 4 + 4 / 3 * 6])
    np.testing.assert_allclose(new_s, [0.9 * 2 + 1])
    # m == 1: no bias correction (Caffe's factor 1 rather than a division by zero)
    _, one_var, _ = batch_norm_update_stats.impls["ref"](mean_acc, var_acc, s, mean, var, 1, 0.9)
    np.testing.assert_allclose(one_var, 0.9 * var_acc + var)


def test_global_stats_divide_by_the_scale_factor_and_are_zero_without_it():
    mean, var = batch_norm_global_stats.impls["ref"](np.array([2.0, 4.0]), np.array([6.0, 8.0]),
                                                     np.array([2.0]))
    np.testing.assert_allclose(mean, [1.0, 2.0])
    np.testing.assert_allclose(var, [3.0, 4.0])
    mean, var = batch_norm_global_stats.impls["ref"](np.array([2.0]), np.array([6.0]),
                                                     np.array([0.0]))
    np.testing.assert_array_equal(mean, [0.0])
    np.testing.assert_array_equal(var, [0.0])


def test_float32_stays_float32():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    y, mean, var, std = batch_norm_forward(x, 1e-5)
    assert y.dtype == mean.dtype == var.dtype == std.dtype == np.float32
    assert batch_norm_backward(x, y, std).dtype == np.float32
    acc = batch_norm_update_stats(mean, var, np.ones(1, np.float32), mean, var, 8, 0.999)
    assert all(a.dtype == np.float32 for a in acc)
    assert all(a.dtype == np.float32 for a in batch_norm_global_stats(mean, var, acc[2]))


# --- fast paths against the reference (I2) -------------------------------------------------------

FAST_KINDS = [kind for kind in batch_norm_forward.impls if kind == "cpu"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes, seed=seeds, global_stats=st.booleans())
def test_fast_paths_match_the_reference(kind, dtype, shape, seed, global_stats):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1] if len(shape) > 1 else 1
    stats = (rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.5) \
        if global_stats else (None, None)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    got = batch_norm_forward.impls[kind](x, 1e-5, *stats)
    want = forward(x, 1e-5, *stats)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)
    np.testing.assert_allclose(batch_norm_backward.impls[kind](dy, want[0], want[3], global_stats),
                               backward(dy, want[0], want[3], global_stats), **tol)


@pytest.mark.parametrize("kind", ["ref"] + FAST_KINDS)
def test_out_and_in_place_backward(kind):
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    y, _, _, std = forward(x, 1e-5)
    want = backward(dy, y, std)
    out = np.full(x.shape, np.nan)
    assert batch_norm_forward.impls[kind](x, 1e-5, out=out)[0] is out
    np.testing.assert_allclose(out, y)
    g = dy.copy()
    assert batch_norm_backward.impls[kind](g, y, std, out=g) is g      # dx over dy: in place
    np.testing.assert_allclose(g, want)
