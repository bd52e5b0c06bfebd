"""SoftmaxWithFocalLoss, Longqi-S/Focal-Loss's softmax focal loss (softmax_focal_loss_param).

References written here: the loss in PyTorch; the backward against a transliteration of the
fork's CPU loops (softmax_focal_loss_layer.cpp, its two "items"), and against torch autograd
and float64 finite differences where the fork's backward is the gradient (gamma 0 or 1, N x C
scores); a case worked out by hand."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers.focal_loss import SoftmaxWithFocalLossLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient

FLT_MIN = float(np.finfo(np.float32).tiny)


def fork_backward(prob, labels, alpha, gamma, ignore_label, normalizer):
    """The fork's Backward_cpu, loop for loop, on (outer, C, inner) probabilities."""
    outer, c, inner = prob.shape
    diff = prob.copy().reshape(-1)
    flat_p = prob.reshape(-1)
    dim = c * inner
    scale = np.zeros((outer, inner))
    oriloss = np.zeros((outer, inner))
    for i in range(outer):                                 # Forward_cpu's scale and oriloss
        for j in range(inner):
            lab = int(labels[i, j])
            if ignore_label is not None and lab == ignore_label:
                continue
            pt = max(flat_p[i * dim + lab * inner + j], FLT_MIN)
            scale[i, j] = alpha * (1 - pt) ** gamma
            oriloss[i, j] = -math.log(pt)
    for i in range(outer):                                 # first item: d(oriloss) * scale
        for j in range(inner):
            lab = int(labels[i, j])
            diff[i * dim + lab * inner + j] -= 1
            for k in range(c):
                diff[i * dim + k * inner + j] *= scale[i, j]
    second = np.zeros_like(diff)
    for i in range(outer):                                 # second item: oriloss * d(scale)
        for j in range(inner):
            lab = int(labels[i, j])
            pt = max(flat_p[i * dim + lab * inner + j], FLT_MIN)
            for k in range(c):
                if lab == k * inner + j:
                    v = -1 * alpha * gamma * (1 - pt) ** gamma * pt
                else:
                    pc = max(flat_p[i * dim + k * inner + j], FLT_MIN)
                    v = alpha * gamma * (1 - pc) ** (gamma - 1) * pt * pc
                second[i * dim + k * inner + j] = v * oriloss[i, j]
    diff += second
    for i in range(outer):
        for j in range(inner):
            if ignore_label is not None and int(labels[i, j]) == ignore_label:
                for k in range(c):
                    diff[i * dim + k * inner + j] = 0
    return diff.reshape(prob.shape) / normalizer


def torch_loss(x, labels, axis, alpha, gamma, ignore_label, d):
    xt = torch.from_numpy(x).requires_grad_(True)
    p = torch.movedim(torch.softmax(xt, dim=axis), axis, -1).reshape(-1, x.shape[axis])
    lab = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    valid = lab != ignore_label if ignore_label is not None else torch.ones_like(lab, dtype=bool)
    pt = torch.clamp(p[torch.arange(p.shape[0]), torch.where(valid, lab, 0)], min=FLT_MIN)
    loss = (alpha * (1 - pt) ** gamma * -torch.log(pt))[valid].sum() / d
    loss.backward()
    return float(loss.detach()), xt.grad.numpy()


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(5, 4), (3, 3, 2, 2), (2, 3, 4), (6, 2)]))
    x = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 3.0]))
    c = shape[1]
    lshape = (shape[0],) + shape[2:]
    labels = rng.integers(0, c, lshape).astype(np.float64)
    ignore = draw(st.sampled_from([None, 0, 1]))           # in [0, C): the fork's loops are safe
    norm = draw(st.sampled_from([None, "FULL", "VALID", "BATCH_SIZE", "NONE"]))
    return (x, labels, ignore, draw(st.sampled_from([0.25, 1.0])),
            draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])), norm)


def make(ignore, alpha, gamma, norm):
    loss_param = {} if ignore is None else {"ignore_label": ignore}
    if norm is not None:
        loss_param["normalization"] = norm
    return SoftmaxWithFocalLossLayer(softmax_focal_loss_param={"alpha": alpha, "gamma": gamma},
                                     loss_param=loss_param)


def normalizer(x, labels, ignore, norm):
    positions = labels.size
    valid = positions if ignore is None else int(np.sum(labels != ignore))
    return max(1, {"FULL": positions, "VALID": valid, "BATCH_SIZE": x.shape[0],
                   "NONE": 1}[norm or "VALID"])


@settings(max_examples=40, deadline=None)
@given(cases(), st.sampled_from([1.0, 0.5]))
def test_loss_matches_torch_and_backward_follows_the_fork(case, loss_weight):
    x, labels, ignore, alpha, gamma, norm = case
    layer = make(ignore, alpha, gamma, norm)
    layer.param.loss_weight.append(loss_weight)
    layer.param.top.extend(["loss", "prob"])
    loss, prob = layer(x, labels)
    dx, _ = layer.backprop()
    d = normalizer(x, labels, ignore, norm)
    want_loss, _ = torch_loss(x, labels, 1, alpha, gamma, ignore, d)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(prob, torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-13)
    outer, c = x.shape[:2]
    p3 = prob.reshape(outer, c, -1)
    want = fork_backward(p3, labels.reshape(outer, -1), alpha, gamma, ignore, d) * loss_weight
    np.testing.assert_allclose(dx, want.reshape(x.shape), rtol=1e-10, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(cases(), st.sampled_from([0.0, 1.0]))
def test_backward_is_the_gradient_for_gamma_0_and_1_on_n_by_c(case, gamma):
    x, labels, ignore, alpha, _, norm = case
    x, labels = x.reshape(x.shape[0], -1)[:, :3], labels.reshape(-1)[: x.shape[0]]
    labels = np.minimum(labels, 2)
    layer = make(ignore, alpha, gamma, norm)
    layer(x, labels)
    dx, _ = layer.backprop()
    _, want = torch_loss(x, labels, 1, alpha, gamma, ignore, normalizer(x, labels, ignore, norm))
    np.testing.assert_allclose(dx, want, rtol=1e-10, atol=1e-14)
    check_layer_gradient(lambda: make(ignore, alpha, gamma, norm), [x, labels],
                         check_bottoms=[0])


def test_the_forks_non_target_term_is_not_the_gradient_at_gamma_2():
    x, labels = np.array([[1.0, -0.5, 0.3]]), np.array([0.0])
    layer = make(None, 0.25, 2.0, None)
    layer(x, labels)
    dx, _ = layer.backprop()
    _, grad = torch_loss(x, labels, 1, 0.25, 2.0, None, 1)
    assert dx[0, 0] == pytest.approx(grad[0, 0], rel=1e-12)      # the target term is right
    assert not np.allclose(dx[0, 1:], grad[0, 1:], rtol=1e-3)      # (1 - p_c) for (1 - p_t)
    p = torch.softmax(torch.from_numpy(x), 1).numpy()[0]
    pt, ce = p[0], -math.log(p[0])
    want = 0.25 * (1 - pt) ** 2 * p[1] + ce * 0.25 * 2 * (1 - p[1]) * pt * p[1]
    assert dx[0, 1] == pytest.approx(want, rel=1e-12)


def test_spatial_scores_use_the_forks_target_test():
    # inner = 2: at j = 1 a label of 1 matches c * 2 + 1 for c = 0, so class 0 takes the target
    # formula and class 1 (the target) the other one
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 2))
    labels = np.array([[2.0, 1.0]])
    layer = make(None, 0.25, 2.0, None)
    _ = layer(x, labels)
    dx, _ = layer.backprop()
    p = torch.softmax(torch.from_numpy(x), 1).numpy()
    want = fork_backward(p, labels, 0.25, 2.0, None, 2)
    np.testing.assert_allclose(dx, want, rtol=1e-12)
    pt, ce = p[0, 1, 1], -math.log(p[0, 1, 1])
    assert dx[0, 0, 1] == pytest.approx(
        (0.25 * (1 - pt) ** 2 * p[0, 0, 1] - 0.25 * 2 * (1 - pt) ** 2 * pt * ce) / 2, rel=1e-12)


def test_by_hand():
    # two classes, equal scores: p_t = 1/2, loss = 0.25 * (1/2)^2 * log 2 (VALID, one position)
    layer = SoftmaxWithFocalLossLayer()
    assert float(layer(np.zeros((1, 2)), np.zeros(1))) == pytest.approx(
        0.25 * 0.25 * math.log(2), rel=1e-7)
    # target: 0.25/4 * (1/2 - 1) - 0.25 * 2 * (1/4) * (1/2) * log 2; other: 0.25/4 * 1/2 +
    # log 2 * 0.25 * 2 * (1/2) * (1/2) * (1/2)
    want = [-0.25 / 8 - 0.0625 * math.log(2), 0.25 / 8 + 0.0625 * math.log(2)]
    np.testing.assert_allclose(layer.backprop()[0], [want], rtol=1e-7)


def test_p_t_is_clamped_at_flt_min():
    # p_t = e^-1000 = 0 in float64: -log(max(p_t, FLT_MIN)) = 87.3..., as the fork
    layer = SoftmaxWithFocalLossLayer()
    loss = float(layer(np.array([[0.0, 1000.0]]), np.zeros(1)))
    assert loss == pytest.approx(0.25 * -math.log(FLT_MIN), rel=1e-12)
    dx, _ = layer.backprop()
    # the fork's backward with the clamped p_t: first item 0.25 (p - onehot), second item 0
    # (the target term has p_t, the other term p_t as a factor)
    np.testing.assert_allclose(dx, [[-0.25, 0.25]], rtol=1e-12, atol=1e-30)


def test_ignored_positions_outside_the_classes_are_left_out():
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((5, 3)), np.array([0, 255, 2, 1, 255.0])
    layer = make(255, 0.25, 2.0, None)
    loss = float(layer(x, labels))
    dx, _ = layer.backprop()
    keep = labels != 255
    kept = make(None, 0.25, 2.0, None)
    assert loss == pytest.approx(float(kept(x[keep], labels[keep])), rel=1e-13)
    np.testing.assert_allclose(dx[keep], kept.backprop()[0], rtol=1e-12)
    assert np.all(dx[~keep] == 0)


def test_defaults_and_errors():
    layer = SoftmaxWithFocalLossLayer()
    layer(np.zeros((2, 3)), np.zeros(2))
    assert (layer.alpha, layer.gamma, layer.normalization) == (0.25, 2.0, "VALID")
    with pytest.raises(LayerError, match="label 3"):
        SoftmaxWithFocalLossLayer()(np.zeros((2, 3)), np.array([0, 3.0]))
    with pytest.raises(LayerError, match="do not match the predictions"):
        SoftmaxWithFocalLossLayer()(np.zeros((2, 3, 2)), np.zeros(2))
    layer = SoftmaxWithFocalLossLayer()
    layer(np.zeros((2, 3)), np.zeros(2))
    bottom, top = layer._standalone
    with pytest.raises(LayerError, match="cannot backpropagate to labels"):
        layer.backward(top, [True, True], bottom)


# Longqi-S/Focal-Loss's README layer, verbatim, on a small classifier
NET = """
name: "softmax_focal"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 16 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer {
  name: "focal_loss"
  type: "SoftmaxWithFocalLoss"
  bottom: "ip2"
  bottom: "label"
  top: "focal_loss"
  softmax_focal_loss_param {
    alpha: 1 
    gamma: 1
  }
}
"""


def test_readme_net_trains():
    minicnn.set_random_seed(3)
    param = caffe_pb2.SolverParameter(net_param=parse_text(NET), base_lr=0.2,
                                      lr_policy="fixed", momentum=0.9)
    solver = minicnn.get_solver(param, log=lambda message: None)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 16)
    data = rng.standard_normal((3, 6))[labels] * 2 + 0.3 * rng.standard_normal((16, 6))
    losses = []
    for _ in range(30):
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = labels
        solver.step(1)
        losses.append(float(solver.net.blobs["focal_loss"].data))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0], losses
