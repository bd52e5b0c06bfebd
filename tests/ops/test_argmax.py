"""ArgMax op: Caffe's ordering (descending value, ties to the larger index) on hand examples and
against a sort of (value, index) pairs; output layouts with and without axis."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from minicnn.ops.argmax import argmax_forward, argmax_shape

argmax = argmax_forward.impls["ref"]


def caffe_order(values, k):
    """The first k (value, index) pairs sorted descending, pairs compared as Caffe's
    std::greater<std::pair> does: by value, then by index."""
    return sorted(((float(v), j) for j, v in enumerate(values)), reverse=True)[:k]


def test_ties_go_to_the_larger_index():
    x = np.array([[3.0, 1.0, 3.0, 2.0, 3.0]])
    np.testing.assert_array_equal(argmax(x), [[[4.0]]])
    np.testing.assert_array_equal(argmax(x, top_k=4), [[[4.0, 2.0, 0.0, 3.0]]])
    np.testing.assert_array_equal(argmax(x, top_k=3, out_max_val=True),
                                  [[[4.0, 2.0, 0.0], [3.0, 3.0, 3.0]]])
    np.testing.assert_array_equal(argmax(x, axis=1, top_k=2), [[4.0, 2.0]])
    np.testing.assert_array_equal(argmax(x, axis=1, top_k=2, out_max_val=True), [[3.0, 3.0]])


def test_layouts():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    y = argmax(x, top_k=2)
    assert y.shape == (2, 1, 2, 1) and y.dtype == np.float32      # padded to x's 4 axes
    np.testing.assert_array_equal(y[:, 0, :, 0], [[11, 10], [11, 10]])
    y = argmax(x, top_k=2, out_max_val=True)
    assert y.shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(y[1, :, :, 0], [[11, 10], [23, 22]])
    assert argmax(np.ones((4, 5)), top_k=3).shape == (4, 1, 3)
    assert argmax(np.ones(4)).shape == (4, 1, 1)                  # one value per item
    y = argmax(x, axis=1, top_k=2)
    assert y.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(y, 2 - np.broadcast_to(np.arange(2)[None, :, None, None],
                                                         y.shape))
    y = argmax(x, axis=3, out_max_val=True)
    np.testing.assert_array_equal(y, x[..., 1:])
    assert argmax_shape((2, 3, 4), 2, True, None) == (2, 2, 2)
    assert argmax_shape((2, 3, 4, 5, 6), 2, False, None) == (2, 1, 2, 1, 1)


@st.composite
def tied_cases(draw):
    """Small-integer values, so ties are frequent."""
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-2, 3, shape).astype(np.float64)
    axis = draw(st.none() | st.integers(0, len(shape) - 1))
    dim = int(np.prod(shape[1:])) if axis is None else shape[axis]
    return x, axis, draw(st.integers(1, max(dim, 1))), draw(st.booleans())


@given(tied_cases())
def test_matches_a_sort_of_pairs(case):
    x, axis, k, out_max_val = case
    y = argmax(x, top_k=k, out_max_val=out_max_val, axis=axis)
    assert y.shape == argmax_shape(x.shape, k, out_max_val, axis)
    if axis is None:
        for n in range(x.shape[0]):
            pairs = caffe_order(x[n].reshape(-1), k)
            got = y[n].reshape(y.shape[1], k)
            np.testing.assert_array_equal(got[0], [j for _, j in pairs])
            if out_max_val:
                np.testing.assert_array_equal(got[1], [v for v, _ in pairs])
    else:
        rows, got = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
        for idx in np.ndindex(rows.shape[:-1]):
            pairs = caffe_order(rows[idx], k)
            want = [v for v, _ in pairs] if out_max_val else [j for _, j in pairs]
            np.testing.assert_array_equal(got[idx], want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    assert argmax(np.ones((2, 3), dtype), top_k=2, out_max_val=True).dtype == dtype
