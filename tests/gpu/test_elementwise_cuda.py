"""ReLU, the neurons, Dropout, Eltwise, inner product, Interp, MVN, Permute and the channel
shuffle on the GPU against the NumPy reference, float32 and float64, outputs poisoned where the
op takes out=."""

import numpy as np
import pytest

import minicnn.cuda
from minicnn.ops import neurons as nr
from minicnn.ops.axpy import axpy_backward, axpy_forward
from minicnn.ops.dropout import dropout_backward, dropout_forward, dropout_mask
from minicnn.ops.eltwise import eltwise_backward, eltwise_forward
from minicnn.ops.inner_product import inner_product_backward, inner_product_forward
from minicnn.ops.interp import interp_backward, interp_forward
from minicnn.ops.mvn import mvn_backward, mvn_forward
from minicnn.ops.neurons import relu6_backward, relu6_forward
from minicnn.ops.permute import (channel_shuffle, permute_backward, permute_forward,
                                  reorg_backward, reorg_forward)
from minicnn.ops.relu import relu_backward, relu_forward

from .conftest import assert_close, poisoned

DTYPES = [np.float32, np.float64]


def _tol(dtype, f32=1e-6):
    return f32 if dtype == np.float32 else 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
def test_relu(gpu, slope, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :3] = 0                                                # the kink
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = poisoned(gpu, x.shape, dtype)
    assert relu_forward(gpu.asarray(x), slope, out=y) is y
    assert_close(y, relu_forward.impls["ref"](x, slope), 0, "y")
    dx = poisoned(gpu, x.shape, dtype)
    assert relu_backward(gpu.asarray(dy), gpu.asarray(x), slope, out=dx) is dx
    assert_close(dx, relu_backward.impls["ref"](dy, x, slope), 0, "dx")
    x_d = gpu.asarray(x)                                           # in place
    relu_forward(x_d, slope, out=x_d)
    assert_close(x_d, relu_forward.impls["ref"](x, slope), 0, "in place")


NEURONS = [   # (forward, backward, parameters, backward reads x (else y), input range)
    (nr.elu_forward, nr.elu_backward, (0.7,), "xy", (-3, 3)),
    (nr.sigmoid_forward, nr.sigmoid_backward, (), "y", (-30, 30)),
    (nr.tanh_forward, nr.tanh_backward, (), "y", (-5, 5)),
    (nr.absval_forward, nr.absval_backward, (), "x", (-3, 3)),
    (nr.power_forward, nr.power_backward, (2.0, 0.5, 1.0), "x", (-3, 3)),
    (nr.power_forward, nr.power_backward, (1.5, 1.0, 4.0), "x", (-3, 3)),
    (nr.power_forward, nr.power_backward, (1.0, 3.0, 0.0), "x", (-3, 3)),
    (nr.power_forward, nr.power_backward, (0.0, 3.0, 2.0), "x", (-3, 3)),
    (nr.exp_forward, nr.exp_backward, (-1.0, 0.5, 0.2), "y", (-3, 3)),
    (nr.exp_forward, nr.exp_backward, (2.0, 1.0, 0.0), "y", (-3, 3)),
    (nr.log_forward, nr.log_backward, (-1.0, 2.0, 7.0), "x", (-3, 3)),
    (nr.log_forward, nr.log_backward, (10.0, 1.0, 4.0), "x", (-3, 3)),
    (nr.bnll_forward, nr.bnll_backward, (), "x", (-60, 60)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forward, backward, params, reads, span", NEURONS,
                         ids=[f"{f.name}{p}" for f, _, p, _, _ in NEURONS])
def test_neurons(gpu, forward, backward, params, reads, span, dtype):
    rng = np.random.default_rng(1)
    x = rng.uniform(*span, (4, 3, 5)).astype(dtype)
    x[0, 0, :3] = 0                                  # the kinks (ELU's, AbsVal's sign(0) = 0)
    dy = rng.standard_normal(x.shape).astype(dtype)
    want_y = forward.impls["ref"](x, *params)
    y = forward(gpu.asarray(x), *params)
    assert_close(y, want_y, _tol(dtype), "y")
    if reads == "xy":
        args, dargs = (x, want_y), (gpu.asarray(x), y)
    elif reads == "y":
        args, dargs = (want_y,), (y,)
    else:
        args, dargs = (x,), (gpu.asarray(x),)
    assert_close(backward(gpu.asarray(dy), *dargs, *params),
                 backward.impls["ref"](dy, *args, *params), _tol(dtype), "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_and_threshold(gpu, shared, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    x[0, :, 0, 0] = 0                                # the kink takes the slope
    slope = (np.array(0.3) if shared else rng.random(3)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert_close(nr.prelu_forward(gpu.asarray(x), gpu.asarray(slope)),
                 nr.prelu_forward.impls["ref"](x, slope), _tol(dtype), "y")
    for name, got, want in zip(("dx", "dslope"),
                               nr.prelu_backward(gpu.asarray(dy), gpu.asarray(x),
                                                 gpu.asarray(slope)),
                               nr.prelu_backward.impls["ref"](dy, x, slope)):
        assert_close(got, want, _tol(dtype, 1e-5), name)
    assert_close(nr.threshold_forward(gpu.asarray(x), 0.2),
                 nr.threshold_forward.impls["ref"](x, 0.2), 0, "threshold")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_uses_the_given_mask(gpu, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 50)).astype(dtype)
    mask = dropout_mask(np.random.default_rng(4), x.shape, 0.3)
    assert_close(dropout_forward(gpu.asarray(x), mask, 0.3),
                 dropout_forward.impls["ref"](x, mask, 0.3), 0, "y")
    assert_close(dropout_backward(gpu.asarray(x), gpu.asarray(mask), 0.3),
                 dropout_backward.impls["ref"](x, mask, 0.3), 0, "dx")


@pytest.mark.parametrize("operation, coeff", [("SUM", None), ("SUM", [0.5, -2.0, 1.5]),
                                              ("PROD", None), ("MAX", None)])
def test_eltwise(gpu, operation, coeff):
    rng = np.random.default_rng(5)
    xs = [rng.integers(-2, 3, (3, 4, 5)).astype(np.float32) for _ in range(3)]   # MAX ties
    want_y, want_arg = eltwise_forward.impls["ref"](xs, operation, coeff)
    y = poisoned(gpu, want_y.shape, np.float32)
    got_y, arg = eltwise_forward([gpu.asarray(x) for x in xs], operation, coeff, out=y)
    assert got_y is y
    assert_close(y, want_y, 1e-6, "y")
    dy = rng.standard_normal(want_y.shape).astype(np.float32)
    outs = [poisoned(gpu, dy.shape, np.float32) for _ in xs]
    got = eltwise_backward(gpu.asarray(dy), [gpu.asarray(x) for x in xs], operation, coeff,
                           y, arg, True, [0, 2], outs=outs)
    want = eltwise_backward.impls["ref"](dy, xs, operation, coeff, want_y, want_arg, True,
                                         [0, 2])
    assert got[1] is None and got[0] is outs[0] and got[2] is outs[2]
    for k in (0, 2):
        assert_close(got[k], want[k], 1e-6, f"dx{k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("x_shape, axis", [((5, 3, 2, 2), 1), ((2, 3, 4), 2)])
def test_inner_product(gpu, x_shape, axis, transpose, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(x_shape).astype(dtype)
    k, n = int(np.prod(x_shape[axis:])), 7
    w = rng.standard_normal((k, n) if transpose else (n, k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    want_y = inner_product_forward.impls["ref"](x, w, b, axis=axis, transpose=transpose)
    y = poisoned(gpu, want_y.shape, dtype)
    assert inner_product_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), axis=axis,
                                 transpose=transpose, out=y) is y
    assert_close(y, want_y, _tol(dtype, 2e-6), "y")
    dy = rng.standard_normal(want_y.shape).astype(dtype)
    acc_w, acc_b = rng.standard_normal(w.shape).astype(dtype), np.ones(n, dtype)
    want = inner_product_backward.impls["ref"](dy, x, w, axis=axis, transpose=transpose,
                                               dw_acc=acc_w.copy(), db_acc=acc_b.copy())
    dx_out = poisoned(gpu, x.shape, dtype)
    dw_acc, db_acc = gpu.asarray(acc_w), gpu.asarray(acc_b)
    got = inner_product_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(w), axis=axis,
                                 transpose=transpose, dx_out=dx_out, dw_acc=dw_acc,
                                 db_acc=db_acc)
    assert got[0] is dx_out and got[1] is dw_acc and got[2] is db_acc
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(g, r, _tol(dtype, 2e-6), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_hw, pads", [((9, 13), (0, 0)), ((3, 2), (-1, -1)), ((5, 7), (0, 0))])
def test_interp(gpu, out_hw, pads, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    kw = dict(pad_beg=pads[0], pad_end=pads[1])
    assert_close(interp_forward(gpu.asarray(x), out_hw=out_hw, **kw),
                 interp_forward.impls["ref"](x, out_hw=out_hw, **kw), _tol(dtype), "y")
    dy = rng.standard_normal((2, 3, *out_hw)).astype(dtype)
    assert_close(interp_backward(gpu.asarray(dy), x.shape, **kw),
                 interp_backward.impls["ref"](dy, x.shape, **kw), _tol(dtype), "dx")


@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across_channels", [True, False])
def test_mvn(gpu, normalize_variance, across_channels):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    kw = dict(normalize_variance=normalize_variance, across_channels=across_channels)
    y, s = mvn_forward(gpu.asarray(x), **kw)
    want_y, want_s = mvn_forward.impls["ref"](x, **kw)
    assert_close(y, want_y, 1e-12, "y")
    assert_close(mvn_backward(gpu.asarray(dy), y, s, across_channels=across_channels),
                 mvn_backward.impls["ref"](dy, want_y, want_s, across_channels=across_channels),
                 1e-12, "dx")


def test_permute(gpu):
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = permute_forward(gpu.asarray(x), (0, 2, 3, 1))
    assert_close(y, permute_forward.impls["ref"](x, (0, 2, 3, 1)), 0, "y")
    assert_close(permute_backward(y, (0, 2, 3, 1)), x, 0, "dx")


def test_relu6(gpu):
    x = np.random.default_rng(11).uniform(-3, 9, (2, 3, 4, 5)).astype(np.float32)
    x.flat[:2] = [0, 6]                                       # the kinks
    dy = np.random.default_rng(12).standard_normal(x.shape).astype(np.float32)
    y = relu6_forward(gpu.asarray(x))
    assert_close(y, relu6_forward.impls["ref"](x), 0, "y")
    assert_close(relu6_backward(gpu.asarray(dy), y),
                 relu6_backward.impls["ref"](dy, relu6_forward.impls["ref"](x)), 0, "dx")
    nan = relu6_forward(gpu.asarray(np.array([np.nan, -np.inf, np.inf], np.float32)))
    np.testing.assert_array_equal(minicnn.cuda.to_host(nan), [np.nan, 0, 6])   # as NumPy's


def test_axpy(gpu):
    rng = np.random.default_rng(13)
    a, x, y = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3), (2, 3, 4, 5),
                                                                    (2, 3, 4, 5)))
    df = rng.standard_normal(x.shape).astype(np.float32)
    assert_close(axpy_forward(gpu.asarray(a), gpu.asarray(x), gpu.asarray(y)),
                 axpy_forward.impls["ref"](a, x, y), 1e-6, "F")
    got = axpy_backward(gpu.asarray(df), gpu.asarray(a), gpu.asarray(x))
    for name, g, w in zip(("da", "dX", "dY"), got, axpy_backward.impls["ref"](df, a, x)):
        assert_close(g, w, 1e-6, name)


@pytest.mark.parametrize("reverse", [False, True])
def test_reorg(gpu, reverse):
    x = np.random.default_rng(14).standard_normal((2, 8, 6, 4)).astype(np.float32)
    y = reorg_forward(gpu.asarray(x), 2, reverse)
    assert_close(y, reorg_forward.impls["ref"](x, 2, reverse), 0, "y")
    assert_close(reorg_backward(y, x.shape, 2, reverse), x, 0, "dx")


def test_channel_shuffle(gpu):
    x = np.random.default_rng(10).standard_normal((2, 12, 3, 5)).astype(np.float32)
    y = channel_shuffle(gpu.asarray(x), 3)
    assert_close(y, channel_shuffle.impls["ref"](x, 3), 0, "y")
    assert_close(channel_shuffle(y, 4), x, 0, "dx")


DIVMOD = """
template <typename T>
__global__ void divmod_check(const long long* a, const long long* b, long long* q, long long* r,
                             long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    q[i] = mc::div_(a[i], b[i]);
    r[i] = mc::mod_(a[i], b[i]);
  }
}
"""


def test_index_division_takes_either_width(gpu):
    """mc::div_ / mc::mod_ (kernels/common.cuh), which the kernels' index arithmetic uses:
    32-bit where both operands fit in 31 bits, 64-bit otherwise, the same results."""
    from minicnn import cuda
    module = gpu.RawModule(code=cuda.kernel_source("common.cuh") + DIVMOD,
                           options=cuda.NVRTC_OPTIONS, name_expressions=["divmod_check<float>"])
    kernel = module.get_function("divmod_check<float>")
    big = [0, 1, 5, 2**31 - 1, 2**31, 2**31 + 7, 2**32 + 9, 3 * 2**32 + 1, 2**40 + 5,
           7 * 2**33 + 3]
    a = np.array([x for x in big for _ in range(6)], np.int64)
    b = np.array([1, 3, 2**31 - 1, 2**31, 2**33 + 1, 2**35] * len(big), np.int64)
    q, r = (gpu.full(a.shape, -1, np.int64) for _ in range(2))
    cuda.launch(kernel, a.size, (gpu.asarray(a), gpu.asarray(b), q, r, np.int64(a.size)))
    np.testing.assert_array_equal(q.get(), a // b)
    np.testing.assert_array_equal(r.get(), a % b)
