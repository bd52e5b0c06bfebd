"""Convolution on the GPU (im2col + cuBLAS, direct depthwise) against the NumPy reference:
forward, backward (dx, dw, db) and the Deconvolution pair, float32 and float64, on geometries
with stride, padding, dilation, groups and channel multipliers; outputs poisoned with NaN."""

import numpy as np
import pytest

from minicnn.ops.conv import (ConvGeometry, conv2d_backward, conv2d_backward_data,
                              conv2d_backward_filter, conv2d_forward)

from .conftest import assert_close, poisoned

TOL = {np.float32: 2e-5, np.float64: 1e-11}

CASES = [   # (N, C, H, W), F, kernel, stride, pad, dilation, group
    ((2, 3, 9, 8), 4, 3, 1, 1, 1, 1),
    ((3, 4, 11, 7), 6, (3, 2), (2, 1), (1, 0), 1, 2),
    ((2, 6, 10, 10), 6, 3, 1, 2, 2, 3),                 # grouped, dilated
    ((2, 5, 7, 9), 8, 1, 1, 0, 1, 1),                   # pointwise: no im2col
    ((2, 4, 7, 9), 8, 1, 1, 0, 1, 2),                   # grouped pointwise
    ((2, 4, 9, 9), 4, 3, 1, 1, 1, 4),                   # depthwise
    ((2, 3, 12, 10), 6, 3, 2, 2, 2, 3),                 # depthwise, multiplier 2, dilated
    ((2, 3, 11, 11), 3, 7, 1, 3, 1, 3),                 # depthwise 7x7: two passes of taps
    ((2, 4, 10, 9), 4, (5, 3), (2, 1), (2, 1), 1, 4),   # depthwise 5x3, strided
    ((1, 2, 5, 5), 3, 5, 1, 0, 1, 1),                   # one output position
    ((2, 3, 6, 6), 2, 2, 3, 1, 1, 1),                   # stride larger than the kernel
    ((2, 4, 11, 10), 4, 3, 1, (2, 1), (2, 1), 2),       # dilation h != w (im2col, col2im)
    ((2, 3, 11, 10), 6, 3, 1, (2, 1), (2, 1), 3),       # dilation h != w, depthwise
    ((2, 2, 34, 34), 2, 3, 1, 1, 1, 2),                 # depthwise dw: 3 splits of the images
]


def _case(case, dtype, seed):
    shape, f, k, s, p, d, g = case
    geom = ConvGeometry(k, s, p, d)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((f, shape[1] // g, *geom.kernel)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, w, b, geom, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_the_reference(gpu, case, dtype, monkeypatch):
    import minicnn.ops.conv as conv
    x, w, b, geom, g = _case(case, dtype, 7)
    want_y = conv2d_forward.impls["ref"](x, w, b, geom=geom, group=g)
    for wide_below, path in ((0, "a GEMM per image"), (1 << 30, "one wide GEMM")):
        monkeypatch.setattr(conv, "CUDA_WIDE_BELOW", wide_below)
        y = poisoned(gpu, want_y.shape, dtype)
        got = conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), geom=geom,
                             group=g, out=y)
        assert got is y
        assert_close(y, want_y, TOL[dtype], f"y ({path})")
        assert_close(conv2d_forward(gpu.asarray(x), gpu.asarray(w), None, geom=geom, group=g),
                     conv2d_forward.impls["ref"](x, w, None, geom=geom, group=g), TOL[dtype],
                     f"y without bias ({path})")
    monkeypatch.undo()

    dy = np.random.default_rng(8).standard_normal(want_y.shape).astype(dtype)
    want = conv2d_backward.impls["ref"](dy, x, w, geom=geom, group=g)
    dx_out = poisoned(gpu, x.shape, dtype)
    dx, dw, db = conv2d_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(w), geom=geom,
                                 group=g, dx_out=dx_out)
    assert dx is dx_out
    for name, got, ref in (("dx", dx, want[0]), ("dw", dw, want[1]), ("db", db, want[2])):
        assert_close(got, ref, TOL[dtype], name)
    # dw and db added onto the parameter diffs, as the layer has them: into those arrays
    acc_w, acc_b = (np.random.default_rng(9).standard_normal(a.shape).astype(dtype)
                    for a in want[1:])
    dev_w, dev_b = gpu.asarray(acc_w), gpu.asarray(acc_b)
    _, got_w, got_b = conv2d_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(w),
                                      geom=geom, group=g, need=(False, True, True),
                                      dw_acc=dev_w, db_acc=dev_b)
    assert got_w is dev_w and got_b is dev_b
    assert_close(dev_w, acc_w + want[1], TOL[dtype], "dw added")
    assert_close(dev_b, acc_b + want[2], TOL[dtype], "db added")
    strided = gpu.asarray(np.repeat(acc_b, 2))[::2]        # not contiguous: added all the same
    assert conv2d_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(w), geom=geom, group=g,
                           need=(False, False, True), db_acc=strided)[2] is strided
    assert_close(gpu.ascontiguousarray(strided), acc_b + want[2], TOL[dtype], "db, strided")
    only_w = conv2d_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(w), geom=geom,
                             group=g, need=(False, True, False))
    assert only_w[0] is None and only_w[2] is None
    assert_close(only_w[1], want[1], TOL[dtype], "dw alone")

    assert_close(conv2d_backward_data(gpu.asarray(dy), gpu.asarray(w), x_hw=x.shape[2:],
                                      geom=geom, group=g), want[0], TOL[dtype], "backward_data")
    assert_close(conv2d_backward_filter(gpu.asarray(dy), gpu.asarray(x), geom=geom, group=g),
                 want[1], TOL[dtype], "backward_filter")


def test_images_go_through_in_chunks(gpu, monkeypatch):
    import minicnn.ops.conv as conv
    monkeypatch.setattr(conv, "CUDA_COLS_BUDGET", 3 * 9 * 20)     # about one image per chunk
    x, w, b, geom, g = _case(((5, 3, 6, 6), 4, 3, 1, 1, 1, 1), np.float64, 3)
    for wide_below in (0, 1 << 30):
        monkeypatch.setattr(conv, "CUDA_WIDE_BELOW", wide_below)
        assert_close(conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), geom=geom),
                     conv2d_forward.impls["ref"](x, w, b, geom=geom), 1e-11, "y")
    dy = np.random.default_rng(4).standard_normal((5, 4, 6, 6))
    want = conv2d_backward.impls["ref"](dy, x, w, geom=geom)
    for got, ref in zip(conv2d_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(w),
                                        geom=geom), want):
        assert_close(got, ref, 1e-11)
