"""Net: phase filtering, fan-out splits, in place, param sharing, loss_weight, backward pruning,
the pycaffe-style API and weight copying. Two tiny layer types are registered here, which also
shows that a layer is one class and one decorator."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import array_to_blob_proto
from minicnn.errors import MinicnnError, NetError
from minicnn.layer import Layer, register
from minicnn.proto import caffe_pb2, parse_text, write_binary


@register("TestAffine")
class AffineLayer(Layer):
    """y = a * x + b with learned scalars a (blobs[0]) and b (blobs[1]); test-only."""
    param_field = "scale_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        self.init_param(0, (1,), p.filler if p.HasField("filler") else
                        caffe_pb2.FillerParameter(type="constant", value=2.0))
        self.init_param(1, (1,), p.bias_filler)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data + self.blobs[1].data[0]

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if self.param_propagate_down[1]:
            self.blobs[1].diff[0] += np.sum(top[0].diff)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


@register("TestSquareLoss")
class SquareLossLayer(Layer):
    """loss = sum(x^2) / 2; test-only."""
    exact_num_bottom = exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data[...] = 0.5 * np.sum(bottom[0].data ** 2)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = bottom[0].data * top[0].diff


def net_from(text, *args, **kwargs):
    return minicnn.Net(parse_text(text), *args, **kwargs)


X = 'input: "x" input_shape { dim: 2 dim: 3 }\n'


# --- phase filtering ------------------------------------------------------------------------------

FILTERED = X + """
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "a" include { phase: TEST } }
layer { name: "not_in_test" type: "ReLU" bottom: "x" top: "b" exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "x" top: "c" include { stage: "deploy" } }
layer { name: "two_stages" type: "ReLU" bottom: "x" top: "d"
        include { stage: "s1" stage: "s2" } }
layer { name: "not_staged" type: "ReLU" bottom: "x" top: "e" include { not_stage: "deploy" } }
layer { name: "levelled" type: "ReLU" bottom: "x" top: "f" include { min_level: 1 max_level: 2 } }
layer { name: "either" type: "ReLU" bottom: "x" top: "g"
        include { phase: TRAIN } include { stage: "s1" } }
layer { name: "neither_stage" type: "ReLU" bottom: "x" top: "h"
        include { not_stage: "s1" not_stage: "s2" } }
"""


@pytest.mark.parametrize("phase, level, stages, expected", [
    ("TRAIN", 0, (), ["train_only", "not_in_test", "not_staged", "either", "neither_stage"]),
    ("TEST", 0, (), ["test_only", "not_staged", "neither_stage"]),
    ("TEST", 0, ("deploy",), ["test_only", "staged", "neither_stage"]),
    ("TEST", 1, ("s1",), ["test_only", "not_staged", "levelled", "either"]),
    ("TEST", 2, ("s2",), ["test_only", "not_staged", "levelled"]),     # max_level inclusive
    ("TEST", 3, ("s1", "s2"), ["test_only", "two_stages", "not_staged", "either"]),
])
def test_include_exclude_rules(phase, level, stages, expected):
    net = net_from(FILTERED, phase=phase, level=level, stages=stages)
    assert [n for n in net.layer_names if not n.endswith("_split")] == ["input"] + expected


def test_default_phase_is_test_and_include_plus_exclude_is_an_error():
    assert net_from(FILTERED).phase == "TEST"
    with pytest.raises(NetError, match="both include and exclude"):
        net_from(X + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" '
                     'include { phase: TRAIN } exclude { phase: TEST } }')


def test_layers_get_the_net_phase():
    net = net_from(X + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', minicnn.TRAIN)
    assert net.layers[1].phase == "TRAIN"

def test_two_layers_with_one_name_still_build_and_run():
    # Caffe does not require unique layer names; minicnn warns (weights go by name). Its own
    # per-layer bookkeeping must not be keyed by name: it used to die with an IndexError.
    with pytest.warns(UserWarning, match="two layers are named 'a'"):
        net = net_from(X + """
            layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
            layer { name: "a" type: "TestAffine" bottom: "y" top: "z" }
            layer { name: "l" type: "TestSquareLoss" bottom: "z" top: "loss" }""",
                       dtype=np.float64)
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    net.blobs["x"].data[...] = x
    assert net.forward_backward() == pytest.approx(0.5 * np.sum((4 * x) ** 2))
    assert list(net.forward(end="a")) == ["y"]          # the first layer named 'a'
    assert net.layers[2].blobs[0].diff[0] == pytest.approx(np.sum(4 * x * 2 * x))  # dz * y



# --- splits ---------------------------------------------------------------------------------------

FAN_OUT = X + """
layer { name: "a1" type: "TestAffine" bottom: "x" top: "y" }
layer { name: "a2" type: "TestAffine" bottom: "y" top: "z1" }
layer { name: "a3" type: "TestAffine" bottom: "y" top: "z2" }
layer { name: "l1" type: "TestSquareLoss" bottom: "z1" top: "loss1" }
layer { name: "l2" type: "TestSquareLoss" bottom: "z2" top: "loss2" loss_weight: 0.5 }
"""


def test_fan_out_inserts_caffe_named_splits():
    net = net_from(FAN_OUT)
    assert "y_a1_0_split" in net.layer_names
    assert net.top_names["y_a1_0_split"] == ["y_a1_0_split_0", "y_a1_0_split_1"]
    assert net.bottom_names["a2"] == ["y_a1_0_split_0"]
    assert net.bottom_names["a3"] == ["y_a1_0_split_1"]
    assert net.outputs == ["loss1", "loss2"]


def test_fan_out_gradient_is_the_sum_of_both_branches():
    net = net_from(FAN_OUT, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3))
    net.blobs["x"].data[...] = x
    loss = net.forward_backward()
    # y = 2x, z = 2y = 4x; loss = 0.5*sum(z^2) + 0.5*0.5*sum(z^2) = 12 sum(x^2)
    assert loss == pytest.approx(12 * np.sum(x ** 2))
    # dL/da1 = sum(dL/dy * x) with dL/dy = 2*(z1) + 0.5*2*z2 = 12x
    assert net.params["a1"][0].diff[0] == pytest.approx(np.sum(12 * x * x))


def test_top_with_loss_weight_that_is_also_consumed_gets_a_loss_carrying_split():
    net = net_from(X + """
        layer { name: "a" type: "TestAffine" bottom: "x" top: "y" loss_weight: 3 }
        layer { name: "l" type: "TestSquareLoss" bottom: "y" top: "loss" }""", dtype=np.float64)
    split = net.layer_dict["y_a_0_split"]
    assert split.loss_weights == [3.0, 0.0]
    assert net.layer_dict["a"].loss_weights == [0.0]
    assert net.bottom_names["l"] == ["y_a_0_split_1"]      # split 0 carries the loss alone
    assert net.outputs == ["loss", "y_a_0_split_0"]
    x = np.ones((2, 3))
    loss = net.forward(x=x) and net.loss
    assert loss == pytest.approx(3 * np.sum(2 * x) + 0.5 * np.sum((2 * x) ** 2))


def test_a_loss_carrying_split_of_a_later_top_counts_the_loss_once():
    # both tops of the Slice fan out; only b carries a loss weight. Its Split takes the weight
    # and the Slice must give it up (the Split of a, appended just before, had it cleared
    # instead, and the loss counted sum(b) twice)
    net = net_from(X + """
        layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" loss_weight: 0
                loss_weight: 1 slice_param { axis: 0 } }
        layer { name: "r1" type: "ReLU" bottom: "a" top: "r1" }
        layer { name: "r2" type: "ReLU" bottom: "a" top: "r2" }
        layer { name: "r3" type: "ReLU" bottom: "b" top: "r3" }""", dtype=np.float64,
                   force_backward=True)
    assert net.layer_dict["s"].loss_weights == [0.0, 0.0]
    assert net.layer_dict["b_s_1_split"].loss_weights == [1.0, 0.0]
    x = np.arange(6.0).reshape(2, 3)
    net.forward(x=x)
    assert net.loss == pytest.approx(np.sum(x[1]))
    np.testing.assert_array_equal(net.backward()["x"], [[0, 0, 0], [1, 1, 1]])


# --- in place -------------------------------------------------------------------------------------

def test_in_place_layers_share_the_blob_and_fan_out_after_them():
    net = net_from(X + """
        layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "r" type: "ReLU" bottom: "y" top: "y" }
        layer { name: "l1" type: "TestSquareLoss" bottom: "y" top: "loss1" }
        layer { name: "l2" type: "TestSquareLoss" bottom: "y" top: "loss2" }""")
    assert net.bottom_names["r"] == ["y"] and net.top_names["r"] == ["y"]
    assert net.bottom_vecs[2][0] is net.top_vecs[2][0]
    assert "y_r_0_split" in net.layer_names


def test_a_top_produced_twice_is_an_error():
    with pytest.raises(NetError, match="top blob 'y' is already produced"):
        net_from(X + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }'
                     'layer { name: "b" type: "ReLU" bottom: "x" top: "y" }')


# --- param sharing --------------------------------------------------------------------------------

SHARED = X + """
layer { name: "a" type: "TestAffine" bottom: "x" top: "y" param { name: "w" } param { name: "b" } }
layer { name: "c" type: "TestAffine" bottom: "y" top: "z" param { name: "w" } param { name: "b" } }
layer { name: "l" type: "TestSquareLoss" bottom: "z" top: "loss" }
"""


def test_shared_params_share_data_and_accumulate_diffs():
    net = net_from(SHARED, dtype=np.float64)
    a, c = net.params["a"], net.params["c"]
    a[0].data[...] = 3.0
    assert c[0].data[0] == 3.0
    assert len(net.learnable_params) == 2
    x = np.random.default_rng(1).standard_normal((2, 3))
    net.forward(x=x)
    net.backward()
    # z = w(wx + b) + b; dL/dw summed over both uses
    y, z = 3 * x, 9 * x
    expected = np.sum(z * y) + np.sum(z * 3 * x)
    assert a[0].diff[0] == pytest.approx(expected)
    assert c[0].diff is a[0].diff or np.shares_memory(c[0].diff, a[0].diff)
    net.clear_param_diffs()              # the native zero fill, float64 and shared blobs too
    for layer in net.layers:
        for blob in layer.blobs:
            assert not np.any(blob.diff)
    assert a[0].data[0] == 3.0                                          # data untouched


def test_sharing_mismatches_are_errors():
    text = X + """
    layer { name: "a" type: "TestAffine" bottom: "x" top: "y" param { name: "w" lr_mult: 1 } }
    layer { name: "c" type: "TestAffine" bottom: "y" top: "z" param { name: "w" lr_mult: 2 } }"""
    with pytest.raises(NetError, match="mismatched lr_mult"):
        net_from(text)
    text = X + """
    layer { name: "a" type: "TestAffine" bottom: "x" top: "y" param { name: "w" } }
    layer { name: "c" type: "ReLU" bottom: "y" top: "r" }
    layer { name: "d" type: "InnerProductShapeless" bottom: "r" top: "z" }"""
    with pytest.raises(NetError, match="unknown layer type 'InnerProductShapeless'.*TestAffine"):
        net_from(text)


def test_a_negative_loss_weight_counts_as_a_use_as_caffes_nonzero_test():
    net = net_from(X + """
        layer { name: "a" type: "TestAffine" bottom: "x" top: "y" loss_weight: -1 }
        layer { name: "l" type: "TestSquareLoss" bottom: "y" top: "loss" }""")
    assert net.layer_dict["y_a_0_split"].loss_weights == [-1.0, 0.0]


def test_strict_sharing_needs_the_shape_permissive_the_count():
    text = X + """
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 6 bias_term: false } param { name: "w" %s } }
    layer { name: "c" type: "InnerProduct" bottom: "y" top: "z"
            inner_product_param { num_output: 3 bias_term: false } param { name: "w" %s } }"""
    with pytest.raises(NetError, match=r"shape mismatch \(owner shape \(6, 3\), sharing layer "
                                       r"shape \(3, 6\)\)"):
        net_from(text % ("", ""))
    net = net_from(text % ("", "share_mode: PERMISSIVE"))              # 18 values each
    assert len(net.learnable_params) == 1
    net.params["a"][0].data[...] = np.arange(18).reshape(6, 3)
    np.testing.assert_array_equal(net.params["c"][0].data.reshape(-1), np.arange(18))


def test_lr_mult_and_decay_mult_are_collected_per_learnable_param():
    net = net_from(X + 'layer { name: "a" type: "TestAffine" bottom: "x" top: "y" '
                       'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } }')
    assert net.params_lr == [1.0, 2.0] and net.params_weight_decay == [1.0, 0.0]


def test_more_param_specs_than_blobs_is_an_error():
    # Caffe: "Too many params specified for layer"; the lr_mult 0 must not be dropped silently
    for text in ['layer { name: "r" type: "ReLU" bottom: "x" top: "y" param { lr_mult: 0 } }',
                 'layer { name: "a" type: "TestAffine" bottom: "x" top: "y" param { lr_mult: 0 }'
                 ' param { lr_mult: 0 } param { lr_mult: 0 } }']:
        with pytest.raises(NetError, match="too many params"):
            net_from(X + text)


# --- loss weights and backward pruning ------------------------------------------------------------

def test_non_loss_top_with_loss_weight_counts_in_the_loss():
    net = net_from(X + 'layer { name: "a" type: "TestAffine" bottom: "x" top: "y" '
                       'loss_weight: 0.25 }', dtype=np.float64)
    x = np.arange(6.0).reshape(2, 3)
    net.forward(x=x)
    assert net.loss == pytest.approx(0.25 * np.sum(2 * x))
    net.backward()
    assert net.params["a"][1].diff[0] == pytest.approx(0.25 * 6)


def test_loss_weight_zero_turns_a_loss_off():
    net = net_from(X + 'layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }'
                       'layer { name: "l" type: "TestSquareLoss" bottom: "y" top: "loss" '
                       'loss_weight: 0 }')
    net.forward(x=np.ones((2, 3)))
    assert net.loss == 0 and net.layer_need_backward == [False, False, False]


def test_a_loss_layer_without_a_top_gets_an_automatic_one():
    # Caffe's AutoTopBlobs: examples/mnist/lenet_consolidated_solver.prototxt's V1 SOFTMAX_LOSS
    # names no top; Caffe still computes and backpropagates that loss, from a top that is no
    # net output. Two such layers must not share one blob.
    net = net_from(X + """
        layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "x" }
        layer { name: "l2" type: "EuclideanLoss" bottom: "y" bottom: "x" loss_weight: 2 }""",
                   dtype=np.float64)
    x = np.ones((2, 3))
    assert net.outputs == [] and net.top_names["l"] == ["(automatic)"]
    net.forward(x=x)
    assert net.loss == pytest.approx(3 * np.sum((2 * x + 0 - x) ** 2) / 2 / 2)
    assert net.layer_need_backward[net.layer_names.index("a")]
    net.backward()
    assert net.params["a"][1].diff[0] == pytest.approx(3 * np.sum(x) / 2)


def test_pruning_lr_mult_zero_and_propagate_down():
    net = net_from(X + """
        layer { name: "frozen" type: "TestAffine" bottom: "x" top: "y"
                param { lr_mult: 0 } param { lr_mult: 0 } }
        layer { name: "learned" type: "TestAffine" bottom: "y" top: "z" }
        layer { name: "side" type: "TestAffine" bottom: "x" top: "unused" }
        layer { name: "l" type: "TestSquareLoss" bottom: "z" top: "loss" }""")
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need == {"input": False, "x_input_0_split": False, "frozen": False, "learned": True,
                    "side": False, "l": True}
    assert net.bottom_need_backward[net.layer_names.index("learned")] == [False]
    net = net_from(X + """
        layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "b" type: "TestAffine" bottom: "y" top: "z" propagate_down: false }
        layer { name: "l" type: "TestSquareLoss" bottom: "z" top: "loss" }""")
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["a"] is False and need["b"] is True


def test_force_backward_gives_the_input_diff():
    text = X + """
        layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "l" type: "TestSquareLoss" bottom: "y" top: "loss" }"""
    assert net_from(text).bottom_need_backward[1] == [False]
    net = net_from("force_backward: true\n" + text, dtype=np.float64)
    x = np.ones((2, 3))
    net.forward(x=x)
    grads = net.backward()
    np.testing.assert_allclose(grads["x"], 2 * (2 * x))


# --- the pycaffe-style API ------------------------------------------------------------------------

DEPLOY = X + """
layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
layer { name: "r" type: "ReLU" bottom: "y" top: "r" }
"""


def test_blobs_params_layers_inputs_outputs():
    net = net_from(DEPLOY)
    assert list(net.blobs) == ["x", "y", "r"]
    assert list(net.params) == ["a"] and len(net.params["a"]) == 2
    assert net.inputs == ["x"] and net.outputs == ["r"]
    assert [type(layer).__name__ for layer in net.layers] == ["InputLayer", "AffineLayer",
                                                              "ReLULayer"]
    assert net.blobs["x"].shape == (2, 3) and net.blobs["x"].data.dtype == np.float32


def test_forward_with_inputs_of_a_new_shape_reshapes_the_net():
    net = net_from(DEPLOY)
    out = net.forward(x=np.full((5, 3), -1.0))
    assert out["r"].shape == (5, 3) and net.blobs["y"].shape == (5, 3)
    np.testing.assert_array_equal(out["r"], 0)
    out = net.forward(x=np.ones((5, 3)), blobs=["y"])
    assert set(out) == {"r", "y"}


def test_forward_start_end_and_backward_with_diffs():
    net = net_from("force_backward: true\n" + DEPLOY, dtype=np.float64)
    net.blobs["x"].data[...] = 1
    out = net.forward(end="a")
    assert list(out) == ["y"] and np.all(out["y"] == 2)
    net.forward(start="r")
    diffs = net.backward(r=np.ones((2, 3)))
    np.testing.assert_allclose(diffs["x"], 2)
    diffs = net.backward(start="a", y=np.full((2, 3), 3.0))
    np.testing.assert_allclose(diffs["x"], 6)


def test_backward_uses_an_output_diff_written_directly():
    # pycaffe: net.blobs[out].diff[...] = g; net.backward() sends g down (the diff is not reset)
    net = net_from("force_backward: true\n" + DEPLOY, dtype=np.float64)
    net.forward(x=np.ones((2, 3)))
    net.blobs["r"].diff[...] = 1
    np.testing.assert_allclose(net.backward()["x"], 2)
    net.blobs["r"].diff[...] = 0.5
    np.testing.assert_allclose(net.backward(start="r")["x"], 1)


def test_forward_all_batches_and_drops_the_padding_of_the_last_batch():
    net = net_from(DEPLOY, dtype=np.float64)              # batch 2; TestAffine: 2 x + 0
    x = np.arange(-7.0, 8.0).reshape(5, 3)
    out = net.forward_all(x=x, blobs=["y"])
    assert set(out) == {"r", "y"} and net.blobs["x"].shape == (2, 3)
    np.testing.assert_array_equal(out["y"], 2 * x)
    np.testing.assert_array_equal(out["r"], np.maximum(2 * x, 0))


def test_bad_names_and_shapes_are_clear_errors():
    net = net_from(DEPLOY)
    with pytest.raises(NetError, match="no blob named 'nope'"):
        net.forward(nope=np.ones(2))
    with pytest.raises(NetError, match="no layer named 'zz'"):
        net.forward(end="zz")
    with pytest.raises(NetError, match="diff for blob 'r' has shape"):
        net.backward(r=np.ones((3, 3)))
    with pytest.raises(NetError, match="bottom 'q' is not produced by any layer before it; "
                                       "known blobs: x"):
        net_from(X + 'layer { name: "a" type: "ReLU" bottom: "q" top: "y" }')
    with pytest.raises(NetError, match=r"layer 'x' \(Input\): a blob of shape \(100000000000, "
                                       r"100000000000, 0\) cannot be an array"):
        net_from('layer { name: "x" type: "Input" top: "x" '
                 'input_param { shape { dim: 100000000000 dim: 100000000000 dim: 0 } } }')


def test_positional_forms_of_the_constructor(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(DEPLOY)
    assert minicnn.Net(str(path), minicnn.TRAIN).phase == "TRAIN"
    assert minicnn.Net(path, phase=minicnn.TEST).phase == "TEST"
    net = minicnn.Net(str(path))
    net.params["a"][0].data[...] = 7
    net.save(tmp_path / "w.caffemodel")
    loaded = minicnn.Net(str(path), str(tmp_path / "w.caffemodel"), minicnn.TEST)
    assert loaded.params["a"][0].data[0] == 7
    by_keyword = minicnn.Net(str(path), weights=str(tmp_path / "w.caffemodel"))
    assert by_keyword.params["a"][0].data[0] == 7


# --- copying weights ------------------------------------------------------------------------------

def model_with(layers):
    net = caffe_pb2.NetParameter()
    for name, arrays in layers:
        layer = net.layer.add(name=name, type="TestAffine")
        layer.blobs.extend(array_to_blob_proto(np.asarray(a, np.float32)) for a in arrays)
    return net


def test_copy_from_matches_by_name_and_skips_the_rest(tmp_path):
    net = net_from(DEPLOY)
    path = tmp_path / "m.caffemodel"
    write_binary(model_with([("a", [[5.0], [6.0]]), ("not_here", [[1.0]])]), path)
    net.copy_from(path)
    assert net.params["a"][0].data[0] == 5 and net.params["a"][1].data[0] == 6


def test_copy_from_shape_mismatch_says_rename_the_layer(tmp_path):
    net = net_from(DEPLOY)
    path = tmp_path / "m.caffemodel"
    write_binary(model_with([("a", [[5.0, 1.0], [6.0]])]), path)
    with pytest.raises(NetError, match="shape mismatch.*rename the layer"):
        net.copy_from(path)
    write_binary(model_with([("a", [[5.0]])]), path)
    with pytest.raises(NetError, match="1 blob.*but 2 here"):
        net.copy_from(path)


def test_a_failed_copy_from_leaves_every_layer_as_it_was(tmp_path):
    net = net_from(DEPLOY.replace('top: "r" }', 'top: "r" }\n' + 'layer { name: "b" type: '
                                  '"TestAffine" bottom: "r" top: "z" }'))
    before = {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}
    path = tmp_path / "m.caffemodel"
    write_binary(model_with([("a", [[5.0], [6.0]]), ("b", [[1.0, 2.0], [3.0]])]), path)
    with pytest.raises(NetError, match="layer 'b'.*shape mismatch"):
        net.copy_from(path)
    for name, blobs in net.params.items():           # layer a was fine, and is not copied
        for a, b in zip(before[name], blobs):
            np.testing.assert_array_equal(a, b.data)


def test_copy_from_accepts_legacy_4d_shapes():
    net = net_from(DEPLOY)
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=1, width=1, data=[9.0])
    source = caffe_pb2.NetParameter()
    layer = source.layer.add(name="a")
    layer.blobs.extend([legacy, legacy.copy()])
    net.copy_from(source)
    assert net.params["a"][0].data[0] == 9


def test_copy_from_a_v1_model(tmp_path):
    v1 = caffe_pb2.NetParameter()
    layer = v1.layers.add(name="a", type="CONVOLUTION")
    layer.blobs.extend([array_to_blob_proto(np.array([4.0], np.float32))] * 2)
    path = tmp_path / "v1.caffemodel"
    write_binary(v1, path)
    net = net_from(DEPLOY)
    net.copy_from(path)
    assert net.params["a"][0].data[0] == 4
    net = net_from(DEPLOY)                     # the message itself: upgraded as the file is
    net.copy_from(v1)
    assert net.params["a"][0].data[0] == 4 and v1.layers and not v1.layer   # v1 unchanged


SMALL_CNN = """
input: "x" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y" inner_product_param { num_output: 3 } }
"""


@pytest.fixture(scope="module")
def small_cnn_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    net_from(SMALL_CNN).save(folder / "cnn.caffemodel")
    return folder, (folder / "cnn.caffemodel").read_bytes()


@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                      max_size=4), cut=st.none() | st.integers(0, 1 << 20))
@settings(max_examples=150, deadline=None)
def test_copy_from_a_mutated_caffemodel_raises_only_minicnn_errors(small_cnn_model, edits, cut):
    folder, good = small_cnn_model
    data = bytearray(good)
    for pos, value in edits:
        data[pos % len(data)] = value
    path = folder / "mutated.caffemodel"
    path.write_bytes(bytes(data[:None if cut is None else cut % len(data)]))
    try:
        net_from(SMALL_CNN).copy_from(path)
    except MinicnnError as e:
        assert str(path) in str(e)                     # every error names the file


def test_save_writes_every_layer_with_its_blobs(tmp_path):
    net = net_from(FAN_OUT)
    path = tmp_path / "saved.caffemodel"
    net.save(path)
    saved = minicnn.proto.read_binary(path)
    assert [layer.name for layer in saved.layer] == net.layer_names
    assert len(saved.layer[net.layer_names.index("a1")].blobs) == 2


def test_float64_net():
    net = net_from(DEPLOY, dtype=np.float64)
    assert all(b.data.dtype == np.float64 for b in net.blobs.values())
    assert net.params["a"][0].data.dtype == np.float64


# --- arrays a run would lose, and other misuse of the API ---------------------------------------

LOSS_NET = X + """
layer { name: "a" type: "TestAffine" bottom: "x" top: "y" }
layer { name: "r" type: "ReLU" bottom: "y" top: "y" }
layer { name: "b" type: "TestAffine" bottom: "y" top: "z" }
layer { name: "loss" type: "TestSquareLoss" bottom: "z" top: "loss" }
"""


def test_arrays_the_run_would_overwrite_are_errors_not_silently_dropped():
    net = net_from(LOSS_NET, force_backward=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # y is computed by layer 'a' before any layer of the run reads it: pycaffe refuses any
    # name but the inputs, minicnn any whose array would be lost
    with pytest.raises(NetError, match="data given for blob 'y' would be overwritten by layer "
                                       r"'a' \(TestAffine\) before any layer reads it"):
        net.forward(x=x, y=np.ones((2, 3)))
    # from start='r' (in place: it reads y) the same array is the run's input
    net.forward(x=x)
    got = net.forward(start="r", y=-np.ones((2, 3)))
    assert np.all(got["loss"] == 0.5 * 6 * (2 * 0 + 0) ** 2)      # relu(-1) = 0, then 2*0+0
    # backward: z's diff is assigned by the loss layer's backward before any layer reads it
    with pytest.raises(NetError, match="diff given for blob 'z' would be overwritten by layer "
                                       r"'loss' \(TestSquareLoss\)"):
        net.backward(z=np.ones((2, 3)))
    # ... but from start='b' it is where the run starts
    net.forward(x=x)
    dx = net.backward(start="b", z=np.ones((2, 3), np.float32))["x"]
    np.testing.assert_array_equal(dx, 2 * 2 * (x > 0))            # b's a=2, relu, a's a=2
    with pytest.raises(NetError, match="forward: no blob named 'nope'"):
        net.forward(blobs=["nope"])
    with pytest.raises(NetError, match="backward: no blob named 'zzz'"):
        net.backward(diffs=["zzz"])


def test_a_data_layer_top_cannot_be_given_to_forward():
    net = net_from("""
layer { name: "d" type: "DummyData" top: "data"
        dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1 } } }
layer { name: "r" type: "ReLU" bottom: "data" top: "r" }""")
    with pytest.raises(NetError, match="'data' would be overwritten by layer 'd' \\(DummyData\\)"):
        net.forward(data=np.zeros((2, 3)))


def test_a_backward_that_computes_nothing_warns_and_force_backward_computes():
    x = np.ones((2, 3), np.float32)
    net = net_from(DEPLOY)                          # no loss, no force_backward: Caffe prunes all
    net.forward(x=x)
    with pytest.warns(UserWarning, match="no layer here computes any diff"):
        grads = net.backward(r=np.ones((2, 3)))
    assert not grads["x"].any()
    net = net_from(DEPLOY, force_backward=True)     # the prototxt's field, overridden
    net.forward(x=x)
    np.testing.assert_array_equal(net.backward(r=np.ones((2, 3)))["x"], 2 * np.ones((2, 3)))
    assert not net_from("force_backward: true\n" + DEPLOY, force_backward=False).force_backward
    with pytest.raises(NetError, match="force_backward is fixed when the net is built"):
        net.force_backward = False                  # would silently change nothing


def test_constructor_arguments_pycaffe_users_pass():
    text = X + """
layer { name: "d" type: "ReLU" bottom: "x" top: "d" include { stage: "deploy" } }
layer { name: "n" type: "ReLU" bottom: "x" top: "n" exclude { stage: "deploy" } }"""
    assert net_from(text, stages="deploy").layer_names[1:] == ["d"]   # one stage, not letters
    assert net_from(text, stages=None).layer_names[1:] == ["n"]       # pycaffe's default
    assert net_from(text, "Test").phase == minicnn.TEST
    with pytest.raises(TypeError, match="weights must be a file path or a NetParameter, not 5"):
        net_from(text, 5)


def test_weights_that_fill_no_parameter_are_another_nets(tmp_path):
    net = net_from(DEPLOY)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(NetError, match="empty.caffemodel: no layer of this net gets weights from "
                                       r"it \(it holds no layer weights at all; the net's layers "
                                       r"with parameters are 'a'\)"):
        net.copy_from(str(empty))
    other = caffe_pb2.NetParameter()
    other.layer.add(name="other", type="TestAffine").blobs.append(
        array_to_blob_proto(np.ones(1, np.float32)))
    with pytest.raises(NetError, match="its layers with weights are 'other'"):
        net.copy_from(other)
    assert net.params["a"][0].data[0] == 2                   # as it was
    other.layer.add(name="a", type="TestAffine").blobs.extend(
        [array_to_blob_proto(np.full(1, 5, np.float32)), array_to_blob_proto(np.zeros(1))])
    net.copy_from(other)                                     # some layers match: copied
    assert net.params["a"][0].data[0] == 5


def test_setting_a_blob_from_values_of_another_shape_is_an_error():
    net = net_from(DEPLOY)
    blob = net.blobs["y"]
    with pytest.raises(MinicnnError, match=r"cannot set a blob of shape \(2, 3\) from data of "
                                           r"shape \(3,\)"):
        blob.data = np.ones(3)           # NumPy would broadcast it into both rows
    with pytest.raises(MinicnnError, match="from diff of shape"):
        blob.diff = np.ones((1, 3))
    with pytest.raises(MinicnnError, match="complex"):
        net.forward(x=np.ones((2, 3), complex))
    blob.data = 7                        # a scalar fills it
    blob.data[...] = np.arange(3)        # and [...] broadcasts on purpose
    assert blob.data.tolist() == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("layers, line, message", [
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\n'
     'layer { name: "b" type: "ReLU" bottom: "x" top: "y" }\n', 3,
     r"layer 'b' \(ReLU\): top blob 'y' is already produced by another layer"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "y" param { lr_mult: 1 } }\n', 2,
     r"layer 'a' \(ReLU\): 1 param specs for 0 parameter blob\(s\)"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "y" propagate_down: true\n'
     '        propagate_down: false }\n', 2, "layer 'a': propagate_down must be given 0 or 1"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "y" include { phase: TEST }\n'
     '        exclude { phase: TRAIN } }\n', 2, "layer 'a' has both include and exclude rules"),
    ('layer { name: "a" type: "InnerProduct" bottom: "x" top: "y" param { name: "w" }\n'
     '        inner_product_param { num_output: 2 } }\n'
     'layer { name: "b" type: "InnerProduct" bottom: "x" top: "z" param { name: "w" }\n'
     '        inner_product_param { num_output: 3 } }\n', 4,
     "cannot share param 'w' owned by layer 'a' with layer 'b': shape mismatch"),
])
def test_graph_errors_name_the_prototxt_line(tmp_path, layers, line, message):
    path = tmp_path / "net.prototxt"
    path.write_text(X + layers)
    with pytest.raises(NetError, match=f"^{path}:{line}: {message}"):
        minicnn.Net(str(path))


def test_blob_loss_weights_in_blob_order():
    net = net_from(LOSS_NET)
    assert net._blob_names == ["x", "y", "z", "loss"]
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 1.0]         # pycaffe's vector
