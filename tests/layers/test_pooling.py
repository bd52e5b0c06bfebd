"""Pooling layer through the Layer protocol: gradients, prototxt parameters, the mask top,
errors, and a small Net."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers import PoolingLayer
from minicnn.ops.pool import (
    PoolGeometry,
    ave_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient


def distinct(shape, seed):
    """Distinct values (no MAX ties), 0.25 apart."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.25


@st.composite
def layer_cases(draw):
    kernel = draw(st.integers(2, 3))
    fields = {"pool": draw(st.sampled_from(["MAX", "AVE"])), "kernel_size": kernel,
              "stride": draw(st.integers(1, 3)), "pad": draw(st.integers(0, kernel - 1)),
              "round_mode": draw(st.sampled_from(["CEIL", "FLOOR"]))}
    shape = (draw(st.integers(1, 2)), 2, draw(st.integers(kernel, 5)), draw(st.integers(kernel, 5)))
    # no window wholly outside the input (CEIL, no pad, stride past the kernel): MAX's -FLT_MAX
    # there swamps the finite differences of the whole sum (tests/ops/test_pool.py checks it)
    geometry = PoolGeometry.from_fields(kernel_size=kernel, stride=fields["stride"],
                                        pad=fields["pad"], round_mode=fields["round_mode"])
    out = geometry.out_hw(*shape[2:])
    assume(all((n - 1) * fields["stride"] - fields["pad"] < size
               for n, size in zip(out, shape[2:])))
    return fields, distinct(shape, draw(st.integers(0, 2**32 - 1)))


@given(layer_cases())
def test_gradient(case):
    fields, x = case
    check_layer_gradient(lambda: PoolingLayer(**fields), [x])


@pytest.mark.parametrize("fields", [
    {"pool": "MAX", "global_pooling": True},
    {"pool": "AVE", "global_pooling": True},
    {"pool": "MAX", "kernel_h": 3, "kernel_w": 2, "stride_h": 2, "stride_w": 1, "pad_h": 1,
     "pad_w": 0},
    {"pool": "AVE", "kernel_h": 3, "kernel_w": 2, "stride_h": 2, "stride_w": 1, "pad_h": 1,
     "pad_w": 0},
    {"pool": "MAX", "kernel_size": 2, "stride": 3},     # stride > kernel, a CEIL overhang
    {"pool": "AVE", "kernel_size": 2, "stride": 3},
])
def test_gradient_more_geometries(fields):
    # (a window wholly outside the input, whose -FLT_MAX would swamp the finite differences, is
    # checked in tests/ops/test_pool.py)
    check_layer_gradient(lambda: PoolingLayer(**fields), [distinct((2, 2, 4, 7), 3)])


def test_gradient_with_the_mask_top():
    # the mask is piecewise constant: its numeric gradient is 0 and backward ignores its diff
    check_layer_gradient(lambda: PoolingLayer(kernel_size=3, stride=2, top=["y", "mask"]),
                         [distinct((2, 2, 5, 5), 4)])


def test_layer_matches_the_op_from_kwargs():
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7)).astype(np.float32)
    y = PoolingLayer(pool="AVE", kernel_size=3, stride=2, pad=1)(x)
    assert y.shape == (2, 3, 4, 4) and y.dtype == np.float32
    want = ave_pool2d_forward(x, geom=PoolGeometry((3, 3), (2, 2), (1, 1)))
    np.testing.assert_array_equal(y, want)


def test_from_a_prototxt_snippet():
    param = parse_text("""
        name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1
                        pad_h: 1 pad_w: 0 round_mode: FLOOR }
    """, "LayerParameter")
    layer = PoolingLayer(param)
    x = distinct((1, 2, 6, 5), 2)
    y = layer(x)
    assert layer.geom == PoolGeometry((3, 2), (2, 1), (1, 0), ceil=False)
    assert y.shape == (1, 2, 3, 4)                      # floor(5/2)+1, floor(3/1)+1
    np.testing.assert_array_equal(y, max_pool2d_forward(x, geom=layer.geom)[0])
    # GoogLeNet's pool1 (3x3/2 on 112, default CEIL) gives 56
    param = parse_text('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
                       "LayerParameter")
    assert PoolingLayer(param)(np.zeros((1, 1, 112, 112), np.float32)).shape == (1, 1, 56, 56)


def test_mask_top_holds_float_indices():
    x = np.array([[1, 9, 2], [4, 3, 8], [7, 6, 5]], np.float32).reshape(1, 1, 3, 3)
    layer = PoolingLayer(kernel_size=2, stride=2, top=["y", "mask"])
    y, mask = layer(x)
    np.testing.assert_array_equal(y[0, 0], [[9, 8], [7, 5]])
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask[0, 0], [[1, 5], [6, 8]])
    dx = layer.backprop(np.array([[[[1, 2], [3, 4]]]], np.float32), np.zeros_like(mask))
    np.testing.assert_array_equal(dx[0, 0], [[0, 1, 0], [0, 0, 2], [3, 0, 4]])


def test_global_pooling_follows_the_input_shape():
    layer = PoolingLayer(pool="AVE", global_pooling=True)
    for shape in [(1, 2, 4, 4), (3, 2, 3, 5)]:
        x = np.random.default_rng(0).standard_normal(shape)
        y = layer(x)
        assert y.shape == (shape[0], 2, 1, 1)
        np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3)))


@pytest.mark.parametrize("fields, n_top, match", [
    ({"global_pooling": True, "kernel_size": 3}, 1, "global_pooling .* kernel_size 3"),
    ({"global_pooling": True, "pad": 1}, 1, "pad 0 and stride 1"),
    ({}, 1, "needs kernel_size"),
    ({"kernel_w": 3}, 1, "kernel_h None, kernel_w 3"),
    ({"kernel_size": 3, "pad": 3}, 1, "pad 3 x 3 must be smaller than the kernel 3 x 3"),
    ({"kernel_size": 2, "pad_h": 1}, 1, "not a mix"),
    ({"pool": "AVE", "kernel_size": 2}, 2, "only MAX pooling has a mask top; AVE"),
    ({"pool": "STOCHASTIC", "kernel_size": 2}, 1, "STOCHASTIC"),
    ({"kernel_size": 2}, 3, "at most 2 top"),
    ({"kernel_size": 7}, 1, "kernel 7 does not fit the input size 5"),
])
def test_errors(fields, n_top, match):
    tops = [f"t{i}" for i in range(n_top)]
    with pytest.raises(LayerError, match=match):
        PoolingLayer(**fields, top=tops)(np.zeros((1, 1, 5, 5)))


def test_input_must_have_four_axes():
    with pytest.raises(LayerError, match=r"4-axis .* \(2, 5, 5\)"):
        PoolingLayer(kernel_size=2)(np.zeros((2, 5, 5)))


NET = """
name: "pool_net"
input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 6 }
layer { name: "pool1" type: "Pooling" bottom: "data" top: "pool1" top: "mask"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
force_backward: true
"""


def test_in_a_net_with_the_mask_top():
    net = minicnn.Net(parse_text(NET))
    x = distinct((2, 3, 6, 6), 9).astype(np.float32)
    out = net.forward(data=x)
    assert set(out) == {"mask", "norm1"}
    assert net.blobs["pool1"].shape == (2, 3, 3, 3)                  # ceil(3/2) + 1
    y, mask = max_pool2d_forward(x, geom=PoolGeometry((3, 3), (2, 2)))
    np.testing.assert_array_equal(net.blobs["pool1"].data, y)
    np.testing.assert_array_equal(out["mask"], mask.astype(np.float32))
    dy = np.random.default_rng(2).standard_normal((2, 3, 3, 3)).astype(np.float32)
    dx = net.backward(start="pool1", pool1=dy)["data"]
    np.testing.assert_array_equal(dx, max_pool2d_backward(dy, mask, x.shape))


def test_net_reports_bad_pooling_parameters_with_the_layer_name():
    text = NET.replace("kernel_size: 3 stride: 2", "kernel_size: 3 pad: 3")
    with pytest.raises(minicnn.NetError, match="pool1.*pad 3 x 3"):
        minicnn.Net(parse_text(text))


def test_in_place_pooling_is_refused():
    text = 'input: "x" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 } layer { name: "p" ' \
           'type: "Pooling" bottom: "x" top: "x" pooling_param { kernel_size: 3 pad: 1 } }'
    with pytest.raises(minicnn.NetError, match="in-place"):
        minicnn.Net(parse_text(text))
