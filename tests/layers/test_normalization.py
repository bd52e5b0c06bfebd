"""BatchNorm and Scale through the Layer protocol and in Nets: gradients, running statistics,
phases, lr_mult, in-place use, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import BatchNormLayer, ScaleLayer
from minicnn.proto import caffe_pb2, parse_text
from minicnn.testing import check_layer_gradient

seeds = st.integers(0, 2**32 - 1)
# (N,), (N, C) or (N, C, *spatial): BatchNorm's channel is axis 1
bn_shapes = st.tuples(st.integers(1, 3), st.lists(st.integers(1, 3), max_size=3)).map(
    lambda t: (t[0], *t[1]))


def run(layer, *arrays):
    """Set a layer up on float64 blobs and run forward; returns (bottom blobs, top blob)."""
    bottom = [Blob.from_array(np.asarray(a, np.float64), np.float64) for a in arrays]
    top = [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return bottom, top[0]


def bn_param(*specs):
    return caffe_pb2.LayerParameter(type="BatchNorm", param=list(specs))


def preset(layer, mean_acc, var_acc, factor):
    """Give a layer its three statistics blobs before setup (as a .caffemodel would)."""
    layer.blobs = [Blob.from_array(np.asarray(a, np.float64), np.float64)
                   for a in (mean_acc, var_acc, [factor])]
    return layer


# --- BatchNorm ---------------------------------------------------------------------------------

@given(bn_shapes, seeds)
def test_batch_norm_training_gradient(shape, seed):
    x = 1 + 2 * np.random.default_rng(seed).standard_normal(shape)
    # batch statistics: every y depends on every x of its channel; the checker perturbs each x
    # and compares the whole objective, so this is the full Jacobian-vector product
    check_layer_gradient(lambda: BatchNormLayer(phase="TRAIN"), [x])


@given(bn_shapes, seeds)
def test_batch_norm_global_stats_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    channels = shape[1] if len(shape) > 1 else 1
    x = rng.standard_normal(shape)
    stats = (rng.standard_normal(channels), rng.uniform(0.2, 3, channels), rng.uniform(0.5, 4))

    def make():
        return preset(BatchNormLayer(use_global_stats=True), *stats)
    # the statistics are constants here, and not learned: their diffs stay 0
    check_layer_gradient(make, [x], check_params=False)


def test_batch_norm_forward_matches_definition_in_training():
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 5)) * 3 + 1
    _, top = run(BatchNormLayer(eps=1e-3), x)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(top.data, (x - mean) / np.sqrt(var + np.float32(1e-3)))


def test_batch_norm_running_statistics_over_several_batches():
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((2, 3, 2)) * (i + 1) + i for i in range(4)]
    layer = BatchNormLayer(moving_average_fraction=0.75)
    bottom, top = [Blob((2, 3, 2), np.float64)], [Blob((), np.float64)]
    layer.setup(bottom, top)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    assert all(not b.data.any() for b in layer.blobs)            # all start at 0
    mean_acc, var_acc, s = np.zeros(3), np.zeros(3), 0.0
    for x in batches:
        bottom[0].data[...] = x
        layer.forward(bottom, top)
        s = 0.75 * s + 1
        mean_acc = 0.75 * mean_acc + x.mean(axis=(0, 2))
        var_acc = 0.75 * var_acc + x.var(axis=(0, 2), ddof=1)     # unbiased: m / (m - 1)
    np.testing.assert_allclose(layer.blobs[0].data, mean_acc)
    np.testing.assert_allclose(layer.blobs[1].data, var_acc)
    np.testing.assert_allclose(layer.blobs[2].data, [s])
    # the same statistics, used by a TEST-phase layer
    test_layer = preset(BatchNormLayer(phase="TEST"), mean_acc, var_acc, s)
    x = rng.standard_normal((5, 3, 1))
    _, y = run(test_layer, x)
    want = (x - (mean_acc / s)[:, None]) / np.sqrt((var_acc / s)[:, None] + np.float32(1e-5))
    np.testing.assert_allclose(y.data, want)
    np.testing.assert_allclose(test_layer.blobs[2].data, [s])    # no update in global mode


def test_batch_norm_one_value_per_channel_takes_no_bias_correction():
    layer = BatchNormLayer(moving_average_fraction=0.5)
    _, top = run(layer, np.array([[1.0, 2.0]]))                  # N = 1, no spatial: m = 1
    np.testing.assert_array_equal(top.data, [[0.0, 0.0]])
    np.testing.assert_array_equal(layer.blobs[1].data, [0.0, 0.0])
    np.testing.assert_array_equal(layer.blobs[0].data, [1.0, 2.0])


def test_batch_norm_one_axis_input_is_one_channel():
    layer = BatchNormLayer()
    x = np.array([1.0, 2.0, 6.0])
    _, top = run(layer, x)
    assert layer.blobs[0].shape == (1,)
    np.testing.assert_allclose(top.data, (x - 3) / np.sqrt(x.var() + np.float32(1e-5)))


def test_batch_norm_with_zero_scale_factor_uses_zero_statistics():
    x = np.array([[1.0, -2.0], [3.0, 4.0]])
    _, top = run(BatchNormLayer(use_global_stats=True, eps=0.25), x)   # blobs all 0
    np.testing.assert_allclose(top.data, x / 0.5)


@pytest.mark.parametrize("phase, field, want", [
    ("TRAIN", None, False), ("TEST", None, True), ("TEST", False, False), ("TRAIN", True, True)])
def test_batch_norm_use_global_stats_default_by_phase(phase, field, want):
    kwargs = {} if field is None else {"use_global_stats": field}
    layer = BatchNormLayer(phase=phase, **kwargs)
    run(layer, np.ones((2, 2)))
    assert layer.use_global_stats is want


def test_batch_norm_param_specs_get_lr_mult_zero():
    layer = BatchNormLayer()
    run(layer, np.ones((2, 3)))
    assert [spec.lr_mult for spec in layer.param.param] == [0, 0, 0]
    given_one = BatchNormLayer(bn_param(caffe_pb2.ParamSpec(lr_mult=0, decay_mult=0)))
    run(given_one, np.ones((2, 3)))
    assert [spec.lr_mult for spec in given_one.param.param] == [0, 0, 0]
    assert given_one.param.param[0].decay_mult == 0


def test_batch_norm_refuses_learned_statistics():
    layer = BatchNormLayer(bn_param(caffe_pb2.ParamSpec(lr_mult=0), caffe_pb2.ParamSpec(lr_mult=1)))
    with pytest.raises(LayerError, match="cannot configure batch normalization statistics.*"
                                         "param 1 has lr_mult 1"):
        run(layer, np.ones((2, 3)))


def test_batch_norm_param_diffs_stay_zero_and_net_masks_the_statistics():
    text = """
    input: "x" input_shape { dim: 4 dim: 2 dim: 3 }
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), phase=minicnn.TRAIN, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    net.forward(x=x)
    net.backward(y=np.random.default_rng(1).standard_normal((4, 2, 3)))
    assert net.params_lr == [0, 0, 0]
    assert all(not b.diff.any() for b in net.params["bn"])
    assert net.params["bn"][2].data[0] == 1


def test_batch_norm_refuses_a_new_channel_count():
    layer = BatchNormLayer()
    bottom, top = [Blob((2, 3))], [Blob(())]
    layer.setup(bottom, top)
    bottom[0].reshape(2, 4)
    with pytest.raises(LayerError, match="3 channels.*\\(2, 4\\)"):
        layer.reshape(bottom, top)


def test_batch_norm_in_a_test_net_with_preset_statistics():
    text = """
    input: "x" input_shape { dim: 2 dim: 3 dim: 2 dim: 2 }
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { eps: 0.01 } }
    """
    net = minicnn.Net(parse_text(text), phase=minicnn.TEST)
    mean_acc, var_acc, factor = np.array([1.0, -2.0, 0.5]), np.array([8.0, 2.0, 0.4]), 2.0
    for blob, value in zip(net.params["bn"], (mean_acc, var_acc, [factor])):
        blob.data[...] = value
    x = np.random.default_rng(4).standard_normal((2, 3, 2, 2)).astype(np.float32)
    y = net.forward(x=x)["x"]
    shape = (1, 3, 1, 1)
    want = (x - (mean_acc / factor).reshape(shape)) / np.sqrt(
        (var_acc / factor).reshape(shape) + 0.01)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.params["bn"][2].data, [factor])      # TEST: no update


# --- Scale -------------------------------------------------------------------------------------

@st.composite
def scale_cases(draw):
    """A bottom of 1-4 axes and a (possibly negative) axis with num_axes in -1 .. to the end."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    first = axis % len(shape)
    num_axes = draw(st.integers(-1, len(shape) - first))
    return shape, axis, num_axes, draw(st.booleans()), draw(seeds)


@given(scale_cases())
def test_scale_one_bottom_gradient(case):
    shape, axis, num_axes, bias_term, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)
    fillers = {"filler": {"type": "gaussian"}, "bias_filler": {"type": "gaussian"}}

    def make():
        layer = ScaleLayer(axis=axis, num_axes=num_axes, bias_term=bias_term, **fillers)
        layer.rng = np.random.default_rng(seed)
        return layer
    check_layer_gradient(make, [x])
    layer = make()
    run(layer, x)
    first = axis % len(shape)
    end = len(shape) if num_axes == -1 else first + num_axes
    assert layer.blobs[0].shape == shape[first:end]
    assert len(layer.blobs) == 1 + bias_term


@given(scale_cases())
def test_scale_two_bottoms_gradient(case):
    shape, axis, num_axes, bias_term, seed = case
    rng = np.random.default_rng(seed)
    first = axis % len(shape)
    end = len(shape) if num_axes == -1 else first + num_axes
    x, scale = rng.standard_normal(shape), rng.standard_normal(shape[first:end])
    # num_axes is ignored with two bottoms: bottom[1]'s shape says it
    check_layer_gradient(lambda: ScaleLayer(axis=axis, num_axes=num_axes, bias_term=bias_term,
                                            bias_filler={"type": "gaussian"}), [x, scale])


def test_scale_forward_with_default_fillers_and_bias():
    x = np.arange(24.0).reshape(2, 3, 4)
    layer = ScaleLayer(bias_term=True)
    bottom, top = run(layer, x)
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)       # identity by default
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    np.testing.assert_array_equal(top.data, x)
    layer.blobs[0].data[...] = [1, 2, 3]
    layer.blobs[1].data[...] = [0, 10, 100]
    layer.forward(bottom, [top])
    np.testing.assert_array_equal(top.data, x * [[[1], [2], [3]]] + [[[0], [10], [100]]])


def test_scale_axis_and_num_axes_variants():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    for kwargs, shape, view in (({"axis": 0, "num_axes": 2}, (2, 3), (2, 3, 1)),
                                ({"axis": -1}, (4,), (1, 1, 4)),
                                ({"axis": 1, "num_axes": -1}, (3, 4), (1, 3, 4)),
                                ({"axis": 2, "num_axes": 0}, (), (1, 1, 1))):
        layer = ScaleLayer(filler={"type": "gaussian"}, **kwargs)
        _, top = run(layer, x)
        assert layer.blobs[0].shape == shape
        np.testing.assert_allclose(top.data, x * layer.blobs[0].data.reshape(view))


def test_scale_scalar_second_bottom():
    x = np.arange(6.0).reshape(2, 3)
    layer = ScaleLayer(axis=1, bias_term=True, bias_filler={"type": "constant", "value": 0.5})
    _, top = run(layer, x, np.array(3.0))
    assert layer.blobs[0].shape == ()
    np.testing.assert_array_equal(top.data, 3 * x + 0.5)
    check_layer_gradient(ScaleLayer(bias_term=True), [x, np.array(3.0)])


def test_scale_diffs_accumulate_for_params_and_are_assigned_for_a_bottom():
    x = np.random.default_rng(0).standard_normal((2, 3))
    dy = np.ones((2, 3))
    layer = ScaleLayer(bias_term=True)
    layer(x)
    layer.backprop(dy)
    layer.backprop(dy)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * x.sum(axis=0))
    np.testing.assert_allclose(layer.blobs[1].diff, [4.0, 4.0, 4.0])
    two = ScaleLayer()
    two(x, np.ones(3))
    _, dscale = two.backprop(dy)
    _, dscale = two.backprop(dy)
    np.testing.assert_allclose(dscale, x.sum(axis=0))


def test_scale_errors_name_the_numbers():
    x = np.ones((2, 3, 4))
    with pytest.raises(LayerError, match="num_axes must be >= 0.*-2"):
        run(ScaleLayer(num_axes=-2), x)
    with pytest.raises(LayerError, match="axis 1 \\+ num_axes 3 > 3"):
        run(ScaleLayer(num_axes=3), x)
    with pytest.raises(LayerError, match="axis 3 is out of range.*\\(2, 3, 4\\)"):
        run(ScaleLayer(axis=3), x)
    with pytest.raises(LayerError, match="\\(4,\\).*\\(2, 3, 4\\).*axis 1"):
        run(ScaleLayer(), x, np.ones(4))


# --- in place in a Net -------------------------------------------------------------------------

BN_SCALE = """
input: "x" input_shape { dim: 3 dim: 2 dim: 2 dim: 2 }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "%(a)s" }
layer { name: "sc" type: "Scale" bottom: "%(a)s" top: "%(b)s"
        scale_param { bias_term: true filler { type: "gaussian" }
                      bias_filler { type: "gaussian" } } }
force_backward: true
"""


@pytest.mark.parametrize("phase", [minicnn.TRAIN, minicnn.TEST])
def test_in_place_batch_norm_and_scale_match_out_of_place(phase):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2, 2)) * 2 + 1
    dy = rng.standard_normal((3, 2, 2, 2))
    stats = (rng.standard_normal(2), rng.uniform(0.5, 2, 2), [1.5])
    results = []
    for names in ({"a": "x", "b": "x"}, {"a": "a", "b": "b"}):
        net = minicnn.Net(parse_text(BN_SCALE % names), phase=phase, dtype=np.float64)
        for blob, value in zip(net.params["bn"], stats):
            blob.data[...] = value
        net.params["sc"][0].data[...] = [0.5, -2.0]
        net.params["sc"][1].data[...] = [0.25, 1.0]
        out = net.forward(x=x)[names["b"]].copy()
        dx = net.backward(**{names["b"]: dy})["x"].copy()
        results.append((out, dx, [b.diff.copy() for b in net.params["sc"]],
                        [b.data.copy() for b in net.params["bn"]]))
    (out0, dx0, sc0, bn0), (out1, dx1, sc1, bn1) = results
    np.testing.assert_allclose(out0, out1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx0, dx1, rtol=1e-12, atol=1e-12)
    for a, b in zip(sc0 + bn0, sc1 + bn1):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert np.abs(dx0).sum() > 0


def test_in_place_scale_backward_uses_the_input_not_the_output():
    text = """
    input: "x" input_shape { dim: 2 dim: 2 }
    layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { filler { value: 3 } } }
    force_backward: true
    """
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    net.forward(x=x)
    dx = net.backward(x=np.ones((2, 2)))["x"]
    np.testing.assert_array_equal(dx, 3 * np.ones((2, 2)))
    np.testing.assert_array_equal(net.params["sc"][0].diff, [4.0, 6.0])     # sum of dy * x
