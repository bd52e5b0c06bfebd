"""Dropout: the op (mask statistics, scaling, backward with the forward's mask) and the layer
(TRAIN / TEST phases, gradients, in place, parameters). The layer tests live here because
Dropout's math and its layer are checked together; tests/layers/test_neuron.py holds ReLU's."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.layers import DropoutLayer
from minicnn.ops.dropout import dropout_backward, dropout_forward, dropout_mask
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient, numerical_grad

ratios = st.sampled_from([0.0, 0.1, 0.5, 0.9])


# --- the op -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.8])
def test_mask_keeps_one_minus_ratio_of_the_elements(ratio):
    mask = dropout_mask(np.random.default_rng(5), (200, 500), ratio)
    assert mask.dtype == bool
    # 1e5 Bernoulli draws: the standard error of the kept fraction is below 0.0016
    assert abs(mask.mean() - (1 - ratio)) < 0.01


def test_masks_are_independent_between_draws_and_repeat_with_the_seed():
    a = dropout_mask(np.random.default_rng(1), (1000,), 0.5)
    b = dropout_mask(np.random.default_rng(1), (1000,), 0.5)
    c = dropout_mask(np.random.default_rng(2), (1000,), 0.5)
    np.testing.assert_array_equal(a, b)
    assert 0.4 < np.mean(a == c) < 0.6


@given(ratios, st.integers(0, 2**32 - 1))
def test_forward_scales_kept_elements_and_zeroes_dropped(ratio, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4))
    mask = dropout_mask(rng, x.shape, ratio)
    y = dropout_forward.impls["ref"](x, mask, ratio)
    np.testing.assert_allclose(y, np.where(mask, x / (1 - ratio), 0.0), rtol=1e-12)


def test_expectation_is_kept():
    x = np.ones((400, 500))
    y = dropout_forward(x, dropout_mask(np.random.default_rng(0), x.shape, 0.3), 0.3)
    assert abs(y.mean() - 1.0) < 0.01                 # inverted dropout: E[y] = x


@given(ratios, st.integers(0, 2**32 - 1))
def test_backward_matches_finite_differences_for_a_fixed_mask(ratio, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    mask = dropout_mask(rng, x.shape, ratio)
    dx = dropout_backward.impls["ref"](dy, mask, ratio)
    numeric = numerical_grad(
        lambda: float(np.sum(dropout_forward.impls["ref"](x, mask, ratio) * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_float32_stays_float32():
    x, mask = np.ones(4, np.float32), np.array([True, False, True, True])
    assert dropout_forward(x, mask, 0.5).dtype == np.float32
    assert dropout_backward(x, mask, 0.5).dtype == np.float32


# --- the layer ----------------------------------------------------------------------------------

@given(st.sampled_from([0.0, 0.3, 0.7]), st.integers(0, 2**32 - 1))
def test_layer_gradient_in_train_phase(ratio, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, 2))
    # check_layer_gradient reseeds layer.rng before every forward: one mask throughout
    check_layer_gradient(lambda: DropoutLayer(dropout_ratio=ratio), [x])


def test_layer_train_phase_drops_and_scales():
    layer = DropoutLayer(dropout_ratio=0.25)
    assert layer.phase == "TRAIN"                     # a LayerParameter's phase defaults to TRAIN
    layer.rng = np.random.default_rng(0)
    x = np.random.default_rng(1).uniform(1, 2, (50, 40))
    y = layer(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)
    dy = np.random.default_rng(2).standard_normal(x.shape)
    dx = layer.backprop(dy)                           # the forward's mask, not a new one
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0.0))


def test_layer_draws_a_new_mask_every_forward():
    layer = DropoutLayer()
    layer.rng = np.random.default_rng(0)
    x = np.ones((20, 20))
    first = layer(x).copy()
    assert not np.array_equal(first, layer(x))


def test_layer_test_phase_is_identity():
    layer = DropoutLayer(dropout_ratio=0.9, phase="TEST")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(layer(x), x)
    dy = np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_array_equal(layer.backprop(dy), dy.astype(np.float32))


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_layer_refuses_a_ratio_outside_0_1(ratio):
    with pytest.raises(minicnn.LayerError, match=rf"must be in \[0, 1\), got {ratio:g}$"):
        DropoutLayer(dropout_ratio=ratio)(np.ones(3))


NET = """
input: "x" input_shape { dim: 4 dim: 6 }
layer { name: "drop" type: "Dropout" bottom: "x" top: "%s" dropout_param { dropout_ratio: 0.4 } }
force_backward: true
"""


@pytest.mark.parametrize("phase", [minicnn.TRAIN, minicnn.TEST])
def test_in_place_in_a_net_matches_out_of_place(phase):
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    results = []
    for top in ("x", "y"):
        net = minicnn.Net(parse_text(NET % top), phase=phase)
        minicnn.set_random_seed(7)                    # the same mask for both nets
        out = net.forward(x=x)[top].copy()
        dx = net.backward(**{top: dy})["x"].copy()
        results.append((out, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    if phase == minicnn.TEST:
        np.testing.assert_array_equal(results[1][0], x)
    else:
        assert (results[1][0] == 0).any()
        np.testing.assert_array_equal(results[1][0] == 0, results[1][1] == 0)
