"""Softmax, SoftmaxWithLoss and Accuracy through the Layer protocol and in Nets: gradients
(spatial, ignore_label, every normalization, loss_weight), prototxt parameters, phases, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.layers import AccuracyLayer, SoftmaxLayer, SoftmaxWithLossLayer
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient, numerical_grad

MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]


def softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@st.composite
def classified(draw):
    """(scores, labels, axis, ignore_label): scores of 2-4 axes with the class axis anywhere
    after the first, labels N x H x W-like or with a kept 1 at the class axis."""
    ndim = draw(st.integers(2, 4))
    shape = list(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(1, ndim - 1))
    shape[axis] = draw(st.integers(1, 4))                       # the number of classes
    shape = tuple(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    label_shape = shape[:axis] + shape[axis + 1:]
    if draw(st.booleans()):
        label_shape = shape[:axis] + (1,) + shape[axis + 1:]
    labels = rng.integers(0, shape[axis], label_shape).astype(np.float64)
    ignore = draw(st.sampled_from([None, 0, 255]))
    if ignore is not None:
        labels[rng.random(label_shape) < 0.3] = ignore
    axis = draw(st.sampled_from([axis, axis - ndim]))           # the same axis, maybe negative
    return 2 * rng.standard_normal(shape), labels, axis, ignore


# --- Softmax ------------------------------------------------------------------------------------

@given(classified())
def test_softmax_layer_gradient(case):
    x, _, axis, _ = case
    check_layer_gradient(lambda: SoftmaxLayer(axis=axis), [x])


def test_softmax_layer_forward_and_in_place_net():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(SoftmaxLayer(axis=-1)(x), softmax(x, -1), rtol=1e-6)
    text = 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 } force_backward: true ' \
           'layer { name: "sm" type: "Softmax" bottom: "x" top: "%s" softmax_param { axis: 2 } }'
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    results = []
    for top in ("x", "y"):
        net = minicnn.Net(parse_text(text % top))
        out = net.forward(x=x)[top].copy()
        results.append((out, net.backward(**{top: dy})["x"].copy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results[1][0], softmax(x, 2), rtol=1e-6)


def test_softmax_axis_out_of_range():
    with pytest.raises(minicnn.LayerError, match="softmax_param.axis 2 is out of range"):
        SoftmaxLayer(axis=2)(np.ones((2, 3)))


# --- SoftmaxWithLoss: values and gradients ------------------------------------------------------

def loss_layer(axis=1, ignore=None, mode=None, **fields):
    layer = SoftmaxWithLossLayer(softmax_param={"axis": axis}, **fields)
    if ignore is not None:
        layer.param.loss_param.ignore_label = ignore
    if mode is not None:
        layer.param.loss_param.normalization = mode
    return layer


def expected_loss(x, labels, axis, ignore, mode):
    axis %= x.ndim
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    p = softmax(x, axis).reshape(outer, x.shape[axis], inner)
    lab = labels.reshape(outer, inner)
    keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    picked = [p[o, int(lab[o, i]), i] for o, i in zip(*np.nonzero(keep))]
    d = {"FULL": outer * inner, "VALID": keep.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    return -np.sum(np.log(picked)) / max(1, d)


@given(classified(), st.sampled_from(MODES + [None]))
def test_loss_value(case, mode):
    x, labels, axis, ignore = case
    loss = loss_layer(axis, ignore, mode)(x, labels)
    assert loss.shape == ()
    np.testing.assert_allclose(loss, expected_loss(x, labels, axis, ignore, mode or "VALID"),
                               rtol=1e-10)


@given(classified(), st.sampled_from(MODES))
def test_loss_gradient(case, mode):
    x, labels, axis, ignore = case
    # the objective weights top[0] by a random number: the gradient must scale with the top diff
    check_layer_gradient(lambda: loss_layer(axis, ignore, mode), [x, labels])


def test_spatial_loss_gradient_with_ignored_pixels_and_prob_top():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 2, 3))                        # N x C x H x W
    labels = rng.integers(0, 3, (2, 1, 2, 3)).astype(float)     # N x 1 x H x W
    labels[0, 0, 1, :] = 255

    def make():
        return loss_layer(ignore=255, mode="FULL", top=["loss", "prob"])

    check_layer_gradient(make, [x, labels], tops=[0])            # prob's diff is not used
    loss, prob = make()(x, labels)
    np.testing.assert_allclose(prob, softmax(x, 1))
    np.testing.assert_allclose(loss, expected_loss(x, labels, 1, 255, "FULL"))


def test_standalone_use():
    scores = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    layer = SoftmaxWithLossLayer()
    loss = layer(scores, labels)
    p = softmax(scores.astype(np.float64), 1)
    np.testing.assert_allclose(loss, -(np.log(p[0, 0]) + np.log(p[1, 2])) / 2, rtol=1e-6)
    assert loss.dtype == np.float32
    dscores, dlabels = layer.backprop()
    assert dlabels is None
    np.testing.assert_allclose(dscores, (p - np.eye(3)[[0, 2]]) / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_param, divisor", [
    ("", 3),                                            # VALID: 3 labelled of 4
    ("normalization: FULL", 4),
    ("normalization: BATCH_SIZE", 2),
    ("normalization: NONE", 1),
    ("normalize: false", 2),                            # deprecated: BATCH_SIZE
    ("normalize: true", 3),                             # deprecated: VALID
    ("normalize: false normalization: FULL", 4),        # normalization wins when set
])
def test_normalization_from_prototxt(loss_param, divisor):
    text = f"""
    input: "x" input_shape {{ dim: 2 dim: 3 dim: 2 }}
    input: "label" input_shape {{ dim: 2 dim: 2 }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss"
            loss_param {{ ignore_label: -1 {loss_param} }} }}
    """
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    labels = np.array([[0, 1], [-1, 2]])
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    loss = net.forward(x=x, label=labels)["loss"]
    p = softmax(x, 1)
    total = -(np.log(p[0, 0, 0]) + np.log(p[0, 1, 1]) + np.log(p[1, 2, 1]))
    np.testing.assert_allclose(loss, total / divisor)


NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 2 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        %s }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""


def tiny_inputs():
    rng = np.random.default_rng(11)
    return rng.standard_normal((4, 3, 2)), np.array([0, 4, 2, 2])


def test_loss_weight_scales_loss_and_gradients_in_a_net():
    data, labels = tiny_inputs()
    minicnn.set_random_seed(3)
    plain = minicnn.Net(parse_text(NET % ""), phase=minicnn.TRAIN, dtype=np.float64)
    weighted = minicnn.Net(parse_text(NET % "loss_weight: 2.5"), phase=minicnn.TRAIN,
                           dtype=np.float64)
    weighted.share_with(plain)
    results = []
    for net in (plain, weighted):
        net.forward(data=data, label=labels)
        net.clear_param_diffs()
        loss = net.forward_from_to()
        net.backward()
        results.append((loss, [b.diff.copy() for b in net.params["ip"]]))
    assert results[1][0] == pytest.approx(2.5 * results[0][0])
    for plain_diff, weighted_diff in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(weighted_diff, 2.5 * plain_diff)
    # and the weighted net's parameter diffs are the derivative of its weighted loss
    for blob, diff in zip(weighted.params["ip"], results[1][1]):
        np.testing.assert_allclose(diff, numerical_grad(weighted.forward_from_to, blob.data),
                                   rtol=1e-6, atol=1e-8)


def test_train_and_test_nets_with_a_test_only_accuracy():
    data, labels = tiny_inputs()
    train = minicnn.Net(parse_text(NET % ""), phase=minicnn.TRAIN)
    test = minicnn.Net(parse_text(NET % ""), phase=minicnn.TEST)
    test.share_with(train)
    assert "accuracy" not in train.layer_names and "accuracy" in test.layer_names
    assert train.outputs == ["loss"] and test.outputs == ["accuracy", "loss"]
    train.clear_param_diffs()
    out = train.forward(data=data, label=labels)
    loss = float(out["loss"])
    train.backward()
    assert train.params["ip"][0].diff.any()
    out = test.forward(data=data, label=labels)
    scores = test.blobs["ip"].data
    assert float(out["loss"]) == pytest.approx(loss, rel=1e-6)
    assert float(out["accuracy"]) == np.mean(scores.argmax(1) == labels)
    np.testing.assert_allclose(float(out["loss"]), expected_loss(
        scores.astype(np.float64), labels, 1, None, "VALID"), rtol=1e-5)


# --- SoftmaxWithLoss: errors --------------------------------------------------------------------

def test_label_count_mismatch_names_the_shapes():
    with pytest.raises(minicnn.LayerError,
                       match=r"6 labels \(shape \(2, 3\)\).*\(2, 5, 4\).*2 x 4 = 8"):
        SoftmaxWithLossLayer()(np.zeros((2, 5, 4)), np.zeros((2, 3)))


def test_label_first_dimension_must_match():
    with pytest.raises(minicnn.LayerError, match=r"\(2, 3\).*\(1, 2\).*same first dimension"):
        SoftmaxWithLossLayer()(np.zeros((2, 3)), np.zeros((1, 2)))


@pytest.mark.parametrize("bad, shown", [(3, "3"), (-1, "-1"), (1.5, "1.5"), (np.nan, "nan")])
def test_labels_must_be_classes(bad, shown):
    labels = np.array([0.0, bad])
    with pytest.raises(minicnn.LayerError,
                       match=rf"label {shown} at index \(1,\).*integers in \[0, 3\)"):
        SoftmaxWithLossLayer()(np.zeros((2, 3)), labels)


def test_ignore_label_may_lie_outside_the_classes():
    loss = SoftmaxWithLossLayer(ignore_label=255)(np.zeros((2, 4)), np.array([255, 1]))
    np.testing.assert_allclose(loss, math.log(4), rtol=1e-6)
    with pytest.raises(minicnn.LayerError, match="or the ignore_label 255"):
        SoftmaxWithLossLayer(ignore_label=255)(np.zeros((2, 4)), np.array([254, 1]))


def test_bad_label_in_a_net_names_the_layer():
    net = minicnn.Net(parse_text(NET % ""), phase=minicnn.TRAIN)
    with pytest.raises(minicnn.NetError, match="layer 'loss'.*label 7"):
        net.forward(data=np.zeros((4, 3, 2)), label=np.array([0, 7, 1, 1]))


def test_cannot_backpropagate_to_labels():
    layer = SoftmaxWithLossLayer()
    bottom = [Blob.from_array(np.zeros((2, 3))), Blob.from_array(np.array([0.0, 1.0]))]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(minicnn.LayerError, match="cannot backpropagate to labels"):
        layer.backward(top, [True, True], bottom)
    text = NET.replace('top: "loss"\n', 'top: "loss" propagate_down: true '
                                         'propagate_down: true\n')
    net = minicnn.Net(parse_text(text % ""), phase=minicnn.TRAIN)
    net.forward(data=np.zeros((4, 3, 2)), label=np.array([0, 1, 1, 1]))
    with pytest.raises(minicnn.NetError, match="layer 'loss'.*cannot backpropagate to labels"):
        net.backward()


def test_force_backward_leaves_labels_alone():
    net = minicnn.Net(parse_text(NET % "" + "force_backward: true"), phase=minicnn.TEST)
    data, labels = tiny_inputs()
    net.forward(data=data, label=labels)
    diffs = net.backward()
    assert diffs["data"].any() and not diffs["label"].any()


# --- Accuracy -----------------------------------------------------------------------------------

TIES = np.array([[1.0, 1.0, 0.0],       # label 0 ties with class 1: wrong at top 1
                 [0.0, 2.0, 1.0],       # label 2 second: right at top 2
                 [5.0, 5.0, 5.0],       # label 1 ties with both: wrong at top 2
                 [0.0, 1.0, 3.0]])      # label 2 best
TIE_LABELS = np.array([0, 2, 1, 2])


@pytest.mark.parametrize("top_k, want, per_class", [
    (1, 0.25, [0.0, 0.0, 0.5]), (2, 0.75, [1.0, 0.0, 1.0]), (3, 1.0, [1.0, 1.0, 1.0])])
def test_accuracy_ties_and_top_k(top_k, want, per_class):
    acc, per = AccuracyLayer(top_k=top_k, top=["acc", "per_class"])(TIES, TIE_LABELS)
    assert acc.shape == () and acc == want
    assert per.shape == (3,)
    np.testing.assert_array_equal(per, per_class)


def test_accuracy_per_class_zero_for_absent_and_ignored_left_out():
    scores = np.array([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    acc, per = AccuracyLayer(ignore_label=1, top=["a", "b"])(scores, np.array([0, 0, 1]))
    assert acc == 0.5                                     # the ignored row would have been right
    np.testing.assert_array_equal(per, [0.5, 0.0, 0.0, 0.0])


def test_accuracy_spatial_and_negative_axis():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 3, 4))              # N x H x C, classes last
    labels = rng.integers(0, 4, (2, 3))
    acc = AccuracyLayer(axis=-1)(scores, labels)
    assert acc == np.mean(scores.argmax(-1) == labels)
    acc = AccuracyLayer()(np.moveaxis(scores, -1, 1), labels[:, None])  # N x C x H, N x 1 x H
    assert acc == np.mean(scores.argmax(-1) == labels)


def test_accuracy_in_a_prototxt_with_top_k():
    text = """
    input: "s" input_shape { dim: 4 dim: 3 }
    input: "l" input_shape { dim: 4 }
    layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" top: "per"
            accuracy_param { top_k: 2 } }
    """
    out = minicnn.Net(parse_text(text)).forward(s=TIES, l=TIE_LABELS)
    assert out["acc"] == 0.75
    np.testing.assert_array_equal(out["per"], [1.0, 0.0, 1.0])


def test_accuracy_errors():
    with pytest.raises(minicnn.LayerError, match="top_k = 4 is more than the 3 classes"):
        AccuracyLayer(top_k=4)(TIES, TIE_LABELS)
    with pytest.raises(minicnn.LayerError, match=r"3 labels \(shape \(3,\)\).*\(4, 3\)"):
        AccuracyLayer()(TIES, TIE_LABELS[:3])
    with pytest.raises(minicnn.LayerError, match=r"label 3 at index \(1,\)"):
        AccuracyLayer()(TIES, np.array([0, 3, 0, 0]))


def test_accuracy_has_no_backward():
    layer = AccuracyLayer()
    layer(TIES, TIE_LABELS)
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    assert layer.backprop(np.ones(())) == (None, None)
    bottom = [Blob.from_array(TIES), Blob.from_array(TIE_LABELS)]
    top = [Blob()]
    layer.setup(bottom, top)
    with pytest.raises(minicnn.LayerError, match="no backward"):
        layer.backward(top, [True, False], bottom)


# --- EuclideanLoss --------------------------------------------------------------------------------

@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**31))
def test_euclidean_loss_gradient_for_both_bottoms(n, d, seed):
    from minicnn.layers import EuclideanLossLayer
    rng = np.random.default_rng(seed)
    check_layer_gradient(EuclideanLossLayer, [rng.standard_normal((n, d)),
                                              rng.standard_normal((n, d, 1))])


def test_euclidean_loss_value_weight_and_errors():
    from minicnn.layers import EuclideanLossLayer
    layer = EuclideanLossLayer(loss_weight=[2.0])
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 2))
    assert float(layer(a, b)) == (1 + 4 + 9 + 16) / 4
    da, db = layer.backprop()
    np.testing.assert_allclose(da, 2 * a / 2)
    np.testing.assert_allclose(db, -2 * a / 2)
    with pytest.raises(minicnn.LayerError, match=r"shapes \(2, 2\) and \(3, 2\)"):
        EuclideanLossLayer()(a, np.zeros((3, 2)))
