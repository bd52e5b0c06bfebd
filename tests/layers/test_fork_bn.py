"""The PSPNet/yjxiong fork's BN layer: TRAIN against PyTorch's batch_norm (training) and its
autograd in float64, the running statistics by the fork's update (biased variance), TEST and
frozen against the affine map of the stored statistics and against BVLC's BatchNorm + Scale,
finite differences, lr_mult masking, and its errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import ForkBNLayer
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

torch = pytest.importorskip("torch")
F = torch.nn.functional


def run(layer, x):
    bottom, top = [Blob.from_array(x, np.float64)], [Blob((), np.float64)]
    layer.setup(bottom, top)
    return bottom, top


def preset(layer, x, slope, bias, mean, var):
    bottom, top = run(layer, x)
    for blob, value in zip(layer.blobs, (slope, bias, mean, var)):
        blob.data[...] = value.reshape(blob.shape)
    return bottom, top


@st.composite
def cases(draw):
    shape = (draw(st.integers(2, 3)), draw(st.integers(1, 4)),
             *draw(st.lists(st.integers(1, 4), max_size=2)))
    return shape, draw(st.sampled_from([0.9, 0.95, 0.5])), draw(st.integers(0, 2**32 - 1))


@given(cases())
def test_train_matches_pytorch_and_the_forks_running_update(case):
    shape, momentum, seed = case
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    slope, bias, mean, var = (rng.standard_normal(c), rng.standard_normal(c),
                              rng.standard_normal(c), rng.uniform(0.5, 2, c))
    layer = ForkBNLayer(phase="TRAIN", momentum=momentum, eps=1e-5)
    bottom, top = preset(layer, x, slope, bias, mean, var)
    layer.forward(bottom, top)
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x, slope, bias))
    want = F.batch_norm(tx, None, None, tw, tb, training=True, eps=float(np.float32(1e-5)))
    np.testing.assert_allclose(top[0].data, want.detach().numpy(), rtol=1e-10, atol=1e-10)
    axes = (0,) + tuple(range(2, len(shape)))
    momentum = float(np.float32(momentum))          # a float field, as the fork reads it
    np.testing.assert_allclose(layer.blobs[2].data.ravel(),
                               (1 - momentum) * x.mean(axis=axes) + momentum * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[3].data.ravel(),               # biased: / M
                               (1 - momentum) * x.var(axis=axes) + momentum * var, rtol=1e-12)
    dy = rng.standard_normal(shape)
    want.backward(torch.tensor(dy))
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(layer.blobs[0].diff.ravel(), tw.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.blobs[1].diff.ravel(), tb.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("phase, frozen", [("TEST", False), ("TRAIN", True), ("TEST", True)])
@settings(max_examples=8, deadline=None)
@given(case=cases())
def test_stored_statistics_are_an_affine_map(phase, frozen, case):
    shape, _, seed = case
    rng = np.random.default_rng(seed)
    x, c = rng.standard_normal(shape), shape[1]
    slope, bias, mean = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c)
    var = rng.uniform(0.5, 2, c)
    layer = ForkBNLayer(phase=phase, frozen=frozen, eps=1e-3)
    bottom, top = preset(layer, x, slope, bias, mean, var)
    layer.forward(bottom, top)
    per = (1, c) + (1,) * (len(shape) - 2)
    factor = slope.reshape(per) / np.sqrt(var.reshape(per) + float(np.float32(1e-3)))
    np.testing.assert_allclose(top[0].data, (x - mean.reshape(per)) * factor + bias.reshape(per),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.blobs[2].data.ravel(), mean)   # not moved
    dy = rng.standard_normal(x.shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy * factor, rtol=1e-12)
    if frozen:
        assert not layer.blobs[0].diff.any() and not layer.blobs[1].diff.any()
        assert [(s.lr_mult, s.decay_mult) for s in layer.param.param] == [(0, 0)] * 4
    else:
        assert [(s.lr_mult, s.decay_mult) for s in layer.param.param][2:] == [(0, 0)] * 2
    stats = [v.copy() for v in (slope, bias, mean, var)]

    def make():
        fresh = ForkBNLayer(phase=phase, frozen=frozen, eps=1e-3)
        preset(fresh, x, *stats)
        return fresh
    # slope and bias (unless frozen); the statistics are constants, with no gradient
    check_layer_gradient(make, [x], check_params=False if frozen else [0, 1])


def test_train_finite_differences():
    x = np.random.default_rng(4).standard_normal((3, 2, 2, 3))

    def make():
        layer = ForkBNLayer(phase="TRAIN")
        layer.param.bn_param.slope_filler.type = "gaussian"
        return layer
    check_layer_gradient(make, [x])


PSP = """input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { name: "bn" type: "BN" bottom: "x" top: "y"
        bn_param { slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" }
                   frozen: true momentum: 0.95 eps: 1e-5 } }"""
BVLC = """input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "n"
        batch_norm_param { use_global_stats: true eps: 1e-5 } }
layer { name: "sc" type: "Scale" bottom: "n" top: "y" scale_param { bias_term: true } }"""


def test_frozen_bn_equals_bvlc_batchnorm_and_scale(tmp_path):
    """PSPNet's frozen BN as it reads a prototxt (slope 1, bias 0 fillers) with stored
    statistics equals BVLC's BatchNorm (use_global_stats, scale factor 1) + Scale with the same
    numbers; its blobs save and load through a .caffemodel."""
    rng = np.random.default_rng(5)
    slope, bias, mean, var = (rng.standard_normal(3), rng.standard_normal(3),
                              rng.standard_normal(3), rng.uniform(0.5, 2, 3))
    fork = minicnn.Net(parse_text(PSP), phase="TRAIN", dtype=np.float64)
    for blob, value in zip(fork.params["bn"], (slope, bias, mean, var)):
        blob.data[...] = value.reshape(blob.shape)
    fork.save(str(tmp_path / "psp.caffemodel"))
    again = minicnn.Net(parse_text(PSP), weights=str(tmp_path / "psp.caffemodel"),
                        dtype=np.float64)
    bvlc = minicnn.Net(parse_text(BVLC), dtype=np.float64)
    bvlc.params["bn"][0].data[...], bvlc.params["bn"][1].data[...] = mean, var
    bvlc.params["bn"][2].data[...] = 1
    bvlc.params["sc"][0].data[...], bvlc.params["sc"][1].data[...] = slope, bias
    x = rng.standard_normal((2, 3, 4, 4))
    want = bvlc.forward(x=x)["y"]
    np.testing.assert_allclose(fork.forward(x=x)["y"], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(again.forward(x=x)["y"], want, rtol=1e-12, atol=1e-12)


def test_errors():
    with pytest.raises(LayerError, match="needs a channel axis"):
        run(ForkBNLayer(), np.zeros(3))
    with pytest.raises(LayerError, match="eps must be positive"):
        run(ForkBNLayer(eps=0), np.zeros((1, 2)))
    layer = ForkBNLayer()
    bottom, top = run(layer, np.zeros((1, 2, 3)))
    bottom[0].reshape((1, 3, 3))
    with pytest.raises(LayerError, match="set up for 2 channels"):
        layer.reshape(bottom, top)
