"""InnerProduct op: reference against an explicit sum and finite differences (float64)."""

import math

import numpy as np
import pytest
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


# --- fast paths against the reference (I2) -------------------------------------------------------

FAST_KINDS = [kind for kind in inner_product_forward.impls if kind == "cpu"]


@st.composite
def big_cases(draw):
    """float32 cases large enough to cross the GEMM's blocks: K past one inner block (256),
    N past a panel and past a chunk of 128 rows of W (the input gradient's row-streaming
    product), M past a row panel; M up to 80, past the batch size (64) up to which the filter
    gradient streams dW as a rank-M update and the input gradient streams W row by row."""
    m, k, n = draw(st.integers(1, 80)), draw(st.integers(1, 600)), draw(st.integers(1, 300))
    transpose, bias = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n) if transpose else (n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return x, w, b, transpose


@pytest.mark.parametrize("kind", FAST_KINDS)
@given(case=big_cases())
def test_fast_paths_match_the_reference(kind, case):
    x, w, b, transpose = case
    tol = dict(rtol=1e-4, atol=1e-3)
    y = inner_product_forward.impls[kind](x, w, b, transpose=transpose)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, forward(x, w, b, transpose=transpose), **tol)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    want = backward(dy, x, w, transpose=transpose)
    got = inner_product_backward.impls[kind](dy, x, w, transpose=transpose)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        np.testing.assert_allclose(g, r, err_msg=name, **tol)


# Edges of the fast kernels (csrc/inner_product.cpp): the forward's blocks of 8 rows of W (tiles
# of 4 by 4, fewer at the end; each thread a run of blocks, one with none when there is one
# block) with inputs in steps of 16, and past a batch of 64 its tasks of 16 rows of W and
# stretches of 256 inputs; the input gradient's blocks of 48 columns, 8 rows of dY at a time and
# chunks of 128 rows of W, split between the threads (one block only: a thread with none); a
# batch of 64 (the last on the streaming paths) and 65; without AVX-512, the forward's transposed
# product (W's rows in place, six at a time, the batch packed in 16-wide panels), and up to a
# batch of 8 the input gradient's passes over W (four rows of dY a pass).
EDGE_CASES = [  # (batch M, inputs K, outputs N)
    (1, 1, 1), (1, 9, 17), (5, 300, 33), (8, 48, 16), (9, 49, 50), (16, 257, 129),
    (16, 600, 64), (17, 30, 300), (3, 97, 255), (64, 100, 130), (65, 100, 130), (16, 512, 4),
    (4, 16, 9), (13, 31, 8), (64, 17, 7), (65, 600, 300),
    (3, 0, 5),                                               # no inputs: y is the bias alone
    # without AVX-512 the forward is the transposed product, inner blocks of 2^19 / M inputs:
    # two here (5242 and 58)
    (100, 5300, 37),
    # one image on AVX2: four rows of W at a time, two left over
    (1, 600, 22),
    # the AVX2 passes over W for a batch up to 8 (the input gradient, and the transposed
    # forward): two passes, on both threads, each thread's columns ending in a partial vector
    (8, 1001, 37), (7, 250, 301),
]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("m, k, n", EDGE_CASES)
def test_fast_kernels_at_their_block_edges(kind, m, k, n, transpose):
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n) if transpose else (n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, k / 600))   # float32 sums of k products
    y = np.full((m, n), np.nan, np.float32)             # unwritten entries would stay NaN
    inner_product_forward.impls[kind](x, w, b, transpose=transpose, out=y)
    np.testing.assert_allclose(y, forward(x, w, b, transpose=transpose), **tol)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    want = backward(dy, x, w, transpose=transpose)
    got = inner_product_backward.impls[kind](dy, x, w, transpose=transpose, dx_out=dx)
    assert got[0] is dx
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        np.testing.assert_allclose(g, r, err_msg=name, **tol)


@pytest.mark.parametrize("kind", ["ref"] + FAST_KINDS)
def test_backward_adds_into_the_accumulators_and_writes_dx_out(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 5)).astype(np.float32)             # axis 1: K = 10
    w = rng.standard_normal((7, 10)).astype(np.float32)
    dy = rng.standard_normal((3, 7)).astype(np.float32)
    want_dx, want_dw, want_db = backward(dy, x, w)
    dw_acc, db_acc = np.ones((7, 10), np.float32), np.ones(7, np.float32)
    dx_out = np.full(x.shape, np.nan, np.float32)
    dx, dw, db = inner_product_backward.impls[kind](dy, x, w, dx_out=dx_out, dw_acc=dw_acc,
                                                    db_acc=db_acc)
    assert dx is dx_out and dw is dw_acc and db is db_acc
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, want_dw + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, want_db + 1, rtol=1e-5, atol=1e-5)
