"""FocalLoss, sciencefans/Focal-Loss's sigmoid form (labels one per score).

References written here: the formula in PyTorch with autograd (torchvision is not installed; its
sigmoid_focal_loss is this formula for 0/1 targets), a case worked out by hand, float64 finite
differences, and zimenglan-sysu-512's softmax form when the labels are one per position."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers.focal_loss import FocalLossLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient


def torch_sigmoid_focal(x, t, alpha, gamma, ignore_label, normalization, loss_weight):
    """loss and d loss / dx (autograd): sum alpha_t (1 - p_t)^gamma BCE(x, t) / D, the focal
    factor on the truncated target (1: positive, else negative), BCE on the float target."""
    xt = torch.from_numpy(x).requires_grad_(True)
    tt = torch.from_numpy(t)
    pos = torch.trunc(tt) == 1
    p = torch.sigmoid(xt)
    pt = torch.where(pos, p, 1 - p)
    at = torch.where(pos, torch.tensor(alpha, dtype=torch.float64),
                     torch.tensor(1 - alpha, dtype=torch.float64))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(xt, tt, reduction="none")
    valid = torch.ones_like(pos) if ignore_label is None else torch.trunc(tt) != ignore_label
    d = {"FULL": x.size, "VALID": int(valid.sum()) if ignore_label is not None else x.size,
         "BATCH_SIZE": x.shape[0], "NONE": 1}[normalization]
    loss = (at * (1 - pt) ** gamma * bce)[valid].sum() / max(d, 1)
    (loss * loss_weight).backward()
    return float(loss.detach()), xt.grad.numpy()


@st.composite
def sigmoid_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(5,), (4, 3), (2, 3, 2, 2), (3, 1), (1, 1, 3)]))
    x = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 5.0]))
    t = (rng.random(shape) < 0.4).astype(np.float64)
    if draw(st.booleans()):
        t[rng.random(shape) < 0.2] = 0.7                 # soft targets: focal factor as 0
    ignore = draw(st.sampled_from([None, -1, 255]))
    if ignore is not None:
        t[rng.random(shape) < 0.3] = ignore
    norm = draw(st.sampled_from([None, "FULL", "VALID", "BATCH_SIZE", "NONE",
                                 "normalize: true", "normalize: false"]))
    return (x, t, ignore, draw(st.sampled_from([0.25, 0.5, 1.0])),
            draw(st.sampled_from([0.0, 0.5, 2.0, 3.0])), norm)


def sigmoid_layer(ignore, alpha, gamma, norm):
    loss_param = {} if ignore is None else {"ignore_label": ignore}
    if norm == "normalize: true":
        loss_param["normalize"] = True
    elif norm == "normalize: false":
        loss_param["normalize"] = False
    elif norm is not None:
        loss_param["normalization"] = norm
    return FocalLossLayer(focal_loss_param={"alpha": alpha, "gamma": gamma},
                          loss_param=loss_param)


def resolved(norm):
    return {None: "BATCH_SIZE", "normalize: true": "VALID",
            "normalize: false": "BATCH_SIZE"}.get(norm, norm)


@settings(max_examples=50, deadline=None)
@given(sigmoid_cases(), st.sampled_from([1.0, 0.25]))
def test_sigmoid_focal_loss_matches_torch(case, loss_weight):
    x, t, ignore, alpha, gamma, norm = case
    layer = sigmoid_layer(ignore, alpha, gamma, norm)
    layer.param.loss_weight.append(loss_weight)
    loss = float(layer(x, t))
    assert layer.sigmoid
    dx, _ = layer.backprop()
    want_loss, want_dx = torch_sigmoid_focal(x, t, alpha, gamma, ignore, resolved(norm),
                                             loss_weight)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-9, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(sigmoid_cases())
def test_sigmoid_focal_loss_backward_is_the_gradient(case):
    x, t, ignore, alpha, gamma, norm = case
    x = np.where(np.abs(x) < 1e-3, 0.5, x)                # [x >= 0] switches at 0
    check_layer_gradient(lambda: sigmoid_layer(ignore, alpha, gamma, norm), [x, t],
                         check_bottoms=[0])


def test_sigmoid_focal_loss_by_hand():
    # x = 0: s = 1/2, ce = log 2; target 1: 0.25 (1/2)^2 log 2; target 0: 0.75 (1/2)^2 log 2;
    # one item of two scores, BATCH_SIZE by default: D = 1
    layer = FocalLossLayer()
    assert float(layer(np.zeros((1, 2)), np.array([[1.0, 0.0]]))) == pytest.approx(
        (0.25 + 0.75) * 0.25 * math.log(2), rel=1e-7)
    # dx = a_t (1/2)^2 (s - t) + log 2 * a_t * 2 * (1/2) * (1/4) * (-1 if t == 1 else 1)
    want = [0.25 * 0.25 * -0.5 - math.log(2) * 0.25 * 0.25,
            0.75 * 0.25 * 0.5 + math.log(2) * 0.75 * 0.25]
    np.testing.assert_allclose(layer.backprop()[0], [want], rtol=1e-7)


def test_normalizers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 2))
    t = (rng.random((4, 3, 2)) < 0.5).astype(np.float64)
    t[0, 0, 0] = t[1, 2, 1] = -1
    summed = float(sigmoid_layer(-1, 0.25, 2, "NONE")(x, t))
    assert float(FocalLossLayer(loss_param={"ignore_label": -1})(x, t)) == \
        pytest.approx(summed / 4, rel=1e-13)                          # unset: BATCH_SIZE
    assert float(sigmoid_layer(-1, 0.25, 2, "VALID")(x, t)) == pytest.approx(summed / 22)
    assert float(sigmoid_layer(-1, 0.25, 2, "FULL")(x, t)) == pytest.approx(summed / 24)
    # VALID without an ignore_label counts every element (the ignored ones now count too)
    t[t == -1] = 0
    summed = float(sigmoid_layer(None, 0.25, 2, "NONE")(x, t))
    assert float(sigmoid_layer(None, 0.25, 2, "VALID")(x, t)) == pytest.approx(summed / 24)


def test_the_labels_count_tells_the_forms_apart():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2))
    softmax = FocalLossLayer()
    softmax(x, np.array([0, 1, 1.0]))                     # one label per row: zimenglan's
    assert not softmax.sigmoid
    sigmoid = FocalLossLayer()
    sigmoid(x, np.array([[0, 1], [1, 0], [0, 0.0]]))      # one per score: sciencefans's
    assert sigmoid.sigmoid
    one_class = FocalLossLayer()                          # C == 1: the softmax form is 0
    assert float(one_class(x[:, :1], np.array([1, 0, 1.0]))) > 0 and one_class.sigmoid


def test_sigmoid_focal_loss_errors():
    x, t = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(LayerError, match="sigmoid form, which has no focal_loss_param.type"):
        FocalLossLayer(focal_loss_param={"type": "ORIGIN"})(x, t)
    with pytest.raises(LayerError, match="no focal_loss_param.beta"):
        FocalLossLayer(focal_loss_param={"beta": 2})(x, t)
    layer = FocalLossLayer()
    layer.param.top.extend(["loss", "prob"])
    with pytest.raises(LayerError, match="sigmoid form .* has one top, got 2"):
        layer(x, t)
    layer = FocalLossLayer()
    layer(x, t)
    bottom, top = layer._standalone
    bottom[1].reshape((2,))
    with pytest.raises(LayerError, match=r"targets \(shape \(2,\)\) must have as many values "
                                         r"as the scores \(shape \(2, 3\)\)"):
        layer.reshape(bottom, top)
    bottom[1].reshape((2, 3))
    with pytest.raises(LayerError, match="cannot backpropagate to labels"):
        layer.backward(top, [True, True], bottom)
    softmax = FocalLossLayer()
    softmax(x, np.zeros(2))
    bottom, top = softmax._standalone
    bottom[1].reshape((2, 3))
    with pytest.raises(LayerError, match="set up as the softmax form"):
        softmax.reshape(bottom, top)


# sciencefans/Focal-Loss's README layer, verbatim, on a small multi-label classifier
SIGMOID_FOCAL_NET = """
name: "sigmoid_focal"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 16 dim: 4 } } }
layer { name: "predicted" type: "InnerProduct" bottom: "data" top: "predicted"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer {
  name: "loss_focal"
  type: "FocalLoss"
  bottom: "predicted"
  bottom: "label"
  top: "loss_focal"
  loss_weight: 10
  loss_param{
    normalize: true
    normalization: FULL
  } 
}
"""


def test_sigmoid_focal_loss_net_trains():
    minicnn.set_random_seed(3)
    param = caffe_pb2.SolverParameter(net_param=parse_text(SIGMOID_FOCAL_NET), base_lr=0.05,
                                      lr_policy="fixed", momentum=0.9)
    solver = minicnn.get_solver(param, log=lambda message: None)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((16, 6))
    label = (data[:, :4] + 0.2 * rng.standard_normal((16, 4)) > 0).astype(np.float64)
    losses = []
    for _ in range(40):
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = label
        solver.step(1)
        losses.append(float(solver.net.blobs["loss_focal"].data))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
