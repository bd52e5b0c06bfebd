"""``out=``: the ops the layers call on large blobs write their result into a given array (the
top blob, or the bottom diff) and return it, on every host implementation; LRN and ReLU also run
with out being their input, as in-place layers use them. (The "cuda" impls take CuPy arrays; where
CuPy is installed they are registered too, and tests/gpu checks their out= on the device.)"""

import numpy as np
import pytest

from minicnn import ops
from minicnn.ops.conv import ConvGeometry
from minicnn.ops.pool import PoolGeometry

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
W = RNG.standard_normal((6, 2, 3, 3)).astype(np.float32)
B = RNG.standard_normal(6).astype(np.float32)
CONV = ConvGeometry(3, 1, 1)
POOL = PoolGeometry((3, 3), (2, 2), (1, 1))
LRN = dict(local_size=3, alpha=0.5, beta=0.75, k=2.0)

CASES = {  # name: (op, args, kwargs, which result is written into out)
    "conv2d_forward": (ops.conv2d_forward, (X, W, B), dict(geom=CONV, group=2), None),
    "max_pool2d_forward": (ops.max_pool2d_forward, (X,), dict(geom=POOL), 0),
    "max_pool2d_backward": (ops.max_pool2d_backward, None, {}, None),
    "ave_pool2d_forward": (ops.ave_pool2d_forward, (X,), dict(geom=POOL), None),
    "ave_pool2d_backward": (ops.ave_pool2d_backward, (np.ones((2, 4, 4, 4), np.float32),
                                                      X.shape), dict(geom=POOL), None),
    "lrn_forward": (ops.lrn_forward, (X,), LRN, None),
    "lrn_backward": (ops.lrn_backward, (X * 2, X), LRN, None),
    "relu_forward": (ops.relu_forward, (X, 0.1), {}, None),
    "relu_backward": (ops.relu_backward, (X * 2, X, 0.1), {}, None),
    "inner_product_forward": (ops.inner_product_forward, (X, RNG.standard_normal(
        (5, 168)).astype(np.float32), np.ones(5, np.float32)), {}, None),
}


def host_impls(op):
    """(kind, impl) of the impls that take NumPy arrays: not "cuda"."""
    return [(kind, impl) for kind, impl in op.impls.items() if kind != "cuda"]


def arguments(name):
    op, args, kwargs, part = CASES[name]
    if name == "max_pool2d_backward":
        _, mask = ops.max_pool2d_forward.impls["ref"](X, geom=POOL)
        args = (np.ones(mask.shape, np.float32), mask, X.shape)
    return op, args, kwargs, part


@pytest.mark.parametrize("name", sorted(CASES))
def test_out_is_written_and_returned_by_every_impl(name):
    op, args, kwargs, part = arguments(name)
    want = op.impls["ref"](*args, **kwargs)
    want = want[part] if part is not None else want
    for kind, impl in host_impls(op):
        out = np.full(want.shape, np.nan, np.float32)          # poisoned: every value written
        got = impl(*args, **kwargs, out=out)
        got = got[part] if part is not None else got
        assert got is out, kind
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=kind)
        strided = np.full((*want.shape[:-1], 2 * want.shape[-1]), np.nan, np.float32)
        view = strided[..., ::2]                               # not contiguous: still filled
        impl(*args, **kwargs, out=view)
        np.testing.assert_allclose(view, want, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_conv_backward_writes_dx_out():
    dy = RNG.standard_normal((2, 6, 7, 6)).astype(np.float32)
    want = ops.conv2d_backward.impls["ref"](dy, X, W, geom=CONV, group=2)
    for kind, impl in host_impls(ops.conv2d_backward):
        dx_out = np.full(X.shape, np.nan, np.float32)
        dx, dw, db = impl(dy, X, W, geom=CONV, group=2, dx_out=dx_out)
        assert dx is dx_out, kind
        for got, expected in zip((dx, dw, db), want):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=kind)


def test_conv_backward_adds_onto_dw_acc_and_db_acc():
    dy = RNG.standard_normal((2, 6, 7, 6)).astype(np.float32)
    _, want_w, want_b = ops.conv2d_backward.impls["ref"](dy, X, W, geom=CONV, group=2)
    for kind, impl in host_impls(ops.conv2d_backward):
        acc_w, acc_b = np.ones_like(want_w), np.full_like(want_b, 2)
        _, dw, db = impl(dy, X, W, geom=CONV, group=2, dw_acc=acc_w, db_acc=acc_b)
        assert dw is acc_w and db is acc_b, kind
        np.testing.assert_allclose(acc_w, want_w + 1, rtol=1e-4, atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(acc_b, want_b + 2, rtol=1e-4, atol=1e-4, err_msg=kind)


@pytest.mark.parametrize("name", ["lrn_forward", "lrn_backward", "relu_forward",
                                  "relu_backward"])
def test_in_place_on_the_first_argument(name):
    op, args, kwargs, _ = arguments(name)
    want = op.impls["ref"](*args, **kwargs)
    for kind, impl in host_impls(op):
        first = args[0].copy()
        impl(first, *args[1:], **kwargs, out=first)
        np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_write_out_copies_a_view_of_out_laid_out_differently():
    """write_out skips the copy only when value is out's own elements in out's own layout; a
    transposed view of out (same memory, same shape, other strides) is still written."""
    from minicnn.ops._dispatch import write_out
    out = np.arange(9.0).reshape(3, 3)
    want = out.T.copy()
    assert write_out(out, out.T) is out
    np.testing.assert_array_equal(out, want)
    same = out.reshape(9).reshape(3, 3)                     # the same layout: nothing to do
    assert write_out(out, same) is out
    np.testing.assert_array_equal(out, want)
