"""The forks' Upsample: SegNet's max-unpooling through a Pooling mask and the YOLOv3 ports'
nearest-neighbour upsampling, against PyTorch float64 (max_unpool2d with the same indices,
interpolate 'nearest', their autograd), loops transliterated from the forks, finite
differences, in nets from prototxts, and the errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import UpsampleLayer
from minicnn.ops import (max_pool2d_forward, max_unpool2d_backward, max_unpool2d_forward,
                         nearest_upsample_backward, nearest_upsample_forward)
from minicnn.ops.pool import PoolGeometry
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

torch = pytest.importorskip("torch")
F = torch.nn.functional


def segnet_forward(x, mask, out_hw):
    """SegNet's UpsampleLayer::Forward_cpu: zeros, then top[mask[i]] = bottom[i] in order."""
    y = np.zeros((*x.shape[:2], out_hw[0] * out_hw[1]), x.dtype)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i, (v, idx) in enumerate(zip(x[n, c].ravel(), mask[n, c].ravel())):
                y[n, c, int(idx)] = v
    return y.reshape(*x.shape[:2], *out_hw)


def segnet_backward(dy, mask):
    """bottom_diff[i] = top_diff[mask[i]]."""
    flat = dy.reshape(*dy.shape[:2], -1)
    return np.stack([np.stack([flat[n, c][mask[n, c].astype(int)] for c in range(dy.shape[1])])
                     for n in range(dy.shape[0])])


def yolo_backward(dy, s):
    """The YOLOv3 ports' Backward_cpu: zeros, then every top element added to its source, the
    top in memory order."""
    n, c, h, w = dy.shape
    dx = np.zeros((n, c, h // s, w // s), dy.dtype)
    for b in range(n):
        for ch in range(c):
            for r in range(h):
                for q in range(w):
                    dx[b, ch, r // s, q // s] += dy[b, ch, r, q]
    return dx


@st.composite
def pool_cases(draw):
    kernel, stride = draw(st.sampled_from([(2, 2), (3, 2), (2, 1), (3, 3)]))
    h, w = draw(st.integers(kernel, 9)), draw(st.integers(kernel, 9))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), kernel, stride, \
        draw(st.integers(0, 2**32 - 1))


@given(pool_cases())
def test_unpooling_matches_segnet_loop_and_pytorch(case):
    shape, kernel, stride, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    _, mask = max_pool2d_forward(x, geom=PoolGeometry((kernel, kernel), (stride, stride)))
    values = rng.standard_normal(mask.shape)
    out_hw = shape[2:]
    y = max_unpool2d_forward(values, mask.astype(np.float64), out_hw)
    np.testing.assert_array_equal(y, segnet_forward(values, mask, out_hw))
    dy = rng.standard_normal(y.shape)
    dx = max_unpool2d_backward(dy, mask.astype(np.float64))
    np.testing.assert_array_equal(dx, segnet_backward(dy, mask))
    planes = mask.reshape(-1, mask[0, 0].size)
    if all(len(set(plane.tolist())) == plane.size for plane in planes):
        # no repeated place (non-overlapping windows): PyTorch's max_unpool2d is the same map
        t = torch.tensor(values, requires_grad=True)
        want = F.max_unpool2d(t, torch.tensor(mask, dtype=torch.int64), kernel, stride,
                              output_size=out_hw)
        want.backward(torch.tensor(dy))
        np.testing.assert_array_equal(y, want.detach().numpy())
        np.testing.assert_array_equal(dx, t.grad.numpy())


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 2**32 - 1))
def test_nearest_matches_pytorch_and_the_ports_loop(sh, sw, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, h, w))
    t = torch.tensor(x, requires_grad=True)
    want = F.interpolate(t, scale_factor=(sh, sw), mode="nearest")
    dy = rng.standard_normal(want.shape)
    want.backward(torch.tensor(dy))
    np.testing.assert_array_equal(nearest_upsample_forward(x, sh, sw), want.detach().numpy())
    np.testing.assert_allclose(nearest_upsample_backward(dy, sh, sw), t.grad.numpy(),
                               rtol=1e-14, atol=1e-14)
    if sh == sw:     # the ports have one scale; their float32 sums, bit for bit
        dy32 = dy.astype(np.float32)
        np.testing.assert_array_equal(nearest_upsample_backward(dy32, sh, sw),
                                      yolo_backward(dy32, sh))


def layer_gradient(fields, x, mask=None):
    bottoms = [x] if mask is None else [x, mask]
    check_layer_gradient(lambda: UpsampleLayer(**fields), bottoms, check_bottoms=[0])


def test_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 5))
    y, mask = max_pool2d_forward(x, geom=PoolGeometry((2, 2), (2, 2)))
    values = rng.standard_normal(y.shape)
    layer_gradient({"scale": 2, "pad_out_w": True}, values, mask.astype(np.float64))
    layer_gradient({"upsample_h": 6, "upsample_w": 5}, values, mask.astype(np.float64))
    layer_gradient({"scale_h": 2, "scale_w": 3}, values)


@st.composite
def layer_cases(draw):
    """The layer's fields in each form, with the top size they give: max-unpooling through the
    mask of a drawn MAX Pooling (kernel = stride per axis) sized by upsample_h/w, scale or
    scale_h/w (pad_out where the pooled side is odd and the scale 2), or nearest upsampling by
    scale or scale_h/w."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sh, sw = draw(st.integers(2, 3)), draw(st.integers(2, 3))
    if draw(st.booleans()):                                  # nearest: one bottom
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        fields = {"scale_h": sh, "scale_w": sw} if sh != sw or draw(st.booleans()) else \
            ({"scale": sh} if sh != 2 or draw(st.booleans()) else {})
        return fields, (n, c, h, w), None, (h * sh, w * sw), draw(st.integers(0, 2**32 - 1))
    h, w = draw(st.integers(sh, 7)), draw(st.integers(sw, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    _, mask = max_pool2d_forward(np.random.default_rng(seed).standard_normal((n, c, h, w)),
                                 geom=PoolGeometry((sh, sw), (sh, sw)))
    ph, pw = mask.shape[2:]
    if draw(st.booleans()):
        fields, out = {"upsample_h": h, "upsample_w": w}, (h, w)
    else:
        fields = {"scale_h": sh, "scale_w": sw} if sh != sw or draw(st.booleans()) else \
            ({"scale": sh} if sh != 2 or draw(st.booleans()) else {})
        pad_h, pad_w = sh == 2 and h % 2 == 1, sw == 2 and w % 2 == 1
        if pad_h:
            fields["pad_out_h"] = True
        if pad_w:
            fields["pad_out_w"] = True
        out = (ph * sh - pad_h, pw * sw - pad_w)
    return fields, mask.shape, mask.astype(np.float64), out, seed


@settings(max_examples=40, deadline=None)
@given(layer_cases())
def test_drawn_fields_match_the_forks_loops_and_finite_differences(case):
    fields, shape, mask, out, seed = case
    x = np.random.default_rng(seed + 1).standard_normal(shape)
    bottoms = [x] if mask is None else [x, mask]
    y = UpsampleLayer(**fields)(*bottoms)
    assert y.shape == shape[:2] + out
    if mask is None:
        sh, sw = out[0] // shape[2], out[1] // shape[3]
        np.testing.assert_array_equal(y, np.repeat(np.repeat(x, sh, axis=2), sw, axis=3))
    else:
        np.testing.assert_array_equal(y, segnet_forward(x, mask, out))
    layer_gradient(fields, x, mask)


SEGNET = """force_backward: true
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 7 }
layer { name: "enc" type: "Convolution" bottom: "data" top: "enc"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pool" type: "Pooling" bottom: "enc" top: "pool" top: "pool_mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "mid" type: "Convolution" bottom: "pool" top: "mid"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "unpool" type: "Upsample" bottom: "mid" bottom: "pool_mask" top: "up"
        upsample_param { scale: 2 pad_out_h: true pad_out_w: true } }
layer { name: "yolo_up" type: "Upsample" bottom: "mid" top: "nearest"
        upsample_param { scale: 2 } }
"""


def test_segnet_unit_in_a_net():
    """Pooling with a mask top (9x7 -> 5x4, Caffe's ceil) undone by Upsample with pad_out
    back to 9x7 (SegNet's odd sizes); the nearest branch gives 10x8; backward reaches the data
    and the mask gets no gradient."""
    net = minicnn.Net(parse_text(SEGNET), dtype=np.float64)
    x = np.random.default_rng(6).standard_normal((2, 3, 9, 7))
    net.forward(data=x)
    assert net.blobs["pool"].shape == (2, 4, 5, 4)
    assert net.blobs["up"].shape == (2, 4, 9, 7) and net.blobs["nearest"].shape == (2, 4, 10, 8)
    want = segnet_forward(net.blobs["mid"].data, net.blobs["pool_mask"].data, (9, 7))
    np.testing.assert_array_equal(net.blobs["up"].data, want)
    net.blobs["up"].diff[...] = 1
    net.blobs["nearest"].diff[...] = 1
    net.backward()
    assert np.abs(net.blobs["data"].diff).sum() > 0
    assert not np.any(net.blobs["pool_mask"].diff)


@pytest.mark.parametrize("fields, bottoms, match", [
    ({"scale": 1}, 2, "scale must be at least 2"),
    ({"scale": 3, "pad_out_h": True}, 2, "pad_out_h needs scale 2"),
    ({"upsample_h": 4}, 2, "upsample_h and upsample_w go together"),
    ({"scale_h": 2}, 2, "scale_h and scale_w go together"),
    ({"scale": 2, "scale_h": 2, "scale_w": 2}, 2, "not both"),
    ({"upsample_h": 4, "upsample_w": 4}, 1, "belong to max-unpooling"),
    ({"scale": 0}, 1, "scale must be at least 1"),
])
def test_parameter_errors(fields, bottoms, match):
    layer = UpsampleLayer(**fields)
    bottom = [Blob.from_array(np.zeros((1, 1, 2, 2)))] * bottoms
    with pytest.raises(LayerError, match=match):
        layer.setup(bottom, [Blob(())])


def test_mask_errors_name_the_value_and_place():
    values = np.ones((1, 1, 2, 2))
    with pytest.raises(LayerError, match=r"mask value 16 at index \(0, 0, 1, 1\) is not a place "
                                         r"in the 16-value output plane"):
        max_unpool2d_forward(values, np.array([[[[0, 1], [2, 16]]]], np.float64), (4, 4))
    with pytest.raises(LayerError, match="mask value 1.5"):
        max_unpool2d_forward(values, np.array([[[[0, 1.5], [2, 3]]]]), (4, 4))
    with pytest.raises(LayerError, match="mask value -1"):
        max_unpool2d_backward(np.ones((1, 1, 4, 4)), np.array([[[[0, 1], [2, -1]]]], float))
    layer = UpsampleLayer(scale=2)
    bottom = [Blob.from_array(values), Blob.from_array(np.zeros((1, 1, 2, 3)))]
    with pytest.raises(LayerError, match="must have the values' shape"):
        layer.setup(bottom, [Blob(())])
