"""ReLU6 (MobileNet ports' and the converters' layer): against PyTorch float64 (relu6 and its
autograd, which passes no gradient at either kink), finite differences, OpenCV's Caffe
importer, in place."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.layers import ReLU6Layer
from minicnn.ops import relu6_backward, relu6_forward
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

torch = pytest.importorskip("torch")


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
       st.integers(0, 2**32 - 1))
def test_matches_pytorch_and_finite_differences(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 9, shape)
    x.flat[: min(4, x.size)] = [0.0, 6.0, -0.5, 6.5][: min(4, x.size)]     # the kinks and beyond
    dy = rng.standard_normal(shape)
    t = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.relu6(t)
    want.backward(torch.tensor(dy))
    y = relu6_forward(x)
    np.testing.assert_array_equal(y, want.detach().numpy())
    np.testing.assert_array_equal(relu6_backward(dy, y), t.grad.numpy())
    away = np.where(np.abs(x) < 1e-3, x + 0.01, np.where(np.abs(x - 6) < 1e-3, x + 0.01, x))
    check_layer_gradient(ReLU6Layer, [away])


def test_float32_nan_and_in_place():
    x = np.array([[-1, 0, 3, 6, 7, np.nan]], np.float32)
    y = relu6_forward(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 0, 3, 6, 6, np.nan]])
    net_text = """force_backward: true
        input: "x" input_shape { dim: 1 dim: 6 }
        layer { name: "r" type: "ReLU6" bottom: "x" top: "%s" }
        layer { name: "s" type: "Scale" bottom: "%s" top: "s" scale_param { bias_term: true } }"""
    grads = []
    for top in ("y", "x"):                       # separate and in place
        net = minicnn.Net(parse_text(net_text % (top, top)), dtype=np.float64)
        net.forward(x=np.array([[-1, 0, 3, 6, 7, 2]], np.float64))
        net.blobs["s"].diff[...] = 1
        net.backward()
        grads.append(net.blobs["x"].diff.copy())
    np.testing.assert_array_equal(grads[0], [[0, 0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(grads[1], grads[0])


def test_agrees_with_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    model = tmp_path / "relu6.prototxt"
    model.write_text("""
        input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }
        layer { name: "c" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1
                                    weight_filler { type: "gaussian" std: 3 } } }
        layer { name: "r" type: "ReLU6" bottom: "c" top: "c" }""")
    net = minicnn.Net(str(model), phase="TEST")
    net.save(str(tmp_path / "relu6.caffemodel"))
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    out = net.forward(data=x)["c"]
    assert (out == 0).any() and (out == 6).any() and ((out > 0) & (out < 6)).any()
    cv_net = cv2.dnn.readNetFromCaffe(str(model), str(tmp_path / "relu6.caffemodel"))
    cv_net.setInput(x)
    want = cv_net.forward()
    assert np.linalg.norm(out - want) <= 1e-5 * np.linalg.norm(want)
