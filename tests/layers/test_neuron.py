"""Neuron layers through the Layer protocol: gradients, in-place use, prototxt parameters."""

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


def test_relu_in_place_in_a_net_matches_out_of_place():
    text = """
    input: "x" input_shape { dim: 2 dim: 5 }
    layer { name: "r" type: "ReLU" bottom: "x" top: "%s" relu_param { negative_slope: 0.2 } }
    force_backward: true
    """
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    results = []
    for top in ("x", "y"):
        net = minicnn.Net(parse_text(text % top))
        out = net.forward(x=x)[top].copy()
        dx = net.backward(**{top: dy})["x"].copy()
        results.append((out, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_in_place_relu_with_negative_slope_is_refused():
    text = 'input: "x" input_shape { dim: 3 } ' \
           'layer { name: "r" type: "ReLU" bottom: "x" top: "x" ' \
           'relu_param { negative_slope: -1 } }'
    with pytest.raises(minicnn.NetError, match="in-place ReLU"):
        minicnn.Net(parse_text(text))
