"""Im2col, BatchReindex, Filter and Parameter: forward against loops written here (and PyTorch's
unfold for Im2col), backward against finite differences in float64 over drawn shapes and
parameters, the errors, and each in a Net (set-up, changing shapes, training)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError, NetError
from minicnn.layers.conv import ConvolutionLayer, Im2colLayer
from minicnn.layers.structure import BatchReindexLayer, FilterLayer, ParameterLayer
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

seeds = st.integers(0, 2**32 - 1)


# --- Im2col ------------------------------------------------------------------------------------

@st.composite
def im2col_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 6))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 6))
    fields = dict(kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw,
                  dilation=[dh, dw])
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), fields, draw(seeds)


def im2col_loops(x, kh, kw, sh, sw, ph, pw, dh, dw):
    n, c, h, w = x.shape
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    y = np.zeros((n, c * kh * kw, oh, ow), x.dtype)
    for ni in range(n):
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    for oy in range(oh):
                        for ox in range(ow):
                            r, q = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                            if 0 <= r < h and 0 <= q < w:
                                y[ni, (ci * kh + i) * kw + j, oy, ox] = x[ni, ci, r, q]
    return y


@settings(max_examples=25, deadline=None)
@given(im2col_cases())
def test_im2col_forward_is_every_window_as_a_column(case):
    shape, f, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)
    got = Im2colLayer(**f)(x)
    want = im2col_loops(x, f["kernel_h"], f["kernel_w"], f["stride_h"], f["stride_w"],
                        f["pad_h"], f["pad_w"], *f["dilation"])
    np.testing.assert_array_equal(got, want)


def test_im2col_matches_pytorch_unfold():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8))
    got = Im2colLayer(kernel_size=3, stride=2, pad=1, dilation=2)(x)
    want = torch.nn.functional.unfold(torch.from_numpy(x), 3, dilation=2, padding=1,
                                      stride=2).numpy()
    np.testing.assert_array_equal(got.reshape(want.shape), want)


@settings(max_examples=12, deadline=None)
@given(im2col_cases())
def test_im2col_backward_matches_finite_differences(case):
    shape, f, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)
    check_layer_gradient(lambda: Im2colLayer(**f), [x])


def test_a_convolution_is_its_weights_times_the_columns():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 7, 6))
    geometry = dict(kernel_size=3, stride=2, pad=1, dilation=1)
    conv = ConvolutionLayer(num_output=5, **geometry, weight_filler={"type": "gaussian"},
                            bias_filler={"type": "gaussian"})
    y = conv(x)
    cols = Im2colLayer(**geometry)(x)
    w, b = conv.blobs[0].data, conv.blobs[1].data
    want = np.einsum("fk,nkyx->nfyx", w.reshape(5, -1), cols) + b.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_im2col_errors_name_the_problem():
    with pytest.raises(LayerError, match="4-D"):
        Im2colLayer(kernel_size=2)(np.zeros((2, 3, 4)))
    with pytest.raises(LayerError, match="smaller than the kernel extent"):
        Im2colLayer(kernel_size=5)(np.zeros((1, 1, 3, 3)))
    with pytest.raises(LayerError, match="no kernel size"):
        Im2colLayer()(np.zeros((1, 1, 3, 3)))


# --- BatchReindex ------------------------------------------------------------------------------

@st.composite
def reindex_cases(draw):
    n = draw(st.integers(1, 4))
    inner = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    index = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
    return (n, *inner), np.array(index, np.float64), draw(seeds)


@settings(max_examples=25, deadline=None)
@given(reindex_cases())
def test_batch_reindex_picks_items_and_sums_their_gradients(case):
    shape, index, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    layer = BatchReindexLayer()
    y = layer(x, index)
    for i, k in enumerate(index.astype(int)):
        np.testing.assert_array_equal(y[i], x[k])
    dy = rng.standard_normal(y.shape)
    dx, d_index = layer.backprop(dy)
    want = np.zeros_like(x)
    for i, k in enumerate(index.astype(int)):                 # a loop: repeats add up
        want[k] += dy[i]
    np.testing.assert_allclose(dx, want, rtol=0, atol=1e-15)
    assert d_index is None                                    # the indices get no gradient
    check_layer_gradient(BatchReindexLayer, [x, index])


@pytest.mark.parametrize("index, shown", [([0, 1.5], "index\\[1\\] is 1.5"),
                                          ([-1], "index\\[0\\] is -1"),
                                          ([3], "index\\[0\\] is 3"),
                                          ([np.nan], "index\\[0\\] is nan")])
def test_batch_reindex_refuses_indices_that_are_not_items(index, shown):
    with pytest.raises(LayerError, match=shown + ".*batch of 3"):
        BatchReindexLayer()(np.zeros((3, 2)), np.array(index))


def test_batch_reindex_shape_errors_and_no_gradient_to_the_index():
    with pytest.raises(LayerError, match="must be 1-D"):
        BatchReindexLayer()(np.zeros((3, 2)), np.zeros((2, 1)))
    layer = BatchReindexLayer()
    layer(np.zeros((3, 2)), np.array([0.0, 2.0]))
    bottom, top = layer._standalone
    with pytest.raises(LayerError, match="cannot backpropagate to its index"):
        layer.backward(top, [True, True], bottom)


# --- Filter ------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 2), seeds)
def test_filter_keeps_the_selected_items(n, num_blobs, seed):
    rng = np.random.default_rng(seed)
    selector = rng.choice([0.0, 1.0, -2.0, 0.5], size=(n, 1))
    if not selector.any():
        selector[rng.integers(n)] = 1.0
    blobs = [rng.standard_normal((n, *rng.integers(1, 3, size=k))) for k in range(num_blobs)]
    layer = FilterLayer(bottom=[f"b{k}" for k in range(num_blobs)] + ["sel"],
                        top=[f"t{k}" for k in range(num_blobs)])
    out = layer(*blobs, selector)
    out = out if isinstance(out, tuple) else (out,)
    kept = [i for i in range(n) if selector[i, 0] != 0]
    for x, y in zip(blobs, out):
        np.testing.assert_array_equal(y, x[kept])
    diffs = [rng.standard_normal(y.shape) for y in out]
    grads = layer.backprop(*diffs)
    for x, dy, dx in zip(blobs, diffs, grads):
        want = np.zeros_like(x)
        want[kept] = dy                                       # dropped items get 0
        np.testing.assert_array_equal(dx, want)
    assert grads[-1] is None
    check_layer_gradient(lambda: FilterLayer(bottom=[f"b{k}" for k in range(num_blobs)] +
                                             ["sel"], top=[f"t{k}" for k in range(num_blobs)]),
                         [*blobs, selector])


def test_filter_errors_name_the_problem():
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        FilterLayer(top=["a", "b"])(np.zeros((2, 3)), np.ones(2))
    with pytest.raises(LayerError, match="selector.*\\(N,\\) or \\(N, 1, ...\\)"):
        FilterLayer()(np.zeros((2, 3)), np.ones((2, 2)))
    with pytest.raises(LayerError, match="bottom 0 of shape \\(3, 3\\).*2 items"):
        FilterLayer()(np.zeros((3, 3)), np.ones(2))


FILTER_NET = """
layer { name: "in" type: "Input" top: "x" top: "sel" top: "target"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "filter" type: "Filter" bottom: "ip" bottom: "target" bottom: "sel"
        top: "ip_kept" top: "target_kept" }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip_kept" bottom: "target_kept" top: "loss" }
"""


def test_filter_in_a_net_changes_its_tops_shape_with_the_selection():
    net = minicnn.Net(parse_text(FILTER_NET, "NetParameter"), phase=minicnn.TRAIN)
    assert net.blobs["ip_kept"].shape == (4, 2)           # set-up: every item, as in Caffe
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    for sel in ([1, 0, 1, 1], [0, 1, 0, 0]):
        sel = np.array(sel, np.float32)
        net.forward(x=x, sel=sel, target=target)
        kept = np.flatnonzero(sel)
        assert net.blobs["ip_kept"].shape == (len(kept), 2)
        ip = net.blobs["ip"].data
        want = np.sum((ip[kept] - target[kept].astype(np.float32)) ** 2) / (2 * len(kept))
        np.testing.assert_allclose(net.blobs["loss"].data, want, rtol=1e-5)
        net.backward()
        diff = net.blobs["ip"].diff
        assert not diff[np.flatnonzero(sel == 0)].any()
        np.testing.assert_allclose(diff[kept], (ip[kept] - target[kept]) / len(kept), rtol=1e-5)
    with pytest.raises(NetError, match="layer 'loss'.*empty"):
        net.forward(x=x, sel=np.zeros(4, np.float32), target=target)


# --- Parameter ---------------------------------------------------------------------------------

PARAMETER_NET = """
layer { name: "in" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "p" type: "Parameter" top: "p" param { lr_mult: 1 }
        parameter_param { shape { dim: 2 dim: 3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "target" top: "loss" }
"""


def test_parameter_starts_at_zero_and_learns_the_target(tmp_path):
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(PARAMETER_NET)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0.5 lr_policy: "fixed" max_iter: 40 '
                           f'display: 0 snapshot_after_train: false random_seed: 1')
    solver = minicnn.get_solver(str(solver_file))
    net = solver.net
    assert not net.params["p"][0].data.any()               # Caffe's layer has no filler
    target = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["target"].data[...] = target
    solver.step(40)
    # loss = |p - t|^2 / 4: each step moves p by lr * (p - t) / 2 toward t
    np.testing.assert_allclose(net.params["p"][0].data, target * (1 - 0.75 ** 40), rtol=1e-4)
    weights = tmp_path / "p.caffemodel"
    net.save(str(weights))
    again = minicnn.Net(str(net_file), str(weights), minicnn.TEST)
    np.testing.assert_array_equal(again.forward(target=target)["loss"],
                                  net.forward(target=target)["loss"])


def test_parameter_backward_accumulates_and_shape_errors():
    layer = ParameterLayer(parameter_param={"shape": {"dim": [3]}})
    y = layer()
    assert y.shape == (3,) and not y.any()
    layer.backprop(np.array([1.0, 2.0, 3.0]))
    layer.backprop(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(layer.blobs[0].diff, [2, 4, 6])   # parameter diffs add up
    check_layer_gradient(lambda: ParameterLayer(parameter_param={"shape": {"dim": [2, 2]}}), [])
    with pytest.raises(LayerError, match="negative dimension"):
        ParameterLayer(parameter_param={"shape": {"dim": [2, -1]}})()
