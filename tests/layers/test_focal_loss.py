"""FocalLoss, zimenglan-sysu-512/Focal-Loss's softmax form (the "FocalLoss" of most Caffe forks).

References written here: the focal loss on a softmax in PyTorch, its backward by torch autograd;
a case worked out by hand; SoftmaxWithLoss at gamma 0, alpha 1; float64 finite differences."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers.focal_loss import FocalLossLayer
from minicnn.layers.loss import SoftmaxWithLossLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient

FLT_MIN = float(np.finfo(np.float32).tiny)


def torch_focal(x, labels, axis, alpha, gamma, ignore_label, normalization, loss_weight):
    """loss and d loss / dx (autograd), on the formula: -alpha (1 - p_t)^gamma log p_t."""
    xt = torch.from_numpy(x).requires_grad_(True)
    p = torch.softmax(xt, dim=axis)
    p = torch.movedim(p, axis, -1).reshape(-1, x.shape[axis])               # (positions, C)
    lab = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    valid = lab != ignore_label if ignore_label is not None else torch.ones_like(lab, dtype=bool)
    pt = p[torch.arange(p.shape[0]), torch.where(valid, lab, 0)]
    terms = -alpha * (1 - pt) ** gamma * torch.log(torch.clamp(pt, min=FLT_MIN))
    outer = math.prod(x.shape[:axis])
    d = {"FULL": p.shape[0], "VALID": int(valid.sum()), "BATCH_SIZE": outer,
         "NONE": 1}[normalization]
    loss = terms[valid].sum() / max(d, 1)
    (loss * loss_weight).backward()
    return float(loss.detach()), xt.grad.numpy()


@st.composite
def focal_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape, axis = draw(st.sampled_from([((5, 4), 1), ((2, 3, 2, 3), 1), ((2, 3, 4), 2),
                                        ((3, 2, 2), -2), ((1, 1), 1)]))
    x = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 4.0]))
    ax = axis % len(shape)
    c = shape[ax]
    lshape = shape[:ax] + shape[ax + 1:]
    labels = rng.integers(0, c, lshape).astype(np.float64)
    ignore = draw(st.sampled_from([None, -1, 0]))
    if ignore == -1:
        labels[rng.random(lshape) < 0.3] = -1
    return (x, labels, axis, ignore, draw(st.sampled_from([0.25, 1.0, 2.0])),
            draw(st.sampled_from([0.0, 0.5, 2.0, 3.75])),
            draw(st.sampled_from([None, "FULL", "VALID", "BATCH_SIZE", "NONE"])))


def focal_layer(axis, ignore, alpha, gamma, normalization, **extra):
    loss_param = {} if ignore is None else {"ignore_label": ignore}
    if normalization is not None:
        loss_param["normalization"] = normalization
    return FocalLossLayer(focal_loss_param={"alpha": alpha, "gamma": gamma, **extra},
                          softmax_param={"axis": axis}, loss_param=loss_param)


@settings(max_examples=40, deadline=None)
@given(focal_cases(), st.sampled_from([1.0, 0.25]))  # exact in the float field
def test_focal_loss_matches_torch(case, loss_weight):
    x, labels, axis, ignore, alpha, gamma, normalization = case
    assume(x.shape[axis] > 1)                # one class: p_t = 1, see the clamp test below
    layer = focal_layer(axis, ignore, alpha, gamma, normalization)
    layer.param.loss_weight.append(loss_weight)
    loss = float(layer(x, labels))
    dx, _ = layer.backprop()
    want_loss, want_dx = torch_focal(x, labels, axis % x.ndim, alpha, gamma, ignore,
                                     normalization or "VALID", loss_weight)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(focal_cases())
def test_focal_loss_backward_is_the_gradient(case):
    x, labels, axis, ignore, alpha, gamma, normalization = case
    check_layer_gradient(lambda: focal_layer(axis, ignore, alpha, gamma, normalization),
                         [x, labels], check_bottoms=[0])


def test_focal_loss_by_hand():
    # two classes, equal scores: p_t = 1/2, loss = -0.25 * (1/2)^2 * log(1/2)
    layer = FocalLossLayer(focal_loss_param={"alpha": 0.25, "gamma": 2})
    assert float(layer(np.zeros((1, 2)), np.zeros(1))) == pytest.approx(
        0.25 * 0.25 * math.log(2), rel=1e-7)
    # g = -2 * 0.0625 / 0.5 * log(1/2) + 0.0625 / 0.5; dx = g * 1/2 * (p - onehot)
    g = -2 * 0.0625 / 0.5 * math.log(0.5) + 0.125
    np.testing.assert_allclose(layer.backprop()[0], [[-g / 4, g / 4]], rtol=1e-7)


def test_p_t_of_one_gives_zero_through_the_forks_clamp():
    # p_t = 1 (the other score 800 below): (1 - p_t)^gamma / max(1 - p_t, 1e-10) = 0 for
    # gamma > 0, where autograd of (1 - p)^0.5 gives NaN. (One class, N x 1 scores with N
    # labels, is the sigmoid form: test_focal_loss_sigmoid.py.)
    layer = FocalLossLayer(focal_loss_param={"gamma": 0.5})
    assert float(layer(np.array([[0.0, -800]] * 3), np.zeros(3))) == 0
    np.testing.assert_array_equal(layer.backprop()[0], np.zeros((3, 2)))


def test_gamma_0_alpha_1_is_softmax_with_loss():
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((6, 5)), rng.integers(0, 5, 6).astype(np.float64)
    labels[1] = 255
    focal = FocalLossLayer(focal_loss_param={"alpha": 1, "gamma": 0},
                           loss_param={"ignore_label": 255})
    plain = SoftmaxWithLossLayer(loss_param={"ignore_label": 255})
    np.testing.assert_allclose(focal(x, labels), plain(x, labels), rtol=1e-14)
    np.testing.assert_allclose(focal.backprop()[0], plain.backprop()[0], rtol=1e-12,
                               atol=1e-16)


def test_normalize_false_is_batch_size_and_type_linear_is_origin():
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((4, 3, 2)), rng.integers(0, 3, (4, 2)).astype(np.float64)
    summed = float(focal_layer(1, None, 0.25, 2, "NONE")(x, labels))
    layer = FocalLossLayer(loss_param={"normalize": False})
    assert float(layer(x, labels)) == pytest.approx(summed / 4, rel=1e-13)
    layer = FocalLossLayer(loss_param={"normalize": True})
    assert float(layer(x, labels)) == pytest.approx(summed / 8, rel=1e-13)
    linear = FocalLossLayer(focal_loss_param={"type": "LINEAR", "beta": 7})   # read, not used
    assert float(linear(x, labels)) == pytest.approx(summed / 8, rel=1e-13)


def test_focal_loss_top_1_is_the_probabilities():
    x = np.random.default_rng(4).standard_normal((3, 4))
    layer = FocalLossLayer()
    layer.param.top.extend(["loss", "prob"])
    _, prob = layer(x, np.array([0, 1, 3.0]))
    np.testing.assert_allclose(prob, torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-14)


def test_focal_loss_errors():
    x = np.zeros((2, 3))
    with pytest.raises(LayerError, match="gamma must be >= 0, got -1"):
        FocalLossLayer(focal_loss_param={"gamma": -1})(x, np.zeros(2))
    with pytest.raises(LayerError, match="alpha must be > 0, got 0"):
        FocalLossLayer(focal_loss_param={"alpha": 0})(x, np.zeros(2))
    with pytest.raises(LayerError, match="ONEADDP is happynear's"):
        FocalLossLayer(focal_loss_param={"type": "ONEADDP"})(x, np.zeros(2))
    with pytest.raises(LayerError, match="label 3 .*\\[0, 3\\)"):
        FocalLossLayer()(x, np.array([0, 3.0]))
    with pytest.raises(LayerError, match="do not match the predictions"):
        FocalLossLayer()(np.zeros((2, 3, 2)), np.zeros(2))
    layer = FocalLossLayer()
    layer(x, np.zeros(2))
    bottom, top = layer._standalone
    with pytest.raises(LayerError, match="cannot backpropagate to labels"):
        layer.backward(top, [True, True], bottom)


# zimenglan-sysu-512/Focal-Loss's README layer, in a small classifier
FOCAL_NET = """
name: "focal"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 6 } } }
layer { name: "labels" type: "Input" top: "labels" input_param { shape { dim: 16 } } }
layer { name: "cls_score" type: "InnerProduct" bottom: "data" top: "cls_score"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer {
  name: "loss_cls"
  type: "FocalLoss"
  bottom: "cls_score"
  bottom: "labels"
  propagate_down: 1
  propagate_down: 0
  top: "loss_cls"
  include { phase: TRAIN }
  loss_weight: 1
  loss_param { ignore_label: -1 normalize: true }
  focal_loss_param { alpha: 0.25 gamma: 2 }
}
"""


def test_focal_loss_net_trains():
    minicnn.set_random_seed(3)
    param = caffe_pb2.SolverParameter(net_param=parse_text(FOCAL_NET), base_lr=0.5,
                                      lr_policy="fixed", momentum=0.9)
    solver = minicnn.get_solver(param, log=lambda message: None)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 16)
    data = rng.standard_normal((3, 6))[labels] * 2 + 0.3 * rng.standard_normal((16, 6))
    labels = labels.astype(np.float64)
    labels[:3] = -1                                            # ignored, as the README's
    losses = []
    for _ in range(30):
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["labels"].data[...] = labels
        solver.step(1)
        losses.append(float(solver.net.blobs["loss_cls"].data))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0], losses
