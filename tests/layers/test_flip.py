"""happynear's Flip (caffe-windows), the first layer of AM-Softmax's published deploy net
(face_deploy_mirror_normalize.prototxt: each face beside its mirror image, their fc5 features
added, then normalised). References: flip_layer.cpp's four loops transliterated, float64 finite
differences, and the deploy net's structure against the same features computed by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers.face import FlipLayer
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient


def fork_flip(x, flip_width, flip_height):
    """flip_layer.cpp's Forward_cpu (its Backward_cpu is the same loop on the diffs)."""
    num, channels, height, width = x.shape + (1,) * (4 - x.ndim)
    src = x.reshape(-1)
    out = np.empty_like(src)
    for n in range(num):
        for c in range(channels):
            for h in range(height):
                for w in range(width):
                    hh = height - 1 - h if flip_height else h
                    ww = width - 1 - w if flip_width else w
                    out[((n * channels + c) * height + h) * width + w] = \
                        src[((n * channels + c) * height + hh) * width + ww]
    return out.reshape(x.shape)


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    flags = {k: draw(st.booleans()) for k in ("flip_width", "flip_height")}
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal(shape), flags


@settings(max_examples=30, deadline=None)
@given(cases())
def test_forward_and_backward_are_the_forks_loops(case):
    x, flags = case
    layer = FlipLayer(flip_param=flags)
    y = layer(x)
    np.testing.assert_array_equal(y, fork_flip(x, **flags))
    dy = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backprop(dy), fork_flip(dy, **flags))
    check_layer_gradient(lambda: FlipLayer(flip_param=flags), [x])


def test_defaults_mirror_the_width_only():
    x = np.arange(2 * 3 * 2 * 4, dtype=np.float64).reshape(2, 3, 2, 4)
    np.testing.assert_array_equal(FlipLayer()(x), x[..., ::-1])
    np.testing.assert_array_equal(FlipLayer(flip_param={"flip_height": True})(x),
                                  x[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(FlipLayer(flip_param={"flip_width": False})(x), x)


def test_bad_uses_name_the_layer():
    blob = Blob.from_array(np.zeros((2, 3, 4, 5)))
    layer = FlipLayer(name="flip_data")
    with pytest.raises(LayerError, match="Flip layer 'flip_data' cannot run in place"):
        layer.setup([blob], [blob])
    with pytest.raises(LayerError, match=r"Flip reads its bottom as N x C x H x W, but it has "
                                         r"shape \(1, 2, 3, 4, 5\)"):
        FlipLayer()(np.zeros((1, 2, 3, 4, 5)))


DEPLOY = """
input: "data"
input_dim: 3
input_dim: 3
input_dim: 7
input_dim: 6
layer { name: "flip_data" type: "Flip" bottom: "data" top: "flip_data" }
layer { name: "concat_data" type: "Concat" bottom: "data" bottom: "flip_data"
  top: "concat_data" concat_param{ axis: 0 } }
layer { name: "conv1" type: "Convolution" bottom: "concat_data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc5" type: "InnerProduct" bottom: "conv1" top: "fc5"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "slice_fc5" type: "Slice" bottom: "fc5" top: "fc5_orig" top: "fc5_mirror"
  slice_param { axis: 0 } }
layer { name: "eltmax_fc5" type: "Eltwise" bottom: "fc5_orig" bottom: "fc5_mirror"
  top: "eltmax_fc5" eltwise_param { operation: SUM } }
layer { name: "normalize1" type: "Normalize" bottom: "eltmax_fc5" top: "norm1"
  normalize_param { normalize_type: "L2" } }
"""


def test_am_softmax_mirror_deploy_net_adds_each_face_and_its_mirror():
    # face_deploy_mirror_normalize.prototxt's structure (its V1-style input_dim header, Flip,
    # the batch concatenated with its mirror, Slice, Eltwise SUM, happynear's Normalize)
    minicnn.set_random_seed(3)
    net = minicnn.Net(parse_text(DEPLOY), minicnn.TEST)
    x = np.random.default_rng(4).standard_normal((3, 3, 7, 6)).astype(np.float32)
    got = net.forward(data=x)["norm1"].reshape(3, 5)
    features = minicnn.Net(parse_text(DEPLOY.split('layer { name: "flip_data"')[0]
                                      + DEPLOY[DEPLOY.index('layer { name: "conv1"'):]
                                      .replace('bottom: "concat_data"', 'bottom: "data"')
                                      .split('layer { name: "slice_fc5"')[0]), minicnn.TEST)
    features.copy_from(net.to_proto())
    f = features.forward(data=x)["fc5"].copy() + features.forward(data=x[..., ::-1].copy())["fc5"]
    want = f / np.sqrt((f.astype(np.float64) ** 2).sum(axis=1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
