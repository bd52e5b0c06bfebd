"""LRN layer through the Layer protocol: gradients, prototxt parameters, in-place use, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers import LRNLayer
from minicnn.ops.lrn import lrn_forward
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient


@given(st.sampled_from(["ACROSS_CHANNELS", "WITHIN_CHANNEL"]), st.sampled_from([1, 3, 5]),
       st.sampled_from([1e-4, 0.5, 2.0]), st.sampled_from([0.75, 1.5]),
       st.sampled_from([1.0, 2.0]), st.integers(0, 2**32 - 1))
def test_gradient(region, local_size, alpha, beta, k, seed):
    x = np.random.default_rng(seed).standard_normal((2, 4, 3, 3))
    check_layer_gradient(lambda: LRNLayer(norm_region=region, local_size=local_size,
                                          alpha=alpha, beta=beta, k=k), [x])


def test_from_a_prototxt_snippet():
    param = parse_text("""
        name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
    """, "LayerParameter")
    layer = LRNLayer(param)
    x = np.random.default_rng(1).standard_normal((2, 7, 4, 4)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    assert layer.settings == {"local_size": 5, "alpha": np.float32(1e-4), "beta": 0.75, "k": 1.0,
                              "norm_region": "ACROSS_CHANNELS"}
    np.testing.assert_array_equal(y, lrn_forward(x, local_size=5, alpha=param.lrn_param.alpha,
                                                 beta=0.75, k=1.0))
    param = parse_text('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 '
                       'alpha: 2 beta: 0.5 k: 5 }', "LayerParameter")
    y = LRNLayer(param)(x)
    want = lrn_forward(x, local_size=3, alpha=2.0, beta=0.5, norm_region="WITHIN_CHANNEL")
    np.testing.assert_array_equal(y, want)                 # k is not used in WITHIN_CHANNEL


def test_k_is_read_from_the_prototxt():
    """ACROSS_CHANNELS with lrn_param k 2 (the k of Krizhevsky et al.'s LRN), against the
    definition written as a loop over channels."""
    param = parse_text('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }',
                       "LayerParameter")
    x = np.random.default_rng(2).standard_normal((2, 4, 3, 2)).astype(np.float32)
    want = np.empty(x.shape)
    for c in range(4):
        window = x[:, max(0, c - 1):c + 2].astype(np.float64)
        want[:, c] = x[:, c] * (2.0 + 0.5 / 3 * (window ** 2).sum(axis=1)) ** -0.75
    np.testing.assert_allclose(LRNLayer(param)(x), want, rtol=1e-5)


def test_defaults_are_caffes():
    layer = LRNLayer()
    layer(np.ones((1, 5, 2, 2)))
    assert layer.settings == {"local_size": 5, "alpha": 1.0, "beta": 0.75, "k": 1.0,
                              "norm_region": "ACROSS_CHANNELS"}


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_in_place_in_a_net_matches_out_of_place(region):
    text = """
    input: "x" input_shape { dim: 2 dim: 5 dim: 3 dim: 3 }
    layer { name: "n" type: "LRN" bottom: "x" top: "%s"
            lrn_param { local_size: 3 alpha: 0.5 norm_region: %s } }
    force_backward: true
    """
    x = np.random.default_rng(1).standard_normal((2, 5, 3, 3)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((2, 5, 3, 3)).astype(np.float32)
    results = []
    for top in ("x", "y"):
        net = minicnn.Net(parse_text(text % (top, region)))
        out = net.forward(x=x)[top].copy()
        dx = net.backward(**{top: dy})["x"].copy()
        results.append((out, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


@pytest.mark.parametrize("local_size", [0, 2, 4])
def test_even_local_size_is_refused(local_size):
    with pytest.raises(LayerError, match=f"local_size must be odd, got {local_size}"):
        LRNLayer(local_size=local_size)(np.ones((1, 3, 2, 2)))


def test_input_must_have_four_axes():
    with pytest.raises(LayerError, match=r"4-axis .* \(2, 5\)"):
        LRNLayer(local_size=3)(np.ones((2, 5)))


def test_net_names_the_layer_on_a_bad_local_size():
    text = 'input: "x" input_shape { dim: 1 dim: 3 dim: 2 dim: 2 } layer { name: "norm1" ' \
           'type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 } }'
    with pytest.raises(minicnn.NetError, match="norm1.*odd, got 4"):
        minicnn.Net(parse_text(text))
