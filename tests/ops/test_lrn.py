"""LRN op: reference against naive loops (ACROSS_CHANNELS, and WITHIN_CHANNEL as Caffe's
square -> AVE pool -> power -> product composite), finite differences, dtypes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.ops.lrn import lrn_backward, lrn_forward
from minicnn.ops.pool import PoolGeometry, ave_pool2d_forward
from minicnn.testing import numerical_grad

fwd, bwd = lrn_forward.impls["ref"], lrn_backward.impls["ref"]


def naive_across(x, n, alpha, beta, k):
    half, (N, C, H, W) = (n - 1) // 2, x.shape
    y = np.zeros_like(x)
    for b in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    total = sum(x[b, j, h, w] ** 2 for j in range(c - half, c + half + 1)
                                if 0 <= j < C)                   # zero past the channel ends
                    y[b, c, h, w] = x[b, c, h, w] * (k + alpha / n * total) ** -beta
    return y


def naive_within(x, n, alpha, beta):
    half, (N, C, H, W) = (n - 1) // 2, x.shape
    y = np.zeros_like(x)
    for b in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    total = sum(x[b, c, i, j] ** 2
                                for i in range(h - half, h + half + 1) if 0 <= i < H
                                for j in range(w - half, w + half + 1) if 0 <= j < W)
                    avg = total / n**2                           # Caffe's pool divides by n^2
                    y[b, c, h, w] = x[b, c, h, w] * (1 + alpha * avg) ** -beta
    return y


@st.composite
def lrn_cases(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 4)),
             draw(st.integers(1, 4)))
    params = {"local_size": draw(st.sampled_from([1, 3, 5, 7])),
              "alpha": draw(st.sampled_from([1e-4, 0.5, 1.0, 3.0])),
              "beta": draw(st.sampled_from([0.75, 0.5, 1.0, 2.0])),
              "k": draw(st.sampled_from([1.0, 2.0, 0.5]))}
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    return x, params


@given(lrn_cases())
def test_across_channels_matches_naive_loop(case):
    x, p = case
    want = naive_across(x, p["local_size"], p["alpha"], p["beta"], p["k"])
    np.testing.assert_allclose(fwd(x, **p, norm_region="ACROSS_CHANNELS"), want, rtol=1e-12)


@given(lrn_cases())
def test_within_channel_matches_naive_loop_and_ignores_k(case):
    x, p = case
    want = naive_within(x, p["local_size"], p["alpha"], p["beta"])
    y = fwd(x, **p, norm_region="WITHIN_CHANNEL")
    np.testing.assert_allclose(y, want, rtol=1e-12)
    np.testing.assert_array_equal(fwd(x, **{**p, "k": 7.0}, norm_region="WITHIN_CHANNEL"), y)


@given(lrn_cases(), st.sampled_from(["ACROSS_CHANNELS", "WITHIN_CHANNEL"]))
def test_backward_matches_finite_differences(case, region):
    x, p = case
    dy = np.random.default_rng(0).standard_normal(x.shape)
    dx = bwd(dy, x, **p, norm_region=region)
    numeric = numerical_grad(lambda: float(np.sum(fwd(x, **p, norm_region=region) * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_within_channel_is_caffes_layer_composite():
    # square -> Pooling AVE (kernel n, pad (n-1)/2, stride 1) -> Power -> Eltwise PROD
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 4))
    n, alpha, beta = 3, 2.0, 0.75
    avg = ave_pool2d_forward.impls["ref"](x * x, geom=PoolGeometry((n, n), (1, 1), (1, 1)))
    np.testing.assert_allclose(fwd(x, local_size=n, alpha=alpha, beta=beta,
                                   norm_region="WITHIN_CHANNEL"),
                               x * (1 + alpha * avg) ** -beta, rtol=1e-14)
    # at the corner 4 pixels fall inside, yet the divisor is 9
    corner = np.sum(x[0, 0, :2, :2] ** 2) / 9
    assert avg[0, 0, 0, 0] == pytest.approx(corner)


def test_across_channels_hand_worked():
    # one channel, n = 5: the sum sees only the channel itself (the others are zero padding)
    x = np.array([2.0]).reshape(1, 1, 1, 1)
    y = fwd(x, local_size=5, alpha=1.0, beta=0.5, k=1.0)
    assert y.item() == pytest.approx(2.0 / np.sqrt(1.0 + 4.0 / 5))
    # CaffeNet's norm1 settings on three channels
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = fwd(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0).ravel()
    np.testing.assert_allclose(y, np.array([1.0, 2.0, 3.0]) * (1 + 1e-4 / 5 * 14) ** -0.75)
    y = fwd(x, local_size=3, alpha=1.0, beta=1.0, k=2.0).ravel()
    np.testing.assert_allclose(y, [1 / (2 + 5 / 3), 2 / (2 + 14 / 3), 3 / (2 + 13 / 3)])


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_float32_stays_float32_and_inputs_are_not_written(region):
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 3)).astype(np.float32)
    keep = x.copy()
    p = {"local_size": 3, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "norm_region": region}
    y = lrn_forward(x, **p)
    assert y.dtype == np.float32
    assert lrn_backward(y, x, **p).dtype == np.float32
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(y, fwd(x.astype(np.float64), **p), rtol=1e-5)


@pytest.mark.parametrize("local_size", [0, 2, 4])
def test_even_local_size_is_refused(local_size):
    with pytest.raises(LayerError, match=f"odd, got {local_size}"):
        fwd(np.ones((1, 3, 2, 2)), local_size=local_size)


# --- fast paths against the reference (I2) -------------------------------------------------------

FAST_KINDS = [kind for kind in lrn_forward.impls if kind == "cpu"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=lrn_cases(), wide=st.booleans())
def test_fast_paths_match_the_reference(kind, dtype, case, wide):
    """The native window sums against the reference's, both regions
    (WITHIN_CHANNEL falls back to the reference), images wider than one pixel block."""
    x, p = case
    if wide:                                       # more pixels than one block of 256
        x = np.random.default_rng(10).standard_normal((2, x.shape[1], 3, 100))
    x = x.astype(dtype)
    dy = np.random.default_rng(11).standard_normal(x.shape).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for region in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
        y = lrn_forward.impls[kind](x, norm_region=region, **p)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, lrn_forward.impls["ref"](x, norm_region=region, **p), **tol)
        np.testing.assert_allclose(lrn_backward.impls[kind](dy, x, norm_region=region, **p),
                                   lrn_backward.impls["ref"](dy, x, norm_region=region, **p),
                                   **tol)


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_paths_keep_window_sums_local_at_extremes(kind, dtype):
    """An x^2 that overflows (or dwarfs its neighbours) stays in its own windows: a sliding
    channel sum would carry inf (or the cancellation of the large term) into every later
    channel, giving 0, inf or NaN where the reference gives about x."""
    big = np.sqrt(np.finfo(dtype).max) * 4                     # big**2 overflows to inf
    large = 1e4 if dtype == np.float32 else 1e9                # large**2 swamps 1 + 1
    for x0, k in ((big, 1.0), (large, 0.0)):
        x = np.ones((1, 8, 2, 3), dtype)
        x[0, 1 if k else 0] = x0
        dy = np.ones_like(x)
        p = dict(local_size=3, alpha=1.0 if k == 0 else 1e-4, beta=0.75, k=k)
        with np.errstate(over="ignore", invalid="ignore"):
            y, want = lrn_forward.impls[kind](x, **p), fwd(x, **p)
            dx, want_dx = lrn_backward.impls[kind](dy, x, **p), bwd(dy, x, **p)
        far = slice(3, None)                                   # channels outside x0's windows
        assert np.all(np.isfinite(want[:, far])) and np.all(want[:, far] > 0.5)
        np.testing.assert_allclose(y[:, far], want[:, far], rtol=1e-5)
        np.testing.assert_allclose(dx[:, far], want_dx[:, far], rtol=1e-4, atol=1e-6)
