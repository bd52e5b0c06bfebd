"""YOLOv2's Reorg (the Caffe ports' passthrough layer): against a transliteration of Darknet's
reorg_cpu (forward = 0, and 1 for reverse), OpenCV's Caffe importer, the adjoint identity and
finite differences, in YOLOv2's passthrough unit, and its errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import ReorgLayer
from minicnn.ops import reorg_backward, reorg_forward
from minicnn.testing import check_layer_gradient


def darknet_reorg(x, stride, forward):
    """Darknet's reorg_cpu(x, w, h, c, batch, stride, forward, out), with the bottom's dims."""
    batch, c, h, w = x.shape
    flat, out = x.ravel(), np.empty(x.size, x.dtype)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = flat[in_index]
                    else:
                        out[in_index] = flat[out_index]
    return out


@st.composite
def cases(draw):
    stride = draw(st.integers(1, 3))
    reverse = draw(st.booleans())
    c = stride * stride * draw(st.integers(1, 3))
    h, w = (stride * draw(st.integers(1, 3)) for _ in range(2))
    return (draw(st.integers(1, 2)), c, h, w), stride, reverse, draw(st.integers(0, 2**32 - 1))


@given(cases())
def test_matches_darknet_and_is_a_permutation(case):
    shape, stride, reverse, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    y = reorg_forward(x, stride, reverse)
    np.testing.assert_array_equal(y.ravel(), darknet_reorg(x, stride, forward=reverse))
    n, c, h, w = shape
    s2 = stride * stride
    assert y.shape == ((n, c // s2, h * stride, w * stride) if reverse else
                       (n, c * s2, h // stride, w // stride))
    dy = rng.standard_normal(y.shape)
    dx = reorg_backward(dy, shape, stride, reverse)
    assert np.isclose((dy * y).sum(), (dx * x).sum())           # the adjoint
    np.testing.assert_array_equal(np.sort(y.ravel()), np.sort(x.ravel()))
    check_layer_gradient(lambda: ReorgLayer(stride=stride, reverse=reverse), [x])


YOLOV2_PASSTHROUGH = """
input: "data" input_shape { dim: 1 dim: 3 dim: 26 dim: 26 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "reorg" type: "Reorg" bottom: "conv" top: "reorg" reorg_param { stride: 2 } }
layer { name: "concat" type: "Concat" bottom: "reorg" bottom: "pool" top: "concat" }
layer { name: "head" type: "Convolution" bottom: "concat" top: "head"
        convolution_param { num_output: 5 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_yolov2_passthrough_agrees_with_opencv(tmp_path):
    """YOLOv2's passthrough: 26x26 features reorganised to 13x13 and concatenated with the
    pooled ones; OpenCV's importer (its Reorg is Darknet's too) gives the same numbers."""
    cv2 = pytest.importorskip("cv2")
    model = tmp_path / "yolov2.prototxt"
    model.write_text(YOLOV2_PASSTHROUGH)
    net = minicnn.Net(str(model))
    net.save(str(tmp_path / "yolov2.caffemodel"))
    x = np.random.default_rng(6).standard_normal((1, 3, 26, 26)).astype(np.float32)
    out = net.forward(data=x)["head"]
    assert net.blobs["reorg"].shape == (1, 32, 13, 13)
    cv_net = cv2.dnn.readNetFromCaffe(str(model), str(tmp_path / "yolov2.caffemodel"))
    cv_net.setInput(x)
    conv, reorg, head = cv_net.forward(["conv", "reorg", "head"])
    np.testing.assert_array_equal(reorg_forward(conv, 2), reorg)    # OpenCV's own conv output
    for ours, theirs in ((net.blobs["reorg"].data, reorg), (out, head)):
        assert np.linalg.norm(ours - theirs) <= 1e-5 * np.linalg.norm(theirs)


@pytest.mark.parametrize("fields, shape, match", [
    ({}, (1, 4, 2, 2), "stride is required"),
    ({"stride": 2}, (1, 6, 2, 2), r"needs C divisible by 4, H and W by 2; the bottom has shape"),
    ({"stride": 2}, (1, 4, 3, 2), "H and W by 2"),
    ({"stride": 2, "reverse": True}, (1, 6, 3, 3), r"needs C divisible by 4; the bottom"),
    ({"stride": 2}, (4, 4, 2), "takes N x C x H x W"),
])
def test_errors(fields, shape, match):
    with pytest.raises(LayerError, match=match):
        ReorgLayer(**fields).setup([Blob.from_array(np.zeros(shape))], [Blob(())])
