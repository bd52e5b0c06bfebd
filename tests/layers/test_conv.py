"""Convolution layer through the Layer protocol: gradients, prototxt, fillers, diffs, errors."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import ConvolutionLayer
from minicnn.ops.conv import ConvGeometry, conv2d_forward
from minicnn.proto import parse_text
from minicnn.testing import check_in_place, check_layer_gradient

GAUSSIAN = {"type": "gaussian", "std": 1.0}


def setup_layer(layer, *shapes, dtype=np.float64):
    bottom = [Blob(s, dtype) for s in shapes]
    top = [Blob((), dtype) for _ in shapes]
    layer.setup(bottom, top)
    return bottom, top


@st.composite
def layer_configs(draw):
    group = draw(st.sampled_from([1, 2, 3]))
    channels = group * draw(st.integers(1, 2))
    fields = {"num_output": group * draw(st.integers(1, 2)), "group": group,
              "bias_term": draw(st.booleans()), "weight_filler": GAUSSIAN,
              "bias_filler": GAUSSIAN}
    if draw(st.booleans()):                                 # kernel_size/stride/pad lists
        fields.update(kernel_size=draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)),
                      stride=draw(st.lists(st.integers(1, 3), max_size=2)),
                      pad=draw(st.lists(st.integers(0, 2), max_size=2)))
    else:                                                   # the _h/_w form
        fields.update(kernel_h=draw(st.integers(1, 3)), kernel_w=draw(st.integers(1, 3)),
                      stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 3)),
                      pad_h=draw(st.integers(0, 2)), pad_w=draw(st.integers(0, 2)))
    fields["dilation"] = draw(st.lists(st.integers(1, 3), max_size=2))
    shape = (draw(st.integers(1, 2)), channels, draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    geom = ConvGeometry.from_param(ConvolutionLayer(**fields).type_param)
    assume(all(s + 2 * p >= e for s, p, e in zip(shape[2:], geom.pad, geom.extent)))
    return fields, shape, draw(st.integers(0, 2**32 - 1))


@given(layer_configs())
def test_gradient(config):
    fields, shape, seed = config
    x = np.random.default_rng(seed).standard_normal(shape)
    check_layer_gradient(lambda: ConvolutionLayer(**fields), [x])       # bottom and params


def test_gradient_depthwise_atrous():
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 6))
    check_layer_gradient(lambda: ConvolutionLayer(num_output=4, group=4, kernel_size=3, pad=2,
                                                  dilation=2, weight_filler=GAUSSIAN,
                                                  bias_filler=GAUSSIAN), [x])


PROTOTXT = """
name: "conv1" type: "Convolution" bottom: "x" top: "y"
convolution_param {
  num_output: 4 kernel_h: 3 kernel_w: 2 stride: 2 stride: 1 pad: 1 dilation: 2 group: 2
  weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.25 }
}
"""


def test_prototxt_and_keywords_build_the_same_layer():
    x = np.random.default_rng(1).standard_normal((2, 4, 7, 6))
    from_text = ConvolutionLayer(parse_text(PROTOTXT, "LayerParameter"))
    from_kwargs = ConvolutionLayer(num_output=4, kernel_h=3, kernel_w=2, stride=[2, 1], pad=1,
                                   dilation=2, group=2, weight_filler={"type": "gaussian"},
                                   bias_filler={"type": "constant", "value": 0.25})
    assert from_text.name == "conv1"
    y = from_text(x)
    from_kwargs(x)
    from_kwargs.blobs[0].data[...] = from_text.blobs[0].data            # gaussian draws differ
    np.testing.assert_array_equal(from_kwargs(x), y)
    assert from_text.geom == from_kwargs.geom == ConvGeometry((3, 2), (2, 1), (1, 1), (2, 2))
    assert y.shape == (2, 4, 3, 6)                          # (7+2-5)//2+1, (6+2-3)//1+1
    np.testing.assert_array_equal(from_text.blobs[1].data, 0.25)
    np.testing.assert_allclose(
        y, conv2d_forward(x, from_text.blobs[0].data, from_text.blobs[1].data,
                          geom=from_text.geom, group=2))


def test_scalar_keywords_mean_one_repeated_value():
    layer = ConvolutionLayer(num_output=1, kernel_size=3, stride=2, pad=1, dilation=2)
    assert list(layer.type_param.kernel_size) == [3] and list(layer.type_param.dilation) == [2]


def test_fillers_give_the_right_shapes():
    layer = ConvolutionLayer(num_output=6, kernel_size=[3, 1], group=3,
                             weight_filler={"type": "xavier"},
                             bias_filler={"type": "constant", "value": 2.0})
    setup_layer(layer, (2, 9, 5, 5), dtype=np.float32)
    w, b = layer.blobs
    assert w.shape == (6, 3, 3, 1) and b.shape == (6,)
    assert w.dtype == b.dtype == np.float32
    bound = np.sqrt(3 / (3 * 3 * 1))                        # xavier: fan_in = C/G * kh * kw
    assert np.all(np.abs(w.data) <= bound) and np.any(w.data != 0)
    np.testing.assert_array_equal(b.data, 2.0)
    assert layer.param_propagate_down == [True, True]


def test_default_fillers_are_zero_and_bias_term_false_drops_the_bias():
    layer = ConvolutionLayer(num_output=2, kernel_size=1)
    setup_layer(layer, (1, 3, 2, 2))
    assert [b.shape for b in layer.blobs] == [(2, 3, 1, 1), (2,)]
    assert not any(b.data.any() for b in layer.blobs)
    no_bias = ConvolutionLayer(num_output=2, kernel_size=1, bias_term=False)
    setup_layer(no_bias, (1, 3, 2, 2))
    assert [b.shape for b in no_bias.blobs] == [(2, 3, 1, 1)]


@pytest.mark.parametrize("fields, shape, match", [
    ({"num_output": 4, "kernel_size": 1, "group": 2}, (1, 3, 4, 4),
     "channels 3 and num_output 4 must both be divisible by group 2"),
    ({"num_output": 3, "kernel_size": 1, "group": 2}, (1, 4, 4, 4),
     "channels 4 and num_output 3 must both be divisible by group 2"),
    ({"num_output": 0, "kernel_size": 1}, (1, 4, 4, 4), "num_output must be > 0, got 0"),
    ({"num_output": 2, "kernel_size": 1, "group": 0}, (1, 4, 4, 4), "group must be > 0, got 0"),
    ({"num_output": 2}, (1, 4, 4, 4), "no kernel size"),
    ({"num_output": 2, "kernel_size": 3, "kernel_h": 3}, (1, 4, 4, 4), "not both"),
    ({"num_output": 2, "kernel_size": 5}, (1, 4, 4, 4), "output would be 0x0"),
    ({"num_output": 2, "kernel_size": 1, "axis": 2}, (1, 4, 4, 4), "got axis 2"),
    ({"num_output": 2, "kernel_size": 1}, (1, 4, 4), r"bottom of shape \(1, 4, 4\)"),
    ({"num_output": 2, "kernel_size": 1}, (1, 4, 4, 4, 4), "2 spatial axes only"),
])
def test_bad_parameters_raise_layer_error(fields, shape, match):
    with pytest.raises(LayerError, match=match):
        setup_layer(ConvolutionLayer(**fields), shape)


def test_negative_axis_naming_the_channel_axis_is_accepted():
    _, top = setup_layer(ConvolutionLayer(num_output=2, kernel_size=1, axis=-3), (1, 4, 3, 3))
    assert top[0].shape == (1, 2, 3, 3)


def test_preset_weights_of_a_wrong_shape_are_refused():
    layer = ConvolutionLayer(num_output=2, kernel_size=3)
    layer.blobs = [Blob((2, 4, 3, 3)), Blob((2,))]          # made for 4 channels, given 3
    with pytest.raises(LayerError, match=r"should have shape \(2, 3, 3, 3\), but the given one "
                                         r"has shape \(2, 4, 3, 3\)"):
        setup_layer(layer, (1, 3, 5, 5))


def test_preset_weights_from_the_message_are_used():
    ones = ", ".join(["1"] * 48)
    text = PROTOTXT + f"blobs {{ shape {{ dim: 4 dim: 2 dim: 3 dim: 2 }} data: [{ones}] }}" \
        " blobs { shape { dim: 4 } data: [0, 1, 2, 3] }"
    layer = ConvolutionLayer(parse_text(text, "LayerParameter"))
    y = layer(np.zeros((1, 4, 7, 6)))
    np.testing.assert_array_equal(y, np.arange(4.0)[None, :, None, None] * np.ones(y.shape))


def test_a_wrong_number_of_preset_blobs_is_refused():
    layer = ConvolutionLayer(num_output=2, kernel_size=1, bias_term=False)
    layer.blobs = [Blob((2, 3, 1, 1)), Blob((2,))]
    with pytest.raises(LayerError, match="2 parameter blob.* bias_term false has 1"):
        setup_layer(layer, (1, 3, 2, 2))


def test_a_new_channel_count_after_setup_is_refused():
    layer = ConvolutionLayer(num_output=2, kernel_size=1)
    layer(np.zeros((1, 3, 2, 2)))
    with pytest.raises(LayerError, match="bottom has 5 channels, but the weights were made for 3"):
        layer(np.zeros((1, 5, 2, 2)))


def test_params_accumulate_and_bottom_diff_is_assigned():
    layer = ConvolutionLayer(num_output=3, kernel_size=2, stride=2, weight_filler=GAUSSIAN,
                             bias_filler=GAUSSIAN)
    rng = np.random.default_rng(2)
    bottom, top = setup_layer(layer, (2, 2, 5, 4))
    bottom[0].data[...] = rng.standard_normal(bottom[0].shape)
    layer.forward(bottom, top)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    first = [bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]
    assert all(np.any(d) for d in first)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, first[0])               # assigned
    for blob, once in zip(layer.blobs, first[1:]):
        np.testing.assert_allclose(blob.diff, 2 * once)                    # accumulated


def test_propagate_down_flags_are_respected():
    layer = ConvolutionLayer(num_output=2, kernel_size=3, pad=1, weight_filler=GAUSSIAN)
    bottom, top = setup_layer(layer, (1, 2, 4, 4))
    bottom[0].data[...] = 1.0
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = 7.0
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 7.0)    # untouched
    assert not layer.blobs[0].diff.any()                  # frozen weights: no diff
    np.testing.assert_array_equal(layer.blobs[1].diff, 16.0)


def test_several_bottoms_share_the_weights():
    layer = ConvolutionLayer(num_output=2, kernel_size=2, weight_filler=GAUSSIAN,
                             bias_filler=GAUSSIAN)
    rng = np.random.default_rng(3)
    x0, x1 = rng.standard_normal((2, 1, 2, 3, 3))
    bottom, top = setup_layer(layer, x0.shape, x1.shape)
    bottom[0].data[...], bottom[1].data[...] = x0, x1
    layer.forward(bottom, top)
    single = ConvolutionLayer(num_output=2, kernel_size=2)
    single(x0)
    single.blobs[0].data[...], single.blobs[1].data[...] = (b.data for b in layer.blobs)
    np.testing.assert_array_equal(top[0].data, single(x0))
    np.testing.assert_array_equal(top[1].data, single(x1))
    for t in top:
        t.diff[...] = 1.0
    layer.backward(top, [True, True], bottom)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * 1 * 2 * 2)     # 2 tops, N=1, 2x2 outputs
    with pytest.raises(LayerError, match="all bottoms must have one shape"):
        setup_layer(ConvolutionLayer(num_output=1, kernel_size=1), (1, 1, 2, 2), (1, 1, 3, 2))
    with pytest.raises(LayerError, match="one top per bottom"):
        ConvolutionLayer(num_output=1, kernel_size=1).setup([Blob((1, 1, 2, 2))], [Blob(), Blob()])


def test_in_place_keeps_x_for_the_weight_gradient():
    """top == bottom: forward overwrites x with y, but dW needs x (it used to read y)."""
    x, dy = np.random.default_rng(6).standard_normal((2, 2, 3, 4, 4))

    def make():
        layer = ConvolutionLayer(num_output=3, kernel_size=3, pad=1, weight_filler=GAUSSIAN,
                                 bias_filler=GAUSSIAN)
        layer.rng = np.random.default_rng(7)                    # the same weights both times
        return layer
    check_in_place(make, x, dy)


def test_standalone_call_and_backprop_in_float32():
    layer = ConvolutionLayer(num_output=3, kernel_size=3, pad=1, weight_filler={"type": "msra"})
    x = np.random.default_rng(4).standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == (2, 3, 5, 5)
    dx = layer.backprop(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert layer.blobs[0].diff.dtype == np.float32
    y2 = layer(np.zeros((1, 2, 8, 6), np.float32))        # a new input shape reshapes the top
    assert y2.shape == (1, 3, 8, 6)


NET = """
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 7 }
force_backward: true
layer {
  name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3
                      weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
}
layer {
  name: "atrous" type: "Convolution" bottom: "conv" top: "out"
  convolution_param { num_output: 2 kernel_size: 3 dilation: 2 pad: 2
                      weight_filler { type: "gaussian" } }
}
"""


def test_net_forward_backward():
    net = minicnn.Net(parse_text(NET))
    assert [b.shape for b in net.params["conv"]] == [(6, 1, 3, 3), (6,)]
    assert [b.shape for b in net.params["atrous"]] == [(2, 6, 3, 3), (2,)]
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 7)).astype(np.float32)
    out = net.forward(data=x)["out"]
    assert out.shape == (2, 2, 4, 4) and out.dtype == np.float32
    conv = net.layer_dict["conv"]
    hidden = conv2d_forward(x, *(b.data for b in conv.blobs), geom=conv.geom, group=3)
    np.testing.assert_allclose(net.blobs["conv"].data, hidden, rtol=1e-6)
    dx = net.backward(out=np.ones_like(out))["data"]
    assert dx.shape == x.shape and dx.dtype == np.float32 and np.any(dx)
    assert all(np.any(b.diff) for blobs in net.params.values() for b in blobs)


def test_net_names_the_layer_in_errors():
    text = NET.replace("group: 3", "group: 2")
    with pytest.raises(minicnn.NetError, match=r"layer 'conv' \(Convolution; bottoms data "
                                               r"\(2, 3, 8, 7\)\).*channels 3 and num_output 6"):
        minicnn.Net(parse_text(text))
