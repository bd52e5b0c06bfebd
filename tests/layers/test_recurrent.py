"""Caffe's recurrent layers: LSTM, RNN and LSTMUnit.

Forward against PyTorch in float64 (torch.nn.LSTM / torch.nn.RNN with the weights copied, the
LSTM's gates reordered from Caffe's i, f, o, g to PyTorch's i, f, g, o): every stream is cut at
its cont = 0 steps and each piece run through PyTorch from a zero state (or from the exposed
h_0, c_0 where cont_1 = 1), a static input folded into PyTorch's bias per stream. Backward
against finite differences in float64 over drawn shapes, for every bottom and parameter blob.
Caffe's own behaviours are tested as such: the state carried between forwards, no gradient
through exposed states, the forget gate's gradient for fractional cont, T fixed at setup.

OpenCV is no oracle here: its Caffe importer (4.14) reads an LSTM's blobs as (W_h, W_x, b), not
Caffe's (W_xc, b_c, W_hc), and refuses a Caffe LSTM's weights; it has no cont input either.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import ops
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import LSTMLayer, LSTMUnitLayer, RNNLayer
from minicnn.proto import caffe_pb2, parse_text
from minicnn.testing import check_layer_gradient, numerical_grad
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

FILLERS = {"weight_filler": {"type": "gaussian", "std": 0.5},
           "bias_filler": {"type": "gaussian", "std": 0.5}}
CAFFE_TO_TORCH = [0, 1, 3, 2]      # Caffe's gate blocks i, f, o, g in PyTorch's order i, f, g, o


def make(kind, hidden, **fields):
    cls = {"LSTM": LSTMLayer, "RNN": RNNLayer}[kind]
    layer = cls(num_output=hidden, **FILLERS, **fields)
    layer.rng = np.random.default_rng(7)          # the same weights every time
    return layer


def sequence_cont(rng, t_steps, n, first=0.0):
    """Binary cont (T, N): ``first`` at t = 1, random resets after it."""
    cont = (rng.random((t_steps, n)) > 0.3).astype(float)
    cont[0] = first
    return cont


# --- the PyTorch oracle ---------------------------------------------------------------------------

def oracle(kind, blobs, x, cont, x_static=None, h0=None, c0=None):
    """What Caffe's layer computes, from PyTorch run on each stream's pieces between cont = 0
    steps. Returns (top, h_T, c_T) in float64 (c_T None for RNN)."""
    t_steps, n = cont.shape
    w = dict(zip(blobs, (np.asarray(v, np.float64) for v in blobs.values())))
    lstm = kind == "LSTM"
    hidden = w["W_hc"].shape[1] if lstm else w["W_hh"].shape[0]
    x = x.reshape(t_steps, n, -1)
    top, h_last, c_last = np.zeros((t_steps, n, hidden)), np.zeros((n, hidden)), None
    c_last = np.zeros((n, hidden)) if lstm else None
    order = np.concatenate([np.arange(hidden) + k * hidden for k in CAFFE_TO_TORCH])
    for s in range(n):
        prefix = "W_xc" if lstm else "W_xh"
        bias = w["b_c" if lstm else "b_h"].copy()
        if x_static is not None:
            bias += w[prefix + "_static"] @ x_static[s].reshape(-1)
        module = (torch.nn.LSTM if lstm else torch.nn.RNN)(x.shape[2], hidden).double()
        with torch.no_grad():
            module.weight_ih_l0[:] = torch.tensor(w[prefix][order] if lstm else w[prefix])
            module.weight_hh_l0[:] = torch.tensor(w["W_hc"][order] if lstm else w["W_hh"])
            module.bias_ih_l0[:] = torch.tensor(bias[order] if lstm else bias)
            module.bias_hh_l0.zero_()
        starts = [t for t in range(t_steps) if cont[t, s] == 0 or t == 0]
        for begin, end in zip(starts, starts[1:] + [t_steps]):
            state_h = torch.zeros(1, 1, hidden, dtype=torch.float64)
            state_c = torch.zeros_like(state_h)
            if begin == 0 and cont[0, s] != 0:          # cont_1 = 1: the given h_0, c_0
                state_h = torch.tensor(h0[:, s:s + 1], dtype=torch.float64)
                if lstm:
                    state_c = torch.tensor(c0[:, s:s + 1], dtype=torch.float64)
            piece = torch.tensor(x[begin:end, s:s + 1])
            with torch.no_grad():
                if lstm:
                    out, (hn, cn) = module(piece, (state_h, state_c))
                    c_last[s] = cn[0, 0].numpy()
                else:
                    out, hn = module(piece, state_h)
            top[begin:end, s] = out[:, 0].numpy()
            h_last[s] = hn[0, 0].numpy()
    if not lstm:                                  # Caffe's RNN outputs o = tanh(W_ho h + b_o)
        top = np.tanh(top @ w["W_ho"].T + w["b_o"])
    return top, h_last, c_last


def named_blobs(layer):
    return dict(zip(layer.blob_names(), (b.data for b in layer.blobs)))


# --- forward against PyTorch ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_matches_torch_from_a_sequence_start(kind, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 2, 2)).astype(dtype)        # I = 4: axes from 2 on flattened
    cont = np.ones((5, 3), dtype)
    cont[0] = 0
    layer = make(kind, 6)
    top = layer(x, cont)
    assert top.shape == (5, 3, 6) and top.dtype == dtype
    want, _, _ = oracle(kind, named_blobs(layer), x.astype(np.float64), cont)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(top, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_cont_resets_in_the_middle_match_torch_per_segment(kind):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 4, 3))
    cont = np.ones((7, 4))
    cont[0] = 0
    cont[3, 0] = cont[5, 0] = cont[1, 1] = cont[6, 2] = 0           # stream 3 never resets
    layer = make(kind, 5)
    top = layer(x, cont).copy()              # (a layer called again reuses its top)
    want, _, _ = oracle(kind, named_blobs(layer), x, cont)
    np.testing.assert_allclose(top, want, rtol=1e-12, atol=1e-12)
    # the resets matter: the same input without them gives other outputs after them
    no_reset = np.ones_like(cont)
    no_reset[0] = 0
    layer.reset()
    assert not np.allclose(layer(x, no_reset)[3, 0], top[3, 0])


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_static_input_matches_torch(kind):
    rng = np.random.default_rng(3)
    x, x_static = rng.standard_normal((4, 3, 2)), rng.standard_normal((3, 2, 3))
    cont = sequence_cont(rng, 4, 3)
    layer = make(kind, 4)
    top = layer(x, cont, x_static)
    names = layer.blob_names()
    static = names[2]
    assert static in ("W_xc_static", "W_xh_static")
    assert layer.blobs[2].shape == ((16 if kind == "LSTM" else 4), 6)      # (gates * H, I_s)
    want, _, _ = oracle(kind, named_blobs(layer), x, cont, x_static=x_static)
    np.testing.assert_allclose(top, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_expose_hidden_starts_from_h0_c0_and_gives_h_T_c_T(kind, static):
    rng = np.random.default_rng(4)
    t_steps, n, hidden = 4, 3, 5
    x = rng.standard_normal((t_steps, n, 2))
    cont = sequence_cont(rng, t_steps, n)
    cont[0] = [1, 0, 1]                          # streams 0 and 2 continue from h_0 (c_0)
    states = [rng.standard_normal((1, n, hidden)) for _ in range(2 if kind == "LSTM" else 1)]
    extra = [rng.standard_normal((n, 3))] if static else []
    layer = make(kind, hidden, expose_hidden=True)
    tops = layer(x, cont, *extra, *states)
    assert len(tops) == 1 + len(states) and all(t.shape == (1, n, hidden) for t in tops[1:])
    want, h_last, c_last = oracle(kind, named_blobs(layer), x, cont, *(extra or [None]),
                                  *states)
    np.testing.assert_allclose(tops[0], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tops[1][0], h_last, rtol=1e-12, atol=1e-12)
    if kind == "LSTM":
        np.testing.assert_allclose(tops[2][0], c_last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_exposed_states_pass_no_gradient_as_in_caffe(kind):
    """Caffe shares only the data of h_0 (c_0) and h_T (c_T) with its unrolled net: their diffs
    are zeros and the tops' diffs are ignored, even where cont_1 = 1 makes h_0 matter."""
    rng = np.random.default_rng(5)
    n_states = 2 if kind == "LSTM" else 1
    x, cont = rng.standard_normal((3, 2, 2)), np.ones((3, 2))
    states = [rng.standard_normal((1, 2, 4)) for _ in range(n_states)]
    layer = make(kind, 4, expose_hidden=True)
    layer(x, cont, *states)
    dy = rng.standard_normal((3, 2, 4))
    diffs = layer.backprop(dy, *[np.zeros((1, 2, 4))] * n_states)
    param_diffs = [b.diff.copy() for b in layer.blobs]
    for b in layer.blobs:
        b.diff[...] = 0
    again = layer.backprop(dy, *[rng.standard_normal((1, 2, 4))] * n_states)
    np.testing.assert_array_equal(diffs[0], again[0])                   # dx
    for old, blob in zip(param_diffs, layer.blobs):
        np.testing.assert_array_equal(old, blob.diff)
    for d in again[2:]:
        np.testing.assert_array_equal(d, 0)                             # dh_0, dc_0
    assert again[1] is None                                              # no diff for cont


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_parameter_diffs_accumulate_and_float32_backward_follows_float64(kind):
    rng = np.random.default_rng(13)
    x, x_static = rng.standard_normal((3, 2, 4)), rng.standard_normal((2, 3))
    cont, dy = sequence_cont(rng, 3, 2), rng.standard_normal((3, 2, 5))
    runs = {}
    for dtype in (np.float64, np.float32):
        layer = make(kind, 5)
        layer(*(v.astype(dtype) for v in (x, cont, x_static)))
        dx, _, dx_static = layer.backprop(dy.astype(dtype))
        assert dx.dtype == dx_static.dtype == dtype
        once = [b.diff.copy() for b in layer.blobs]
        layer.backprop(dy.astype(dtype))
        for first, blob in zip(once, layer.blobs):               # I1: parameter diffs add up
            np.testing.assert_allclose(blob.diff, 2 * first, rtol=1e-6)
        assert all(b.dtype == dtype for b in once)
        runs[dtype] = [dx, dx_static] + once
    for got, want in zip(runs[np.float32], runs[np.float64]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- the state carried between forwards (Caffe's TestForward) ------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_between_forwards(kind):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 4))
    cont = np.array([[0, 0], [1, 1], [1, 1]], float)
    whole = make(kind, 5)(x, cont)
    stepper = make(kind, 5)                       # the same weights (seeded), T = 1
    for t in range(3):
        np.testing.assert_allclose(stepper(x[t:t + 1], cont[t:t + 1]), whole[t:t + 1],
                                   rtol=1e-12, atol=1e-12)
    # with cont = 0 every step forgets the carried state: only step 1 agrees
    stepper = make(kind, 5)
    for t in range(3):
        step = stepper(x[t:t + 1], np.zeros((1, 2)))
        assert np.allclose(step, whole[t:t + 1]) == (t == 0)
    # reset() starts again from zeros
    stepper(x[:1], cont[:1])
    stepper.reset()
    np.testing.assert_allclose(stepper(x[1:2], np.ones((1, 2))),
                               make(kind, 5)(x[1:2], np.ones((1, 2))), rtol=1e-12)
    # a smaller batch goes on with the first streams' states, a larger one starts from zeros
    # (what Caffe's reshaped state blobs hold)
    stepper = make(kind, 5)
    stepper(x[:1], cont[:1])
    stepper(x[1:2], cont[1:2])
    np.testing.assert_allclose(stepper(x[2:3, :1], cont[2:3, :1]), whole[2:3, :1], rtol=1e-12)
    wide = stepper(np.concatenate([x[2:3]] * 2, axis=1), np.ones((1, 4)))
    np.testing.assert_allclose(wide[:, :2], make(kind, 5)(x[2:3], np.ones((1, 2))), rtol=1e-12)


# --- gradients (float64 finite differences) -------------------------------------------------------

@st.composite
def recurrent_cases(draw):
    t_steps, n = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    return {"kind": draw(st.sampled_from(["LSTM", "RNN"])), "t": t_steps, "n": n,
            "i": draw(st.integers(1, 3)), "hidden": draw(st.integers(1, 3)),
            "static": draw(st.booleans()), "expose": draw(st.booleans()),
            "seed": draw(st.integers(0, 2**32 - 1))}


@settings(max_examples=20, deadline=None)
@given(recurrent_cases())
def test_recurrent_gradients_match_finite_differences(case):
    """Every bottom but cont and every parameter blob. cont_1 = 0 (a sequence start), so the
    state carried between forwards, and an exposed h_0 (c_0), do not move the objective: their
    zero gradient is then the true one. Exposed h_T (c_T) tops are left out of the objective
    (Caffe passes no gradient from them)."""
    rng = np.random.default_rng(case["seed"])
    t_steps, n, hidden = case["t"], case["n"], case["hidden"]
    bottoms = [rng.standard_normal((t_steps, n, case["i"])), sequence_cont(rng, t_steps, n)]
    if case["static"]:
        bottoms.append(rng.standard_normal((n, 2)))
    if case["expose"]:
        bottoms += [rng.standard_normal((1, n, hidden))
                    for _ in range(2 if case["kind"] == "LSTM" else 1)]
    check_layer_gradient(lambda: make(case["kind"], hidden, expose_hidden=case["expose"]),
                         bottoms, tops=[0], rtol=1e-6, atol=1e-8)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_lstm_unit_gradient_matches_finite_differences(n, hidden, seed):
    rng = np.random.default_rng(seed)
    cont = (rng.random((1, n)) > 0.5).astype(float)
    bottoms = [rng.standard_normal((1, n, hidden)), 2 * rng.standard_normal((1, n, 4 * hidden)),
               cont]
    check_layer_gradient(LSTMUnitLayer, bottoms, rtol=1e-6, atol=1e-8)


def test_lstm_unit_forget_gate_gradient_is_caffes_for_fractional_cont():
    """Caffe's LSTMUnit backward uses f (1 - f) with f = cont * sigm(a_f): the true derivative
    for cont 0 or 1 only. For cont = 0.5 minicnn keeps Caffe's value, not the true one."""
    rng = np.random.default_rng(8)
    c_prev, a = rng.standard_normal((1, 3)), rng.standard_normal((1, 12))
    cont = np.array([0.5])
    dc = np.ones((1, 3))
    _, da = ops.lstm_unit_backward(dc, np.zeros((1, 3)), c_prev, a, cont,
                                   ops.lstm_unit_forward(c_prev, a, cont)[0])
    sig = 1 / (1 + np.exp(-a[:, 3:6]))
    f = 0.5 * sig
    np.testing.assert_allclose(da[:, 3:6], c_prev * f * (1 - f), rtol=1e-12)     # Caffe's
    true = numerical_grad(lambda: ops.lstm_unit_forward(c_prev, a, cont)[0].sum(), a)
    np.testing.assert_allclose(true[:, 3:6], c_prev * 0.5 * sig * (1 - sig), rtol=1e-6)
    assert not np.allclose(da[:, 3:6], true[:, 3:6])
    np.testing.assert_allclose(np.delete(da, np.s_[3:6], axis=1),        # the other gates: exact
                               np.delete(true, np.s_[3:6], axis=1), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_ops_give_the_true_gradient_of_the_initial_states(kind):
    """The layers pass no gradient to exposed states (Caffe's behaviour), but the ops compute it:
    checked here with cont_1 = 1, where h_0 (c_0) matter."""
    rng = np.random.default_rng(9)
    t_steps, n, i, hidden = 3, 2, 2, 3
    x, cont = rng.standard_normal((t_steps, n, i)), np.ones((t_steps, n))
    cont[2, 1] = 0
    h0, c0 = rng.standard_normal((n, hidden)), rng.standard_normal((n, hidden))
    g = 4 if kind == "LSTM" else 1
    w_x, b = rng.standard_normal((g * hidden, i)), rng.standard_normal(g * hidden)
    w_h = rng.standard_normal((g * hidden, hidden))
    w_ho, b_o = rng.standard_normal((hidden, hidden)), rng.standard_normal(hidden)
    dy = rng.standard_normal((t_steps, n, hidden))
    if kind == "LSTM":
        def objective():
            return float(np.sum(ops.lstm_forward(x, cont, h0, c0, w_x, b, w_h)[0] * dy))
        h, c, a = ops.lstm_forward(x, cont, h0, c0, w_x, b, w_h)
        grads = ops.lstm_backward(dy, x, cont, h0, c0, w_x, w_h, h, c, a)
        np.testing.assert_allclose(grads["dc0"], numerical_grad(objective, c0), rtol=1e-6,
                                   atol=1e-9)
    else:
        def objective():
            return float(np.sum(ops.rnn_forward(x, cont, h0, w_x, b, w_h, w_ho, b_o)[0] * dy))
        o, h = ops.rnn_forward(x, cont, h0, w_x, b, w_h, w_ho, b_o)
        grads = ops.rnn_backward(dy, x, cont, h0, w_x, w_h, w_ho, o, h)
    np.testing.assert_allclose(grads["dh0"], numerical_grad(objective, h0), rtol=1e-6,
                               atol=1e-9)
    assert np.abs(grads["dh0"]).max() > 1e-3


# --- LSTMUnit against the LSTM step --------------------------------------------------------------

def test_lstm_unit_is_one_lstm_step():
    rng = np.random.default_rng(10)
    c_prev, a = rng.standard_normal((1, 3, 4)), rng.standard_normal((1, 3, 16))
    cont = np.array([[1.0, 0.0, 1.0]])
    c, h = LSTMUnitLayer()(c_prev, a, cont)
    i, f, o = (1 / (1 + np.exp(-a[..., k * 4:(k + 1) * 4])) for k in range(3))
    g = np.tanh(a[..., 12:])
    want_c = cont[..., None] * f * c_prev + i * g
    np.testing.assert_allclose(c, want_c, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h, o * np.tanh(want_c), rtol=1e-13, atol=1e-15)
    c32, h32 = LSTMUnitLayer()(*(v.astype(np.float32) for v in (c_prev, a, cont)))
    assert c32.dtype == h32.dtype == np.float32
    np.testing.assert_allclose(h32, h, rtol=1e-5, atol=1e-6)


# --- nets: prototxt, weights, training ------------------------------------------------------------

LRCN_STYLE = """
name: "lstm_captioner"
input: "input_sentence" input_shape { dim: 4 dim: 2 dim: 6 }
input: "cont_sentence" input_shape { dim: 4 dim: 2 }
input: "image_features" input_shape { dim: 2 dim: 5 }
layer {
  name: "lstm1"
  type: "LSTM"
  bottom: "input_sentence"
  bottom: "cont_sentence"
  bottom: "image_features"
  top: "lstm1"
  recurrent_param {
    num_output: 8
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 }
  }
}
layer {
  name: "lstm2"
  type: "LSTM"
  bottom: "lstm1"
  bottom: "cont_sentence"
  top: "lstm2"
  recurrent_param {
    num_output: 7
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 }
  }
}
layer {
  name: "predict"
  type: "InnerProduct"
  bottom: "lstm2"
  top: "predict"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param {
    num_output: 6
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 }
    axis: 2
  }
}
layer { name: "probs" type: "Softmax" bottom: "predict" top: "probs" softmax_param { axis: 2 } }
"""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrcn_style_prototxt_loads_runs_and_round_trips_its_weights(tmp_path, dtype):
    net = minicnn.Net(parse_text(LRCN_STYLE), dtype=dtype)
    assert [b.shape for b in net.params["lstm1"]] == [(32, 6), (32,), (32, 5), (32, 8)]
    assert [b.shape for b in net.params["lstm2"]] == [(28, 8), (28,), (28, 7)]
    rng = np.random.default_rng(11)
    x = np.eye(6)[rng.integers(0, 6, (4, 2))]
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], float)
    features = rng.standard_normal((2, 5))
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = 0.3 * rng.standard_normal(b.shape)
    probs = net.forward(input_sentence=x, cont_sentence=cont, image_features=features)["probs"]
    assert probs.shape == (4, 2, 6) and probs.dtype == dtype
    lstm1 = net.layer_dict["lstm1"]
    h1, _, _ = oracle("LSTM", named_blobs(lstm1), x, cont, x_static=features)
    h2, _, _ = oracle("LSTM", named_blobs(net.layer_dict["lstm2"]), h1, cont)
    np.testing.assert_allclose(net.blobs["lstm2"].data, h2,
                               rtol=1e-12 if dtype == np.float64 else 1e-5, atol=1e-6)
    # the blobs in Caffe's order go out to a .caffemodel and back into a fresh net
    path = tmp_path / "lstm.caffemodel"
    net.save(str(path))
    again = minicnn.Net(parse_text(LRCN_STYLE), str(path), dtype=dtype)
    again_probs = again.forward(input_sentence=x, cont_sentence=cont,
                                image_features=features)["probs"]
    np.testing.assert_array_equal(again_probs, probs)


def sequence_task_net(kind, t_steps, n):
    """Echo: predict at step t the symbol seen at step t - 1 (needs memory)."""
    return parse_text(f"""
    input: "x" input_shape {{ dim: {t_steps} dim: {n} dim: 3 }}
    input: "cont" input_shape {{ dim: {t_steps} dim: {n} }}
    input: "target" input_shape {{ dim: {t_steps} dim: {n} }}
    layer {{ name: "rec" type: "{kind}" bottom: "x" bottom: "cont" top: "rec"
      recurrent_param {{ num_output: 12 weight_filler {{ type: "uniform" min: -0.3 max: 0.3 }}
                         bias_filler {{ type: "constant" value: 0 }} }} }}
    layer {{ name: "predict" type: "InnerProduct" bottom: "rec" top: "predict"
      inner_product_param {{ num_output: 3 axis: 2 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "predict" bottom: "target"
      top: "loss" loss_param {{ ignore_label: -1 }} softmax_param {{ axis: 2 }} }}
    """)


def sequence_task_solver(kind, device=None, t_steps=6, n=8):
    param = caffe_pb2.SolverParameter(
        net_param=sequence_task_net(kind, t_steps, n), base_lr=0.5, lr_policy="fixed",
        momentum=0.9, max_iter=60, random_seed=5, snapshot_after_train=False)
    solver = minicnn.get_solver(param, log=lambda message: None, device=device)
    rng = np.random.default_rng(12)
    symbols = rng.integers(0, 3, (t_steps, n))
    target = np.vstack([-np.ones((1, n)), symbols[:-1]])       # step 1 has nothing to echo
    cont = np.ones((t_steps, n))
    cont[0] = 0
    for name, values in (("x", np.eye(3)[symbols]), ("cont", cont), ("target", target)):
        solver.net.blobs[name].data = values.astype(np.float32)
    losses = []
    solver.on_iteration.append(lambda s, loss, rate: losses.append(loss))
    return solver, losses, symbols


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_sgd_learns_a_tiny_sequence_task(kind):
    solver, losses, symbols = sequence_task_solver(kind)
    solver.step(60)
    assert losses[0] > 0.9                                     # about ln 3 at the start
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    predict = solver.net.blobs["predict"].data.argmax(axis=2)
    assert (predict[1:] == symbols[:-1]).mean() > 0.9


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_a_gpu_net_runs_them_on_host_copies(gpu, kind):
    """Their ops have no CUDA version: a GPU net (the emulator here, a GPU where there is one)
    runs them on host copies of their blobs, and trains as the CPU net does."""
    cpu, cpu_losses, _ = sequence_task_solver(kind)
    cpu.step(3)
    dev, dev_losses, _ = sequence_task_solver(kind, device=0)
    assert dev.net.device == 0 and list(dev.net._mirrors) == [1]    # layer 1: "rec"
    dev.step(3)
    np.testing.assert_allclose(dev_losses, cpu_losses, rtol=1e-5)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("cont_shape, message", [
    ((3,), r"cont \(bottom 1\) must have shape \(T, N\) = \(3, 2\).*got \(3,\)"),
    ((3, 2, 1), r"cont \(bottom 1\).*\(3, 2\).*got \(3, 2, 1\)"),
    ((2, 2), r"cont \(bottom 1\).*\(3, 2\).*got \(2, 2\)"),
    ((3, 4), r"cont \(bottom 1\).*\(3, 2\).*got \(3, 4\)"),
])
def test_wrong_cont_shapes_are_clear_errors(kind, cont_shape, message):
    with pytest.raises(LayerError, match=message):
        make(kind, 3)(np.ones((3, 2, 4)), np.ones(cont_shape))


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_bad_shapes_and_parameters_are_clear_errors(kind):
    with pytest.raises(LayerError, match=r"num_output must be positive, got 0"):
        make(kind, 0)(np.ones((2, 1, 3)), np.zeros((2, 1)))
    with pytest.raises(LayerError, match=r"x \(bottom 0\) must have at least 2 axes.*\(5,\)"):
        make(kind, 2)(np.ones(5), np.zeros(5))
    layer = make(kind, 2)
    layer(np.ones((2, 1, 3)), np.zeros((2, 1)))
    with pytest.raises(LayerError, match=r"number of time steps changed.*\(4, 1, 3\).*T = 2"):
        layer(np.ones((4, 1, 3)), np.zeros((4, 1)))
    with pytest.raises(LayerError, match=r"has 5 inputs per step, the weights take 3"):
        layer(np.ones((2, 1, 5)), np.zeros((2, 1)))
    with pytest.raises(LayerError, match=r"x_static \(bottom 2\).*N = 2.*got \(3, 4\)"):
        make(kind, 2)(np.ones((2, 2, 3)), np.zeros((2, 2)), np.ones((3, 4)))
    states = 2 if kind == "LSTM" else 1
    with pytest.raises(LayerError, match=r"h_0 \(bottom 2\) must have shape \(1, N, "
                                         r"num_output\) = \(1, 2, 2\); got \(2, 2\)"):
        make(kind, 2, expose_hidden=True)(np.ones((2, 2, 3)), np.zeros((2, 2)),
                                          np.ones((2, 2)), *[np.ones((1, 2, 2))] * (states - 1))
    with pytest.raises(LayerError, match=r"with expose_hidden takes .* bottoms \(x, cont, "
                                         r"\[x_static\], h_0.*\) and .* got 2 bottoms"):
        make(kind, 2, expose_hidden=True)(np.ones((2, 2, 3)), np.zeros((2, 2)))
    layer = make(kind, 2)
    layer.blobs = [Blob.from_array(np.ones((2, 3)))]
    with pytest.raises(LayerError, match=r"1 parameter blobs given.*without a static input"):
        layer(np.ones((2, 1, 3)), np.zeros((2, 1)))
    layer = make(kind, 2)
    layer(np.ones((2, 1, 3)), np.zeros((2, 1)))
    bottom, top = layer._standalone
    top[0].diff[...] = 1
    with pytest.raises(LayerError, match=r"cannot backpropagate to the sequence indicators"):
        layer.backward(top, [True, True], bottom)


def test_stored_weights_of_the_wrong_shape_are_named():
    layer = make("LSTM", 2)
    layer.blobs = [Blob.from_array(np.ones((8, 3))), Blob.from_array(np.ones(8)),
                   Blob.from_array(np.ones((8, 3)))]
    with pytest.raises(LayerError, match=r"W_hc \(blob 2\) should have shape \(8, 2\)"):
        layer(np.ones((2, 1, 3)), np.zeros((2, 1)))


def test_lstm_unit_errors():
    with pytest.raises(LayerError, match=r"c_prev \(bottom 0\) must have shape \(1, N, H\), "
                                         r"got \(2, 1, 3\)"):
        LSTMUnitLayer()(np.ones((2, 1, 3)), np.ones((2, 1, 12)), np.ones((2, 1)))
    with pytest.raises(LayerError, match=r"X \(bottom 1\) must have shape \(1, N, 4H\) = "
                                         r"\(1, 1, 12\).*got \(1, 1, 9\)"):
        LSTMUnitLayer()(np.ones((1, 1, 3)), np.ones((1, 1, 9)), np.ones((1, 1)))
    with pytest.raises(LayerError, match=r"cont \(bottom 2\) must have shape \(1, N\) = "
                                         r"\(1, 2\); got \(2,\)"):
        LSTMUnitLayer()(np.ones((1, 2, 3)), np.ones((1, 2, 12)), np.ones(2))
    layer = LSTMUnitLayer()
    layer(np.ones((1, 1, 3)), np.ones((1, 1, 12)), np.ones((1, 1)))
    bottom, top = layer._standalone
    with pytest.raises(LayerError, match=r"cannot backpropagate to the sequence indicators"):
        layer.backward(top, [True, True, True], bottom)


def test_registered_with_caffe_counts_and_force_backward_skips_cont():
    text = """input: "x" input_shape { dim: 2 dim: 1 dim: 3 }
    input: "cont" input_shape { dim: 2 dim: 1 }
    force_backward: true
    layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
            recurrent_param { num_output: 2 weight_filler { type: "gaussian" } } }"""
    net = minicnn.Net(parse_text(text), dtype=np.float64)
    net.forward(x=np.ones((2, 1, 3)), cont=np.array([[0.0], [1.0]]))
    net.backward(h=np.ones((2, 1, 2)))                 # does not ask for cont's diff
    assert np.abs(net.blobs["x"].diff).max() > 0


def test_lstm_unit_float32_is_caffes_expression_bit_for_bit():
    """Caffe's LSTMUnit: sigmoid(x) = 1. / (1. + exp(-x)) (exp in float, the rest in double),
    tanh(x) = 2. * sigmoid(2. * x) - 1. (all in double), each result rounded to float; the
    products and the sum c = f c_prev + i g in float. A transliteration, element by element."""
    import math
    from minicnn.ops.recurrent import lstm_unit_forward
    f32 = np.float32
    rng = np.random.default_rng(11)
    hidden = 5
    a = (rng.standard_normal((3, 4 * hidden)) * 4).astype(f32)
    a[0, 0], a[1, 1] = -100, 100                     # exp overflows in float: sigm 0 and 1
    c_prev = rng.standard_normal((3, hidden)).astype(f32)
    cont = np.array([1, 0, 1], f32)

    def sigm(x):
        with np.errstate(over="ignore"):               # exp(100) is inf in float
            e = f32(math.exp(-float(x)))
        return f32(1.0 / (1.0 + float(e)))

    def tanh(x):
        return f32(2.0 * (1.0 / (1.0 + math.exp(-2.0 * float(x)))) - 1.0)

    want_c, want_h = np.empty_like(c_prev), np.empty_like(c_prev)
    for n in range(3):
        for d in range(hidden):
            i, o = sigm(a[n, d]), sigm(a[n, 2 * hidden + d])
            f = f32(0) if cont[n] == 0 else f32(cont[n] * sigm(a[n, hidden + d]))
            g = tanh(a[n, 3 * hidden + d])
            want_c[n, d] = f32(f32(f * c_prev[n, d]) + f32(i * g))
            want_h[n, d] = f32(o * tanh(want_c[n, d]))
    with np.errstate(over="ignore"):
        c, h = lstm_unit_forward.impls["ref"](c_prev, a, cont)
    np.testing.assert_array_equal(c.view(np.uint32), want_c.view(np.uint32))
    np.testing.assert_array_equal(h.view(np.uint32), want_h.view(np.uint32))
