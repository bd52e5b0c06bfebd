"""Caffe's remaining loss layers: MultinomialLogisticLoss, InfogainLoss, HingeLoss and
ContrastiveLoss, through the Layer protocol and in Nets.

Forward against naive loops written from Caffe's formulas (and PyTorch float64 where it has the
same loss: nll_loss on log-probabilities, cross_entropy for InfogainLoss with H = I, autograd
for InfogainLoss's gradient); backward against float64 finite differences over
hypothesis-drawn shapes, labels (ignore_label included), margins and loss weights (the
objective weighs the loss top by a random number, which is how a loss_weight reaches
backward); prototxt nets, V1 names, float32 and errors.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import cuda, ops
from minicnn.blob import Blob, array_to_blob_proto
from minicnn.errors import LayerError
from minicnn.layers import (
    ContrastiveLossLayer,
    HingeLossLayer,
    InfogainLossLayer,
    MultinomialLogisticLossLayer,
    SoftmaxWithLossLayer,
)
from minicnn.ops.contrastive_loss import contrastive_loss_backward, contrastive_loss_forward
from minicnn.proto import parse_text, write_binary
from minicnn.testing import check_layer_gradient, numerical_grad
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

seeds = st.integers(0, 2**32 - 1)
MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]
small = settings(max_examples=12, deadline=None)


def rng_of(seed):
    return np.random.default_rng(seed)


# --- naive references (loops over Caffe's formulas, float64) ------------------------------------

def naive_multinomial(p, labels):
    n = p.shape[0]
    rows = p.reshape(n, -1)
    return -sum(math.log(max(rows[i, int(labels[i])], 1e-20)) for i in range(n)) / n


def naive_softmax(column):
    top = max(column)
    e = [math.exp(v - top) for v in column]
    return [v / sum(e) for v in e]


def naive_infogain(x, labels, h, axis, ignore, mode):
    """loss = -sum_{valid} sum_l H[label, l] log(max(p_l, 1e-20)) / D, one position at a time."""
    x = np.moveaxis(x, axis, -1)                 # positions first, classes last
    c = x.shape[-1]
    flat, lab = x.reshape(-1, c), np.asarray(labels).reshape(-1)
    total, valid = 0.0, 0
    for pos in range(flat.shape[0]):
        label = int(lab[pos])
        if ignore is not None and label == ignore:
            continue
        p = naive_softmax(flat[pos])
        total -= sum(h[label][l] * math.log(max(p[l], 1e-20)) for l in range(c))
        valid += 1
    outer = int(np.prod(x.shape[:axis]))
    d = {"FULL": flat.shape[0], "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return total / max(1, d)


def naive_hinge(x, labels, norm):
    n = x.shape[0]
    rows = x.reshape(n, -1)
    total = 0.0
    for i in range(n):
        for j in range(rows.shape[1]):
            t = -1.0 if j == int(labels[i]) else 1.0
            h = max(0.0, 1.0 + t * rows[i, j])
            total += h if norm == "L1" else h * h
    return total / n


def naive_contrastive(a, b, y, margin, legacy):
    """Caffe's forward and its backward for a, pair by pair: (loss, da)."""
    n = a.shape[0]
    a, b = a.reshape(n, -1), b.reshape(n, -1)
    total, da = 0.0, np.zeros_like(a)
    for i in range(n):
        diff = [a[i, k] - b[i, k] for k in range(a.shape[1])]
        dist_sq = sum(v * v for v in diff)
        dist = math.sqrt(dist_sq)
        if int(y[i]) != 0:
            total += dist_sq
            da[i] = [v / n for v in diff]
        elif legacy:
            total += max(margin - dist_sq, 0.0)
            if margin - dist_sq > 0:
                da[i] = [-v / n for v in diff]
        else:
            total += max(margin - dist, 0.0) ** 2
            if margin - dist > 0:
                da[i] = [-(margin - dist) / (dist + 1e-4) * v / n for v in diff]
    return total / n / 2, da


# --- MultinomialLogisticLoss -------------------------------------------------------------------

@st.composite
def probabilities(draw, clamp_free=True):
    n, c, seed = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(seeds)
    rng = rng_of(seed)
    p = rng.uniform(0.05, 1.0, (n, c))                  # away from the 1e-20 clamp
    p /= p.sum(1, keepdims=True)
    if draw(st.booleans()):
        p = p.reshape(n, c, 1, 1)
    return p, rng.integers(0, c, n).astype(np.float64)


@small
@given(probabilities())
def test_multinomial_forward_matches_loops_and_torch(case):
    p, labels = case
    got = MultinomialLogisticLossLayer()(p, labels)
    assert got.shape == () and got.dtype == np.float64
    np.testing.assert_allclose(got, naive_multinomial(p, labels), rtol=1e-13)
    want = torch.nn.functional.nll_loss(torch.log(torch.tensor(p.reshape(p.shape[0], -1))),
                                        torch.tensor(labels, dtype=torch.long))
    np.testing.assert_allclose(got, want.item(), rtol=1e-13)


@small
@given(probabilities())
def test_multinomial_gradient(case):
    p, labels = case
    check_layer_gradient(MultinomialLogisticLossLayer, [p, labels])


def test_multinomial_clamps_zero_probabilities_at_1e_minus_20():
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    layer = MultinomialLogisticLossLayer()
    np.testing.assert_allclose(layer(p, np.array([0.0, 1.0])),
                               (-math.log(1e-20) - math.log(0.5)) / 2, rtol=1e-14)
    dp = layer.backprop()[0]
    np.testing.assert_allclose(dp, [[-0.5 / 1e-20, 0.0], [0.0, -0.5 / 0.5]], rtol=1e-14)



def test_multinomial_loss_of_certain_predictions_is_plus_zero():
    # Caffe's loss -= log(p) from 0: a loss of 0, never -0 (which logs print as "-0")
    loss = MultinomialLogisticLossLayer()(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
                                         np.array([0.0, 1.0]))
    assert loss == 0 and not np.signbit(loss)

# --- InfogainLoss ------------------------------------------------------------------------------

@st.composite
def infogain_cases(draw):
    """(scores, labels, H, axis, ignore_label or None, normalization)."""
    seed = draw(seeds)
    rng = rng_of(seed)
    c = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 3)), c] + [draw(st.integers(1, 3))
                                            for _ in range(draw(st.integers(0, 1)))]
    axis = 1
    if draw(st.booleans()) and len(shape) == 3:       # classes on the last axis
        shape, axis = [shape[0], shape[2], c], draw(st.sampled_from([2, -1]))
    x = rng.standard_normal(shape) * 2
    positions = [d for i, d in enumerate(shape) if i != axis % len(shape)]
    labels = rng.integers(0, c, positions).astype(np.float64)
    ignore = draw(st.sampled_from([None, 0, -1, 255]))
    if ignore is not None:
        labels.reshape(-1)[rng.random(labels.size) < 0.3] = ignore
    h = rng.uniform(0, 2, (c, c))                       # not symmetric, rows not summing to 1
    return x, labels, h, axis, ignore, draw(st.sampled_from(MODES))


def infogain_layer(axis=1, ignore=None, mode=None, **fields):
    layer = InfogainLossLayer(axis=axis, **fields)
    if ignore is not None:
        layer.param.loss_param.ignore_label = ignore
    if mode is not None:
        layer.param.loss_param.normalization = mode
    return layer


def torch_infogain(x, labels, h, axis, ignore, mode):
    """The loss in PyTorch float64 (log_softmax, clamp as Caffe's) and d(loss)/dx by autograd."""
    xt = torch.tensor(x, requires_grad=True)
    p = torch.softmax(xt, dim=axis).clamp_min(1e-20)
    logp = torch.movedim(torch.log(p), axis, -1).reshape(-1, h.shape[0])
    lab = torch.tensor(labels.reshape(-1), dtype=torch.long)
    valid = torch.ones_like(lab, dtype=torch.bool) if ignore is None else lab != ignore
    rows = torch.tensor(h)[torch.where(valid, lab, 0)]
    total = -(rows * logp).sum(1)[valid].sum()
    axis = axis % x.ndim
    d = {"FULL": lab.numel(), "VALID": int(valid.sum()), "BATCH_SIZE": int(np.prod(x.shape[:axis])),
         "NONE": 1}[mode]
    loss = total / max(1, d)
    loss.backward()
    return loss.item(), xt.grad.numpy()


@small
@given(infogain_cases())
def test_infogain_forward_matches_loops_and_torch_and_backward_matches_autograd(case):
    x, labels, h, axis, ignore, mode = case
    layer = infogain_layer(axis, ignore, mode, top=["loss", "prob"])
    loss, prob = layer(x, labels, h)
    want = naive_infogain(x, labels, h, axis, ignore, mode)
    np.testing.assert_allclose(loss, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(prob.sum(axis), 1.0, rtol=1e-12)
    torch_loss, torch_dx = torch_infogain(x, labels, h, axis, ignore, mode)
    np.testing.assert_allclose(loss, torch_loss, rtol=1e-12, atol=1e-14)
    dx = layer.backprop(1.0, np.zeros_like(prob))[0]
    np.testing.assert_allclose(dx, torch_dx, rtol=1e-10, atol=1e-13)


@small
@given(infogain_cases())
def test_infogain_gradient(case):
    x, labels, h, axis, ignore, mode = case
    check_layer_gradient(lambda: infogain_layer(axis, ignore, mode), [x, labels, h],
                         check_bottoms=[0])


def test_infogain_with_identity_is_softmax_loss_and_torch_cross_entropy():
    rng = rng_of(5)
    x, labels = rng.standard_normal((6, 4)), np.array([0, 3, 255, 1, 1, 255.0])
    loss = infogain_layer(ignore=255)(x, labels, np.eye(4))
    np.testing.assert_allclose(loss, SoftmaxWithLossLayer(ignore_label=255)(x, labels),
                               rtol=1e-14)
    want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(labels).long(),
                                             ignore_index=255)   # mean over valid = VALID
    np.testing.assert_allclose(loss, want.item(), rtol=1e-13)


def test_infogain_clamp_is_1e_minus_20_and_ignored_positions_get_no_gradient():
    x = np.array([[0.0, 800.0], [1.0, 2.0]])        # p[0, 0] = exp(-800) = 0 in float64
    h = np.array([[1.0, 0.5], [0.25, 2.0]])
    layer = infogain_layer(ignore=1)
    loss = layer(x, np.array([0.0, 1.0]), h)
    np.testing.assert_allclose(loss, -(1.0 * math.log(1e-20) + 0.5 * 0.0), rtol=1e-14)
    dx = layer.backprop()[0]
    np.testing.assert_allclose(dx, [[-1.0, 1.0], [0.0, 0.0]], atol=1e-300)   # p*1.5 - H[0]


@pytest.mark.parametrize("ignore", [None, 0])
def test_infogain_loss_of_certain_or_ignored_predictions_is_plus_zero(ignore):
    x = np.array([[0.0, 200.0]], np.float32)          # p = (0, 1): log p[1] = 0
    loss = infogain_layer(ignore=ignore)(x, np.array([1.0 if ignore is None else 0.0]),
                                         np.eye(2, dtype=np.float32))
    assert loss == 0 and not np.signbit(loss)


def infogain_file(tmp_path, h, name="H.binaryproto"):
    path = tmp_path / name
    write_binary(array_to_blob_proto(np.asarray(h, np.float32).reshape(1, 1, *h.shape)), path)
    return path


def test_infogain_reads_source_once_and_matches_a_third_bottom(tmp_path):
    rng = rng_of(2)
    x, labels, h = rng.standard_normal((3, 3)), np.array([2.0, 0.0, 1.0]), rng.random((3, 3))
    path = infogain_file(tmp_path, h)
    from_file = InfogainLossLayer(source=str(path))
    loss = from_file(x, labels)
    path.unlink()                                       # read at setup, not at each forward
    np.testing.assert_allclose(from_file(x, labels), loss)
    bottom3 = InfogainLossLayer()(x, labels, h.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(loss, bottom3, rtol=1e-15)


# --- HingeLoss ---------------------------------------------------------------------------------

@st.composite
def hinge_cases(draw):
    n, c, seed = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(seeds)
    rng = rng_of(seed)
    x = rng.standard_normal((n, c)) * 1.5
    near = np.abs(np.abs(x) - 1) < 0.02                 # the hinges' kinks are at x = +-1
    x[near] += 0.05
    if draw(st.booleans()):
        x = x.reshape(n, c, 1, 1)
    return x, rng.integers(0, c, n).astype(np.float64), draw(st.sampled_from(["L1", "L2"]))


@small
@given(hinge_cases())
def test_hinge_forward_matches_loops(case):
    x, labels, norm = case
    got = HingeLossLayer(norm=norm)(x, labels)
    np.testing.assert_allclose(got, naive_hinge(x, labels, norm), rtol=1e-13)


@small
@given(hinge_cases())
def test_hinge_gradient(case):
    x, labels, norm = case
    check_layer_gradient(lambda: HingeLossLayer(norm=norm), [x, labels])


def test_hinge_values_by_hand():
    x = np.array([[0.5, -2.0, 0.25]])                   # label 0: hinges 0.5, 0, 1.25
    layer = HingeLossLayer()
    assert layer(x, np.array([0.0])) == pytest.approx(1.75)
    np.testing.assert_array_equal(layer.backprop()[0], [[-1.0, 0.0, 1.0]])
    layer = HingeLossLayer(norm="L2")
    assert layer(x, np.array([0.0])) == pytest.approx(0.25 + 1.5625)
    np.testing.assert_array_equal(layer.backprop()[0], [[-1.0, 0.0, 2.5]])


# --- ContrastiveLoss ---------------------------------------------------------------------------

@st.composite
def pairs(draw, legacy=None):
    n, c, seed = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(seeds)
    rng = rng_of(seed)
    a, b = rng.standard_normal((n, c)), rng.standard_normal((n, c))
    y = rng.choice([0.0, 1.0, 0.7, -0.7, 2.0, -1.0], n)   # +-0.7 are dissimilar, 2, -1 similar
    margin = draw(st.sampled_from([1.0, 0.5, 2.0, 4.0]))
    legacy = draw(st.booleans()) if legacy is None else legacy
    if legacy:                                            # legacy kink at d^2 = margin
        d2 = np.sum((a - b) ** 2, 1)
        a[np.abs(d2 - margin) < 0.05] *= 1.2
    if draw(st.booleans()):
        a, b = a.reshape(n, c, 1, 1), b.reshape(n, c, 1, 1)
    return a, b, y, margin, legacy


@small
@given(pairs())
def test_contrastive_forward_and_caffe_gradient_match_loops(case):
    a, b, y, margin, legacy = case
    layer = ContrastiveLossLayer(margin=margin, legacy_version=legacy)
    loss = layer(a, b, y)
    want_loss, want_da = naive_contrastive(a, b, y, margin, legacy)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13, atol=1e-15)
    da, db, dy = layer.backprop()
    np.testing.assert_allclose(da.reshape(want_da.shape), want_da, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(db, -da)
    assert dy is None


@small
@given(pairs(legacy=True))
def test_contrastive_legacy_gradient(case):
    a, b, y, margin, _ = case
    check_layer_gradient(lambda: ContrastiveLossLayer(margin=margin, legacy_version=True),
                         [a, b, y], check_bottoms=[0, 1])


@small
@given(pairs(legacy=False))
def test_contrastive_gradient_is_exact_but_for_caffes_1e_minus_4(case):
    """Caffe divides the dissimilar gradient by d + 1e-4: rescaled by (d + 1e-4) / d it is the
    derivative of the loss; similar pairs' gradient is exact as it is."""
    a, b, y, margin, _ = case
    n = a.shape[0]
    a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
    kw = dict(margin=margin, legacy_version=False)
    _, diff, dist_sq = contrastive_loss_forward.impls["ref"](a2, b2, y, **kw)
    da = contrastive_loss_backward.impls["ref"](diff, dist_sq, y, loss_weight=0.7, **kw)
    dist = np.sqrt(dist_sq)
    similar = np.trunc(y) != 0
    rescale = np.where(similar, 1.0, (dist + 1e-4) / dist)[:, None]
    numeric = numerical_grad(
        lambda: 0.7 * float(contrastive_loss_forward.impls["ref"](a2, b2, y, **kw)[0]), a2)
    np.testing.assert_allclose(da * rescale, numeric, rtol=1e-6, atol=1e-8)
    off = ~similar & (dist < margin)
    if off.any():                                       # and Caffe's value is not the exact one
        assert not np.allclose(da[off], numeric[off], rtol=1e-7, atol=0)


def test_contrastive_similarity_is_truncated_and_gets_a_zero_diff():
    a, b = np.zeros((3, 1)), np.ones((3, 1))
    layer = ContrastiveLossLayer(margin=4.0)
    bottom = [Blob.from_array(v) for v in (a, b, np.array([0.9, 1.9, -0.9]))]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert top[0].data == pytest.approx((9 + 1 + 9) / 6)    # only 1.9 is similar
    assert not layer.allow_force_backward(2)
    bottom[2].diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [True, True, True], bottom)     # asked anyway: a step function's 0
    np.testing.assert_array_equal(bottom[2].diff, 0)


def test_contrastive_identical_dissimilar_features_give_zero_gradient():
    a = np.array([[1.0, 2.0], [0.0, 1.0]])
    layer = ContrastiveLossLayer()
    loss = layer(a, a.copy(), np.array([0.0, 1.0]))
    assert loss == pytest.approx(1 / 4)                 # (margin - 0)^2 / (2 N)
    da, db, _ = layer.backprop()
    np.testing.assert_array_equal(da, 0)
    np.testing.assert_array_equal(db, 0)


# --- float32 -----------------------------------------------------------------------------------

def float32_cases():
    rng = rng_of(9)
    p = rng.uniform(0.1, 1, (4, 3))
    labels = np.array([0.0, 2.0, 1.0, 2.0])
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    return [
        (MultinomialLogisticLossLayer, {}, [p / p.sum(1, keepdims=True), labels]),
        (InfogainLossLayer, {}, [rng.standard_normal((4, 3)), labels, rng.random((3, 3))]),
        (HingeLossLayer, {"norm": "L2"}, [rng.standard_normal((4, 3)), labels]),
        (ContrastiveLossLayer, {"margin": 3.0}, [a, b, np.array([1.0, 0.0, 0.0, 1.0])]),
    ]


@pytest.mark.parametrize("cls, fields, inputs", float32_cases(),
                         ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_float32_follows_float64(cls, fields, inputs):
    results = {}
    for dtype in (np.float32, np.float64):
        layer = cls(**fields)
        loss = layer(*[np.asarray(v, dtype) for v in inputs])
        diffs = layer.backprop()
        results[dtype] = (loss, diffs[0])
        assert loss.dtype == dtype and diffs[0].dtype == dtype
    np.testing.assert_allclose(results[np.float32][0], results[np.float64][0], rtol=1e-5)
    np.testing.assert_allclose(results[np.float32][1], results[np.float64][1], rtol=1e-5,
                               atol=1e-6)


def test_ops_keep_float32():
    rng = rng_of(3)
    x, a, b = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3))
    p = np.full((3, 4), 0.25, np.float32)
    labels, h = np.array([0.0, 3.0, 1.0]), rng.random((4, 4)).astype(np.float32)
    w = np.float32(0.5)
    results = [ops.multinomial_logistic_loss_forward(p, labels),
               ops.multinomial_logistic_loss_backward(p, labels, loss_weight=w)]
    loss, prob = ops.infogain_loss_forward(x, labels, h)
    results += [loss, prob, ops.infogain_loss_backward(prob, labels, h, loss_weight=w)]
    for norm in ("L1", "L2"):
        loss, hinges = ops.hinge_loss_forward(x, labels, norm=norm)
        results += [loss, hinges, ops.hinge_loss_backward(hinges, labels, norm=norm,
                                                          loss_weight=w)]
    for legacy in (False, True):
        loss, diff, dist_sq = ops.contrastive_loss_forward(a, b, labels, legacy_version=legacy)
        results += [loss, diff, dist_sq, ops.contrastive_loss_backward(
            diff, dist_sq, labels, legacy_version=legacy, loss_weight=w)]
    assert [r.dtype for r in results] == [np.float32] * len(results)


# --- nets --------------------------------------------------------------------------------------

NET = """name: "losses"
force_backward: true
input: "x" input_shape { dim: 4 dim: 3 }
input: "label" input_shape { dim: 4 }
input: "a" input_shape { dim: 4 dim: 2 dim: 1 dim: 1 }
input: "b" input_shape { dim: 4 dim: 2 dim: 1 dim: 1 }
input: "sim" input_shape { dim: 4 }
layer { name: "prob" type: "Softmax" bottom: "x" top: "prob" }
layer { name: "mll" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "mll"
        loss_weight: %(w)s }
layer { name: "infogain" type: "InfogainLoss" bottom: "x" bottom: "label" top: "infogain"
        top: "infogain_prob" loss_weight: %(w)s loss_weight: 0
        infogain_loss_param { source: "H.binaryproto" }
        loss_param { ignore_label: 1 normalization: BATCH_SIZE } }
layer { name: "hinge" type: "HingeLoss" bottom: "x" bottom: "label" top: "hinge"
        loss_weight: %(w)s hinge_loss_param { norm: L2 } }
layer { name: "contrastive" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim"
        top: "contrastive" loss_weight: %(w)s
        contrastive_loss_param { margin: 2 legacy_version: true } }
"""


def net_inputs():
    rng = rng_of(4)
    return dict(x=rng.standard_normal((4, 3)), label=np.array([0.0, 2.0, 1.0, 2.0]),
                a=rng.standard_normal((4, 2, 1, 1)), b=rng.standard_normal((4, 2, 1, 1)),
                sim=np.array([1.0, 0.0, 0.0, 1.0]))


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_every_loss_in_a_prototxt_net_with_loss_weight(tmp_path, monkeypatch, weight):
    h = rng_of(1).random((3, 3))
    infogain_file(tmp_path, h)
    (tmp_path / "net.prototxt").write_text(NET % {"w": weight})
    monkeypatch.chdir(tmp_path.parent)          # H.binaryproto is found by the prototxt's folder
    net = minicnn.Net(str(tmp_path / "net.prototxt"), phase=minicnn.TRAIN, dtype=np.float64)
    inputs = net_inputs()
    out = net.forward(**inputs)
    x, labels = inputs["x"], inputs["label"]
    prob = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    h32 = h.astype(np.float32).astype(np.float64)
    valid = labels != 1
    want = {"mll": naive_multinomial(prob, labels),
            "infogain": naive_infogain(x, labels, h32, 1, 1, "BATCH_SIZE"),
            "hinge": naive_hinge(x, labels, "L2"),
            "contrastive": naive_contrastive(inputs["a"], inputs["b"], inputs["sim"], 2.0,
                                             True)[0]}
    for name, value in want.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(out["infogain_prob"], prob, rtol=1e-12)
    assert valid.sum() == 3 and net.forward_from_to() == pytest.approx(
        weight * sum(want.values()), rel=1e-12)
    diffs = net.backward()
    assert not diffs["label"].any() and not diffs["sim"].any()
    for name in ("x", "a", "b"):                 # the whole net's gradient, loss weights in it
        blob = net.blobs[name]
        numeric = numerical_grad(lambda: net.forward_from_to(), blob.data)
        np.testing.assert_allclose(diffs[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_a_gpu_net_runs_the_losses_on_the_device(gpu, tmp_path):
    """A GPU net keeps the four layers on the device (the infogain matrix read from its file),
    with the same losses and input diffs as the CPU net (float32);
    tests/gpu/test_new_ops_cuda.py checks the ops."""
    infogain_file(tmp_path, rng_of(1).random((3, 3)))
    (tmp_path / "net.prototxt").write_text(NET % {"w": 1.5})
    inputs = {k: v.astype(np.float32) for k, v in net_inputs().items()}
    nets = [minicnn.Net(str(tmp_path / "net.prototxt"), phase=minicnn.TRAIN, device=device)
            for device in (None, 0)]
    assert nets[1]._mirrors == {}
    for net in nets:
        net.forward(**inputs)
        net.backward()
    infogain_layer = nets[1].layers[list(nets[1].layer_names).index("infogain")]
    assert cuda.is_device_array(infogain_layer.infogain)       # copied once, kept there
    for name in ("mll", "infogain", "infogain_prob", "hinge", "contrastive"):
        np.testing.assert_allclose(cuda.to_host(nets[1].blobs[name].data),
                                   nets[0].blobs[name].data, rtol=1e-5, err_msg=name)
    for name in ("x", "a", "b"):
        np.testing.assert_allclose(cuda.to_host(nets[1].blobs[name].diff),
                                   nets[0].blobs[name].diff, rtol=1e-5, atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("v1_type, field, new_type", [
    ("MULTINOMIAL_LOGISTIC_LOSS", "", "MultinomialLogisticLoss"),
    ("HINGE_LOSS", "hinge_loss_param { norm: L2 }", "HingeLoss"),
    ("INFOGAIN_LOSS", "infogain_loss_param { axis: 1 }", "InfogainLoss"),
])
def test_v1_layer_names_load(v1_type, field, new_type):
    text = f"""input: "x" input_dim: 2 input_dim: 3 input_dim: 1 input_dim: 1
input: "label" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
input: "h" input_dim: 1 input_dim: 1 input_dim: 3 input_dim: 3
layers {{ name: "loss" type: {v1_type} bottom: "x" bottom: "label"
          {'bottom: "h"' if new_type == 'InfogainLoss' else ''} top: "loss" {field} }}"""
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    assert net.layers[-1].type == new_type
    x = np.full((2, 3, 1, 1), 0.25)
    out = net.forward(x=x, label=np.zeros((2, 1, 1, 1)), h=np.eye(3).reshape(1, 1, 3, 3))
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    if new_type == "HingeLoss":
        assert out["loss"] == pytest.approx(0.75 ** 2 + 2 * 1.25 ** 2)


def test_contrastive_v1_with_its_parameters():
    text = """input: "a" input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 1
input: "b" input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 1
input: "y" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1
layers { name: "loss" type: CONTRASTIVE_LOSS bottom: "a" bottom: "b" bottom: "y" top: "loss"
         contrastive_loss_param { margin: 3 } }"""
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    out = net.forward(a=np.zeros((1, 2, 1, 1)), b=np.ones((1, 2, 1, 1)), y=np.zeros((1, 1, 1, 1)))
    assert out["loss"] == pytest.approx((3 - math.sqrt(2)) ** 2 / 2)


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [MultinomialLogisticLossLayer, HingeLossLayer])
@pytest.mark.parametrize("bad, shown", [(3, "3"), (-1, "-1"), (1.5, "1.5"), (np.nan, "nan")])
def test_labels_must_be_classes(cls, bad, shown):
    with pytest.raises(LayerError, match=rf"label {shown} at index \(1,\).*integers in \[0, 3\)"):
        cls()(np.full((2, 3), 0.3), np.array([0.0, bad]))


def test_bad_label_in_a_net_names_the_layer_index_and_value():
    text = """input: "p" input_shape { dim: 2 dim: 3 }
input: "label" input_shape { dim: 2 }
layer { name: "nll" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "l" }"""
    net = minicnn.Net(parse_text(text))
    with pytest.raises(minicnn.NetError, match=r"layer 'nll'.*label 7 at index \(1,\)"):
        net.forward(p=np.full((2, 3), 0.3), label=np.array([0.0, 7.0]))


@pytest.mark.parametrize("cls", [MultinomialLogisticLossLayer, HingeLossLayer])
def test_one_label_per_item(cls):
    with pytest.raises(LayerError, match=r"labels \(shape \(2, 2\)\).*\(2, 3\).*N = 2"):
        cls()(np.full((2, 3), 0.3), np.zeros((2, 2)))
    with pytest.raises(LayerError, match=r"labels \(shape \(3,\)\)"):
        cls()(np.full((2, 3), 0.3), np.zeros(3))


@pytest.mark.parametrize("make, inputs", [
    (MultinomialLogisticLossLayer, [np.full((2, 3), 0.3), np.zeros(2)]),
    (HingeLossLayer, [np.zeros((2, 3)), np.zeros(2)]),
    (InfogainLossLayer, [np.zeros((2, 3)), np.zeros(2), np.eye(3)]),
])
def test_labels_get_no_gradient(make, inputs):
    layer = make()
    bottom = [Blob.from_array(v) for v in inputs]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match=r"cannot backpropagate to labels \(bottom 1\)"):
        layer.backward(top, [True, True] + [False] * (len(inputs) - 2), bottom)
    if len(inputs) > 2:
        with pytest.raises(LayerError, match=r"cannot backpropagate to the infogain matrix"):
            layer.backward(top, [True, False, True], bottom)


def test_infogain_errors(tmp_path):
    x, labels = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(LayerError, match="infogain_loss_param.source must name"):
        InfogainLossLayer()(x, labels)
    with pytest.raises(LayerError, match=r"infogain_loss_param.source.*nowhere.binaryproto"):
        InfogainLossLayer(source=str(tmp_path / "nowhere.binaryproto"))(x, labels)
    (tmp_path / "junk.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(LayerError, match=r"cannot read the infogain matrix"):
        InfogainLossLayer(source=str(tmp_path / "junk.binaryproto"))(x, labels)
    path = infogain_file(tmp_path, np.eye(2))
    with pytest.raises(LayerError, match=r"H \(infogain_loss_param.source .*shape \(1, 1, 2, 2\)"
                                         r"\) must hold 3 x 3 = 9 values.*\(2, 3\)"):
        InfogainLossLayer(source=str(path))(x, labels)
    with pytest.raises(LayerError, match=r"H \(bottom 2, shape \(4,\)\) must hold 3 x 3"):
        InfogainLossLayer()(x, labels, np.zeros(4))
    with pytest.raises(LayerError, match="normalize is deprecated"):
        InfogainLossLayer(loss_param={"normalize": True})(x, labels, np.eye(3))
    with pytest.raises(LayerError, match="infogain_loss_param.axis 2 is out of range"):
        InfogainLossLayer(axis=2)(x, labels, np.eye(3))
    with pytest.raises(LayerError, match=r"6 labels.*2 x 1 = 2"):
        InfogainLossLayer()(x, np.zeros((2, 3)), np.eye(3))
    with pytest.raises(LayerError, match=r"label 3 at index \(0,\).*or the ignore_label 5"):
        InfogainLossLayer(loss_param={"ignore_label": 5})(x, np.array([3.0, 5.0]), np.eye(3))


def test_contrastive_errors():
    a = np.zeros((2, 3))
    with pytest.raises(LayerError, match=r"same N x C: bottom 0 has shape \(2, 3\), "
                                         r"bottom 1 \(2, 4\)"):
        ContrastiveLossLayer()(a, np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(LayerError, match=r"bottom 1 \(shape \(2, 3, 2\)\) must hold features"):
        ContrastiveLossLayer()(a, np.zeros((2, 3, 2)), np.zeros(2))
    with pytest.raises(LayerError, match=r"similarities \(bottom 2\) \(shape \(3,\)\)"):
        ContrastiveLossLayer()(a, a, np.zeros(3))
