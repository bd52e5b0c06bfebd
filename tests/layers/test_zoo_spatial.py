"""Spatial layers of the zoo through the Layer protocol: Deconvolution, the depthwise aliases,
SPP, Interp and Crop. Gradients, prototxt parameters, errors, an FCN-style Net, and forward
agreement with OpenCV's Caffe importer."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layer import LAYERS
from minicnn.layers import (
    ConvolutionDepthwiseLayer,
    ConvolutionLayer,
    CropLayer,
    DeconvolutionLayer,
    InterpLayer,
    SPPLayer,
)
from minicnn.ops.conv import ConvGeometry
from minicnn.proto import parse_text
from minicnn.testing import check_in_place, check_layer_gradient
from tests.ops.test_conv import naive_conv
from tests.ops.test_interp import naive_interp

GAUSSIAN = {"type": "gaussian", "std": 1.0}


def setup_layer(layer, *shapes, dtype=np.float64, tops=1):
    bottom = [Blob(s, dtype) for s in shapes]
    top = [Blob((), dtype) for _ in range(tops)]
    layer.setup(bottom, top)
    return bottom, top


def from_text(text):
    return parse_text(text, "LayerParameter")


def distinct(shape, seed):
    """Distinct values 0.25 apart: no MAX ties."""
    return np.random.default_rng(seed).permutation(math.prod(shape)).reshape(shape) * 0.25


# --- Deconvolution -------------------------------------------------------------------------------

@st.composite
def deconv_configs(draw):
    group = draw(st.sampled_from([1, 2, 3]))
    channels = group * draw(st.integers(1, 2))
    fields = {"num_output": group * draw(st.integers(1, 2)), "group": group,
              "bias_term": draw(st.booleans()), "weight_filler": GAUSSIAN,
              "bias_filler": GAUSSIAN, "kernel_size": draw(st.lists(st.integers(1, 3),
                                                                   min_size=1, max_size=2)),
              "stride": draw(st.lists(st.integers(1, 3), max_size=2)),
              "pad": draw(st.lists(st.integers(0, 2), max_size=2)),
              "dilation": draw(st.lists(st.integers(1, 2), max_size=2))}
    shape = (draw(st.integers(1, 2)), channels, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    geom = ConvGeometry.from_param(DeconvolutionLayer(**fields).type_param)
    assume(all(s * (size - 1) + e - 2 * p >= 1
               for size, s, e, p in zip(shape[2:], geom.stride, geom.extent, geom.pad)))
    return fields, shape, draw(st.integers(0, 2**32 - 1))


@given(deconv_configs())
def test_deconvolution_gradient(config):
    fields, shape, seed = config
    x = np.random.default_rng(seed).standard_normal(shape)
    check_layer_gradient(lambda: DeconvolutionLayer(**fields), [x])      # bottom and params


def test_deconvolution_gradient_with_two_bottoms_sharing_weights():
    rng = np.random.default_rng(0)
    check_layer_gradient(lambda: DeconvolutionLayer(num_output=4, kernel_size=3, stride=2, pad=1,
                                                    group=2, weight_filler=GAUSSIAN,
                                                    bias_filler=GAUSSIAN, top=["a", "b"]),
                         list(rng.standard_normal((2, 1, 2, 3, 3))))



def test_deconvolution_in_place_keeps_x_for_the_weight_gradient():
    """top == bottom: forward overwrites x with y, but dW needs x (it used to read y)."""
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((2, 2, 2, 3, 3))

    def make():
        layer = DeconvolutionLayer(num_output=2, kernel_size=3, pad=1, weight_filler=GAUSSIAN,
                                   bias_filler=GAUSSIAN)
        layer.rng = np.random.default_rng(9)                    # the same weights both times
        return layer
    check_in_place(make, x, dy)

DECONV_TEXT = """
name: "up" type: "Deconvolution" bottom: "x" top: "y"
param { lr_mult: 0 }
convolution_param {
  num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 stride: 1 pad: 1 group: 2
  weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.25 }
}
"""


def test_deconvolution_from_prototxt_and_keywords():
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 5))
    text_layer = DeconvolutionLayer(from_text(DECONV_TEXT))
    kw_layer = DeconvolutionLayer(num_output=6, kernel_h=3, kernel_w=2, stride=[2, 1], pad=1,
                                  group=2, weight_filler={"type": "gaussian"},
                                  bias_filler={"type": "constant", "value": 0.25})
    y = text_layer(x)
    kw_layer(x)
    kw_layer.blobs[0].data[...] = text_layer.blobs[0].data
    np.testing.assert_array_equal(kw_layer(x), y)
    assert y.shape == (2, 6, 5, 4)                         # 2*(3-1)+3-2, 1*(5-1)+2-2
    assert [b.shape for b in text_layer.blobs] == [(4, 3, 3, 2), (6,)]   # (C, F/G, kh, kw)
    np.testing.assert_array_equal(text_layer.blobs[1].data, 0.25)
    assert text_layer.type == "Deconvolution" and LAYERS["Deconvolution"] is DeconvolutionLayer


def test_deconvolution_bias_is_added_per_output_channel():
    layer = DeconvolutionLayer(num_output=3, kernel_size=2, stride=2,
                               bias_filler={"type": "constant", "value": 1.5})
    y = layer(np.ones((1, 2, 2, 2)))                       # zero weights: only the bias
    np.testing.assert_array_equal(y, np.full((1, 3, 4, 4), 1.5))
    layer.backprop(np.ones_like(y))
    np.testing.assert_array_equal(layer.blobs[1].diff, 16.0)


@pytest.mark.parametrize("fields, shape, match", [
    ({"num_output": 3, "kernel_size": 2, "group": 2}, (1, 4, 3, 3),
     "channels 4 and num_output 3 must both be divisible by group 2"),
    ({"num_output": 4, "kernel_size": 2, "group": 2}, (1, 3, 3, 3),
     "channels 3 and num_output 4 must both be divisible by group 2"),
    ({"num_output": 0, "kernel_size": 2}, (1, 3, 3, 3), "num_output must be > 0, got 0"),
    ({"num_output": 2, "kernel_size": 1, "pad": 1}, (1, 3, 1, 1),
     "deconvolution output would be -1x-1 for a 1x1 input: pad 1x1 is too large"),
    ({"num_output": 2}, (1, 3, 3, 3), "no kernel size"),
    ({"num_output": 2, "kernel_size": 2}, (1, 3, 3), r"Deconvolution supports 2 spatial axes"),
    ({"num_output": 2, "kernel_size": 2, "axis": 2}, (1, 3, 3, 3), "got axis 2"),
])
def test_deconvolution_errors(fields, shape, match):
    with pytest.raises(LayerError, match=match):
        setup_layer(DeconvolutionLayer(**fields), shape)


def test_deconvolution_refuses_weights_in_convolution_layout():
    layer = DeconvolutionLayer(num_output=4, kernel_size=3)
    layer.blobs = [Blob((4, 2, 3, 3)), Blob((4,))]         # Convolution's (F, C, k, k)
    with pytest.raises(LayerError, match=r"should have shape \(2, 4, 3, 3\), but the given one "
                                         r"has shape \(4, 2, 3, 3\)"):
        setup_layer(layer, (1, 2, 3, 3))
    layer = DeconvolutionLayer(num_output=2, kernel_size=1)
    layer(np.zeros((1, 3, 2, 2)))
    with pytest.raises(LayerError, match="Deconvolution needs a 4-D"):
        layer(np.zeros((1, 3, 2)))
    with pytest.raises(LayerError, match="bottom has 5 channels, but the weights were made for 3"):
        layer(np.zeros((1, 5, 2, 2)))


def test_deconvolution_respects_propagate_down_and_frozen_weights():
    layer = DeconvolutionLayer(num_output=2, kernel_size=3, stride=2, weight_filler=GAUSSIAN)
    bottom, top = setup_layer(layer, (1, 2, 3, 3))
    bottom[0].data[...] = 1.0
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = 7.0
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 7.0)
    assert not layer.blobs[0].diff.any()
    np.testing.assert_array_equal(layer.blobs[1].diff, 49.0)              # 7x7 outputs
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(layer.blobs[1].diff, 98.0)              # accumulated (I1)


# --- depthwise aliases ---------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", ["ConvolutionDepthwise", "DepthwiseConvolution"])
def test_depthwise_aliases_equal_a_grouped_convolution(type_name):
    assert LAYERS[type_name] is ConvolutionDepthwiseLayer
    text = (f'name: "dw" type: "{type_name}" bottom: "x" top: "y" convolution_param {{ '
            f'num_output: 6 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "gaussian" }} '
            f'bias_filler {{ type: "gaussian" }} }}')
    dw = minicnn.layer.create_layer(from_text(text))
    x = np.random.default_rng(2).standard_normal((2, 6, 7, 6))
    y = dw(x)
    assert dw.group == 6 and [b.shape for b in dw.blobs] == [(6, 1, 3, 3), (6,)]
    conv = ConvolutionLayer(num_output=6, kernel_size=3, stride=2, pad=1, group=6)
    conv(x)
    for mine, theirs in zip(conv.blobs, dw.blobs):
        mine.data[...] = theirs.data
    np.testing.assert_allclose(y, conv(x), rtol=1e-12)
    np.testing.assert_allclose(dw.backprop(np.ones_like(y)), conv.backprop(np.ones_like(y)))


def test_depthwise_defaults_and_channel_multiplier():
    layer = ConvolutionDepthwiseLayer(kernel_size=3, pad=1)  # num_output unset: the channels
    assert layer(np.zeros((1, 4, 5, 5))).shape == (1, 4, 5, 5)
    assert layer.blobs[0].shape == (4, 1, 3, 3)
    multiplier = ConvolutionDepthwiseLayer(num_output=8, group=4, kernel_size=3,
                                           weight_filler=GAUSSIAN)
    assert multiplier(np.zeros((1, 4, 5, 5))).shape == (1, 8, 3, 3)
    assert multiplier.blobs[0].shape == (8, 1, 3, 3)


@st.composite
def depthwise_configs(draw):
    """C channels, num_output unset (C) or a multiple of C, group unset or C; kernel, stride,
    pad and dilation per axis."""
    channels, multiplier = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    fields = {"weight_filler": GAUSSIAN, "bias_filler": GAUSSIAN,
              "bias_term": draw(st.booleans()),
              "kernel_size": draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)),
              "stride": draw(st.lists(st.integers(1, 3), max_size=2)),
              "pad": draw(st.lists(st.integers(0, 2), max_size=2)),
              "dilation": draw(st.lists(st.integers(1, 2), max_size=2))}
    if multiplier > 1 or draw(st.booleans()):
        fields["num_output"] = channels * multiplier
    if draw(st.booleans()):
        fields["group"] = channels
    shape = (draw(st.integers(1, 2)), channels, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    geom = ConvGeometry.from_param(ConvolutionDepthwiseLayer(**fields).type_param)
    assume(all(s + 2 * p >= e for s, p, e in zip(shape[2:], geom.pad, geom.extent)))
    return fields, shape, geom, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=30, deadline=None)
@given(depthwise_configs())
def test_depthwise_drawn_geometries_match_the_loop_and_finite_differences(config):
    fields, shape, geom, seed = config
    x = np.random.default_rng(seed).standard_normal(shape)
    layer = ConvolutionDepthwiseLayer(**fields)
    y = layer(x)
    w = layer.blobs[0].data
    assert w.shape[1] == 1 and layer.group == shape[1]
    b = layer.blobs[1].data if fields["bias_term"] else None
    np.testing.assert_allclose(y, naive_conv(x, w, b, geom, shape[1]), rtol=1e-10, atol=1e-12)
    check_layer_gradient(lambda: ConvolutionDepthwiseLayer(**fields), [x])


@pytest.mark.parametrize("fields, match", [
    ({"num_output": 4, "kernel_size": 3, "group": 2},
     "ConvolutionDepthwise is depthwise: group must be the 4 input channels .*got group 2"),
    ({"num_output": 6, "kernel_size": 3},
     "needs num_output equal to the 4 input channels or a multiple of them .*got num_output 6"),
    ({"num_output": 2, "kernel_size": 3}, "got num_output 2"),
])
def test_depthwise_errors(fields, match):
    with pytest.raises(LayerError, match=match):
        setup_layer(ConvolutionDepthwiseLayer(**fields), (1, 4, 5, 5))


# --- SPP -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("height, hw", [(1, (3, 4)), (2, (5, 7)), (3, (6, 6))])
def test_spp_gradient(pool, height, hw):
    x = distinct((2, 2, *hw), height) * 0.1
    check_layer_gradient(lambda: SPPLayer(pyramid_height=height, pool=pool), [x])


def test_spp_from_prototxt_and_keywords():
    x = distinct((2, 3, 9, 8), 4)
    text = from_text('name: "spp" type: "SPP" bottom: "x" top: "y" '
                     'spp_param { pyramid_height: 2 pool: AVE }')
    y = SPPLayer(text)(x)
    np.testing.assert_array_equal(y, SPPLayer(pyramid_height=2, pool="AVE")(x))
    assert y.shape == (2, 3 * 5)
    np.testing.assert_allclose(y[:, :3], x.mean(axis=(2, 3)))
    assert SPPLayer(pyramid_height=2)(x).shape == (2, 15)          # MAX is the default


def test_spp_reshapes_for_a_new_input_size():
    layer = SPPLayer(pyramid_height=3)
    assert layer(distinct((1, 2, 8, 8), 5)).shape == (1, 42)
    assert layer(distinct((3, 2, 17, 11), 6)).shape == (3, 42)
    assert layer.backprop(np.ones((3, 42))).shape == (3, 2, 17, 11)


@pytest.mark.parametrize("fields, shape, match", [
    ({"pyramid_height": 2, "pool": "STOCHASTIC"}, (1, 1, 4, 4), "STOCHASTIC SPP pooling is not"),
    ({}, (1, 1, 4, 4), "pyramid_height must be between 1 and 31, got 0"),
    ({"pyramid_height": 2}, (1, 4, 4), r"4-axis \(N, C, H, W\) input, got shape \(1, 4, 4\)"),
    ({"pyramid_height": 2}, (1, 1, 1, 1), "2 bins needs pad 1 >= kernel 1"),
    ({"pyramid_height": 3}, (1, 1, 8, 5), "4 bins needs pad 2 >= kernel 2 on the 5-pixel w"),
])
def test_spp_errors(fields, shape, match):
    with pytest.raises(LayerError, match=match):
        setup_layer(SPPLayer(**fields), shape)


# --- Interp --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"zoom_factor": 2},
    {"shrink_factor": 2, "pad_beg": -1},
    {"height": 4, "width": 7, "pad_end": -1},
    {"zoom_factor": 3, "shrink_factor": 2, "pad_beg": -1, "pad_end": -1},
])
def test_interp_gradient(fields):
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 6))
    check_layer_gradient(lambda: InterpLayer(**fields), [x])


@st.composite
def interp_layer_cases(draw):
    """A bottom cropped by drawn pads, and the output size from zoom_factor, shrink_factor,
    both, height and width, or a second bottom; with the size the rules give."""
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    pad_beg = -draw(st.integers(0, min(h, w) - 1))
    pad_end = -draw(st.integers(0, min(h, w) - 1 + pad_beg))
    h_eff, w_eff = h + pad_beg + pad_end, w + pad_beg + pad_end
    fields = {"pad_beg": pad_beg} if pad_beg or draw(st.booleans()) else {}
    if pad_end or draw(st.booleans()):
        fields["pad_end"] = pad_end
    kind = draw(st.sampled_from(["zoom", "shrink", "both", "hw", "bottom"]))
    size = None
    if kind == "hw":
        fields["height"], fields["width"] = draw(st.integers(1, 7)), draw(st.integers(1, 7))
        out = (fields["height"], fields["width"])
    elif kind == "bottom":
        size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 7)),
                draw(st.integers(1, 7)))
        out = size[2:]
    else:
        out = (h_eff, w_eff)
        if kind != "zoom":
            fields["shrink_factor"] = s = draw(st.integers(1, 3))
            out = tuple((d - 1) // s + 1 for d in out)
        if kind != "shrink":
            fields["zoom_factor"] = z = draw(st.integers(1, 3))
            out = tuple(d + (d - 1) * (z - 1) for d in out)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w)
    return fields, shape, size, out, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(interp_layer_cases())
def test_interp_drawn_sizes_and_pads_match_the_loop_and_finite_differences(case):
    fields, shape, size, out, seed = case
    rng = np.random.default_rng(seed)
    bottoms = [rng.standard_normal(shape)] + ([] if size is None else [rng.standard_normal(size)])
    y = InterpLayer(**fields)(*bottoms)
    assert y.shape == shape[:2] + out
    pads = fields.get("pad_beg", 0), fields.get("pad_end", 0)
    np.testing.assert_allclose(y, naive_interp(bottoms[0], out, *pads), rtol=1e-12, atol=1e-14)
    check_layer_gradient(lambda: InterpLayer(**fields), bottoms)


def test_interp_gradient_with_a_size_bottom():
    rng = np.random.default_rng(6)
    x, size = rng.standard_normal((2, 2, 4, 5)), rng.standard_normal((2, 7, 7, 3))
    layer = InterpLayer()
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    check_layer_gradient(layer, [x, size])                 # bottom[1] is not checked
    assert layer(x, size).shape == (2, 2, 7, 3)
    dx, dsize = layer.backprop(np.ones((2, 2, 7, 3)))
    assert dx.shape == x.shape and dsize is None


def test_interp_from_prototxt_and_keywords():
    x = np.random.default_rng(7).standard_normal((1, 2, 5, 6))
    text = from_text('name: "up" type: "Interp" bottom: "x" top: "y" '
                     'interp_param { zoom_factor: 4 pad_beg: -1 pad_end: 0 }')
    y = InterpLayer(text)(x)
    assert y.shape == (1, 2, 13, 17)                       # H_eff 4, W_eff 5, zoom 4
    np.testing.assert_array_equal(y, InterpLayer(zoom_factor=4, pad_beg=-1)(x))
    np.testing.assert_allclose(y[:, :, 0, 0], x[:, :, 1, 1])           # crop, then corners
    np.testing.assert_allclose(y[:, :, -1, -1], x[:, :, -1, -1])


def test_interp_second_bottom_in_a_net_gets_no_diff():
    text = """
    input: "data" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
    input: "small" input_shape { dim: 1 dim: 3 dim: 3 dim: 3 }
    force_backward: true
    layer { name: "up" type: "Interp" bottom: "small" bottom: "data" top: "up" }
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    out = net.forward(data=np.ones((1, 2, 6, 6)), small=np.ones((1, 3, 3, 3)))["up"]
    assert out.shape == (1, 3, 6, 6)
    diffs = net.backward(up=np.ones_like(out))
    np.testing.assert_allclose(diffs["small"].sum(), out.size)          # the adjoint keeps mass
    assert not diffs["data"].any()


@pytest.mark.parametrize("fields, shapes, match", [
    ({"zoom_factor": 2, "pad_beg": 1}, [(1, 1, 4, 4)], "only pad_beg <= 0 .* got pad_beg 1"),
    ({}, [(1, 1, 4, 4)], "Interp needs its output size"),
    ({"height": 3}, [(1, 1, 4, 4)], "needs both height and width"),
    ({"zoom_factor": 2}, [(1, 1, 4, 4), (1, 1, 8, 8)], "second bottom .* must not be given"),
    ({"zoom_factor": 0}, [(1, 1, 4, 4)], "zoom_factor must be >= 1, got 0"),
    ({"zoom_factor": 2}, [(1, 4, 4)], r"4-D \(N, C, H, W\) bottoms, got bottom\[0\]"),
    ({}, [(1, 1, 4, 4), (8, 8)], r"got bottom\[1\] of shape \(8, 8\)"),
    ({"zoom_factor": 2, "pad_end": -4}, [(1, 1, 4, 4)], "crops the 4x4 input to 0x0"),
])
def test_interp_errors(fields, shapes, match):
    with pytest.raises(LayerError, match=match):
        setup_layer(InterpLayer(**fields), *shapes)


def test_interp_blob_counts():
    with pytest.raises(LayerError, match="at most 2 bottom"):
        setup_layer(InterpLayer(zoom_factor=2), (1, 1, 2, 2), (1, 1, 2, 2), (1, 1, 2, 2))


# --- Crop ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, size", [
    ({}, (2, 3, 3, 4)),
    ({"offset": 1}, (2, 3, 4, 2)),
    ({"axis": 1, "offset": [1, 2, 0]}, (2, 2, 3, 5)),
    ({"axis": -1, "offset": 2}, (2, 3, 6, 3)),
])
def test_crop_gradient(fields, size):
    rng = np.random.default_rng(8)
    x, ref = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal(size)
    check_layer_gradient(lambda: CropLayer(**fields), [x, ref])


@st.composite
def crop_cases(draw):
    """1-4 axes, any axis (negative too), no offset, one, or one per cropped axis; bottom[1]
    any size on the axes before the axis (they are kept whole)."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    first = axis % ndim
    kind = draw(st.sampled_from(["none", "one", "each"]))
    if kind == "one":
        one = draw(st.integers(0, min(shape[first:]) - 1))
        offsets = [one] * (ndim - first)
    else:
        offsets = [draw(st.integers(0, n - 1)) if kind == "each" else 0 for n in shape[first:]]
    size = [draw(st.integers(1, 3)) for _ in shape[:first]]
    size += [draw(st.integers(1, n - o)) for n, o in zip(shape[first:], offsets)]
    fields = {"axis": axis}
    if kind != "none":
        fields["offset"] = offsets[0] if kind == "one" else offsets
    return fields, shape, tuple(size), [0] * first + offsets, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(crop_cases())
def test_crop_drawn_cases_match_the_index_loop_and_finite_differences(case):
    fields, shape, size, offsets, seed = case
    rng = np.random.default_rng(seed)
    x, ref = rng.standard_normal(shape), rng.standard_normal(size)
    y = CropLayer(**fields)(x, ref)
    first = fields["axis"] % len(shape)
    assert y.shape == shape[:first] + size[first:]
    for index in np.ndindex(*y.shape):                   # y[i] = x[i + offset], element by element
        assert y[index] == x[tuple(i + o for i, o in zip(index, offsets))]
    check_layer_gradient(lambda: CropLayer(**fields), [x, ref])


def test_crop_values_and_zero_padded_diff():
    x = np.arange(2 * 3 * 6 * 5, dtype=np.float64).reshape(2, 3, 6, 5)
    layer = CropLayer(offset=[1, 2])
    y = layer(x, np.zeros((9, 9, 4, 3)))                   # axes 0, 1 are not cropped
    np.testing.assert_array_equal(y, x[:, :, 1:5, 2:5])
    dx, dref = layer.backprop(np.ones_like(y))
    assert dref is None and not layer.allow_force_backward(1)
    expected = np.zeros_like(x)
    expected[:, :, 1:5, 2:5] = 1
    np.testing.assert_array_equal(dx, expected)
    text = from_text('name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" '
                     'crop_param { axis: 2 offset: 1 offset: 2 }')
    np.testing.assert_array_equal(CropLayer(text)(x, np.zeros((1, 1, 4, 3))), y)
    axis1 = CropLayer(axis=1, offset=1)(x, np.zeros((5, 2, 3, 3)))
    np.testing.assert_array_equal(axis1, x[:, 1:3, 1:4, 1:4])


def test_crop_float32_and_bottom1_diff_in_a_net_is_zero():
    text = """
    input: "big" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }
    input: "ref" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
    force_backward: true
    layer { name: "crop" type: "Crop" bottom: "big" bottom: "ref" top: "y"
            crop_param { offset: 1 } }
    """
    net = minicnn.Net(parse_text(text))
    out = net.forward(big=np.ones((1, 2, 5, 5), np.float32), ref=np.ones((1, 2, 3, 3)))["y"]
    assert out.dtype == np.float32 and out.shape == (1, 2, 3, 3)
    diffs = net.backward(y=np.ones_like(out))
    assert diffs["big"].sum() == 18 and not diffs["ref"].any()


@pytest.mark.parametrize("fields, shapes, match", [
    ({"offset": [1, 2, 3]}, [(1, 2, 6, 6), (1, 2, 3, 3)],
     "one offset, or one per cropped axis: 3 offsets for the 2 axes from axis 2"),
    ({"offset": 4}, [(1, 2, 6, 6), (1, 2, 3, 3)],
     r"Crop on axis 2 is out of bounds: offset 4 \+ size 3 > 6"),
    ({"offset": [0, 2]}, [(1, 2, 6, 4), (1, 2, 3, 3)],
     r"axis 3 is out of bounds: offset 2 \+ size 3 > 4"),
    ({}, [(1, 2, 3, 3), (1, 2, 4, 3)], r"axis 2 is out of bounds: offset 0 \+ size 4 > 3"),
    ({"axis": 4}, [(1, 2, 3, 3), (1, 2, 3, 3)], r"axis 4 is out of range .*\(4 axes\)"),
    ({"axis": -5}, [(1, 2, 3, 3), (1, 2, 3, 3)], "axis -5 is out of range"),
    ({}, [(1, 2, 3, 3), (2, 3)], r"bottom\[1\] of shape \(2, 3\) needs at least the 4 axes"),
    ({}, [(1, 2, 3, 3)], "exactly 2 bottom blob"),
])
def test_crop_errors(fields, shapes, match):
    with pytest.raises(LayerError, match=match):
        setup_layer(CropLayer(**fields), *shapes)


# --- an FCN-style net ----------------------------------------------------------------------------

FCN = """
name: "fcn_tiny"
input: "data" input_shape { dim: 2 dim: 3 dim: 11 dim: 13 }
input: "label" input_shape { dim: 2 dim: 4 dim: 11 dim: 13 }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "upscore" type: "Deconvolution" bottom: "score" top: "upscore"
        param { lr_mult: 0 }
        convolution_param { num_output: 4 group: 4 kernel_size: 4 stride: 2 bias_term: false
                            weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "crop"
        crop_param { axis: 2 offset: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "crop" bottom: "label" top: "loss" }
"""


def test_fcn_style_upsampling_net():
    net = minicnn.Net(parse_text(FCN), dtype=np.float64)
    rng = np.random.default_rng(9)
    x, label = rng.standard_normal((2, 3, 11, 13)), rng.standard_normal((2, 4, 11, 13))
    net.forward(data=x, label=label)
    assert net.blobs["score"].shape == (2, 4, 5, 6)
    assert net.blobs["upscore"].shape == (2, 4, 12, 14)      # 2*(5-1)+4, 2*(6-1)+4
    assert net.blobs["crop"].shape == (2, 4, 11, 13)
    assert net.params["upscore"][0].shape == (4, 1, 4, 4)
    np.testing.assert_allclose(net.blobs["crop"].data, net.blobs["upscore"].data[:, :, 1:12, 1:14])
    net.clear_param_diffs()
    net.backward()
    assert net.params["score"][0].diff.any()                  # trained through the upsampling
    assert not net.params["upscore"][0].diff.any()            # lr_mult 0: frozen bilinear
    # the score layer's weight gradient, checked against a finite difference of the loss
    w = net.params["score"][0].data
    idx, eps = (1, 2, 0, 1), 1e-6
    w[idx] += eps
    plus = net.forward_from_to()
    w[idx] -= 2 * eps
    minus = net.forward_from_to()
    w[idx] += eps
    np.testing.assert_allclose(net.params["score"][0].diff[idx], (plus - minus) / (2 * eps),
                               rtol=1e-6)


# --- forward agreement with OpenCV's Caffe importer ----------------------------------------------

TOLERANCE = 1e-5


def relative_error(ours, theirs):
    theirs = np.asarray(theirs).reshape(ours.shape)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def run_both(cv2, tmp_path, prototxt, input_shape, seed=0):
    """{blob: (ours, opencv)} for every layer's top; weights are random (He-scaled) except
    those a bilinear filler made, which stay as filled."""
    rng = np.random.default_rng(seed)
    model = tmp_path / "net.prototxt"
    model.write_text(prototxt)
    net = minicnn.Net(str(model))
    for name, blobs in net.params.items():
        if net.layer_dict[name].type_param.weight_filler.type == "bilinear":
            continue
        fan_in = max(1, math.prod(blobs[0].shape[1:]))
        blobs[0].data[...] = rng.standard_normal(blobs[0].shape) * np.sqrt(2.0 / fan_in)
        for blob in blobs[1:]:
            blob.data[...] = rng.standard_normal(blob.shape) * 0.1
    weights = str(tmp_path / "net.caffemodel")
    net.save(weights)
    x = (rng.standard_normal(input_shape) * 2).astype(np.float32)
    net.forward(data=x)
    cv_net = cv2.dnn.readNetFromCaffe(str(model), weights)
    cv_net.enableFusion(False)
    cv_net.setInput(x, "data")
    layers = [name for name, layer in net.layer_dict.items()
              if layer.type != "Input" and not name.endswith("_split")]
    outputs = cv_net.forward(layers)
    return {net.top_names[name][0]: (net.blobs[net.top_names[name][0]].data, out)
            for name, out in zip(layers, outputs)}


def single_layer_net(body, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'name: "t"\ninput: "data"\ninput_shape {{ {dims} }}\n{body}\n'


REF_CONV = ('layer { name: "ref" type: "Convolution" bottom: "data" top: "ref" '
            'convolution_param { num_output: 4 kernel_size: 3 } }')

OPENCV_CASES = {
    "deconv_stride_pad_group": 'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
                               'convolution_param { num_output: 4 kernel_size: 3 stride: 2 '
                               'pad: 1 group: 2 } }',
    "deconv_rect_no_bias": 'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
                           'convolution_param { num_output: 3 kernel_h: 2 kernel_w: 3 '
                           'stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 bias_term: false } }',
    "deconv_stride_gt_kernel": 'layer { name: "d" type: "Deconvolution" bottom: "data" '
                               'top: "d" convolution_param { num_output: 2 kernel_size: 2 '
                               'stride: 3 } }',
    "deconv_depthwise": 'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
                        'convolution_param { num_output: 6 group: 6 kernel_size: 4 stride: 2 '
                        'pad: 1 } }',
    "fcn_bilinear_upsample_crop": (
        REF_CONV + 'layer { name: "up" type: "Deconvolution" bottom: "ref" top: "up" '
        'convolution_param { num_output: 4 group: 4 kernel_size: 6 stride: 3 pad: 1 '
        'bias_term: false weight_filler { type: "bilinear" } } }'
        'layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" '
        'crop_param { offset: 2 } }'),
    "crop_offsets_per_axis": REF_CONV + 'layer { name: "crop" type: "Crop" bottom: "data" '
                                        'bottom: "ref" top: "crop" crop_param { offset: 1 '
                                        'offset: 2 } }',
    "crop_axis_1": REF_CONV + 'layer { name: "crop" type: "Crop" bottom: "data" bottom: "ref" '
                              'top: "crop" crop_param { axis: 1 offset: 1 } }',
    "convolution_depthwise_alias": 'layer { name: "dw" type: "ConvolutionDepthwise" '
                                   'bottom: "data" top: "dw" convolution_param { num_output: 6 '
                                   'kernel_size: 3 stride: 2 pad: 1 } }',
    "convolution_depthwise_multiplier": 'layer { name: "dw" type: "ConvolutionDepthwise" '
                                        'bottom: "data" top: "dw" convolution_param { '
                                        'num_output: 12 kernel_size: 3 pad: 1 } }',
    "interp_zoom": 'layer { name: "i" type: "Interp" bottom: "data" top: "i" '
                   'interp_param { zoom_factor: 3 } }',
    "interp_height_width_up": 'layer { name: "i" type: "Interp" bottom: "data" top: "i" '
                              'interp_param { height: 17 width: 14 } }',
    "interp_height_width_down": 'layer { name: "i" type: "Interp" bottom: "data" top: "i" '
                                'interp_param { height: 4 width: 7 } }',
}


@pytest.mark.parametrize("case", sorted(OPENCV_CASES))
def test_forward_agrees_with_opencv(case, tmp_path):
    """OpenCV (opencv-python-headless 4.x) as the reference. Its Interp is corner-aligned like
    the fork's, but it implements only zoom_factor and height/width: it cannot build
    shrink_factor alone (an empty output), ignores shrink_factor next to zoom_factor, ignores
    pad_beg/pad_end, and refuses a second bottom; those Interp forms are checked against the
    fork's formulas in tests/ops/test_interp.py instead. Deconvolution is compared without
    dilation. SPP has no OpenCV counterpart."""
    cv2 = pytest.importorskip("cv2")
    pairs = run_both(cv2, tmp_path, single_layer_net(OPENCV_CASES[case], (2, 6, 9, 11)),
                     (2, 6, 9, 11))
    errors = {blob: relative_error(ours, theirs) for blob, (ours, theirs) in pairs.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"blob '{worst}' differs by {errors[worst]:.3g}"
