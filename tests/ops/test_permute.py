"""Permute (SSD's layer): the reference against explicit index loops, its backward against
finite differences, SSD's completion of a partial order, and the layer in a net."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.errors import LayerError, NetError
from minicnn.layers import PermuteLayer
from minicnn.ops.permute import permute_backward, permute_forward, permute_order
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient, numerical_grad


@st.composite
def permuted(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    order = draw(st.permutations(range(ndim)))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    return x, tuple(order)


@settings(max_examples=30, deadline=None)
@given(permuted())
def test_forward_matches_index_loops(case):
    x, order = case
    y = permute_forward.impls["ref"](x, order)
    assert y.shape == tuple(x.shape[a] for a in order) and y.flags.c_contiguous
    for index in itertools.product(*(range(d) for d in x.shape)):
        assert y[tuple(index[a] for a in order)] == x[index]


@settings(max_examples=20, deadline=None)
@given(permuted())
def test_backward_matches_finite_differences(case):
    x, order = case
    dy = np.random.default_rng(0).standard_normal(permute_forward.impls["ref"](x, order).shape)
    dx = permute_backward.impls["ref"](dy, order)
    numeric = numerical_grad(lambda: float(np.sum(permute_forward.impls["ref"](x, order) * dy)),
                             x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_partial_orders_are_completed_as_ssd_does():
    assert permute_order([0, 2, 3, 1], 4) == (0, 2, 3, 1)
    assert permute_order([1], 4) == (1, 0, 2, 3)
    assert permute_order([], 3) == (0, 1, 2)
    with pytest.raises(LayerError, match="axis 4 does not exist"):
        permute_order([0, 4], 4)
    with pytest.raises(LayerError, match="twice"):
        permute_order([0, 0], 4)


def test_layer_gradient_and_nchw_to_nhwc():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    layer = PermuteLayer(permute_param={"order": [0, 2, 3, 1]})
    np.testing.assert_array_equal(layer(x), x.transpose(0, 2, 3, 1))
    check_layer_gradient(lambda: PermuteLayer(permute_param={"order": [0, 3]}), [x])


@settings(max_examples=25, deadline=None)
@given(permuted(), st.data())
def test_layer_with_drawn_partial_orders_matches_index_loops_and_finite_differences(case, data):
    """permute_param.order, the first k axes of a permutation (SSD fills in the rest in
    increasing order), through the layer."""
    x, full = case
    given_axes = list(full[:data.draw(st.integers(0, len(full)))])
    order = given_axes + sorted(set(range(x.ndim)) - set(given_axes))
    y = PermuteLayer(permute_param={"order": given_axes})(x)
    assert y.shape == tuple(x.shape[a] for a in order)
    for index in itertools.product(*(range(d) for d in x.shape)):
        assert y[tuple(index[a] for a in order)] == x[index]
    check_layer_gradient(lambda: PermuteLayer(permute_param={"order": given_axes}), [x])


def test_in_a_net_and_not_in_place():
    import minicnn
    net = minicnn.Net(parse_text("""
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
layer { name: "p" type: "Permute" bottom: "x" top: "y" permute_param { order: 2 order: 0 } }
"""), phase=minicnn.TEST)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(net.forward(x=x)["y"], x.transpose(2, 0, 1))
    with pytest.raises(NetError, match="in-place"):
        minicnn.Net(parse_text("""
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "p" type: "Permute" bottom: "x" top: "x" permute_param { order: 1 } }
"""), phase=minicnn.TEST)
