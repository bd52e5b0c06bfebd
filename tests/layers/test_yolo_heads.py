"""YOLOv2's Region and YOLOv3's Yolo output layers: against transliterations of Darknet's
forward_region_layer / forward_yolo_layer (test time), finite differences, and their errors.
The converted nets against Darknet itself are in tests/test_darknet.py."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.errors import MinicnnError
from minicnn.layers import RegionLayer, YoloLayer
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient


def logistic(v):
    return 1.0 / (1.0 + math.exp(-v))


def darknet_region(x, n, coords, classes, softmax, background):
    """forward_region_layer at test time, with Darknet's entry_index, on a flat copy."""
    batch, _, h, w = x.shape
    inp, out = x.ravel(), x.ravel().copy()
    per_item = x[0].size

    def entry_index(b, location, entry):
        anchor, loc = divmod(location, w * h)
        return b * per_item + anchor * w * h * (coords + classes + 1) + entry * w * h + loc

    for b in range(batch):
        for a in range(n):
            index = entry_index(b, a * w * h, 0)
            for k in range(index, index + 2 * w * h):
                out[k] = logistic(inp[k])
            index = entry_index(b, a * w * h, coords)
            if not background:
                for k in range(index, index + w * h):
                    out[k] = logistic(inp[k])
            index = entry_index(b, a * w * h, coords + 1)
            if not softmax:
                for k in range(index, index + classes * w * h):
                    out[k] = logistic(inp[k])
    if softmax:                                       # softmax_cpu(input + index, classes + bg,
        index = entry_index(0, 0, coords + (0 if background else 1))     # batch*n groups, ...)
        group_offset = per_item // n
        for g in range(batch * n):
            for s in range(w * h):
                at = index + g * group_offset + s
                values = [inp[at + j * w * h] for j in range(classes + background)]
                largest = max(values)
                e = [math.exp(v - largest) for v in values]
                for j in range(classes + background):
                    out[at + j * w * h] = e[j] / sum(e)
    return out.reshape(x.shape)


def darknet_yolo(x, n, classes):
    """forward_yolo_layer at test time: logistic on x, y, and on objectness and classes."""
    batch, _, h, w = x.shape
    out = x.copy().reshape(batch, n, 5 + classes, h, w)
    for index in [0, 1] + list(range(4, 5 + classes)):
        out[:, :, index] = 1 / (1 + np.exp(-out[:, :, index]))
    return out.reshape(x.shape)


@st.composite
def region_cases(draw):
    n, classes = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    coords = draw(st.sampled_from([4, 4, 5]))
    softmax, background = draw(st.booleans()), draw(st.booleans())
    shape = (draw(st.integers(1, 2)), n * (coords + 1 + classes), draw(st.integers(1, 3)),
             draw(st.integers(1, 3)))
    return shape, n, coords, classes, softmax, background, draw(st.integers(0, 2**32 - 1))


@given(region_cases())
def test_region_matches_darknet_and_its_gradient(case):
    shape, n, coords, classes, softmax, background, seed = case
    x = np.random.default_rng(seed).normal(0, 2, shape)

    def make():
        return RegionLayer(classes=classes, coords=coords, num=n, softmax=softmax,
                           background=background)
    layer = make()
    top = minicnn.Blob((), np.float64)
    layer.setup([minicnn.Blob.from_array(x)], [top])
    layer.forward([minicnn.Blob.from_array(x)], [top])
    np.testing.assert_allclose(top.data, darknet_region(x, n, coords, classes, softmax,
                                                        background), rtol=1e-12, atol=1e-15)
    check_layer_gradient(make, [x])


@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_yolo_matches_darknet_and_its_gradient(n, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, (2, n * (5 + classes), 2, 3))
    anchors = list(rng.uniform(5, 50, 2 * (n + 1)))

    def make():
        return YoloLayer(classes=classes, mask=list(range(1, n + 1)), anchors=anchors)
    layer = make()
    top = minicnn.Blob((), np.float64)
    layer.setup([minicnn.Blob.from_array(x)], [top])
    layer.forward([minicnn.Blob.from_array(x)], [top])
    np.testing.assert_allclose(top.data, darknet_yolo(x, n, classes), rtol=1e-12)
    check_layer_gradient(make, [x])


def test_region_softmax_by_hand():
    """One anchor, one place, two classes: x, y, obj logistic; w, h as they are; softmax."""
    x = np.array([0.0, np.log(3), 0.7, -0.2, 0.0, 1.0, 1.0 + np.log(3)]).reshape(1, 7, 1, 1)
    layer = RegionLayer(classes=2, num=1, softmax=True)
    top = minicnn.Blob((), np.float64)
    layer.setup([minicnn.Blob.from_array(x)], [top])
    layer.forward([minicnn.Blob.from_array(x)], [top])
    np.testing.assert_allclose(top.data.ravel(), [0.5, 0.75, 0.7, -0.2, 0.5, 0.25, 0.75])


def test_heads_in_a_net_and_their_errors():
    net_text = """
    input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 16 kernel_size: 1
                                weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "region" type: "Region" bottom: "conv" top: "region"
            region_param { classes: 3 num: 2 softmax: true anchors: [1, 2, 3, 4] } }
    """
    net = minicnn.Net(parse_text(net_text), phase=minicnn.TEST)
    y = net.forward(data=np.random.default_rng(0).standard_normal((1, 3, 4, 4)))["region"]
    classes = y.reshape(2, 8, 16)[:, 5:]
    np.testing.assert_allclose(classes.sum(axis=1), 1, rtol=1e-5)
    with pytest.raises(MinicnnError, match=r"Region layer 'region' takes N x 18 x H x W \(2 "
                                         r"anchors x \(4 coords \+ 1 \+ 4 classes\)\), got shape"):
        minicnn.Net(parse_text(net_text.replace("classes: 3", "classes: 4")))
    with pytest.raises(MinicnnError, match="3 anchors values for num 2"):
        minicnn.Net(parse_text(net_text.replace("[1, 2, 3, 4]", "[1, 2, 3]")))
    yolo = net_text.replace('"Region"', '"Yolo"').replace(
        "region_param { classes: 3 num: 2 softmax: true anchors: [1, 2, 3, 4] }",
        "yolo_param { classes: 3 mask: [0, 2] anchors: [1, 2, 3, 4, 5, 6] }")
    assert minicnn.Net(parse_text(yolo)).blobs["region"].shape == (1, 16, 4, 4)
    with pytest.raises(MinicnnError, match=r"mask \[0, 3\] names anchors past the 3 given"):
        minicnn.Net(parse_text(yolo.replace("mask: [0, 2]", "mask: [0, 3]")))
