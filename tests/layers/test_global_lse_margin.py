"""happynear's GlobalLSEMargin, softmax_param.normalize_type, accuracy_param.min_is_better, and
AM-Softmax's prototxt/auto/face_train_test_auto.prototxt (the net that uses them).

References written here: a transliteration of the fork's forward (global_lse_margin_layer.cu:
its per-item loops and MeanShift, an iteration cap standing in for its endless loop); the LSE by
torch.logsumexp; the backward by torch autograd (the margin held constant, as the fork) and
float64 finite differences; MeanShift and Accuracy cases worked out by hand."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import ops
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers.face import GlobalLSEMarginLayer
from minicnn.layers.loss import AccuracyLayer, SoftmaxWithLossLayer
from minicnn.layers.normalization import ScaleLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import numerical_grad
from tests.layers.test_face_normalize import am_softmax_net

# --- the fork, transliterated ---------------------------------------------------------------------

def fork_mean_shift(margins, mu, loop, cap=1000):
    """The fork's MeanShift; where it would loop forever (cap passes), the mean it restarts
    at, minicnn's documented stand-in, flagged by ENDLESS."""
    global ENDLESS
    last_mu = mu
    while loop:
        loop -= 1
        cap -= 1
        if cap == 0:
            ENDLESS = True
            return mu
        close = [m for m in margins if abs(m - mu) < 0.1]
        if not close:
            mu = sum(margins) / len(margins)
            last_mu = mu
            loop += 1
            continue
        mu = sum(close) / len(close)
        if abs(last_mu - mu) < 0.001:
            break
        last_mu = mu
    return mu


def fork_forward(x, labels, scale, margin, norm=None, min_scale=0.0, max_scale=3.4e38):
    """One Forward_gpu: returns (top, statistics, scale, margin) with the blobs' new values."""
    n, c = x.shape
    scale = min(max(scale, min_scale), max_scale)
    target, lse, maxneg, margins = [], [], [], []
    for i in range(n):
        gt = int(labels[i])
        target.append(x[i, gt])
        m = -1.0
        for j in range(c):
            if j != gt and x[i, j] > m:
                m = x[i, j]
        maxneg.append(m)
        s = norm[i] if norm is not None else scale
        total = sum(math.exp(s * (x[i, j] - m)) for j in range(c) if j != gt)
        lse.append(math.log(total) / s + m)
        margins.append(target[i] - lse[i])
    if margin == 0:
        batch = fork_mean_shift(margins, sum(margins) / n, 20)
        if not math.isnan(batch):
            margin = batch
    else:
        batch = fork_mean_shift(margins, margin, 1)
        if not math.isnan(batch):
            margin = 0.9 * margin + 0.1 * batch
    top = x.copy()
    for i in range(n):
        if margin > 0:
            top[i, int(labels[i])] = x[i, int(labels[i])] - margin
        top[i] *= norm[i] if norm is not None else scale
    stats = [np.mean(norm) if norm is not None else scale, np.mean(target), np.mean(lse),
             np.mean(maxneg), margin]
    return top, np.array(stats), scale, margin


ENDLESS = False


@st.composite
def lse_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c = draw(st.sampled_from([(6, 5), (8, 3), (4, 7), (10, 2)]))
    spread = draw(st.sampled_from([0.3, 1.0]))
    x = np.tanh(rng.standard_normal((n, c)) * spread)    # cosines
    labels = rng.integers(0, c, n)
    x[np.arange(n), labels] += draw(st.sampled_from([0.0, 0.5]))    # a trained net's targets
    x = np.clip(x, -1, 1)
    norm = rng.uniform(5, 40, n) if draw(st.booleans()) else None
    scale = draw(st.sampled_from([None, 10.0, 64.0]))
    clamp = draw(st.sampled_from([(None, None), (40.0, None), (None, 20.0)]))
    return x, labels.astype(np.float64), norm, scale, clamp


def lse_layer(norm, scale, clamp, two_tops=True):
    p = {}
    if scale is not None:
        p["filler"] = {"type": "constant", "value": scale}
    if clamp[0] is not None:
        p["min_value"] = clamp[0]
    if clamp[1] is not None:
        p["max_value"] = clamp[1]
    layer = GlobalLSEMarginLayer(scale_param=p)
    layer.param.top.extend(["y", "statistics"] if two_tops else ["y"])
    return layer


@settings(max_examples=40, deadline=None)
@given(lse_cases())
def test_forward_follows_the_fork_over_several_batches(case):
    x, labels, norm, scale, clamp = case
    layer = lse_layer(norm, scale, clamp)
    bottoms = (x, labels) if norm is None else (x, labels, norm)
    s, m = 30.0 if scale is None else scale, 0.0
    lo, hi = clamp[0] or 0.0, clamp[1] or 3.4e38
    rng = np.random.default_rng(0)
    for step in range(4):                                 # the first sets m, the rest average
        xs = np.clip(x + 0.05 * step * rng.standard_normal(x.shape), -1, 1)
        y, stats = layer(xs, *bottoms[1:])
        want_y, want_stats, s, m = fork_forward(xs, labels, s, m, norm, lo, hi)
        np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats, want_stats, rtol=1e-12, atol=1e-12)
        assert float(layer.blobs[0].data[0]) == pytest.approx(s, rel=1e-15)
        assert float(layer.blobs[1].data[0]) == pytest.approx(m, rel=1e-12, abs=1e-15)


@settings(max_examples=25, deadline=None)
@given(lse_cases())
def test_lse_is_torchs_logsumexp(case):
    x, labels, norm, _, _ = case
    lab = labels.astype(np.int64)
    s = norm if norm is not None else 30.0
    target, lse, maxneg = ops.face.global_lse_margin_stats(x, lab, s)
    xt = torch.from_numpy(x)
    mask = torch.nn.functional.one_hot(torch.from_numpy(lab), x.shape[1]).bool()
    st_ = torch.as_tensor(s, dtype=torch.float64).reshape(-1, 1)
    want = torch.logsumexp((st_ * xt).masked_fill(mask, -math.inf), dim=1) / st_[:, 0]
    np.testing.assert_allclose(lse, want.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(target, x[np.arange(len(lab)), lab])
    others = np.where(mask.numpy(), -np.inf, x).max(axis=1)
    np.testing.assert_array_equal(maxneg, np.maximum(others, -1))


def test_the_largest_other_cosine_is_floored_at_minus_one():
    # scores that are not cosines: every other class below -1; the fork's max starts at -1
    x, labels = np.array([[0.5, -3.0, -2.0], [0.2, 0.4, -1.5]]), np.array([0, 0.0])
    layer = lse_layer(None, 2.0, (None, None))
    _, stats = layer(x, labels)
    want = fork_forward(x, labels, 2.0, 0.0)[1]
    assert want[3] == pytest.approx((-1 + 0.4) / 2)
    np.testing.assert_allclose(stats, want, rtol=1e-13)


@settings(max_examples=25, deadline=None)
@given(lse_cases(), st.sampled_from([0.0, 0.35, -0.2]))
def test_backward_is_the_gradient_with_the_margin_held(case, margin):
    x, labels, norm, scale, _ = case
    lab = labels.astype(np.int64)
    s = norm.copy() if norm is not None else np.array(30.0 if scale is None else scale)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    y = ops.global_lse_margin_forward(x, lab, margin=margin, s=s)
    dx, ds = ops.global_lse_margin_backward(dy, y, s=s)
    # torch autograd of s (x - m onehot), m a constant (shifted only where m > 0)
    xt, stt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(s).requires_grad_(True)
    shift = torch.nn.functional.one_hot(torch.from_numpy(lab), x.shape[1]).double() \
        * max(margin, 0)
    yt = (xt - shift) * (stt[:, None] if s.ndim else stt)
    (yt * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(ds, stt.grad.numpy(), rtol=1e-10)

    def loss():
        return float(np.sum(ops.global_lse_margin_forward(x, lab, margin=margin, s=s) * dy))
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ds, numerical_grad(loss, s), rtol=1e-5, atol=1e-7)


def test_layer_backward_and_its_assigned_scale_diff():
    rng = np.random.default_rng(3)
    x, labels = np.tanh(rng.standard_normal((5, 4))), rng.integers(0, 4, 5).astype(np.float64)
    layer = lse_layer(None, None, (None, None), two_tops=False)
    y = layer(x, labels)
    dy = rng.standard_normal(y.shape)
    dx, _ = layer.backprop(dy)
    np.testing.assert_allclose(dx, 30 * dy, rtol=1e-15)
    want = np.sum(dy * y) / 30
    assert float(layer.blobs[0].diff[0]) == pytest.approx(want, rel=1e-13)
    layer.backprop(dy)                                    # the fork assigns s's diff
    assert float(layer.blobs[0].diff[0]) == pytest.approx(want, rel=1e-13)
    # with the norm bottom: each item's norm gets sum_c dy y / norm, s gets nothing
    norm = rng.uniform(1, 3, 5)
    layer = lse_layer(norm, None, (None, None), two_tops=False)
    y = layer(x, labels, norm)
    dx, _, dnorm = layer.backprop(dy)
    np.testing.assert_allclose(dx, dy * norm[:, None], rtol=1e-15)
    np.testing.assert_allclose(dnorm, np.sum(dy * y, axis=1) / norm, rtol=1e-13)
    assert float(layer.blobs[0].diff[0]) == 0


def test_parameter_defaults_and_specs():
    x, labels = np.array([[0.9, 0.1, -0.2], [0.0, 0.7, 0.2]]), np.array([0, 1.0])
    layer = lse_layer(None, None, (None, None), two_tops=False)
    layer(x, labels)
    assert float(layer.blobs[0].data[0]) == 30 and layer.blobs[0].shape == (1,)
    assert [(p.lr_mult, p.decay_mult) for p in layer.param.param] == [(1, 0), (0, 0)]
    norm = np.array([2.0, 3.0])
    layer = lse_layer(norm, None, (None, None), two_tops=False)
    layer(x, labels, norm)
    assert [(p.lr_mult, p.decay_mult) for p in layer.param.param] == [(0, 0), (0, 0)]
    layer = GlobalLSEMarginLayer(param=[{"lr_mult": 2}])           # one given: m's is added
    layer(x, labels)
    assert [(p.lr_mult, p.decay_mult) for p in layer.param.param] == [(2, 1), (0, 0)]
    layer = lse_layer(None, 100.0, (None, 64.0), two_tops=False)   # clamped, in the blob
    layer(x, labels)
    assert float(layer.blobs[0].data[0]) == 64


def test_mean_shift_by_hand():
    shift = ops.face.margin_mean_shift
    # within 0.1 of 0.3: 0.25, 0.32 -> 0.285; then 0.25, 0.32 again -> stops (moved < 0.001)
    assert shift([0.25, 0.32, 0.9], 0.3, 20) == pytest.approx(0.285)
    # from 0.21: 0.22, 0.30 -> 0.26; then 0.22, 0.30, 0.35 -> 0.29, which holds. One pass: 0.26
    assert shift([0.22, 0.30, 0.35, 0.9], 0.21, 20) == pytest.approx(0.29)
    assert shift([0.22, 0.30, 0.35, 0.9], 0.21, 1) == pytest.approx(0.26)
    # none within 0.1 of 1.2: restart at the mean of all, 0.5375 (not a pass), where only 0.45
    # is close: the one pass gives 0.45
    assert shift([0.35, 0.45, 0.40, 0.95], 1.2, 1) == pytest.approx(0.45)
    # none within 0.1 of the mean either: the fork never returns; minicnn gives the mean
    global ENDLESS
    assert shift([0.0, 1.0], 0.5, 1) == pytest.approx(0.5)
    ENDLESS = False
    assert fork_mean_shift([0.0, 1.0], 0.5, 1) == 0.5 and ENDLESS
    assert math.isnan(shift([float("nan"), 0.2], 0.2 + 1, 1))


def test_a_nan_batch_leaves_the_margin():
    layer = lse_layer(None, None, (None, None), two_tops=False)
    layer.blobs = []
    x, labels = np.array([[np.nan, 0.1, 0.2], [np.nan, 0.2, 0.1]]), np.array([0, 0.0])
    layer(x, labels)
    assert float(layer.blobs[1].data[0]) == 0


def test_global_lse_margin_errors():
    x = np.zeros((3, 4))
    with pytest.raises(LayerError, match="labels .*one value per item"):
        GlobalLSEMarginLayer()(x, np.zeros(4))
    with pytest.raises(LayerError, match="label 4"):
        GlobalLSEMarginLayer()(x, np.array([0, 1, 4.0]))
    with pytest.raises(LayerError, match="at least 2 classes"):
        GlobalLSEMarginLayer()(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(LayerError, match="feature norms .*one value per item"):
        GlobalLSEMarginLayer()(x, np.zeros(3), np.ones(2))
    layer = GlobalLSEMarginLayer()
    layer(x, np.zeros(3))
    bottom, top = layer._standalone
    with pytest.raises(LayerError, match="cannot backpropagate to labels"):
        layer.backward(top, [True, True], bottom)


# --- softmax_param.normalize_type, accuracy_param.min_is_better, scale_param's bounds ------------

def test_normalize_type_softmax_is_softmax_with_loss_and_others_are_refused():
    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal((4, 3)), np.array([0, 2, 1, 1.0])
    plain = SoftmaxWithLossLayer()
    named = SoftmaxWithLossLayer(softmax_param={"normalize_type": "Softmax"})
    assert float(named(x, labels)) == float(plain(x, labels))
    with pytest.raises(LayerError, match='normalize_type "L2" .* not implemented'):
        SoftmaxWithLossLayer(softmax_param={"normalize_type": "L2"})(x, labels)


def test_min_is_better_ranks_ascending():
    scores = np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4], [0.3, 0.3, 0.7], [0.6, 0.1, 0.1]])
    labels = np.array([0, 1, 1, 2.0])
    # lowest score is item 0's class 0, item 1's class 1; item 2's 0.3 ties class 0 (against);
    # item 3's 0.1 ties class 1 (against)
    assert float(AccuracyLayer(accuracy_param={"min_is_better": True})(scores, labels)) == 0.5
    assert float(AccuracyLayer(accuracy_param={"min_is_better": False})(scores, labels)) == 0
    # top 2, labels 0 1 1 0: item 2's tie leaves one class at or below it (correct); item 3's
    # 0.6 has two below it (wrong)
    top2 = AccuracyLayer(accuracy_param={"min_is_better": True, "top_k": 2})
    top2.param.top.extend(["a", "per_class"])
    acc, per_class = top2(scores, np.array([0, 1, 1, 0.0]))
    assert float(acc) == 0.75
    np.testing.assert_allclose(per_class, [0.5, 1, 0])
    rng = np.random.default_rng(5)
    s, lab = rng.standard_normal((20, 6)), rng.integers(0, 6, 20).astype(np.float64)
    want = np.mean(np.argsort(s, axis=1)[:, :3] == lab[:, None]) * 3  # ties have measure 0
    layer = AccuracyLayer(accuracy_param={"min_is_better": True, "top_k": 3})
    assert float(layer(s, lab)) == pytest.approx(want)


def test_scale_refuses_happynears_bounds():
    with pytest.raises(LayerError, match="scale_param.min_value .* not implemented"):
        ScaleLayer(scale_param={"min_value": 0.5})(np.ones((2, 3)))


# --- AM-Softmax's prototxt/auto/face_train_test_auto.prototxt ------------------------------------

def am_softmax_auto_net(**sizes):
    """prototxt/auto/face_train_test_auto.prototxt: face_train_test.prototxt's 20-layer body
    (tests.layers.test_face_normalize.am_softmax_net), then, verbatim but for the sizes:
    Normalize (bp_norm, one top), fc6 with normalize: true, GlobalLSEMargin (two tops, the
    second its statistics), SoftmaxWithLoss with softmax_param.normalize_type, and a TEST
    Accuracy with accuracy_param.min_is_better. ImageData layers replaced by Input."""
    text = am_softmax_net(**sizes)
    head = text[:text.index('layer { name: "norm1"')]
    classes = sizes.get("classes", 10516)
    return head + f"""layer {{
  name: "norm1"
  type: "Normalize"
  bottom: "fc5"
  top: "norm1"
  #top: "feature_norm"
  normalize_param {{
    bp_norm: true
  }}
  #propagate_down: false
}}
layer {{
  name: "fc6"
  type: "InnerProduct"
  bottom: "norm1"
  top: "fc6"
  inner_product_param{{
    num_output: {classes}
    normalize: true
    weight_filler {{
      type: "xavier"
    }}
    bias_term: false
  }}
}}
layer {{
  name: "margin"
  type: "GlobalLSEMargin"
  bottom: "fc6"
  bottom: "label"
  #bottom: "feature_norm"
  top: "fc6_margin"
  top: "statistics"
}}
layer {{
  name: "softmax_loss"
  type: "SoftmaxWithLoss"
  bottom: "fc6_margin"
  bottom: "label"
  top: "softmax_loss"
  loss_weight: 1
  softmax_param{{
    normalize_type: "Softmax"
  }}
}}



layer {{
  name: "Accuracy"
  type: "Accuracy"
  bottom: "fc6"
  bottom: "label"
  top: "accuracy"
  include {{ 
    phase: TEST
  }}
  accuracy_param {{
    min_is_better: false
  }}
}}"""


def test_am_softmax_auto_net_builds_at_full_size():
    net = minicnn.Net(parse_text(am_softmax_auto_net(input_shape=(2, 3, 112, 96))),
                      phase="TRAIN")
    assert net.blobs["fc6_margin"].shape == (2, 10516)
    assert net.blobs["statistics"].shape == (5,)
    assert type(net.layer_dict["margin"]) is GlobalLSEMarginLayer
    assert [p.shape for p in net.params["margin"]] == [(1,), (1,)]


def test_am_softmax_auto_net_trains():
    minicnn.set_random_seed(7)
    text = am_softmax_auto_net(widths=(4, 6, 8, 8), feature=8, classes=3,
                               input_shape=(12, 3, 16, 16))
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.01,
                                      lr_policy="fixed", momentum=0.9, weight_decay=0.0005,
                                      test_iter=[1], test_interval=1000000,
                                      test_initialization=False)
    solver = minicnn.get_solver(param, log=lambda message: None)
    net = solver.net
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 12)
    means = rng.standard_normal((3, 3, 16, 16))
    data = means[labels] + 0.2 * rng.standard_normal((12, 3, 16, 16))
    losses, margins, scales = [], [], []
    for _ in range(15):
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = labels
        solver.step(1)
        losses.append(float(net.blobs["softmax_loss"].data))
        margins.append(float(net.blobs["statistics"].data[4]))
        scales.append(float(net.params["margin"][0].data[0]))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    assert margins[0] != 0 and len(set(margins)) > 1              # found, then tracked
    assert scales[0] != 30 and scales[-1] != scales[0]            # s is learned (lr_mult 1)
    test_net = solver.test_nets[0]
    test_net.blobs["data"].data[...] = data
    test_net.blobs["label"].data[...] = labels
    result = solver.test(0)
    assert 0 <= result["accuracy"] <= 1 and np.isfinite(result["softmax_loss"])


def test_the_margin_moves_in_test_too():
    # the fork updates m in every forward, TEST ones included
    layer = GlobalLSEMarginLayer(phase="TEST")
    x, labels = np.array([[0.9, 0.1, -0.2], [0.0, 0.7, 0.2]]), np.array([0, 1.0])
    layer.setup([Blob.from_array(x), Blob.from_array(labels)], [Blob((), np.float64)])
    layer(x, labels)
    assert float(layer.blobs[1].data[0]) != 0
