"""happynear's caffe-windows SoftmaxWithLoss with a weights bottom, softmax_param.class_weight and
hard_ratio (minicnn.layers.loss.WeightedSoftmaxWithLossLayer, minicnn.ops.weighted_softmax_loss),
and the fork's other softmax_param fields, refused.

References written here: a transliteration of the fork's CPU Forward_cpu / Backward_cpu loops
(three bottoms) and of its GPU Backward's hard mining (sort, threshold, Threshold kernel);
torch's cross_entropy with per-class weights; float64 finite differences where the fork's
backward is the gradient. The published prototxt: williamGD/caffe-windows (a copy of
happynear's) src/caffe/test/test_softmax_weight.prototxt, built from its text and trained."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layer import create_layer
from minicnn.layers.focal_loss import FocalLossLayer
from minicnn.layers.loss import SoftmaxWithLossLayer, WeightedSoftmaxWithLossLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient

FLT_MIN = float(np.finfo(np.float32).tiny)

# --- the fork, transliterated ---------------------------------------------------------------------


def _normalizer(mode, outer, inner, count):
    d = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return max(1.0, d)


def fork_forward(x, label, weights, cw, axis, ignore, mode):
    """softmax_loss_layer.cpp Forward_cpu, bottom.size() == 3."""
    shape = x.shape
    outer, c, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    prob = (e / e.sum(axis=axis, keepdims=True)).reshape(-1)
    label, weights = label.reshape(-1), weights.reshape(-1)
    dim = c * inner
    loss = count = 0.0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            if ignore is not None and lv == ignore:    # the fork reads cw[lv] first (see the layer)
                continue
            wv = weights[i * inner + j] * (cw[lv] if cw is not None else 1.0)
            if wv == 0:
                continue
            loss -= wv * math.log(max(prob[i * dim + lv * inner + j], FLT_MIN))
            count += wv
    return loss / _normalizer(mode, outer, inner, count), prob.reshape(shape)


def fork_backward(prob, label, weights, cw, axis, ignore, mode, top_diff):
    """softmax_loss_layer.cpp Backward_cpu, bottom.size() == 3."""
    shape = prob.shape
    outer, c, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    diff = prob.reshape(-1).copy()
    label, weights = label.reshape(-1), weights.reshape(-1)
    dim = c * inner
    count = 0.0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            wv = weights[i * inner + j]
            if ignore is not None and lv == ignore:
                for k in range(c):
                    diff[i * dim + k * inner + j] = 0
            else:
                diff[i * dim + lv * inner + j] -= 1
                for k in range(c):
                    diff[i * dim + k * inner + j] *= wv * (cw[lv] if cw is not None else 1.0)
                if wv != 0:
                    count += wv
    return (diff * (top_diff / _normalizer(mode, outer, inner, count))).reshape(shape)


def fork_mine(x, label, weights, cw, axis, ignore, hard_ratio):
    """softmax_loss_layer.cu: the per-position loss_ of SoftmaxLossForwardWithWeightsGPU
    (label_smooth_factor 0), std::sort, the threshold at (int)(M * (1 - r)), Threshold."""
    shape = x.shape
    outer, c, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    prob = (e / e.sum(axis=axis, keepdims=True)).reshape(-1)
    label, w = label.reshape(-1), weights.reshape(-1).copy()
    loss = np.zeros(outer * inner)
    for index in range(outer * inner):
        n, s = divmod(index, inner)
        lv = int(label[index])
        if ignore is not None and lv == ignore:
            continue
        wv = w[index] * (cw[lv] if cw is not None else 1.0)
        if wv == 0:
            continue
        loss[index] = -wv * math.log(max(prob[n * c * inner + lv * inner + s], FLT_MIN))
    m = outer * inner
    threshold = sorted(loss)[int(np.float32(m) * (np.float32(1) - np.float32(hard_ratio)))]
    for index in range(m):
        w[index] = 0 if loss[index] < threshold else w[index]
    return w.reshape(weights.shape)


# --- cases ----------------------------------------------------------------------------------------

@st.composite
def cases(draw):
    four = draw(st.booleans())
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    hw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if four else ()
    axis = 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c, *hw)) * 2
    label = rng.integers(0, c, (n, *hw)).astype(np.float64)
    ignore = draw(st.sampled_from([None, 0, 255]))
    if ignore == 255:
        label[rng.random(label.shape) < 0.3] = 255
    weights = rng.uniform(0.2, 2, label.shape)
    weights[rng.random(label.shape) < 0.25] = 0
    cw = rng.uniform(0.2, 2, c).astype(np.float32).astype(float) if draw(st.booleans()) else None
    mode = draw(st.sampled_from(["VALID", "FULL", "BATCH_SIZE", "NONE"]))
    return x, label, weights, cw, axis, ignore, mode


def _text(cw=None, ignore=None, mode="VALID", hard_ratio=None, extra=""):
    sp = "".join(f" class_weight: {float(v)!r}" for v in (cw if cw is not None else []))
    if hard_ratio is not None:
        sp += f" hard_ratio: {hard_ratio!r}"
    lp = f" normalization: {mode}" + (f" ignore_label: {ignore}" if ignore is not None else "")
    return (f'name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" bottom: "w" '
            f'top: "loss" softmax_param {{{sp}{extra} }} loss_param {{{lp} }}')


def _layer(text):
    return create_layer(parse_text(text, "LayerParameter"))


def _run(layer, x, label, weights, top_diff=1.0):
    bottom = [Blob.from_array(a) for a in (x, label, weights)]
    top = [Blob((), x.dtype)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = top_diff
    layer.backward(top, [True, False, False], bottom)
    return float(top[0].data), bottom[0].diff.copy(), bottom[2].data.copy()


# --- forward and backward against the fork --------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(cases())
def test_forward_and_backward_match_the_forks_cpu_loops(case):
    x, label, weights, cw, axis, ignore, mode = case
    layer = _layer(_text(cw, ignore, mode))
    assert type(layer) is WeightedSoftmaxWithLossLayer
    loss, dx, _ = _run(layer, x, label, weights, top_diff=0.7)
    want_loss, prob = fork_forward(x, label, weights, cw, axis, ignore, mode)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, fork_backward(prob, label, weights, cw, axis, ignore, mode,
                                                 0.7), rtol=1e-12, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(cases(), st.sampled_from([0.1, 0.3, 0.5, 0.7, 1.0]))
def test_hard_ratio_mines_the_weights_as_the_forks_gpu_backward(case, hard_ratio):
    x, label, weights, cw, axis, ignore, mode = case
    layer = _layer(_text(cw, ignore, mode, hard_ratio=hard_ratio))
    loss, dx, mined = _run(layer, x, label, weights.copy(), top_diff=1.3)
    want_w = fork_mine(x, label, weights, cw, axis, ignore, hard_ratio)
    np.testing.assert_array_equal(mined, want_w)                    # written into bottom[2]
    want_loss, prob = fork_forward(x, label, weights, cw, axis, ignore, mode)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)         # the forward: unmined
    np.testing.assert_allclose(dx, fork_backward(prob, label, want_w, cw, axis, ignore, mode,
                                                 1.3), rtol=1e-12, atol=1e-14)


def test_hard_ratio_by_hand():
    """Ten positions, losses 1..10 (w = 1, two classes, logits chosen so), r = 0.7: the
    threshold is the sorted loss at int(10 * 0.3) = 3 (0-based: the 4th smallest, 4), so the
    three smaller ones lose their weight; r = 1: the threshold is the smallest, none do."""
    losses = np.arange(1.0, 11.0)
    p = np.exp(-losses)                                 # p_label = exp(-loss)
    x = np.stack([np.log(p), np.log1p(-p)], axis=1)     # class 0 labelled, softmax gives p
    label = np.zeros(10)
    for r, zeroed in ((0.7, 3), (1.0, 0), (0.05, 9)):
        _, _, mined = _run(_layer(_text(hard_ratio=r, mode="NONE")), x, label, np.ones(10))
        np.testing.assert_array_equal(mined, [0] * zeroed + [1] * (10 - zeroed))


def test_against_torch_cross_entropy_with_class_weights():
    rng = np.random.default_rng(5)
    x, label = rng.standard_normal((6, 4, 2, 3)), rng.integers(0, 4, (6, 2, 3)).astype(float)
    cw = rng.uniform(0.5, 2, 4).astype(np.float32).astype(float)   # class_weight is a float
    w = rng.uniform(0.5, 2, (6, 2, 3))
    ce = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(label).long(),
                                           weight=torch.tensor(cw), reduction="none").numpy()
    layer = _layer(_text(cw, mode="NONE"))
    loss, _, _ = _run(layer, x, label, w)
    np.testing.assert_allclose(loss, np.sum(w * ce), rtol=1e-12)
    mean = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(label).long(),
                                             weight=torch.tensor(cw)).item()
    loss, _, _ = _run(_layer(_text(cw, mode="VALID")), x, label, np.ones_like(w))
    np.testing.assert_allclose(loss, mean, rtol=1e-12)   # VALID: / sum of cw[label]


# --- gradients ------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(cases())
def test_backward_is_the_gradient_where_the_counts_agree(case):
    x, label, weights, cw, _axis, ignore, mode = case
    if mode == "VALID":
        cw = None                      # VALID with class weights: the fork's counts differ
    check_layer_gradient(lambda: _layer(_text(cw, ignore, mode)), [x, label, weights],
                         check_bottoms=[0])


def test_hard_ratio_backward_is_the_gradient_of_the_mined_weights():
    rng = np.random.default_rng(3)
    x, label = rng.standard_normal((8, 3)), rng.integers(0, 3, 8).astype(float)
    check_layer_gradient(lambda: _layer(_text([0.5, 1, 2], mode="NONE", hard_ratio=0.5)),
                         [x, label, np.ones(8)], check_bottoms=[0])


def test_valid_with_class_weights_keeps_the_forks_backward_count():
    """The fork's forward divides by sum(w cw[label]), its backward by sum(w): the diff is the
    gradient times sum(w cw) / sum(w)."""
    rng = np.random.default_rng(4)
    x, label = rng.standard_normal((5, 3)), np.array([0, 1, 2, 1, 0.0])
    cw, w = np.array([0.5, 2.0, 3.0]), np.ones(5)
    layer = _layer(_text(cw))
    _, dx, _ = _run(layer, x, label, w)
    grad = np.zeros_like(x)
    for i in range(x.size):
        for sign in (1, -1):
            xp = x.copy()
            xp.flat[i] += sign * 1e-6
            grad.flat[i] += sign * fork_forward(xp, label, w, cw, 1, None, "VALID")[0] / 2e-6
    np.testing.assert_allclose(dx, grad * cw[label.astype(int)].sum() / w.sum(), rtol=1e-6)


# --- two bottoms, other layers, errors ------------------------------------------------------------

def test_two_bottoms_ignore_class_weight_and_hard_ratio_as_the_fork_and_warn():
    rng = np.random.default_rng(6)
    x, label = rng.standard_normal((4, 3)), rng.integers(0, 3, 4).astype(float)
    text = ('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" '
            "softmax_param { class_weight: 1 class_weight: 2 class_weight: 3 hard_ratio: .5 }")
    layer = _layer(text)
    with pytest.warns(UserWarning, match="hard_ratio and class_weight do nothing without a third"):
        got = layer(x, label)
    np.testing.assert_allclose(got, SoftmaxWithLossLayer()(x, label), rtol=1e-12)
    plain = create_layer(parse_text('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y"',
                                    "LayerParameter"))
    assert type(plain) is SoftmaxWithLossLayer and not plain.host_only


@pytest.mark.parametrize("extra,match", [
    (" cutting_point: 0.9", "softmax_param.cutting_point .* not implemented"),
    (" hard_mining_label: 1", "softmax_param.hard_mining_label .* not implemented"),
    (" label_smooth_factor: 0.1", "softmax_param.label_smooth_factor 0.1 .* only 0"),
    (" hard_ratio: 1.5", r"hard_ratio must be in \[0, 1\], got 1.5"),
    (" hard_ratio: 0", "hard_ratio 0 .* refused"),
    (" class_weight: 1 class_weight: 2", "2 softmax_param.class_weight values for 3 classes"),
])
def test_refused_fields_and_bad_values(extra, match):
    x, label = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(LayerError, match=match):
        _layer(_text(extra=extra))(x, label, np.ones(2))


def test_label_smooth_factor_zero_is_accepted():
    x, label = np.zeros((2, 3)), np.zeros(2)
    assert np.isfinite(_layer(_text(extra=" label_smooth_factor: 0"))(x, label, np.ones(2)))


def test_bad_weight_count_and_other_layers():
    with pytest.raises(LayerError, match=r"3 loss weights \(bottom 2, shape \(3,\)\) for 2 labels"):
        _layer(_text())(np.zeros((2, 3)), np.zeros(2), np.ones(3))
    with pytest.raises(LayerError, match="softmax_param.class_weight is happynear's"):
        SoftmaxWithLossLayer(softmax_param={"class_weight": [1, 2]})(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(LayerError, match="softmax_param.hard_ratio is happynear's .* "
                                         "FocalLossLayer does not use it"):
        FocalLossLayer(softmax_param={"hard_ratio": 0.5})(np.zeros((2, 2)), np.zeros(2))
    focal = create_layer(parse_text('name: "f" type: "FocalLoss" bottom: "a" bottom: "b" '
                                    'bottom: "c"', "LayerParameter"))
    assert type(focal) is FocalLossLayer                        # not the weighted variant
    with pytest.raises(LayerError, match="bottom"):
        focal(np.zeros((2, 2)), np.zeros(2), np.ones(2))


# --- the published prototxt -----------------------------------------------------------------------

TEST_SOFTMAX_WEIGHT = """name: "test_softmax_weight"
force_backward: true
layer {
  name: "data"
  type: "Input"
  top: "feature"
  input_param {
    shape: { dim: 100 dim: 2 }
  }
}
layer {
  name: "data"
  type: "Input"
  top: "class_label"
  input_param {
    shape: { dim: 100 dim: 1 }
  }
}
layer {
  name: "data"
  type: "Input"
  top: "class_weight"
  input_param {
    shape: { dim: 100 dim: 1 }
  }
}
layer {
  name: "Softmax_Classification"
  type: "SoftmaxWithLoss"
  bottom: "feature"
  bottom: "class_label"
  bottom: "class_weight"
  top: "Softmax_Classification"
  softmax_param {
    hard_ratio: 0.7
    class_weight: 0.5
    class_weight: 1
  }
}"""


def test_published_test_softmax_weight_prototxt_runs_as_its_matlab_script():
    """Its test_softmax_weight.m: random features, labels randn > randn, weights ones;
    forward, backward({1})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                # its three Input layers are all "data"
        net = minicnn.Net(parse_text(TEST_SOFTMAX_WEIGHT, "NetParameter"), phase=minicnn.TRAIN)
    rng = np.random.default_rng(2)
    f = rng.standard_normal((100, 2)).astype(np.float32)
    y = (rng.standard_normal((100, 1)) > rng.standard_normal((100, 1))).astype(np.float32)
    w = np.ones((100, 1), np.float32)
    loss = float(net.forward(feature=f, class_label=y, class_weight=w)["Softmax_Classification"])
    want, prob = fork_forward(f.astype(np.float64), y, w, [0.5, 1.0], 1, None, "VALID")
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    net.backward()
    mined = fork_mine(f.astype(np.float64), y, np.ones((100, 1)), [0.5, 1.0], 1, None, 0.7)
    np.testing.assert_array_equal(net.blobs["class_weight"].data, mined)
    assert (mined == 0).sum() == 30
    np.testing.assert_allclose(net.blobs["feature"].diff,
                               fork_backward(prob, y, mined, [0.5, 1.0], 1, None, "VALID", 1.0),
                               rtol=1e-5, atol=1e-8)


def test_published_prototxt_trains_with_a_learned_layer():
    """The same loss layer under an InnerProduct, weights refilled every step (a data layer's
    way): the loss is finite and falls."""
    minicnn.set_random_seed(3)
    text = TEST_SOFTMAX_WEIGHT.replace('bottom: "feature"\n  bottom: "class_label"',
                                       'bottom: "score"\n  bottom: "class_label"')
    text = text.replace('layer {\n  name: "Softmax_Classification"',
                        'layer { name: "fc" type: "InnerProduct" bottom: "feature" top: "score" '
                        'inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }'
                        '\nlayer {\n  name: "Softmax_Classification"')
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.5, lr_policy="fixed",
                                      momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver = minicnn.get_solver(param, log=lambda message: None)
    net = solver.net
    rng = np.random.default_rng(1)
    y = (rng.random((100, 1)) < 0.5).astype(np.float32)
    f = (rng.standard_normal((100, 2)) + 3 * y - 1.5).astype(np.float32)
    losses = []
    for _ in range(40):
        net.blobs["feature"].data[...] = f
        net.blobs["class_label"].data[...] = y
        net.blobs["class_weight"].data[...] = 1
        solver.step(1)
        losses.append(float(net.blobs["Softmax_Classification"].data))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
