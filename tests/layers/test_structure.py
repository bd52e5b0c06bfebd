"""Structure layers through the Layer protocol and in Nets: Split, Eltwise, Concat, Flatten,
Silence."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import (ConcatLayer, EltwiseLayer, FlattenLayer, SilenceLayer, SliceLayer,
                            SplitLayer)
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

seeds = st.integers(0, 2**32 - 1)
small_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple)


def blobs(*arrays):
    return [Blob.from_array(np.asarray(a, np.float64), np.float64) for a in arrays]


# --- Split -------------------------------------------------------------------------------------

def test_split_copies_forward_and_sums_diffs_backward():
    x = np.arange(6.0).reshape(2, 3)
    bottom, top = blobs(x), [Blob((), np.float64) for _ in range(3)]
    layer = SplitLayer()
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    for t in top:
        np.testing.assert_array_equal(t.data, x)
    diffs = [np.full((2, 3), k + 1.0) * x for k in range(3)]
    for t, d in zip(top, diffs):
        t.diff[...] = d
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, diffs[0] + diffs[1] + diffs[2])


@given(small_shapes, st.integers(1, 3), seeds)
def test_split_gradient(shape, n_top, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    check_layer_gradient(lambda: SplitLayer(top=[f"t{k}" for k in range(n_top)]), [x])


def test_net_inserts_a_split_whose_backward_sums_the_consumers_diffs():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 }
    layer { name: "f1" type: "Flatten" bottom: "x" top: "a" }
    layer { name: "f2" type: "Flatten" bottom: "x" top: "b" flatten_param { axis: 0 } }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    assert "x_input_0_split" in net.layer_names
    x = np.arange(6.0).reshape(2, 3)
    out = net.forward(x=x)
    np.testing.assert_array_equal(out["b"], x.reshape(6))
    da, db = np.ones((2, 3)), np.arange(6.0)
    dx = net.backward(a=da, b=db)["x"]
    np.testing.assert_array_equal(dx, da + db.reshape(2, 3))


# --- Eltwise -----------------------------------------------------------------------------------

def spread_inputs(rng, shape, k):
    """k arrays whose values differ by >= 0.1 in every element (no MAX near-ties) and stay
    >= 0.5 away from 0 (PROD's y / x)."""
    n = int(np.prod(shape))
    grid = np.arange(k)[:, None] * 0.1 + rng.uniform(0.5, 1.5, (1, n))
    values = rng.permuted(grid, axis=0) * rng.choice([-1.0, 1.0], n)
    return [v.reshape(shape) for v in values]


@given(small_shapes, st.integers(2, 3), st.sampled_from(["SUM", "SUM+coeff", "PROD",
                                                         "PROD+unstable", "MAX"]), seeds)
def test_eltwise_gradient(shape, k, op, seed):
    xs = spread_inputs(np.random.default_rng(seed), shape, k)
    kwargs = {"operation": op.split("+")[0]}
    if op == "SUM+coeff":
        kwargs["coeff"] = [1.5, -1.0, 0.25][:k]
    if op == "PROD+unstable":
        kwargs["stable_prod_grad"] = False
    check_layer_gradient(lambda: EltwiseLayer(**kwargs), xs)


def test_eltwise_forward_values():
    a, b, c = np.array([1.0, -2.0]), np.array([3.0, 4.0]), np.array([-1.0, 0.5])
    assert np.array_equal(EltwiseLayer()(a, b, c), a + b + c)
    assert np.array_equal(EltwiseLayer(coeff=[1, -1, 2])(a, b, c), a - b + 2 * c)
    assert np.array_equal(EltwiseLayer(operation="PROD")(a, b, c), a * b * c)
    assert np.array_equal(EltwiseLayer(operation="MAX")(a, b, c), [3.0, 4.0])


def test_eltwise_max_tie_rule_routes_the_diff_as_caffe():
    layer = EltwiseLayer(operation="MAX")
    x0, x1, x2 = np.array([1.0, 2.0, 3.0, 0.0]), np.array([1.0, 1.0, 3.0, 0.0]), \
        np.array([0.0, 2.0, 3.0, 5.0])
    y = layer(x0, x1, x2)
    np.testing.assert_array_equal(y, [1.0, 2.0, 3.0, 5.0])
    d0, d1, d2 = layer.backprop(np.array([10.0, 20.0, 30.0, 40.0]))
    # ties of bottoms 0 and 1 go to 1; bottom 2 only ties in elements 1 and 2, so loses there
    np.testing.assert_array_equal(d0, [0.0, 20.0, 0.0, 0.0])
    np.testing.assert_array_equal(d1, [10.0, 0.0, 30.0, 0.0])
    np.testing.assert_array_equal(d2, [0.0, 0.0, 0.0, 40.0])


def test_eltwise_prototxt_in_a_net():
    text = """
    input: "a" input_shape { dim: 2 } input: "b" input_shape { dim: 2 }
    layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y"
            eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text))
    y = net.forward(a=np.array([5.0, 1.0]), b=np.array([2.0, 3.0]))["y"]
    np.testing.assert_array_equal(y, [3.0, -2.0])
    d = net.backward(y=np.array([1.0, 2.0]))
    np.testing.assert_array_equal(d["a"], [1.0, 2.0])
    np.testing.assert_array_equal(d["b"], [-1.0, -2.0])


def test_eltwise_propagate_down_leaves_other_diffs_alone():
    layer = EltwiseLayer(operation="PROD")
    bottom, top = blobs([1.0, 2.0], [3.0, 4.0]), [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    bottom[0].diff[...] = 7.0
    top[0].diff[...] = 1.0
    layer.backward(top, [False, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [7.0, 7.0])
    np.testing.assert_array_equal(bottom[1].diff, [1.0, 2.0])


@pytest.mark.parametrize("kwargs, match", [
    ({"coeff": [1.0]}, "one coeff per bottom: 1 coeff values for 2 bottoms"),
    ({"coeff": [1.0, 2.0, 3.0]}, "3 coeff values for 2 bottoms"),
    ({"operation": "PROD", "coeff": [1.0, 1.0]}, "coeff only for SUM, not for PROD"),
])
def test_eltwise_coeff_errors(kwargs, match):
    with pytest.raises(LayerError, match=match):
        EltwiseLayer(**kwargs)(np.ones(2), np.ones(2))


def test_eltwise_max_ignores_coeff_with_a_warning_as_caffe_does():
    with pytest.warns(UserWarning, match="Eltwise MAX ignores coeff"):
        y = EltwiseLayer(operation="MAX", coeff=[2.0, -1.0])(np.array([1.0, 5.0]),
                                                              np.array([3.0, 2.0]))
    np.testing.assert_array_equal(y, [3.0, 5.0])


def test_eltwise_shape_and_count_errors():
    with pytest.raises(LayerError, match=r"bottom\[0\] has \(2, 3\), bottom\[2\] has \(3, 2\)"):
        EltwiseLayer()(np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(LayerError, match="at least 2 bottom"):
        EltwiseLayer()(np.ones(2))


def test_in_place_eltwise_prod_is_refused():
    text = """
    input: "a" input_shape { dim: 2 } input: "b" input_shape { dim: 2 }
    layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "a"
            eltwise_param { operation: PROD } }
    """
    with pytest.raises(minicnn.NetError, match="in-place Eltwise PROD"):
        minicnn.Net(parse_text(text))


# --- Concat ------------------------------------------------------------------------------------

@st.composite
def concat_cases(draw):
    shape = list(draw(small_shapes))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(draw(seeds))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        shape[axis] = draw(st.integers(1, 3))
        arrays.append(rng.standard_normal(shape))
    return arrays, axis


@given(concat_cases())
def test_concat_matches_numpy_and_gradient(case):
    arrays, axis = case
    np.testing.assert_array_equal(ConcatLayer(axis=axis)(*arrays),
                                  np.concatenate(arrays, axis=axis))
    check_layer_gradient(lambda: ConcatLayer(axis=axis), arrays)


def test_concat_default_axis_is_channels_and_backward_slices():
    a, b = np.ones((2, 1, 2)), np.zeros((2, 3, 2))
    layer = ConcatLayer()
    assert layer(a, b).shape == (2, 4, 2)
    dy = np.arange(16.0).reshape(2, 4, 2)
    da, db = layer.backprop(dy)
    np.testing.assert_array_equal(da, dy[:, :1])
    np.testing.assert_array_equal(db, dy[:, 1:])


def test_concat_legacy_concat_dim():
    a, b = np.ones((2, 3)), np.zeros((1, 3))
    text = """
    input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 1 dim: 3 }
    layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"
            concat_param { concat_dim: 0 } }
    """
    y = minicnn.Net(parse_text(text)).forward(a=a, b=b)["y"]
    np.testing.assert_array_equal(y, np.concatenate([a, b]))
    with pytest.raises(LayerError, match="concat_dim 2 is out of range.*\\(2, 3\\)"):
        ConcatLayer(concat_dim=2)(a, a)
    with pytest.raises(LayerError, match="axis \\(0\\) or concat_dim \\(0\\), not both"):
        ConcatLayer(axis=0, concat_dim=0)(a, a)


def test_slice_legacy_slice_dim_is_not_counted_from_the_end():
    x = np.arange(6.0).reshape(2, 3)
    y0, y1 = SliceLayer(slice_dim=0, top=["y0", "y1"])(x)
    np.testing.assert_array_equal(y0, x[:1])
    with pytest.raises(LayerError, match="slice_dim 2 is out of range.*\\(2, 3\\)"):
        SliceLayer(slice_dim=2, top=["y0", "y1"])(x)


def test_concat_single_bottom_is_a_copy():
    x = np.arange(4.0).reshape(2, 2)
    layer = ConcatLayer()
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(layer.backprop(2 * x), 2 * x)


def test_concat_errors_name_the_shapes():
    with pytest.raises(LayerError, match=r"bottom\[1\] has shape \(2, 3, 5\) but bottom\[0\] has "
                                         r"\(2, 3, 4\); all dims but axis 1"):
        ConcatLayer()(np.ones((2, 3, 4)), np.ones((2, 3, 5)))
    with pytest.raises(LayerError, match=r"\(2, 3\) but bottom\[0\] has \(2, 3, 4\)"):
        ConcatLayer()(np.ones((2, 3, 4)), np.ones((2, 3)))
    with pytest.raises(LayerError, match="axis 3 is out of range"):
        ConcatLayer(axis=3)(np.ones((2, 3, 4)))


# --- Flatten -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, shape", [
    ({}, (2, 60)),
    ({"axis": 0}, (120,)),
    ({"axis": 2}, (2, 3, 20)),
    ({"axis": -2}, (2, 3, 20)),
    ({"axis": 1, "end_axis": 2}, (2, 12, 5)),
    ({"axis": 1, "end_axis": -2}, (2, 12, 5)),
    ({"axis": -3, "end_axis": -3}, (2, 3, 4, 5)),
    ({"axis": 3}, (2, 3, 4, 5)),
    ({"axis": 2, "end_axis": 1}, (2, 3, 1, 4, 5)),       # Caffe: count(2, 2) = 1, a new axis
    ({"axis": 1, "end_axis": -4}, (2, 1, 3, 4, 5)),
])
def test_flatten_axes(kwargs, shape):
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    layer = FlattenLayer(**kwargs)
    y = layer(x)
    assert y.shape == shape
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))
    np.testing.assert_array_equal(layer.backprop(y + 1), x + 1)


@given(small_shapes, seeds, st.data())
def test_flatten_gradient(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    end = data.draw(st.integers(axis % len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape)
    check_layer_gradient(lambda: FlattenLayer(axis=axis, end_axis=end), [x])


def test_flatten_errors():
    with pytest.raises(LayerError, match="end_axis 0 \\(axis 0\\) comes more than one axis "
                                         "before axis 2"):
        FlattenLayer(axis=2, end_axis=0)(np.ones((2, 3, 4)))
    with pytest.raises(LayerError, match="end_axis 5 is out of range.*\\(2, 3, 4\\)"):
        FlattenLayer(end_axis=5)(np.ones((2, 3, 4)))
    text = 'input: "x" input_shape { dim: 2 dim: 3 } ' \
           'layer { name: "f" type: "Flatten" bottom: "x" top: "x" }'
    with pytest.raises(minicnn.NetError, match="in-place"):
        minicnn.Net(parse_text(text))


# --- Silence -----------------------------------------------------------------------------------

def test_silence_backward_zeroes_the_diffs_it_is_asked_for():
    layer = SilenceLayer()
    bottom = blobs(np.ones((2, 3)), np.ones(4))
    layer.setup(bottom, [])
    layer.forward(bottom, [])
    for b in bottom:
        b.diff[...] = 5.0
    layer.backward([], [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0.0)
    np.testing.assert_array_equal(bottom[1].diff, 5.0)


def test_silence_in_a_net_hides_a_blob_from_the_outputs():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 }
    layer { name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 0 } }
    layer { name: "s" type: "Silence" bottom: "x" }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    assert net.outputs == ["y"]
    net.forward(x=np.ones((2, 3)))
    dx = net.backward(y=np.arange(6.0))["x"]
    np.testing.assert_array_equal(dx, np.arange(6.0).reshape(2, 3))   # Silence adds zero
    with pytest.raises(LayerError, match="no top|exactly 0 top"):
        SilenceLayer().setup(blobs(np.ones(2)), [Blob(())])
