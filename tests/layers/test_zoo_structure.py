"""Bias, Slice and Reshape through the Layer protocol, in Nets, and against OpenCV's Caffe importer.

OpenCV (4.x, cv2.dnn.readNetFromCaffe) differs from Caffe here, so those cases are documented
and not asserted against it:
- Bias: OpenCV has no Caffe `Bias` layer ("Can't create layer ... of type Bias"), so Bias is
  checked against its definition and finite differences only.
- Slice: OpenCV ignores the legacy slice_dim (it slices axis 1 instead), and it only computes the
  tops that some layer consumes (an even split of unconsumed tops fails), so the tests give
  every top a consumer.
- Reshape: OpenCV rejects a negative axis and num_axes 0 (Caffe's ways to insert axes).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import BiasLayer, ReshapeLayer, SliceLayer
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

seeds = st.integers(0, 2**32 - 1)
small_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple)


def run(layer, *arrays, n_top=1):
    """Set a layer up on float64 blobs and run forward; returns (bottom blobs, top blobs)."""
    bottom = [Blob.from_array(np.asarray(a, np.float64), np.float64) for a in arrays]
    top = [Blob((), np.float64) for _ in range(n_top)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


# --- Bias --------------------------------------------------------------------------------------

@st.composite
def bias_cases(draw):
    """A bottom of 1-4 axes, a (possibly negative) axis and num_axes in -1 .. to the end."""
    shape = draw(small_shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    num_axes = draw(st.integers(-1, len(shape) - axis % len(shape)))
    return shape, axis, num_axes, draw(seeds)


def bias_shape(shape, axis, num_axes):
    first = axis % len(shape)
    return shape[first:len(shape) if num_axes == -1 else first + num_axes]


def broadcast_view(shape, axis, bias):
    """bias reshaped to line up with x's axes (written out here, not the op's helper)."""
    first = axis % len(shape) if bias.ndim else 0
    return bias.reshape((1,) * first + bias.shape + (1,) * (len(shape) - first - bias.ndim))


@given(bias_cases())
def test_bias_one_bottom_forward_and_gradient(case):
    shape, axis, num_axes, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)

    def make():
        layer = BiasLayer(axis=axis, num_axes=num_axes, filler={"type": "gaussian"})
        layer.rng = np.random.default_rng(seed)
        return layer
    check_layer_gradient(make, [x])
    layer = make()
    _, (top,) = run(layer, x)
    (b,) = layer.blobs
    assert b.shape == bias_shape(shape, axis, num_axes)
    np.testing.assert_array_equal(top.data, x + broadcast_view(shape, axis, b.data))


@given(bias_cases())
def test_bias_two_bottoms_forward_and_gradient(case):
    shape, axis, num_axes, seed = case
    rng = np.random.default_rng(seed)
    x, b = rng.standard_normal(shape), rng.standard_normal(bias_shape(shape, axis, num_axes))
    # num_axes is ignored with two bottoms: bottom[1]'s shape says it (() is a scalar)
    layer = BiasLayer(axis=axis, num_axes=num_axes)
    np.testing.assert_array_equal(layer(x, b), x + broadcast_view(shape, axis, b))
    assert layer.blobs == []
    check_layer_gradient(lambda: BiasLayer(axis=axis, num_axes=num_axes), [x, b])


def test_bias_default_is_a_zero_per_channel_bias():
    x = np.arange(24.0).reshape(2, 3, 4)
    layer = BiasLayer()
    bottom, (top,) = run(layer, x)
    assert [b.shape for b in layer.blobs] == [(3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 0)
    np.testing.assert_array_equal(top.data, x)
    layer.blobs[0].data[...] = [1, 10, 100]
    layer.forward(bottom, [top])
    np.testing.assert_array_equal(top.data, x + [[[1], [10], [100]]])


@pytest.mark.parametrize("kwargs, shape, view", [
    ({"axis": 0, "num_axes": 2}, (2, 3), (2, 3, 1)),
    ({"axis": -1}, (4,), (1, 1, 4)),
    ({"axis": -2, "num_axes": 2}, (3, 4), (1, 3, 4)),
    ({"axis": 1, "num_axes": -1}, (3, 4), (1, 3, 4)),
    ({"axis": 0, "num_axes": -1}, (2, 3, 4), (2, 3, 4)),
    ({"axis": 2, "num_axes": 0}, (), (1, 1, 1)),
])
def test_bias_axis_and_num_axes_variants(kwargs, shape, view):
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    layer = BiasLayer(filler={"type": "uniform", "min": 1, "max": 2}, **kwargs)
    _, (top,) = run(layer, x)
    assert layer.blobs[0].shape == shape
    np.testing.assert_array_equal(top.data, x + layer.blobs[0].data.reshape(view))


def test_bias_scalar_bottom_ignores_the_axis_as_caffe_does():
    x = np.arange(6.0).reshape(2, 3)
    # a 0-axis bias makes Caffe use axis 0, so even an axis out of range is fine
    layer = BiasLayer(axis=5)
    np.testing.assert_array_equal(layer(x, np.array(0.5)), x + 0.5)
    dx, db = layer.backprop(np.ones((2, 3)))
    np.testing.assert_array_equal(dx, np.ones((2, 3)))
    assert db.shape == () and db == 6


def test_bias_param_diff_accumulates_while_a_bottom_diff_is_assigned():
    x, dy = np.random.default_rng(0).standard_normal((2, 3)), np.arange(6.0).reshape(2, 3)
    layer = BiasLayer()
    layer(x)
    for _ in range(2):
        np.testing.assert_array_equal(layer.backprop(dy), dy)
    np.testing.assert_array_equal(layer.blobs[0].diff, 2 * dy.sum(axis=0))
    two = BiasLayer()
    two(x, np.ones(3))
    for _ in range(2):
        dx, db = two.backprop(dy)
    np.testing.assert_array_equal(db, dy.sum(axis=0))
    np.testing.assert_array_equal(dx, dy)


def test_bias_propagate_down_leaves_unwanted_diffs_alone():
    layer = BiasLayer()
    bottom = [Blob.from_array(np.ones((2, 3)), np.float64),
              Blob.from_array(np.ones(3), np.float64)]
    top = [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = bottom[1].diff[...] = 7.0
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 1.0)
    np.testing.assert_array_equal(bottom[1].diff, 7.0)
    bottom[0].diff[...] = 7.0
    layer.backward(top, [False, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 7.0)
    np.testing.assert_array_equal(bottom[1].diff, 2.0)


def test_bias_errors_name_the_numbers():
    x = np.ones((2, 3, 4))
    with pytest.raises(LayerError, match="num_axes must be >= 0.*-2"):
        run(BiasLayer(num_axes=-2), x)
    with pytest.raises(LayerError, match="axis 1 \\+ num_axes 3 > 3"):
        run(BiasLayer(num_axes=3), x)
    with pytest.raises(LayerError, match="axis -4 is out of range.*\\(2, 3, 4\\)"):
        run(BiasLayer(axis=-4), x)
    with pytest.raises(LayerError, match="\\(4,\\).*\\(2, 3, 4\\).*axis 1.*\\(3,\\)"):
        run(BiasLayer(), x, np.ones(4))
    with pytest.raises(LayerError, match="\\(3, 4, 1\\).*\\(2, 3, 4\\).*axis 1"):
        run(BiasLayer(), x, np.ones((3, 4, 1)))
    with pytest.raises(LayerError, match="at most 2 bottom"):
        run(BiasLayer(), x, np.ones(3), np.ones(3))


def test_bias_refuses_a_loaded_blob_of_the_wrong_shape():
    layer = BiasLayer()
    layer.blobs = [Blob.from_array(np.ones(4))]
    with pytest.raises(LayerError, match="bias \\(blob 0\\) should have shape \\(3,\\)"):
        run(layer, np.ones((2, 3)))


BIAS_NET = """
input: "x" input_shape { dim: 2 dim: 3 dim: 2 }
layer { name: "sc" type: "Scale" bottom: "x" top: "a"
        scale_param { filler { type: "uniform" min: 0.5 max: 2 } } }
layer { name: "b" type: "Bias" bottom: "a" top: "%s"
        bias_param { axis: -2 num_axes: 2 filler { type: "gaussian" } } }
force_backward: true
"""


def test_in_place_bias_in_a_net_equals_out_of_place():
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    bias, scale = rng.standard_normal((3, 2)), rng.uniform(0.5, 2, 3)
    results = []
    for top in ("a", "y"):
        net = minicnn.Net(parse_text(BIAS_NET % top), dtype=np.float64)
        assert net.params["b"][0].shape == (3, 2)
        net.params["b"][0].data[...] = bias
        net.params["sc"][0].data[...] = scale
        out = net.forward(x=x)[top].copy()
        dx = net.backward(**{top: dy})["x"].copy()
        results.append((out, dx, net.params["b"][0].diff.copy(), net.params["sc"][0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    out, dx, dbias, _ = results[0]
    np.testing.assert_allclose(out, x * scale[:, None] + bias)
    np.testing.assert_allclose(dx, dy * scale[:, None])
    np.testing.assert_allclose(dbias, dy.sum(axis=0))


def test_bias_with_a_second_bottom_in_a_net():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 3 }
    layer { name: "add" type: "Bias" bottom: "x" bottom: "b" top: "y" }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    x, b = np.arange(6.0).reshape(2, 3), np.array([1.0, -1.0, 2.0])
    np.testing.assert_array_equal(net.forward(x=x, b=b)["y"], x + b)
    diffs = net.backward(y=np.ones((2, 3)))
    np.testing.assert_array_equal(diffs["x"], np.ones((2, 3)))
    np.testing.assert_array_equal(diffs["b"], [2.0, 2.0, 2.0])


# --- Slice -------------------------------------------------------------------------------------

@st.composite
def slice_cases(draw):
    """(x, layer fields, number of tops, numpy axis, cut positions): slice_point or an even split,
    along axis (negative too) or the legacy slice_dim."""
    shape = list(draw(small_shapes))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    shape[axis] = draw(st.integers(1, 6))
    dim = shape[axis]
    fields = {}
    if draw(st.booleans()):                                  # legacy slice_dim: not negative
        fields["slice_dim"] = axis % len(shape)
    elif axis != 1 or draw(st.booleans()):
        fields["axis"] = axis
    if draw(st.booleans()):
        points = sorted(draw(st.sets(st.integers(1, dim - 1), max_size=dim - 1))) if dim > 1 \
            else []
        n_top = len(points) + 1
        if points:
            fields["slice_point"] = points
    else:
        n_top = draw(st.sampled_from([k for k in range(1, dim + 1) if dim % k == 0]))
        points = [dim // n_top * k for k in range(1, n_top)]
    x = np.random.default_rng(draw(seeds)).standard_normal(shape)
    return x, fields, n_top, axis, points


def tops(n):
    return [f"t{k}" for k in range(n)]


@given(slice_cases())
def test_slice_matches_numpy_split_and_gradient(case):
    x, fields, n_top, axis, points = case
    parts = SliceLayer(top=tops(n_top), **fields)(x)
    parts = parts if isinstance(parts, tuple) else (parts,)
    want = np.split(x, points, axis=axis)
    assert len(parts) == len(want) == n_top
    for got, ref in zip(parts, want):
        np.testing.assert_array_equal(got, ref)
    check_layer_gradient(lambda: SliceLayer(top=tops(n_top), **fields), [x])


def test_slice_backward_concatenates_the_tops_diffs():
    x = np.arange(24.0).reshape(2, 6, 2)
    layer = SliceLayer(top=tops(3), slice_point=[1, 4])
    a, b, c = layer(x)
    assert (a.shape, b.shape, c.shape) == ((2, 1, 2), (2, 3, 2), (2, 2, 2))
    dx = layer.backprop(-a, 2 * b, 3 * c)
    np.testing.assert_array_equal(dx, np.concatenate([-a, 2 * b, 3 * c], axis=1))


def test_slice_even_split_default_axis_is_channels():
    x = np.arange(24.0).reshape(2, 6, 2)
    parts = SliceLayer(top=tops(3))(x)
    for k, part in enumerate(parts):
        np.testing.assert_array_equal(part, x[:, 2 * k:2 * k + 2])


def test_slice_single_top_is_a_copy():
    x = np.arange(6.0).reshape(2, 3)
    layer = SliceLayer()
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(layer.backprop(2 * x), 2 * x)


def test_slice_legacy_slice_dim_in_a_net():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 dim: 4 }
    layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b"
            slice_param { slice_dim: 2 slice_point: 3 } }
    layer { name: "c" type: "Concat" bottom: "b" bottom: "a" top: "y" concat_param { axis: 2 } }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    x = np.arange(24.0).reshape(2, 3, 4)
    y = net.forward(x=x)["y"]
    np.testing.assert_array_equal(y, np.concatenate([x[..., 3:], x[..., :3]], axis=2))
    dy = np.random.default_rng(0).standard_normal((2, 3, 4))
    dx = net.backward(y=dy)["x"]
    np.testing.assert_array_equal(dx, np.concatenate([dy[..., 1:], dy[..., :1]], axis=2))


@pytest.mark.parametrize("fields, n_top, match", [
    ({"axis": 1, "slice_dim": 1}, 2, "axis \\(1\\) or slice_dim \\(1\\), not both"),
    ({"slice_point": [2]}, 3, "1 slice_point values \\(\\[2\\]\\) needs 2 tops, got 3"),
    ({"slice_point": [1, 2, 3]}, 2, "3 slice_point values .* needs 4 tops, got 2"),
    ({"slice_point": [3, 2]}, 3, "\\[3, 2\\] must be strictly increasing and inside \\(0, 6\\)"),
    ({"slice_point": [2, 2]}, 3, "\\[2, 2\\] must be strictly increasing"),
    ({"slice_point": [0]}, 2, "\\[0\\] must be strictly increasing and inside \\(0, 6\\)"),
    ({"slice_point": [6]}, 2, "\\[6\\] must be strictly increasing and inside \\(0, 6\\)"),
    ({"slice_point": [7]}, 2, "inside \\(0, 6\\) for axis 1 of a bottom of shape \\(2, 6, 5\\)"),
    ({}, 4, "4 tops without slice_point needs axis 1 \\(size 6.*divisible by 4"),
    ({"axis": -1}, 2, "axis 2 \\(size 5, bottom shape \\(2, 6, 5\\)\\) to be divisible by 2"),
    ({"axis": 3}, 2, "axis 3 is out of range for a bottom of shape \\(2, 6, 5\\)"),
    ({"axis": -4}, 2, "axis -4 is out of range"),
    ({"slice_dim": 3}, 2, "slice_dim 3 is out of range for a bottom of shape \\(2, 6, 5\\)"),
])
def test_slice_errors_name_the_numbers(fields, n_top, match):
    with pytest.raises(LayerError, match=match):
        SliceLayer(top=tops(n_top), **fields)(np.ones((2, 6, 5)))


def test_slice_in_place_only_with_one_top():
    text = """
    input: "x" input_shape { dim: 2 dim: 4 }
    layer { name: "s" type: "Slice" bottom: "x" top: %s }
    force_backward: true
    """
    with pytest.raises(minicnn.NetError, match="Slice with 2 tops cannot run in place"):
        minicnn.Net(parse_text(text % '"x" top: "b"'))
    net = minicnn.Net(parse_text(text % '"x"'), dtype=np.float64)
    x = np.arange(8.0).reshape(2, 4)
    np.testing.assert_array_equal(net.forward(x=x)["x"], x)
    np.testing.assert_array_equal(net.backward(x=2 * x)["x"], 2 * x)


# --- Reshape -----------------------------------------------------------------------------------

def reshape(x, dims, **fields):
    return ReshapeLayer(shape={"dim": dims}, **fields)(x)


# Every example in caffe.proto's ReshapeParameter comments, on its 2 x 8 input
CAFFE_PROTO_EXAMPLES = [
    ([2, 2, 4], {}, (2, 2, 4)),
    ([0, 2, 4], {}, (2, 2, 4)),
    ([0, 2, -1], {}, (2, 2, 4)),
    ([0, -1, 4], {}, (2, 2, 4)),
    ([2, 4], {"axis": 1}, (2, 2, 4)),
    ([2, 4], {"axis": -2}, (2, 2, 4)),     # the comment says -3: see test_reshape_axis_minus_3
    ([1, 2, 8], {}, (1, 2, 8)),
    ([1, 2], {"num_axes": 1}, (1, 2, 8)),
    ([1], {"num_axes": 0}, (1, 2, 8)),
    ([2, 1, 8], {}, (2, 1, 8)),
    ([1], {"axis": 1, "num_axes": 0}, (2, 1, 8)),
]


@pytest.mark.parametrize("dims, fields, want", CAFFE_PROTO_EXAMPLES)
def test_reshape_caffe_proto_examples(dims, fields, want):
    x = np.arange(16.0).reshape(2, 8)
    layer = ReshapeLayer(shape={"dim": dims}, **fields)
    y = layer(x)
    assert y.shape == want
    np.testing.assert_array_equal(y, x.reshape(want))
    dy = np.arange(16.0).reshape(want) * 3
    np.testing.assert_array_equal(layer.backprop(dy), dy.reshape(2, 8))


def test_reshape_axis_minus_3_is_a_count_error_despite_the_caffe_proto_comment():
    """caffe.proto lists `shape { dim: 2 dim: 4 } axis: -3` as giving 2x2x4 from 2x8; Caffe's
    code makes axis -3 start at 2 - 3 + 1 = 0, so the shape replaces everything: 8 != 16."""
    with pytest.raises(LayerError, match="bottom shape \\(2, 8\\) \\(count 16\\) to shape "
                                         "\\(2, 4\\) \\(requested \\[2, 4\\], count 8\\)"):
        reshape(np.ones((2, 8)), [2, 4], axis=-3)


@pytest.mark.parametrize("dims, fields, want", [      # the cases of Caffe's reshape layer tests
    ([0, -1], {}, (2, 60)),
    ([0, 0, 0, 0], {}, (2, 3, 4, 5)),
    ([0, 3, 10, -1], {}, (2, 3, 10, 2)),
    ([3, 10, -1], {"axis": 1}, (2, 3, 10, 2)),
    ([1, 1, 1], {"axis": 0, "num_axes": 0}, (1, 1, 1, 2, 3, 4, 5)),
    ([1, 1, 1], {"axis": 2, "num_axes": 0}, (2, 3, 1, 1, 1, 4, 5)),
    ([1, 1, 1], {"axis": -1, "num_axes": 0}, (2, 3, 4, 5, 1, 1, 1)),
    ([1, 1], {"axis": -1}, (2, 3, 4, 5, 1, 1)),
    ([-1], {"axis": 1, "num_axes": 2}, (2, 12, 5)),
    ([-1], {"axis": -3}, (2, 3, 20)),
    ([6, -1], {"num_axes": 2}, (6, 1, 4, 5)),
    ([0, 2, -1], {"axis": 1, "num_axes": 2}, (2, 3, 2, 2, 5)),
    ([3, 0], {"axis": 1, "num_axes": 2}, (2, 3, 4, 5)),
])
def test_reshape_caffe_test_cases(dims, fields, want):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    y = reshape(x, dims, **fields)
    assert y.shape == want
    np.testing.assert_array_equal(y, x.reshape(want))


@st.composite
def reshape_cases(draw):
    """A bottom, a replaced range [start, end) written as Caffe's axis / num_axes (negative axis
    and num_axes -1 too), and new dims for the range: a random factorization of its count, with
    0 where a dim equals the bottom's at that position and maybe one -1."""
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple))
    n = len(shape)
    start = draw(st.integers(0, n))
    end = draw(st.integers(start, n))
    axis = draw(st.sampled_from([start, start - n - 1]))
    num_axes = draw(st.sampled_from([end - start, -1] if end == n else [end - start]))
    count = int(np.prod(shape[start:end], dtype=np.int64))
    new = []
    for p in (2, 3):                                       # split count into small factors
        while count % p == 0 and draw(st.booleans()):
            new.append(p)
            count //= p
    new.append(count)
    new = draw(st.permutations(new))
    new += [1] * draw(st.integers(0, 1))
    want = shape[:start] + tuple(new) + shape[end:]
    dims = [0 if start + i < n and d == shape[start + i] and draw(st.booleans()) else d
            for i, d in enumerate(new)]
    if draw(st.booleans()):
        dims[draw(st.integers(0, len(dims) - 1))] = -1
    x = np.random.default_rng(draw(seeds)).standard_normal(shape)
    return x, dims, {"axis": axis, "num_axes": num_axes}, want


@given(reshape_cases())
def test_reshape_drawn_cases_forward_and_gradient(case):
    x, dims, fields, want = case
    y = reshape(x, dims, **fields)
    assert y.shape == want
    np.testing.assert_array_equal(y, x.reshape(want))
    check_layer_gradient(lambda: ReshapeLayer(shape={"dim": dims}, **fields), [x])


def test_reshape_zero_copies_relative_to_axis_even_past_the_replaced_range():
    """A 0 at position i copies bottom axis axis + i, as Caffe does, even when that axis lies
    after the replaced range: [2, 0] on axis 1 of 2x3x4x5 asks for 2x(2x4)x4x5."""
    with pytest.raises(LayerError, match="\\(2, 3, 4, 5\\) \\(count 120\\) to shape "
                                         "\\(2, 2, 4, 4, 5\\).*count 320"):
        reshape(np.ones((2, 3, 4, 5)), [2, 0], axis=1, num_axes=1)


def test_reshape_follows_a_new_bottom_shape():
    layer = ReshapeLayer(shape={"dim": [0, -1]})
    assert layer(np.ones((2, 3, 4))).shape == (2, 12)
    assert layer(np.ones((5, 3, 2))).shape == (5, 6)
    assert layer.backprop(np.ones((5, 6))).shape == (5, 3, 2)


def test_reshape_in_a_net_and_its_backward():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 dim: 2 dim: 2 }
    layer { name: "r" type: "Reshape" bottom: "x" top: "y"
            reshape_param { shape { dim: 0 dim: -1 } } }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(net.forward(x=x)["y"], x.reshape(2, 12))
    dy = np.arange(24.0).reshape(2, 12) - 5
    np.testing.assert_array_equal(net.backward(y=dy)["x"], dy.reshape(2, 3, 2, 2))
    # a new batch size flows through the 0
    assert net.forward(x=np.ones((4, 3, 2, 2)))["y"].shape == (4, 12)


@pytest.mark.parametrize("dims, fields, match", [
    ([-1, -1], {}, "\\[-1, -1\\] has 2 dims of -1 \\(at positions \\[0, 1\\]\\)"),
    ([2, -2], {}, "\\[2, -2\\] has a dim below -1"),
    ([3, 4], {}, "bottom shape \\(2, 8\\) \\(count 16\\) to shape \\(3, 4\\) \\(requested "
                 "\\[3, 4\\], count 12\\)"),
    ([0, 0, 0], {}, "\\[0, 0, 0\\] has a 0 at position 2 with no corresponding bottom axis"),
    ([0], {"axis": 2}, "0 at position 0 with no corresponding bottom axis to copy \\(axis 2"),
    ([3, -1], {}, "cannot infer the -1 in reshape shape \\[3, -1\\]: bottom shape \\(2, 8\\) "
                  "has count 16.*\\(3\\)"),
    ([1], {"axis": 3}, "axis 3 is out of range for a bottom of shape \\(2, 8\\) \\(2 axes\\)"),
    ([1], {"axis": -4}, "axis -4 is out of range"),
    ([16], {"num_axes": -2}, "num_axes must be >= 0, or -1 for all; got -2"),
    ([16], {"axis": 1, "num_axes": 2}, "axis 1 \\+ num_axes 2 = 3 is past the 2 axes"),
])
def test_reshape_errors_name_the_numbers(dims, fields, match):
    with pytest.raises(LayerError, match=match):
        reshape(np.ones((2, 8)), dims, **fields)


def test_reshape_refuses_in_place():
    text = """
    input: "x" input_shape { dim: 2 dim: 8 }
    layer { name: "r" type: "Reshape" bottom: "x" top: "x"
            reshape_param { shape { dim: 16 } } }
    """
    with pytest.raises(minicnn.NetError, match="Reshape does not allow in-place"):
        minicnn.Net(parse_text(text))


# --- forward agreement with OpenCV's Caffe importer --------------------------------------------

TOLERANCE = 1e-5


def relative_error(ours, theirs):
    theirs = np.asarray(theirs).reshape(ours.shape)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def run_both(tmp_path, body, shape, outputs, seed=0):
    """Write a net (prototxt + .caffemodel, both by minicnn), run it in minicnn and in OpenCV;
    returns {output: (ours, opencv)} for the named layers (one top each)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    dims = " ".join(f"dim: {d}" for d in shape)
    model, weights = tmp_path / "net.prototxt", str(tmp_path / "net.caffemodel")
    model.write_text(f'name: "t"\ninput: "data"\ninput_shape {{ {dims} }}\n{body}\n')
    net = minicnn.Net(str(model))
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape)
    net.save(weights)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    net.forward(data=x)
    cv_net = cv2.dnn.readNetFromCaffe(str(model), weights)
    cv_net.enableFusion(False)
    cv_net.setInput(x, "data")
    theirs = cv_net.forward(outputs)
    return {name: (net.blobs[name].data, out) for name, out in zip(outputs, theirs)}


def assert_agree(pairs):
    for name, (ours, theirs) in pairs.items():
        assert np.asarray(theirs).size == ours.size, f"'{name}': {ours.shape} vs {theirs.shape}"
        error = relative_error(ours, theirs)
        assert error <= TOLERANCE, f"blob '{name}' differs by {error:.3g}"


def consumed_slice(fields, n_top):
    """A Slice whose tops each feed an identity (TEST-phase Dropout): OpenCV only computes
    consumed tops. The Dropout tops (named like the slices, "d" prefixed) are compared."""
    tops_text = " ".join(f'top: "s{k}"' for k in range(n_top))
    body = f'layer {{ name: "s" type: "Slice" bottom: "data" {tops_text} ' \
           f'slice_param {{ {fields} }} }}\n'
    body += "".join(f'layer {{ name: "ds{k}" type: "Dropout" bottom: "s{k}" top: "ds{k}" }}\n'
                    for k in range(n_top))
    return body, [f"ds{k}" for k in range(n_top)]


@pytest.mark.parametrize("fields, n_top", [
    ("slice_point: 1 slice_point: 4", 3),
    ("", 3),
    ("axis: 0", 2),
    ("axis: -1 slice_point: 3", 2),
    ("axis: -2 slice_point: 1 slice_point: 2", 3),
    ("axis: 2", 1),
])
def test_slice_agrees_with_opencv(fields, n_top, tmp_path):
    body, outputs = consumed_slice(fields, n_top)
    pairs = run_both(tmp_path, body, (2, 6, 3, 4), outputs)
    assert_agree(pairs)


@pytest.mark.parametrize("dims, fields", [
    ([0, -1], ""),
    ([0, 2, -1, 4], ""),
    ([4, -1, 3], ""),
    ([-1], "axis: 1 num_axes: 2"),
    ([0, 0, 0, 0], ""),
    ([2, -1], "axis: 2"),
    ([6, -1], "num_axes: 2"),
    ([0, 3, -1], "axis: 1 num_axes: 2"),
    ([1, 2, 3, 4, 6], ""),
])
def test_reshape_agrees_with_opencv(dims, fields, tmp_path):
    shape_text = " ".join(f"dim: {d}" for d in dims)
    body = (f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" '
            f'reshape_param {{ shape {{ {shape_text} }} {fields} }} }}')
    pairs = run_both(tmp_path, body, (2, 6, 3, 4), ["r"])
    assert pairs["r"][1].shape == pairs["r"][0].shape
    assert_agree(pairs)
