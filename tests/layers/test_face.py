"""The face-recognition forks' layers: CenterLoss (ydwen/caffe-face), MarginInnerProduct
(SphereFace's A-Softmax) and LabelSpecificAdd (AM-Softmax).

References written here: PyTorch on the formulas, transliterations of the forks' CPU loops, the
A-Softmax psi from its angle (arccos, k = floor(m theta / pi)) rather than the fork's
polynomials, and float64 finite differences where the fork's backward is the gradient."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers.face import CenterLossLayer, LabelSpecificAddLayer, MarginInnerProductLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient, numerical_grad

TYPES = ["SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"]


@st.composite
def labelled(draw, max_classes=5):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, max_classes))
    return rng.standard_normal((m, k)), rng.integers(0, n, m).astype(np.float64), n, rng


# --- CenterLoss ----------------------------------------------------------------------------------

def center_layer(n, **fields):
    return CenterLossLayer(center_loss_param={"num_output": n, "center_filler": {
        "type": "gaussian", "std": 1.0}}, **fields)


def fork_center_diff(x, labels, centers):
    """ydwen's Backward_cpu loops: variation_sum[y] -= (x - c_y); diff[y] = sum / (count + 1)."""
    n, k = centers.shape
    variation, count = np.zeros((n, k)), np.zeros(n, int)
    for m in range(x.shape[0]):
        y = int(labels[m])
        for j in range(k):
            variation[y, j] -= x[m, j] - centers[y, j]
        count[y] += 1
    diff = np.zeros((n, k))
    for m in range(x.shape[0]):
        y = int(labels[m])
        diff[y] = variation[y] / (count[y] + 1.0)
    return diff


@settings(max_examples=30, deadline=None)
@given(labelled())
def test_center_loss_forward_and_center_update_follow_the_fork(case):
    x, labels, n, rng = case
    layer = center_layer(n)
    layer.rng = rng
    loss = layer(x, labels)
    centers = layer.blobs[0].data.copy()
    xt = torch.tensor(x)
    want = ((xt - torch.tensor(centers)[torch.tensor(labels).long()]) ** 2).sum() / 2 / len(x)
    np.testing.assert_allclose(loss, want.item(), rtol=1e-12)
    layer.blobs[0].diff[...] = 7.0                 # assigned, not added (absent classes get 0)
    dx, _ = layer.backprop()
    np.testing.assert_allclose(layer.blobs[0].diff, fork_center_diff(x, labels, centers),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, (x - centers[labels.astype(int)]) / len(x), rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(labelled(), st.sampled_from([1.0, 0.008]))
def test_center_loss_feature_diff_is_the_gradient(case, loss_weight):
    x, labels, n, rng = case
    x = x.reshape(x.shape[0], 1, x.shape[1], 1)          # axis 1 flattens C x H x W
    layer = center_layer(n, loss_weight=loss_weight)
    layer.rng = rng
    check_layer_gradient(layer, [x, labels], check_bottoms=[0], check_params=False)


def test_center_loss_errors():
    x = np.zeros((3, 4))
    with pytest.raises(LayerError, match="label 3 .* not a class.*\\[0, 3\\)"):
        center_layer(3)(x, np.array([0, 1, 3.0]))
    with pytest.raises(LayerError, match="label 0.5"):
        center_layer(3)(x, np.array([0, 0.5, 1]))
    with pytest.raises(LayerError, match="one value per item"):
        center_layer(3)(x, np.array([0, 1.0]))
    with pytest.raises(LayerError, match="center_loss_param.num_output must be > 0"):
        CenterLossLayer()(x, np.zeros(3))
    layer = center_layer(3)
    layer(x, np.zeros(3))
    with pytest.raises(LayerError, match="K = 4"):
        layer(np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(LayerError, match="cannot backpropagate to labels"):
        layer.backward(layer._standalone[1], [True, True], layer._standalone[0])


# --- MarginInnerProduct --------------------------------------------------------------------------

M_OF = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "QUADRUPLE": 4}


def psi_from_angle(cos, m):
    """A-Softmax's psi(theta) = (-1)^k cos(m theta) - 2k, theta in [k pi / m, (k+1) pi / m]."""
    theta = np.arccos(np.clip(cos, -1, 1))
    k = np.minimum(np.floor(m * theta / np.pi), m - 1)
    return (-1) ** k * np.cos(m * theta) - 2 * k


def margin_layer(n, kind, **p):
    fields = {"num_output": n, "type": kind, "weight_filler": {"type": "gaussian", "std": 1.0}}
    fields.update(p)
    return MarginInnerProductLayer(margin_inner_product_param=fields, top=["fc", "lambda"])


@settings(max_examples=30, deadline=None)
@given(labelled(), st.sampled_from(TYPES), st.floats(0, 20))
def test_margin_forward_is_the_a_softmax_logit(case, kind, base):
    x, labels, n, rng = case
    layer = margin_layer(n, kind, base=base)              # gamma 0: lambda = base
    layer.rng = rng
    base = float(np.float32(base))                        # a float field of the prototxt
    y, lam = layer(x, labels)
    w = layer.blobs[0].data
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, rtol=1e-12)   # normalised in place
    assert lam.shape == (1,) and lam[0] == pytest.approx(base)
    xt, wt = torch.tensor(x), torch.tensor(w)
    want = (xt @ wt.T).numpy()
    if kind != "SINGLE":
        rows, t = np.arange(len(x)), labels.astype(int)
        norm = np.linalg.norm(x, axis=1)
        psi = psi_from_angle(want[rows, t] / norm, M_OF[kind])
        want[rows, t] = (base * want[rows, t] + norm * psi) / (1 + base)
    np.testing.assert_allclose(y, want, rtol=1e-9, atol=1e-12)


def test_margin_lambda_anneals_per_forward_from_iteration():
    # SphereFace's prototxt: base 1000, gamma 0.12, power 1, lambda_min 5
    layer = margin_layer(3, "QUADRUPLE", base=1000, gamma=0.12, power=1, lambda_min=5,
                         iteration=10)
    x, labels = np.random.default_rng(0).standard_normal((2, 4)), np.array([0, 2.0])
    seen = [float(layer(x, labels)[1][0]) for _ in range(3)]
    np.testing.assert_allclose(seen, [1000 / (1 + 0.12 * i) for i in (11, 12, 13)], rtol=1e-6)
    layer.iter = 10**6
    assert float(layer(x, labels)[1][0]) == pytest.approx(5)                 # lambda_min
    alone = MarginInnerProductLayer(margin_inner_product_param={"num_output": 3, "type": "DOUBLE"})
    assert alone.default_num_tops() == 1


def fork_bottom_diff(dy, x, w, labels, lam, kind):
    """sphereface's Backward_cpu loops for the bottom diff (coefficients as the fork writes them:
    from its sign terms and powers of cos theta, then rescaled to unit length)."""
    mm, k = x.shape
    dx = np.zeros((mm, k))
    if kind == "SINGLE":
        return dy @ w
    for i in range(mm):
        xn = math.sqrt(sum(v * v for v in x[i]))
        t = int(labels[i])
        for j in range(w.shape[0]):
            if j != t:
                dx[i] += dy[i, j] / (1 + lam) * w[j]
                continue
            c = float(x[i] @ w[j]) / xn
            s0 = np.sign(c)
            if kind == "DOUBLE":
                cw, cx = 4 * s0 * c, -1 / xn * (2 * s0 * c * c + 1)
            elif kind == "TRIPLE":
                s1 = np.sign(abs(c) - 0.5)
                s2 = s0 * (1 + s1) - 2
                cw, cx = s1 * (12 * c * c - 3), -1 / xn * (8 * s1 * c ** 3 - s2)
            else:
                s3 = s0 * np.sign(2 * c * c - 1)
                s4 = 2 * s0 + s3 - 3
                cw = s3 * (32 * c ** 3 - 16 * c)
                cx = -1 / xn * (s3 * (24 * c ** 4 - 8 * c * c - 1) - s4)
            norm = math.sqrt(cw * cw + cx * cx)
            dx[i] += dy[i, j] / (1 + lam) * (cw / norm * w[j] + cx / norm * x[i])
    return dx + lam / (1 + lam) * dy @ w


@settings(max_examples=30, deadline=None)
@given(labelled(), st.sampled_from(TYPES), st.floats(0, 20))
def test_margin_backward_follows_the_fork(case, kind, base):
    x, labels, n, rng = case
    layer = margin_layer(n, kind, base=base)
    layer.rng = rng
    base = float(np.float32(base))
    layer(x, labels)
    w = layer.blobs[0].data.copy()
    dy = rng.standard_normal((len(x), n))
    layer.blobs[0].diff[...] = 1.0                                  # accumulated
    dx, _ = layer.backprop(dy, np.zeros(1))
    np.testing.assert_allclose(dx, fork_bottom_diff(dy, x, w, labels, base, kind),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + dy.T @ x, rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(labelled())
def test_margin_single_feature_diff_is_the_gradient(case):
    x, labels, n, rng = case
    layer = margin_layer(n, "SINGLE")
    layer.rng = rng
    check_layer_gradient(layer, [x, labels], check_bottoms=[0], check_params=False, tops=[0])


@settings(max_examples=20, deadline=None)
@given(labelled(), st.sampled_from(TYPES[1:]))
def test_margin_fork_diff_is_the_gradient_with_its_target_coefficients_rescaled(case, kind):
    # finite differences of the forward (lambda fixed: gamma 0) against the gradient written
    # out: psi'(cos) w_t + (psi - cos psi') x / |x| for the target, w_j elsewhere. The fork's
    # diff is that with the target pair (psi', (psi - cos psi') / |x|) scaled to unit length.
    x, labels, n, rng = case
    assume(np.all(np.linalg.norm(x, axis=1) > 0.3))
    lam = 0.5
    layer = margin_layer(n, kind, base=lam)
    layer.rng = rng
    y0 = layer(x, labels)[0]
    w = layer.blobs[0].data.copy()
    dy = rng.standard_normal(y0.shape)
    numeric = numerical_grad(lambda: float(np.sum(layer(x, labels)[0] * dy)), x)
    m, t = M_OF[kind], labels.astype(int)
    norm = np.linalg.norm(x, axis=1)
    cos = np.einsum("ik,ik->i", x, w[t]) / norm
    theta = np.arccos(np.clip(cos, -1, 1))
    # away from where the sign terms change k (m theta / pi a whole number)
    assume(np.all(np.abs(np.remainder(m * theta / np.pi + 0.5, 1) - 0.5) > 1e-3))
    k = np.floor(m * theta / np.pi)
    dpsi = (-1) ** k * m * np.sin(m * theta) / np.sin(theta)       # d psi / d cos(theta)
    psi = psi_from_angle(cos, m)
    a, b = dpsi, (psi - cos * dpsi) / norm
    rows = np.arange(len(x))
    dyt = dy[rows, t][:, None]
    target = lam * w[t] + a[:, None] * w[t] + b[:, None] * x
    exact = dy @ w - dyt * w[t] + dyt * target / (1 + lam)
    np.testing.assert_allclose(numeric, exact, rtol=1e-5, atol=1e-6)
    layer(x, labels)                             # numerical_grad's last forward moved x
    scale = np.sqrt(a * a + b * b)[:, None]
    fork = dy @ w - dyt * w[t] + dyt * (lam * w[t] + (a[:, None] * w[t] + b[:, None] * x) / scale) \
        / (1 + lam)
    np.testing.assert_allclose(layer.backprop(dy, np.zeros(1))[0], fork, rtol=1e-9, atol=1e-12)


def test_margin_errors():
    x = np.ones((2, 3))
    with pytest.raises(LayerError, match="label 4 .*\\[0, 4\\)"):
        margin_layer(4, "DOUBLE")(x, np.array([0, 4.0]))
    with pytest.raises(LayerError, match="one label per item"):
        margin_layer(4, "DOUBLE")(x, np.array([0, 1, 2.0]))
    with pytest.raises(LayerError, match="num_output must be > 0"):
        MarginInnerProductLayer()(x, np.zeros(2))
    layer = margin_layer(4, "DOUBLE")
    layer(x, np.zeros(2))
    with pytest.raises(LayerError, match="K = 3"):
        layer(np.ones((2, 5)), np.zeros(2))


# --- LabelSpecificAdd ----------------------------------------------------------------------------

def fork_label_specific_add(x, labels, bias, phase):
    y = x.copy().reshape(len(x), -1)
    if phase == "TRAIN":
        for i in range(len(y)):
            gt = int(labels[i])
            if y[i, gt] > -bias:
                y[i, gt] += bias
    return y.reshape(x.shape)


@settings(max_examples=30, deadline=None)
@given(labelled(), st.sampled_from([-0.35, -0.1, 0.2]), st.sampled_from(["TRAIN", "TEST"]),
       st.booleans(), st.booleans())
def test_label_specific_add_follows_the_fork(case, bias, phase, transform_test, in_place):
    x, labels, n, rng = case
    x = rng.uniform(-1, 1, (len(x), n, 1, 1))
    layer = LabelSpecificAddLayer(label_specific_add_param={
        "bias": bias, "transform_test": transform_test}, phase=phase)
    bottom = [minicnn.Blob.from_array(x), minicnn.Blob.from_array(labels)]
    top = [bottom[0]] if in_place else [minicnn.Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    want = fork_label_specific_add(x, labels, np.float32(bias), phase)
    np.testing.assert_array_equal(top[0].data, want)
    dy = rng.standard_normal(x.shape)
    top[0].diff[...] = dy
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dy)


@pytest.mark.parametrize("p", [
    {"bias_base": 0, "bias_gamma": -0.1, "bias_power": 1, "bias_min": -0.25, "bias_max": 0},
    {"bias_base": -0.05, "bias_gamma": 0.5, "bias_power": 2, "bias_min": -1, "bias_max": 0.3,
     "iteration": 2},
    {"bias_base": 0, "bias_gamma": -0.1, "bias_min": -0.1, "bias_max": -0.3},  # max wins
    {"bias": -0.2, "bias_gamma": -0.1, "bias_min": -1}])          # no bias_base: no annealing
def test_label_specific_add_anneals_its_bias_in_train(p):
    # happynear's caffe-windows: bias = base + (1 + gamma iter)^power - 1, clamped, per TRAIN
    # forward; top[1] the bias used
    rng = np.random.default_rng(4)
    labels = np.array([0, 2, 1, 2.0])
    layer = LabelSpecificAddLayer(label_specific_add_param=p)
    layer.param.top.extend(["y", "margin"])
    it, fixed = p.get("iteration", 0), np.float32(p.get("bias", 0))
    for _ in range(6):
        x = rng.uniform(-1, 1, (4, 3))
        y, margin = layer(x, labels)
        if "bias_base" in p:                      # the fields as stored (float32), in double
            f = {k: float(np.float32(v)) for k, v in {"bias_power": 1, **p}.items()}
            want_bias = f["bias_base"] + (1 + f["bias_gamma"] * it) ** f["bias_power"] - 1
            want_bias = min(max(want_bias, f["bias_min"]), f["bias_max"])
            it += 1
        else:
            want_bias = fixed
        np.testing.assert_allclose(margin, [want_bias], rtol=1e-12)
        np.testing.assert_array_equal(y, fork_label_specific_add(x, labels, want_bias, "TRAIN"))
    test = LabelSpecificAddLayer(label_specific_add_param=p, phase="TEST")
    test.param.top.extend(["y", "margin"])
    x = rng.uniform(-1, 1, (4, 3))
    for _ in range(2):                            # TEST: no shift, no count, top[1] not written
        y, margin = test(x, labels)
        np.testing.assert_array_equal(y, x)
        assert test.iter == p.get("iteration", 0) and float(margin[0]) == 0


def test_label_specific_add_gradient_away_from_the_condition():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (5, 4))
    x[np.abs(x - 0.35) < 0.01] = 0.5
    layer = LabelSpecificAddLayer(label_specific_add_param={"bias": -0.35})
    check_layer_gradient(layer, [x, np.array([0, 1, 2, 3, 1.0])], check_bottoms=[0])


def test_label_specific_add_errors():
    layer = LabelSpecificAddLayer(label_specific_add_param={"bias": -0.35})
    with pytest.raises(LayerError, match="label 3 .*\\[0, 3\\)"):
        layer(np.zeros((2, 3)), np.array([0, 3.0]))
    with pytest.raises(LayerError, match="one value per item"):
        LabelSpecificAddLayer()(np.zeros((2, 3)), np.array([0, 1, 2.0]))


# --- face nets, as the forks' users write them ---------------------------------------------------

CENTER_NET = """
name: "mnist_center_loss"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 16 dim: 1 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label"
  top: "softmax_loss" }
layer { name: "center_loss" type: "CenterLoss" bottom: "ip1" bottom: "label" top: "center_loss"
  param { lr_mult: 1 decay_mult: 2 }
  center_loss_param { num_output: 3 center_filler { type: "xavier" } }
  loss_weight: 0.1 }
"""

SPHERE_NET = """
name: "SphereFaceNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 16 } } }
layer { name: "fc5" type: "InnerProduct" bottom: "data" top: "fc5"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label"
  top: "fc6" top: "lambda"
  param { lr_mult: 1 decay_mult: 1 }
  margin_inner_product_param { num_output: 3 type: QUADRUPLE weight_filler { type: "xavier" }
    base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 0 } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label"
  top: "softmax_loss" }
"""

AM_NET = """
name: "Face-AM-Softmax"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 16 } } }
layer { name: "fc5" type: "InnerProduct" bottom: "data" top: "fc5"
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc5" bottom: "label"
  top: "fc5_margin" label_specific_add_param { bias: -0.35 } }
layer { name: "fc6_margin_scale" type: "Scale" bottom: "fc5_margin" top: "fc6_margin_scale"
  param { lr_mult: 0 decay_mult: 0 } scale_param { filler { type: "constant" value: 30 } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale" bottom: "label"
  top: "softmax_loss" loss_weight: 1 }
"""


def clustered(rng, n, shape, classes=3):
    labels = rng.integers(0, classes, n)
    means = rng.standard_normal((classes,) + shape[1:]) * 2
    return means[labels] + 0.3 * rng.standard_normal(shape), labels.astype(np.float64)


@pytest.mark.parametrize("text, loss_names", [
    (CENTER_NET, ["softmax_loss", "center_loss"]),
    (SPHERE_NET, ["softmax_loss"]),
    (AM_NET, ["softmax_loss"])], ids=["center_loss", "sphereface", "am_softmax"])
def test_face_nets_train(text, loss_names):
    minicnn.set_random_seed(5)
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.01,
                                      lr_policy="fixed", momentum=0.9, weight_decay=0.0005)
    solver = minicnn.get_solver(param, log=lambda message: None)
    rng = np.random.default_rng(1)
    shape = solver.net.blobs["data"].shape
    data, labels = clustered(rng, shape[0], shape)
    first = None
    centers0 = solver.net.params["center_loss"][0].data.copy() if "center_loss" in loss_names \
        else None
    for _ in range(25):
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = labels
        solver.step(1)
        losses = [float(solver.net.blobs[name].data) for name in loss_names]
        assert all(np.isfinite(losses)), losses
        first = first or losses[0]
    assert losses[0] < 0.5 * first, (first, losses)
    if "center_loss" in loss_names:
        centers = solver.net.params["center_loss"][0].data
        feats = solver.net.blobs["ip1"].data
        for j in range(3):                  # each centre has moved towards its class's features
            mean = feats[labels == j].mean(axis=0)
            assert np.linalg.norm(centers[j] - mean) < np.linalg.norm(centers0[j] - mean)
    if "lambda" in solver.net.blobs:
        assert float(solver.net.blobs["lambda"].data[0]) == pytest.approx(1000 / (1 + 0.12 * 25),
                                                                            rel=1e-6)


@pytest.mark.parametrize("margin_type", ["quadruple", "FIVEFOLD"])
def test_margin_ops_refuse_an_unknown_margin_type(margin_type):
    x, w, labels = np.ones((2, 3)), np.eye(3)[:2], np.array([0, 1])
    with pytest.raises(ValueError, match="margin_type must be one of .*QUADRUPLE"):
        minicnn.ops.margin_inner_product_forward(x, w, labels, lam=0.0, margin_type=margin_type)
    with pytest.raises(ValueError, match="margin_type must be one of .*QUADRUPLE"):
        minicnn.ops.margin_inner_product_backward(np.ones((2, 2)), x, w, labels, np.ones(2),
                                                  lam=0.0, margin_type=margin_type)
