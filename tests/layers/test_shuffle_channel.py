"""ShuffleNet's ShuffleChannel (a fork layer, shuffle_channel_param = 164): against a loop
transliterated from the forks' Resize_cpu, finite differences, OpenCV's Caffe importer (which
has the layer), in a Net from a prototxt, in place, and its errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import ShuffleChannelLayer
from minicnn.ops import channel_shuffle
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient


def fork_shuffle(x, group):
    """The forks' Resize_cpu(output, input, group_row = group, group_column = C / group): the
    feature map at (i, j) of a group_row x group_column grid goes to (j, i)."""
    n, c = x.shape[:2]
    columns = c // group
    y = np.empty_like(x)
    for b in range(n):
        for i in range(group):
            for j in range(columns):
                y[b, j * group + i] = x[b, i * columns + j]
    return y


@st.composite
def cases(draw):
    group, per_group = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rest = draw(st.lists(st.integers(1, 3), max_size=2))
    shape = (draw(st.integers(1, 2)), group * per_group, *rest)
    return shape, group, draw(st.integers(0, 2**32 - 1))


def run(layer, x):
    bottom = [Blob.from_array(np.asarray(x, np.float64), np.float64)]
    top = [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


@given(cases())
def test_forward_and_backward_match_the_forks_loop(case):
    shape, group, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    bottom, top = run(ShuffleChannelLayer(group=group), x)
    np.testing.assert_array_equal(top[0].data, fork_shuffle(x, group))
    dy = rng.standard_normal(shape)
    top[0].diff[...] = dy
    layer = ShuffleChannelLayer(group=group)
    layer.setup(bottom, top)
    layer.backward(top, [True], bottom)
    # the fork's backward: Resize_cpu(bottom_diff, top_diff, group_column, group_row)
    np.testing.assert_array_equal(bottom[0].diff, fork_shuffle(dy, shape[1] // group))
    check_layer_gradient(lambda: ShuffleChannelLayer(group=group), [x])


def test_hand_worked_order():
    """Six channels in 2 groups of 3 (a0 a1 a2 | b0 b1 b2) interleave to a0 b0 a1 b1 a2 b2."""
    x = np.arange(6.0).reshape(1, 6)
    np.testing.assert_array_equal(channel_shuffle(x, 2), [[0, 3, 1, 4, 2, 5]])
    np.testing.assert_array_equal(channel_shuffle(channel_shuffle(x, 2), 3), x)
    np.testing.assert_array_equal(channel_shuffle(x, 1), x)


NET = """
input: "data" input_shape { dim: 2 dim: 6 dim: 3 dim: 4 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 12 kernel_size: 1 group: 3
                            weight_filler { type: "gaussian" std: 1 } } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "c1" top: "%s"
        shuffle_channel_param { group: 3 } }
layer { name: "c2" type: "Convolution" bottom: "%s" top: "c2"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 3
                            weight_filler { type: "gaussian" std: 1 } } }
"""


@pytest.mark.parametrize("top", ["shuffled", "c1"], ids=["separate", "in_place"])
def test_net_agrees_with_opencv(top, tmp_path):
    """ShuffleNet's unit: grouped 1x1, shuffle, grouped 3x3; OpenCV's Caffe importer reads the
    same prototxt and .caffemodel (its ShuffleChannel is its own code) and gives the same
    numbers; in place too."""
    cv2 = pytest.importorskip("cv2")
    model = tmp_path / "shuffle.prototxt"
    model.write_text(NET % (top, top))
    net = minicnn.Net(str(model), phase="TEST")
    net.save(str(tmp_path / "shuffle.caffemodel"))
    x = np.random.default_rng(3).standard_normal((2, 6, 3, 4)).astype(np.float32)
    out = net.forward(data=x)["c2"]
    cv_net = cv2.dnn.readNetFromCaffe(str(model), str(tmp_path / "shuffle.caffemodel"))
    cv_net.setInput(x)
    want = cv_net.forward("c2")
    assert np.linalg.norm(out - want) <= 1e-5 * np.linalg.norm(want)
    if top == "shuffled":       # a wrong permutation moves values by O(1); the convolutions
        cv_net.setInput(x)      # before it round alike only with the same micro-kernel
        np.testing.assert_allclose(net.blobs["shuffled"].data, cv_net.forward("shuffle"),
                                   rtol=1e-5, atol=1e-6)


def test_in_place_backward_is_the_inverse_shuffle():
    """In place (top == bottom), as the forks allow: the net's gradient through the shuffle is
    the separate layer's."""
    grads, weights = [], None
    for top in ("shuffled", "c1"):
        net = minicnn.Net(parse_text("force_backward: true\n" + NET % (top, top)),
                          dtype=np.float64)
        weights = weights or {name: [b.data.copy() for b in blobs]
                              for name, blobs in net.params.items()}
        for name, blobs in net.params.items():      # the same weights in both nets
            for blob, value in zip(blobs, weights[name]):
                blob.data[...] = value
        net.blobs["data"].data = np.random.default_rng(4).standard_normal((2, 6, 3, 4))
        net.forward()
        net.blobs["c2"].diff[...] = np.random.default_rng(5).standard_normal((2, 6, 3, 4))
        net.backward()
        grads.append(net.blobs["data"].diff.copy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_errors_name_the_layer_and_shapes():
    with pytest.raises(LayerError, match=r"4 channels \(shape \(1, 4, 2\)\) do not split into 3"):
        run(ShuffleChannelLayer(group=3), np.zeros((1, 4, 2)))
    with pytest.raises(LayerError, match="group must be at least 1, got 0"):
        run(ShuffleChannelLayer(group=0), np.zeros((1, 4, 2)))
    with pytest.raises(LayerError, match="no channel axis"):
        run(ShuffleChannelLayer(group=1), np.zeros(4))
