"""Local (Darknet's [local], a convolution with different filters at every output place): the
forward against a plain loop over places and window taps, the backward against finite
differences, the fillers' fan-in, and its errors. Against Darknet itself: tests/test_darknet.py."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import MinicnnError
from minicnn.layers import LocalLayer
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient


def loop_local(x, w, b, k, stride, pad):
    """y[n, f, oy, ox] = sum over c, i, j of w[place, f, (c k + i) k + j] x[n, c, oy s + i - p,
    ox s + j - p] (0 outside) + b[f, oy, ox], place = oy * OW + ox."""
    n, c, h, wd = x.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = np.zeros((n, w.shape[1], oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            place = oy * ow + ox
            for ch in range(c):
                for i in range(k):
                    for j in range(k):
                        yy, xx = oy * stride + i - pad, ox * stride + j - pad
                        if 0 <= yy < h and 0 <= xx < wd:
                            y[:, :, oy, ox] += (w[place, :, (ch * k + i) * k + j][None]
                                                * x[:, ch, yy, xx][:, None])
    return y + (b if b is not None else 0)


@st.composite
def cases(draw):
    k = draw(st.integers(1, 3))
    stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, k - 1))
    h, w = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), k, stride, pad, \
        draw(st.integers(1, 3)), draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@given(cases())
def test_matches_the_loop_and_its_gradient(case):
    shape, k, stride, pad, f, bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)

    def make():
        layer = LocalLayer(num_output=f, kernel_size=k, stride=stride, pad=pad, bias_term=bias,
                           weight_filler={"type": "gaussian", "std": 1.0},
                           bias_filler={"type": "gaussian", "std": 1.0})
        layer.rng = np.random.default_rng(seed + 1)
        return layer
    layer = make()
    top = Blob((), np.float64)
    layer.setup([Blob.from_array(x)], [top])
    layer.forward([Blob.from_array(x)], [top])
    b = layer.blobs[1].data if bias else None
    np.testing.assert_allclose(top.data, loop_local(x, layer.blobs[0].data, b, k, stride, pad),
                               rtol=1e-12, atol=1e-12)
    check_layer_gradient(make, [x])


def test_weights_are_filled_per_place_with_the_window_as_fan_in():
    layer = LocalLayer(num_output=64, kernel_size=3, pad=1,
                       weight_filler={"type": "xavier"})
    layer.rng = np.random.default_rng(0)
    layer.setup([Blob((2, 8, 5, 5), np.float64)], [Blob((), np.float64)])
    w = layer.blobs[0].data
    assert w.shape == (25, 64, 72) and layer.blobs[1].shape == (64, 5, 5)
    limit = np.sqrt(3 / 72)                                   # xavier: U(-a, a), a^2 = 3/fan_in
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit


def test_a_net_with_a_local_layer_trains_and_refuses_other_sizes():
    text = """
    input: "data" input_shape { dim: 4 dim: 2 dim: 6 dim: 6 }
    input: "target" input_shape { dim: 4 dim: 3 dim: 3 dim: 3 }
    layer { name: "local" type: "Local" bottom: "data" top: "local"
            local_param { num_output: 3 kernel_size: 2 stride: 2
                          weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "local" bottom: "target" top: "loss" }
    """
    net = minicnn.Net(parse_text(text, "NetParameter"), dtype=np.float64)
    rng = np.random.default_rng(1)
    x, target = rng.standard_normal((4, 2, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    losses = []
    for _ in range(60):
        losses.append(float(net.forward(data=x, target=target)["loss"]))
        net.clear_param_diffs()
        net.backward()
        for blob in net.learnable_params:
            blob.data[...] -= 0.05 * blob.diff
    assert losses[-1] < 0.2 * losses[0]
    with pytest.raises(MinicnnError, match=r"Local layer 'local' was set up for C x 6 x 6"):
        net.blobs["data"].reshape((4, 2, 8, 8))
        net.reshape()
    with pytest.raises(MinicnnError, match="cannot run in place"):
        minicnn.Net(parse_text(text.replace('top: "local"', 'top: "data"')
                               .replace('bottom: "local"', 'bottom: "data"'), "NetParameter"))
