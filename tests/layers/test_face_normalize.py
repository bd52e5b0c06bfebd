"""happynear's caffe-windows pieces of AM-Softmax's training nets: InnerProduct's normalize
(field 7), its Normalize layer (normalize_param; a bare `type: "Normalize"` is this one, SSD's
needs norm_param) and ChannelScale, and the published face_train_test.prototxt's and
face_train_test_wo_fn.prototxt's structures trained a few steps.

References written here: transliterations of the fork's loops (normalize_layer.cpp's per-place
loop, the GPU code's fix_gradient), PyTorch on the formulas, and float64 finite differences
where the fork's backward is the gradient."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers.face import ChannelScaleLayer, FaceNormalizeLayer
from minicnn.layers.inner_product import InnerProductLayer
from minicnn.layers.ssd import NormalizeLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from minicnn.testing import check_in_place, check_layer_gradient

# --- Normalize (happynear) ---------------------------------------------------------------------


def fork_normalize(x, kind, eps):
    """normalize_layer.cpp's Forward_cpu loop over (n, s), its eps a parameter (GPU: 1e-12)."""
    shape4 = x.shape + (1,) * (4 - x.ndim)
    n, c, h, w = shape4
    xs = x.reshape(n, c, h * w)
    y, norm = np.zeros_like(xs), np.zeros((n, 1, h * w))
    for i in range(n):
        for s in range(h * w):
            total = 0.0
            for j in range(c):
                total += xs[i, j, s] ** 2 if kind == "L2" else abs(xs[i, j, s])
            total += eps
            norm[i, 0, s] = np.sqrt(total) if kind == "L2" else total
            for j in range(c):
                y[i, j, s] = xs[i, j, s] / norm[i, 0, s]
    return y.reshape(shape4), norm.reshape(n, 1, h, w)


def fork_normalize_backward(dy, y, x, norm, kind, fix_gradient, dnorm):
    """normalize_layer.cu's Backward_gpu, element by element."""
    n, c, h, w = y.shape
    dys, ys, xs = (a.reshape(n, c, h * w) for a in (dy, y, x.reshape(y.shape)))
    ns = norm.reshape(n, h * w)
    dx = np.zeros_like(ys)
    for i in range(n):
        for s in range(h * w):
            a = sum(ys[i, j, s] * dys[i, j, s] for j in range(c))
            for j in range(c):
                g = ys[i, j, s] if kind == "L2" else np.sign(xs[i, j, s])
                dx[i, j, s] = dys[i, j, s] - g * a
                if not fix_gradient:
                    dx[i, j, s] /= ns[i, s]
                if dnorm is not None:
                    dx[i, j, s] += dnorm.reshape(n, h * w)[i, s] * g
    return dx.reshape(x.shape)


@st.composite
def normalize_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(3, 5), (2, 4, 3), (2, 3, 2, 3), (1, 1, 1, 1), (4,)]))
    return rng.standard_normal(shape), draw(st.sampled_from(["L2", "L1"]))


def face_normalize(**p):
    return FaceNormalizeLayer(normalize_param=p)


@settings(max_examples=30, deadline=None)
@given(normalize_cases(), st.booleans(), st.booleans(), st.booleans())
def test_normalize_follows_the_fork(case, two_tops, fix_gradient, bp_norm):
    x, kind = case
    layer = face_normalize(normalize_type=kind, fix_gradient=fix_gradient, bp_norm=bp_norm)
    if two_tops:
        layer.param.top.extend(["y", "norm"])
    out = layer(x)
    eps = 1e-12 if kind == "L2" else 1e-6
    want_y, want_norm = fork_normalize(x, kind, eps)
    y, norm = out if two_tops else (out, None)
    assert y.shape == want_y.shape                                  # 4-D, as the fork's top
    np.testing.assert_allclose(y, want_y, rtol=1e-13, atol=1e-15)
    if two_tops:
        np.testing.assert_allclose(norm, want_norm, rtol=1e-13)
    rng = np.random.default_rng(3)
    dy, dnorm = rng.standard_normal(y.shape), rng.standard_normal(want_norm.shape)
    dx = layer.backprop(dy, dnorm) if two_tops else layer.backprop(dy)
    want = fork_normalize_backward(dy, want_y, x, want_norm, kind, fix_gradient,
                                   dnorm if two_tops and bp_norm else None)
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(normalize_cases(), st.booleans())
def test_normalize_backward_is_the_gradient(case, two_tops):
    x, kind = case
    x = x + np.sign(x) * 0.05                                      # L1's kink at 0
    make = (lambda: face_normalize(normalize_type=kind, bp_norm=True))
    if two_tops:
        layer = make()
        layer.param.top.extend(["y", "norm"])
        check_layer_gradient(layer, [x])                           # both tops: bp_norm
        layer = face_normalize(normalize_type=kind)                # without bp_norm, top[1]'s
        layer.param.top.extend(["y", "norm"])                      # diff is left out
        check_layer_gradient(layer, [x], tops=[0])
    else:
        check_layer_gradient(make, [x])


def test_normalize_without_bp_norm_ignores_the_norm_diff():
    x = np.random.default_rng(0).standard_normal((2, 3))
    diffs = []
    for dnorm in (0.0, 5.0):
        layer = face_normalize()
        layer.param.top.extend(["y", "norm"])
        layer(x)
        diffs.append(layer.backprop(np.ones((2, 3, 1, 1)), np.full((2, 1, 1, 1), dnorm)))
    np.testing.assert_array_equal(diffs[0], diffs[1])


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_normalize_in_place(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 2, 2))
    check_in_place(lambda: face_normalize(normalize_type=kind), x,
                   rng.standard_normal(x.shape))


def test_normalize_matches_torch_on_fc_features():
    x = np.random.default_rng(1).standard_normal((4, 7)).astype(np.float32)
    y = face_normalize()(x)
    want = torch.nn.functional.normalize(torch.from_numpy(x), dim=1).numpy()
    np.testing.assert_allclose(y.reshape(4, 7), want, rtol=1e-6, atol=1e-7)


NET_HEAD = """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 } } }
"""


@pytest.mark.parametrize("block, cls", [
    ("", FaceNormalizeLayer),
    ('normalize_param { normalize_type: "L1" }', FaceNormalizeLayer),
    ("norm_param { across_spatial: false }", NormalizeLayer)])
def test_normalize_type_is_told_apart_by_its_parameter_block(block, cls):
    net = minicnn.Net(parse_text(NET_HEAD + f"""
        layer {{ name: "norm1" type: "Normalize" bottom: "x" top: "y" {block} }}"""),
                      minicnn.TEST)
    assert type(net.layer_dict["norm1"]) is cls
    assert net.layer_dict["norm1"].type == "Normalize"
    assert len(net.params.get("norm1", [])) == (1 if cls is NormalizeLayer else 0)


def test_normalize_errors():
    with pytest.raises(LayerError, match='normalize_type must be "L2" or "L1", got "L3"'):
        face_normalize(normalize_type="L3")(np.ones((2, 3)))
    with pytest.raises(LayerError, match="at most 4"):
        face_normalize()(np.ones((1, 2, 1, 1, 1)))
    layer = face_normalize()
    layer.blobs = [Blob.from_array(np.ones(1))]
    with pytest.raises(LayerError, match="no parameter blobs.*norm_param"):
        layer(np.ones((2, 3)))


# --- InnerProduct's normalize ----------------------------------------------------------------


def ip(normalize, **p):
    minicnn.set_random_seed(2)
    return InnerProductLayer(inner_product_param=dict(
        num_output=4, normalize=normalize, weight_filler={"type": "gaussian", "std": 1.0},
        bias_filler={"type": "gaussian", "std": 1.0}, **p))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.booleans(), st.integers(0, 2**32 - 1))
def test_inner_product_normalize_follows_the_fork(m, k, bias_term, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((m, k)), rng.standard_normal((m, 4))
    layer = ip(True, bias_term=bias_term)
    layer(x)
    layer.blobs[0].data[...] = w0 = rng.standard_normal((4, k)) * 3   # rows far from unit
    y = layer(x)
    dx = layer.backprop(dy)
    # the fork: w_n *= (|w_n|^2 + eps)^-1/2 in place, then the plain product and its backward
    wn = torch.from_numpy(w0)
    wn = wn / torch.sqrt((wn * wn).sum(dim=1, keepdim=True) + 1e-12)
    np.testing.assert_allclose(layer.blobs[0].data, wn.numpy(), rtol=1e-14)
    wt = wn.clone().requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = xt @ wt.T
    if bias_term:
        yt = yt + torch.from_numpy(layer.blobs[1].data)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.blobs[0].diff, wt.grad.numpy(), rtol=1e-12, atol=1e-14)
    check_layer_gradient(layer, [x], check_params=False)  # dx: the gradient at fixed weights


def test_inner_product_without_normalize_leaves_the_weights_alone():
    x = np.random.default_rng(5).standard_normal((3, 6))
    runs = []
    for fields in ({"normalize": False}, {}):            # explicit false, and BVLC's block
        minicnn.set_random_seed(2)
        layer = InnerProductLayer(inner_product_param=dict(
            num_output=4, weight_filler={"type": "gaussian", "std": 1.0},
            bias_filler={"type": "gaussian", "std": 1.0}, **fields))
        layer.setup([Blob.from_array(x)], [Blob((), np.float64)])
        w = layer.blobs[0].data.copy()
        y = layer(x)
        np.testing.assert_array_equal(layer.blobs[0].data, w)    # not rescaled, bit for bit
        runs.append((y, w))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.allclose(np.sum(runs[0][1] ** 2, axis=1), 1)


def test_inner_product_normalize_refuses_transpose():
    with pytest.raises(LayerError, match="normalize.*transpose"):
        ip(True, transpose=True)(np.ones((2, 3)))


# --- AM-Softmax's face_train_test.prototxt ------------------------------------------------------

def am_softmax_net(widths=(64, 128, 256, 512), units=(1, 2, 4, 1), feature=512, classes=10516,
                   input_shape=(256, 3, 112, 96)):
    """happynear/AMSoftmax's prototxt/face_train_test.prototxt, layer for layer (its 20-layer
    residual net: each stage a stride-2 xavier conv, then units of two gaussian(0.01) convs
    with an Eltwise sum, PReLU after every conv; fc5, Normalize, fc6 with normalize: true,
    LabelSpecificAdd, a fixed Scale of 30, SoftmaxWithLoss), its ImageData layers replaced by
    Input layers. The widths and sizes are parameters so that a test can shrink them."""
    n, c, h, w = input_shape
    layers = [(f'layer {{ name: "data" type: "Input" top: "data" top: "label"\n'
               f'  input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }}'
               f' shape {{ dim: {n} }} }} }}')]

    def conv(name, bottom, num, stride, first):
        filler = 'type: "xavier"' if first else 'type: "gaussian" std: 0.01'
        layers.append(f"""layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}"
  top: "{name}" param {{ lr_mult: 1 decay_mult: 1 }}
  param {{ lr_mult: {2 if first else 0} decay_mult: 0 }}
  convolution_param {{ num_output: {num} kernel_size: 3 stride: {stride} pad: 1
    weight_filler {{ {filler} }} bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "relu{name[4:]}" type: "PReLU" bottom: "{name}" top: "{name}" }}""")

    bottom = "data"
    for s, (width, count) in enumerate(zip(widths, units), start=1):
        conv(f"conv{s}_1", bottom, width, 2, True)
        res = f"conv{s}_1"
        for u in range(count):
            a, b = f"conv{s}_{2 * u + 2}", f"conv{s}_{2 * u + 3}"
            conv(a, res if u else f"conv{s}_1", width, 1, False)
            conv(b, a, width, 1, False)
            layers.append(f'layer {{ name: "res{s}_{2 * u + 3}" type: "Eltwise" bottom: "{res}" '
                          f'bottom: "{b}" top: "res{s}_{2 * u + 3}" '
                          f'eltwise_param {{ operation: 1 }} }}')
            res = f"res{s}_{2 * u + 3}"
        bottom = res
    layers.append(f"""layer {{ name: "fc5" type: "InnerProduct" bottom: "{bottom}" top: "fc5"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {feature} weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" }}
layer {{ name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" param {{ lr_mult: 1 }}
  inner_product_param{{ num_output: {classes} normalize: true
    weight_filler {{ type: "xavier" }} bias_term: false }} }}
layer {{ name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label"
  top: "fc6_margin" label_specific_add_param {{ bias: -0.35 }} }}
layer {{ name: "fc6_margin_scale" type: "Scale" bottom: "fc6_margin" top: "fc6_margin_scale"
  param {{ lr_mult: 0 decay_mult: 0 }} scale_param {{ filler{{ type: "constant" value: 30 }} }} }}
layer {{ name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale"
  bottom: "label" top: "softmax_loss" loss_weight: 1 }}
layer {{ name: "Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}""")
    return 'name: "Face-ResNet"\n' + "\n".join(layers)


def test_am_softmax_face_net_trains():
    minicnn.set_random_seed(7)
    text = am_softmax_net(widths=(4, 6, 8, 8), feature=8, classes=3, input_shape=(12, 3, 16, 16))
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.002,
                                      lr_policy="fixed", momentum=0.9, weight_decay=0.0005)
    solver = minicnn.get_solver(param, log=lambda message: None)
    net = solver.net
    assert type(net.layer_dict["norm1"]) is FaceNormalizeLayer
    assert net.blobs["norm1"].shape == (12, 8, 1, 1)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 12)
    means = rng.standard_normal((3, 3, 16, 16))
    data = means[labels] + 0.2 * rng.standard_normal((12, 3, 16, 16))
    losses = []
    for _ in range(15):
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = labels
        solver.step(1)
        losses.append(float(net.blobs["softmax_loss"].data))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.1 * losses[0], losses
    net.forward()
    w = net.params["fc6_l2"][0].data            # fc6's rows are unit length after a forward
    np.testing.assert_allclose(np.sum(w * w, axis=1), 1, rtol=1e-5)
    fc6 = net.blobs["fc6"].data                # cosines: |fc6| <= 1 (unit features, unit rows)
    assert np.all(np.abs(fc6) <= 1 + 1e-4)


# --- ChannelScale (happynear), and AM-Softmax's face_train_test_wo_fn.prototxt ----------------

def fork_channel_scale(x, scale, dy, p):
    """channel_scale_layer.cpp's per-place loops (forward), and the .cu's backward."""
    n = x.shape[0]
    x3 = x.reshape(n, x.size // n // scale[0].size, scale[0].size)
    s2, dy3 = scale.reshape(n, -1), dy.reshape(x3.shape)
    y, dx, ds = np.zeros_like(x3), np.zeros_like(x3), np.zeros_like(s2)
    for i in range(n):
        for s in range(x3.shape[2]):
            for c in range(x3.shape[1]):
                y[i, c, s] = s2[i, s] * x3[i, c, s] if p.get("do_forward", True) else x3[i, c, s]
                dx[i, c, s] = s2[i, s] * dy3[i, c, s] if p.get("do_backward_feature", True) \
                    else dy3[i, c, s]
                if p.get("do_backward_scale", True):
                    ds[i, s] += x3[i, c, s] * dy3[i, c, s]
    return y.reshape(x.shape), dx.reshape(x.shape), ds.reshape(scale.shape)


@st.composite
def channel_scale_shapes(draw):
    """x of 1-4 axes (read as N x C x H x W, missing axes 1) and a scale of N*H*W values in one
    of the shapes that hold them with N first."""
    ndim = draw(st.integers(1, 4))
    x = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    n, _, h, w = x + (1,) * (4 - ndim)
    scale = draw(st.sampled_from([(n, 1, h, w), (n, h, w), (n, h * w), (n, h * w, 1, 1)]))
    if h * w == 1:
        scale = draw(st.sampled_from([scale, (n,), (n, 1)]))
    return x, scale


@settings(max_examples=25, deadline=None)
@given(channel_scale_shapes(), st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_channel_scale_follows_the_fork(shapes, forward, feature, scale_grad, seed):
    rng = np.random.default_rng(seed)
    x, scale = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    p = {"do_forward": forward, "do_backward_feature": feature, "do_backward_scale": scale_grad}
    layer = ChannelScaleLayer(channel_scale_param=p)
    y = layer(x, scale)
    dy = rng.standard_normal(x.shape)
    dx, ds = layer.backprop(dy)
    want_y, want_dx, want_ds = fork_channel_scale(x, scale, dy, p)
    np.testing.assert_allclose(y, want_y, rtol=1e-14)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-14)
    np.testing.assert_allclose(ds, want_ds, rtol=1e-12, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(channel_scale_shapes(), st.sampled_from([[0, 1], [0], [1]]), st.integers(0, 2**32 - 1))
def test_channel_scale_backward_is_the_gradient(shapes, wanted, seed):
    """Finite differences for the bottoms backward is asked for; the other keeps its diff."""
    rng = np.random.default_rng(seed)
    x, scale = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    check_layer_gradient(ChannelScaleLayer(), [x, scale], check_bottoms=wanted)
    layer = ChannelScaleLayer()
    bottom, top = [Blob.from_array(x), Blob.from_array(scale)], [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    stale = [rng.standard_normal(b.shape) for b in bottom]
    for b, old in zip(bottom, stale):
        b.diff[...] = old
    layer.backward(top, [i in wanted for i in range(2)], bottom)
    for i in set(range(2)) - set(wanted):
        np.testing.assert_array_equal(bottom[i].diff, stale[i])



def test_channel_scale_in_place_gives_the_gradients_of_its_own_top():
    """The scale's gradient is sum_c dy * x: in place, forward keeps x before y replaces it."""
    def run(top):
        net = minicnn.Net(parse_text(f"""force_backward: true
            input: "x" input_shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }}
            input: "s" input_shape {{ dim: 2 dim: 1 dim: 2 dim: 2 }}
            layer {{ name: "cs" type: "ChannelScale" bottom: "x" bottom: "s" top: "{top}" }}
            layer {{ name: "l" type: "Reduction" bottom: "{top}" top: "l" loss_weight: 1
                    reduction_param {{ operation: SUMSQ }} }}""", "NetParameter"),
                          phase="TRAIN", dtype=np.float64)
        rng = np.random.default_rng(0)
        net.forward(x=rng.standard_normal((2, 3, 2, 2)), s=rng.standard_normal((2, 1, 2, 2)) + 2)
        net.backward()
        return net.blobs["s"].diff.copy(), net.blobs["x"].diff.copy()
    for got, want in zip(run("x"), run("y")):
        np.testing.assert_allclose(got, want, rtol=1e-14)

def test_channel_scale_global_follows_the_forks_gpu_code():
    rng = np.random.default_rng(7)
    p = {"global_scale": True, "max_global_scale": 3.0, "min_global_scale": 0.5}
    for sizes in ([40, 1, 2, 1, 3], [0.1, 1, 2, 1, 3], [2, 1, 20, 50, 3]):  # max, min, neither
        layer = ChannelScaleLayer(channel_scale_param=p)
        layer.param.top.extend(["y", "g"])
        g = -1.0
        for size in sizes:
            x, scale = rng.standard_normal((4, 3)), rng.uniform(-1, 1, (4, 1)) * size
            y, top_g = layer(x, scale)
            m = np.abs(scale).mean()
            g = min(max(m if g < 0 else g * 0.99 + m * 0.01, 0.5), 3.0)
            assert float(top_g[0]) == pytest.approx(g, rel=1e-14)
            np.testing.assert_allclose(y, x * g, rtol=1e-14)
    dy = rng.standard_normal(x.shape)
    dx, _ = layer.backprop(dy, np.zeros(1))
    np.testing.assert_allclose(dx, dy * scale, rtol=1e-14)     # the per-place scale (the fork's)
    assert layer.param.param[0].lr_mult == 0 and layer.param.param[0].decay_mult == 0
    test = ChannelScaleLayer(channel_scale_param=p, phase="TEST")
    test.param.top.extend(["y", "g"])
    test.setup([Blob.from_array(x), Blob.from_array(scale)], [Blob((), np.float64)] * 2)
    test.blobs[0].data[...] = 2.0
    y, top_g = test(x, scale * 100)                            # TEST: used, not updated
    assert float(top_g[0]) == 2.0 and float(test.blobs[0].data[0]) == 2.0
    np.testing.assert_allclose(y, 2 * x)


def test_channel_scale_errors():
    with pytest.raises(LayerError, match="one scale per item and place"):
        ChannelScaleLayer()(np.zeros((2, 3, 2, 2)), np.zeros((2, 1, 2, 1)))
    layer = ChannelScaleLayer()
    layer.param.top.extend(["y", "g"])
    with pytest.raises(LayerError, match="needs channel_scale_param.global_scale"):
        layer(np.zeros((2, 3)), np.zeros(2))
    layer = ChannelScaleLayer(channel_scale_param={"global_scale": True},
                              param=[{"lr_mult": 1}])
    with pytest.raises(LayerError, match="lr_mult 1, it must be 0"):
        layer(np.zeros((2, 3)), np.zeros(2))


def am_softmax_wo_fn_net(**sizes):
    """face_train_test_wo_fn.prototxt: the same net, but Normalize also gives the feature norm
    (bp_norm), LabelSpecificAdd anneals its margin, and ChannelScale multiplies the cosines by
    the norm instead of the fixed Scale of 30."""
    text = am_softmax_net(**sizes)
    head = text[:text.index('layer { name: "norm1"')]
    classes = sizes.get("classes", 10516)
    return head + f"""layer {{ name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1"
  top: "feature_norm" normalize_param {{ bp_norm: true }} }}
layer {{ name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" param {{ lr_mult: 1 }}
  inner_product_param{{ num_output: {classes} normalize: true
    weight_filler {{ type: "xavier" }} bias_term: false }} }}
layer {{ name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label"
  top: "fc6_margin" top: "margin"
  label_specific_add_param {{ iteration: 0 bias_base: 0 bias_gamma: -5e-05 bias_power: 1
    bias_min: -0.4 bias_max: 0 }} }}
layer {{ name: "fc6_margin_scale" type: "ChannelScale" bottom: "fc6_margin"
  bottom: "feature_norm" top: "fc6_margin_scale" }}
layer {{ name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale"
  bottom: "label" top: "softmax_loss" loss_weight: 1 }}
layer {{ name: "Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}"""


def test_am_softmax_wo_fn_net_trains():
    minicnn.set_random_seed(7)
    text = am_softmax_wo_fn_net(widths=(4, 6, 8, 8), feature=8, classes=3,
                                input_shape=(12, 3, 16, 16))
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.05,
                                      lr_policy="fixed", momentum=0.9, weight_decay=0.0005)
    solver = minicnn.get_solver(param, log=lambda message: None)
    net = solver.net
    assert net.blobs["feature_norm"].shape == (12, 1, 1, 1)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 12)
    data = rng.standard_normal((3, 3, 16, 16))[labels] + 0.2 * rng.standard_normal((12, 3, 16, 16))
    losses = []
    for k in range(15):
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = labels
        solver.step(1)
        losses.append(float(net.blobs["softmax_loss"].data))
        assert float(net.blobs["margin"].data[0]) == pytest.approx(
            max(-5e-5 * k, -0.4), rel=1e-5, abs=1e-9)
    np.testing.assert_allclose(net.blobs["fc6_margin_scale"].data,
                               net.blobs["fc6_margin"].data * net.blobs["feature_norm"].data
                               .reshape(12, 1), rtol=1e-6)
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.1 * losses[0], losses
