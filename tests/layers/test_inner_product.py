"""InnerProduct through the Layer protocol: gradients, prototxt parameters, diff semantics,
reshapes, loaded weights and errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob, array_to_blob_proto
from minicnn.layers import InnerProductLayer
from minicnn.proto import caffe_pb2, parse_text
from minicnn.testing import check_in_place, check_layer_gradient

GAUSSIAN = {"type": "gaussian", "std": 1.0}


@st.composite
def layer_cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    fields = {"num_output": draw(st.integers(1, 3)), "axis": draw(st.integers(-ndim, ndim - 1)),
              "transpose": draw(st.booleans()), "bias_term": draw(st.booleans()),
              "weight_filler": GAUSSIAN, "bias_filler": GAUSSIAN}
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    return x, fields


@given(layer_cases())
def test_gradient(case):
    x, fields = case
    check_layer_gradient(lambda: InnerProductLayer(**fields), [x])


@given(layer_cases())
def test_shapes(case):
    x, fields = case
    layer = InnerProductLayer(**fields)
    y = layer(x)
    axis, n = fields["axis"] % x.ndim, fields["num_output"]
    k = math.prod(x.shape[axis:])
    assert y.shape == x.shape[:axis] + (n,)
    assert layer.blobs[0].shape == ((k, n) if fields["transpose"] else (n, k))
    assert len(layer.blobs) == (2 if fields["bias_term"] else 1)


def test_prototxt_fields_and_fillers_in_a_net():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 dim: 4 }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 5 axis: -1 transpose: true
                                  weight_filler { type: "constant" value: 0.5 }
                                  bias_filler { type: "constant" value: 0.25 } } }
    """
    net = minicnn.Net(parse_text(text))
    w, b = net.params["ip"]
    assert w.shape == (4, 5) and b.shape == (5,) and w.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    y = net.forward(x=x)["y"]
    assert y.shape == (2, 3, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y, np.repeat(0.5 * x.sum(-1, keepdims=True) + 0.25, 5, -1),
                               rtol=1e-5)


def test_default_filler_is_zero_and_bias_term_false_has_one_blob():
    layer = InnerProductLayer(num_output=3, bias_term=False)
    assert not layer(np.ones((2, 4))).any()
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3, 4)


def test_transpose_stores_the_transposed_weights():
    x = np.random.default_rng(0).standard_normal((3, 4))
    plain = InnerProductLayer(num_output=2, weight_filler=GAUSSIAN, bias_filler=GAUSSIAN)
    flipped = InnerProductLayer(num_output=2, transpose=True)
    y = plain(x)
    flipped(x)
    flipped.blobs[0].data[...] = plain.blobs[0].data.T
    flipped.blobs[1].data[...] = plain.blobs[1].data
    np.testing.assert_allclose(flipped(x), y)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    np.testing.assert_allclose(flipped.backprop(dy), plain.backprop(dy))
    np.testing.assert_allclose(flipped.blobs[0].diff, plain.blobs[0].diff.T)


def test_parameter_diffs_accumulate_and_bottom_diff_is_assigned():
    layer = InnerProductLayer(num_output=2, weight_filler=GAUSSIAN)
    x = np.random.default_rng(0).standard_normal((3, 4))
    dy = np.random.default_rng(1).standard_normal((3, 2))
    layer(x)
    dx1 = layer.backprop(dy).copy()
    dw1, db1 = layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()
    dx2 = layer.backprop(dy)
    np.testing.assert_allclose(dx2, dx1)                          # assigned
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * dw1)      # accumulated
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * db1)
    np.testing.assert_allclose(db1, dy.sum(0))


def test_propagate_down_flags_are_respected():
    layer = InnerProductLayer(num_output=2, weight_filler=GAUSSIAN)
    bottom = [Blob.from_array(np.ones((3, 4)))]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[0].diff[...] = 7
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7).all()                            # not asked for: untouched
    assert not layer.blobs[0].diff.any()
    np.testing.assert_array_equal(layer.blobs[1].diff, [3, 3])



def test_in_place_keeps_x_for_the_weight_gradient():
    """top == bottom (num_output == K): forward overwrites x with y, but dW needs x (it used
    to read y)."""
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((2, 4, 3))

    def make():
        layer = InnerProductLayer(num_output=3, weight_filler=GAUSSIAN, bias_filler=GAUSSIAN)
        layer.rng = np.random.default_rng(6)                    # the same weights both times
        return layer
    check_in_place(make, x, dy)

def test_frozen_weights_in_a_net_get_no_diff():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 0 }
            param { lr_mult: 1 } inner_product_param { num_output: 2
            weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
    input: "label" input_shape { dim: 2 }
    """
    net = minicnn.Net(parse_text(text), phase=minicnn.TRAIN)
    net.forward(x=np.ones((2, 3)), label=np.array([0, 1]))
    net.backward()
    w, b = net.params["ip"]
    assert not w.diff.any() and b.diff.any()


def test_new_batch_size_is_fine_but_a_new_k_is_an_error():
    layer = InnerProductLayer(num_output=2, weight_filler=GAUSSIAN)
    layer(np.ones((3, 2, 2)))
    assert layer(np.ones((5, 4))).shape == (5, 2)                 # same K = 4
    with pytest.raises(minicnn.LayerError, match=r"K = 6 .*K = 4"):
        layer(np.ones((5, 6)))


def test_loaded_weights_are_used_and_checked():
    param = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    param.inner_product_param.num_output = 2
    w = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)        # legacy 4-D shape
    param.blobs.append(array_to_blob_proto(w))
    param.blobs.append(array_to_blob_proto(np.array([1.0, -1.0], np.float32)))
    layer = InnerProductLayer(param)
    y = layer(np.ones((1, 3), np.float32))
    np.testing.assert_allclose(y, [[0 + 1 + 2 + 1, 3 + 4 + 5 - 1]])
    with pytest.raises(minicnn.LayerError, match=r"\(2, 4\)"):
        InnerProductLayer(param.copy())(np.ones((1, 4), np.float32))


@pytest.mark.parametrize("fields, message", [
    ({}, "num_output must be at least 1, got 0"),
    ({"num_output": 2, "axis": 3}, "axis 3 is out of range"),
    ({"num_output": 2, "axis": -4}, "axis -4 is out of range"),
])
def test_bad_parameters(fields, message):
    with pytest.raises(minicnn.LayerError, match=message):
        InnerProductLayer(**fields)(np.ones((2, 3, 4)))


def test_bad_parameters_in_a_net_name_the_layer():
    text = 'input: "x" input_shape { dim: 2 dim: 3 } layer { name: "fc" type: "InnerProduct" ' \
           'bottom: "x" top: "y" inner_product_param { num_output: 2 axis: 2 } }'
    with pytest.raises(minicnn.NetError, match="layer 'fc'.*axis 2 is out of range"):
        minicnn.Net(parse_text(text))
