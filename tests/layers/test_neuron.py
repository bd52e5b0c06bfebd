"""Neuron layers through the Layer protocol: gradients, in-place use, prototxt parameters."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.layers import ReLULayer
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient


@given(st.sampled_from([0.0, 0.1, 3.0]), st.integers(0, 2**32 - 1))
def test_relu_gradient(slope, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, 4))
    check_layer_gradient(lambda: ReLULayer(negative_slope=slope), [x], kink=0.0, kink_range=1e-3)


@pytest.mark.parametrize("slope", [0.2, -0.5])
def test_relu_in_place_in_a_net_matches_out_of_place(slope):
    """In place, backward reads y for x: the same sign when negative_slope >= 0; with a
    negative slope y > 0 wherever x != 0, and the layer keeps a mask of x > 0 instead."""
    text = """
    input: "x" input_shape { dim: 2 dim: 5 }
    layer { name: "r" type: "ReLU" bottom: "x" top: "%s" relu_param { negative_slope: %g } }
    force_backward: true
    """
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    x[0, :2] = 0.0                                  # x = 0 takes the negative side's slope
    dy = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    results = []
    for top in ("x", "y"):
        net = minicnn.Net(parse_text(text % (top, slope)))
        out = net.forward(x=x)[top].copy()
        dx = net.backward(**{top: dy})["x"].copy()
        results.append((out, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[1][1], np.where(x > 0, dy, np.float32(slope) * dy))


NEGATIVE_SLOPE_IN_PLACE = """
name: "n" input: "x" input_shape { dim: 2 dim: 3 dim: 2 dim: 2 } %s
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
layer { name: "sc" type: "Scale" bottom: "y" top: "y" scale_param { bias_term: true } }
layer { name: "r" type: "ReLU" bottom: "y" top: "%s" relu_param { negative_slope: -0.3 } }
"""


@pytest.mark.parametrize("fuse", ["1", "0"])
def test_in_place_relu_with_negative_slope_warns_where_caffe_would_differ(fuse, monkeypatch):
    """Caffe's in-place ReLU with negative_slope < 0 takes y for x and gets the gradient wrong:
    a TRAIN net says so (once); a TEST net computes no gradient, keeps no mask, and is quiet."""
    monkeypatch.setenv("MINICNN_FUSE", fuse)
    with pytest.warns(UserWarning, match=r"layer 'r' \(ReLU in place, negative_slope -0.3 < 0\)"
                      r": Caffe's backward .* computes the true one"):
        minicnn.Net(parse_text(NEGATIVE_SLOPE_IN_PLACE % ("force_backward: true", "y")),
                    phase="TRAIN")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = minicnn.Net(parse_text(NEGATIVE_SLOPE_IN_PLACE % ("", "y")), phase="TEST")
    x = np.random.default_rng(3).standard_normal((2, 3, 2, 2)).astype(np.float32)
    net.params["bn"][2].data[...] = 1.0
    y = net.forward(x=x)["y"]
    assert (y >= 0).all() and net.layer_dict["r"].positive is None


@pytest.mark.parametrize("fuse", ["1", "0"])
def test_negative_slope_in_place_after_batchnorm_and_scale_trains_as_out_of_place(
        fuse, monkeypatch):
    """BatchNorm -> Scale -> ReLU in place runs fused in training (the chain's backward reads
    y); a ReLU that keeps a mask stays out of the chain and gives the out-of-place gradient."""
    monkeypatch.setenv("MINICNN_FUSE", fuse)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 2, 2))
    dy = rng.standard_normal((2, 3, 2, 2))
    results = []
    for top in ("y", "z"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = minicnn.Net(parse_text(NEGATIVE_SLOPE_IN_PLACE % ("force_backward: true", top)),
                              phase="TRAIN", dtype=np.float64)
        net.params["sc"][0].data[...] = [1.5, -2.0, 0.5]
        out = net.forward(x=x)[top].copy()
        grads = net.backward(**{top: dy})
        results.append((out, grads["x"].copy(), net.params["sc"][0].diff.copy()))
    for in_place, own_top in zip(*results):
        np.testing.assert_allclose(in_place, own_top, rtol=1e-12, atol=1e-12)
