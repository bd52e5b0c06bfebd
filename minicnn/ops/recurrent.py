"""Caffe's recurrent layers, "LSTMUnit", "LSTM" and "RNN", as functions of whole sequences.

Caffe builds LSTM and RNN as an unrolled net of InnerProduct, Scale, Eltwise, TanH and LSTMUnit
layers, one group per time step; these functions compute what that net computes, step by step.
Shapes: T time steps, N independent streams, x (T, N, ...) with I = the product of its axes from
2 on, H = num_output. cont (T, N) is 0 where a sequence starts and 1 where it goes on: it
multiplies the previous state, so 0 forgets it.

LSTMUnit, one step. The gate pre-activations a (4H wide) are, in Caffe's order, a_i, a_f, a_o, a_g:
    i = sigm(a_i)   f = cont * sigm(a_f)   o = sigm(a_o)   g = tanh(a_g)
    c = f * c_prev + i * g
    h = o * tanh(c)
  Backward, with dc_ = dc + dh * o * (1 - tanh(c)^2) (c reaches the loss directly and through h):
    dc_prev = dc_ * f
    da_i = dc_ * g * i (1 - i)          da_f = dc_ * c_prev * f (1 - f)
    da_o = dh * tanh(c) * o (1 - o)     da_g = dc_ * i * (1 - g^2)
  Surprise: da_f is Caffe's f (1 - f) with f = cont * sigm(a_f). That is the derivative only for
  cont 0 or 1 (the values Caffe means cont to take); for cont = 0.5 the true one is
  0.5 * sigm (1 - sigm) and Caffe's, kept here, is not.

LSTM, t = 1..T, from h_0 and c_0:
    a_t = W_hc (cont_t h_{t-1}) + (W_xc x_t + b_c) [+ W_xc_static x_static]
    c_t, h_t = LSTMUnit(c_{t-1}, a_t, cont_t)
  weights W_xc (4H, I), b_c (4H,), W_xc_static (4H, I_s), W_hc (4H, H); the output is h_1..h_T.
  cont_t multiplies h_{t-1} *before* the product with W_hc (Caffe's Scale layer), and c_{t-1}
  through f.

RNN, t = 1..T, from h_0:
    h_t = tanh(W_hh (cont_t h_{t-1}) + (W_xh x_t + b_h) [+ W_xh_static x_static])
    o_t = tanh(W_ho h_t + b_o)
  weights W_xh (H, I), b_h (H,), W_xh_static (H, I_s), W_hh (H, H), W_ho (H, H), b_o (H,); the
  output is o_1..o_T (a second tanh layer, not h).

x_static (N, ...) is one more input per stream, the same at every step (I_s = its axes from 1 on,
flattened); it has no bias. Backward is backpropagation through time over the T steps given: the
gradients of h_0 and c_0 are returned too (the layers do not pass them on, as Caffe does not).
Sums run in the order of Caffe's unrolled net (W_hc h + (W_xc x + b) + static) so float32
results stay close to Caffe's.

sigm and tanh inside LSTMUnit are Caffe's own: sigm(x) = 1. / (1. + exp(-x)) and
tanh(x) = 2. * sigm(2. * x) - 1., whose C++ computes exp in the blob's type and the rest in
double (the 1. and 2. are doubles), then rounds to the blob's type; so does minicnn (exp through
float64, correctly rounded to float32, where glibc's expf is within 0.502 ulp). Where RNN applies
a TanH layer it is the TanH layer's tanh. Every op keeps the input's dtype.
Impls: ref. (A GPU net runs these layers on host copies.)
"""

import math

import numpy as np

from minicnn.ops._dispatch import Op

__all__ = ["lstm_backward", "lstm_forward", "lstm_unit_backward", "lstm_unit_forward",
           "rnn_backward", "rnn_forward"]

lstm_unit_forward, lstm_unit_backward = Op("lstm_unit_forward"), Op("lstm_unit_backward")
lstm_forward, lstm_backward = Op("lstm_forward"), Op("lstm_backward")
rnn_forward, rnn_backward = Op("rnn_forward"), Op("rnn_backward")


def _sigmoid(x):
    """Caffe's LSTMUnit sigmoid: exp(-x) in x's dtype, 1 / (1 + e) in double, rounded back."""
    with np.errstate(over="ignore"):                 # exp(88.8) is inf in float32: sigm 0
        e = np.exp(-x.astype(np.float64)).astype(x.dtype).astype(np.float64)
    return (1.0 / (1.0 + e)).astype(x.dtype)


def _lstm_tanh(x):
    """Caffe's LSTMUnit tanh: 2 * sigm(2 x) - 1, all in double (2. * x is a double), rounded."""
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-2.0 * x.astype(np.float64)))
    return (2.0 * s - 1.0).astype(x.dtype)


def _flat(x, axis):
    """x with its axes from ``axis`` on flattened into one: (T, N, ...) -> (T, N, I)."""
    return x.reshape(*x.shape[:axis], math.prod(x.shape[axis:]))


def _gates(a, cont):
    """i, f, o, g from the pre-activations a (..., 4H), with cont (...) folded into f."""
    a_i, a_f, a_o, a_g = np.split(a, 4, axis=-1)
    f = cont[..., None] * _sigmoid(a_f)
    return _sigmoid(a_i), f, _sigmoid(a_o), _lstm_tanh(a_g)


def _input_term(x, w, b, x_static, w_static):
    """W x_t + b for every step (T, N, G), and W_static x_static (N, G) or None."""
    xw = _flat(x, 2) @ w.T
    if b is not None:
        xw += b
    static = None if x_static is None else _flat(x_static, 1) @ w_static.T
    return xw, static


def _input_backward(da, x, w, x_static, w_static):
    """The gradients of the input transform from da (T, N, G), the gradient of its output:
    dx, dW, db, dx_static, dW_static (the last two None without a static input)."""
    da2 = da.reshape(-1, da.shape[-1])                                  # (T N, G)
    dx = (da2 @ w).reshape(x.shape)
    dw = da2.T @ _flat(x, 2).reshape(da2.shape[0], -1)
    db = da2.sum(axis=0)
    dx_static = dw_static = None
    if x_static is not None:
        da_static = da.sum(axis=0)                                      # (N, G): used every step
        dx_static = (da_static @ w_static).reshape(x_static.shape)
        dw_static = da_static.T @ _flat(x_static, 1)
    return dx, dw, db, dx_static, dw_static


# --- reference: LSTMUnit -------------------------------------------------------------------------

@lstm_unit_forward.impl("ref")
def _lstm_unit_forward_ref(c_prev, a, cont):
    """One LSTM step: c_prev (..., H), a (..., 4H) in gate order i, f, o, g, cont (...).
    Returns (c, h), each like c_prev."""
    i, f, o, g = _gates(a, cont)
    c = f * c_prev + i * g
    return c, o * _lstm_tanh(c)


@lstm_unit_backward.impl("ref")
def _lstm_unit_backward_ref(dc, dh, c_prev, a, cont, c):
    """(dc_prev, da) from the gradients of c and h, with forward's inputs and its c."""
    i, f, o, g = _gates(a, cont)
    tanh_c = _lstm_tanh(c)
    dc_ = dc + dh * o * (1 - tanh_c * tanh_c)
    da = np.concatenate([dc_ * g * i * (1 - i),
                         dc_ * c_prev * f * (1 - f),        # Caffe's: see the module docstring
                         dh * tanh_c * o * (1 - o),
                         dc_ * i * (1 - g * g)], axis=-1)
    return dc_ * f, da


# --- reference: LSTM -----------------------------------------------------------------------------

@lstm_forward.impl("ref")
def _lstm_forward_ref(x, cont, h0, c0, w_xc, b_c, w_hc, x_static=None, w_xc_static=None):
    """x (T, N, ...), cont (T, N), h0 and c0 (N, H). Returns (h, c, a): h_t, c_t and the gate
    pre-activations a_t for t = 1..T, shapes (T, N, H), (T, N, H), (T, N, 4H)."""
    xw, static = _input_term(x, w_xc, b_c, x_static, w_xc_static)
    t_steps, n, hidden = xw.shape[0], xw.shape[1], w_hc.shape[1]
    h = np.empty((t_steps, n, hidden), xw.dtype)
    c, a = np.empty_like(h), np.empty_like(xw)
    h_prev, c_prev = h0, c0
    for t in range(t_steps):
        a[t] = (cont[t][:, None] * h_prev) @ w_hc.T + xw[t]
        if static is not None:
            a[t] += static
        c[t], h[t] = _lstm_unit_forward_ref(c_prev, a[t], cont[t])
        h_prev, c_prev = h[t], c[t]
    return h, c, a


@lstm_backward.impl("ref")
def _lstm_backward_ref(dh, x, cont, h0, c0, w_xc, w_hc, h, c, a, x_static=None,
                       w_xc_static=None):
    """Backpropagation through time from dh (T, N, H), the gradient of every h_t, with forward's
    inputs and outputs. Returns a dict of dx, dw_xc, db_c, dw_hc, dx_static, dw_xc_static
    (None without a static input), dh0 and dc0."""
    dh_next = np.zeros_like(h0)                # through W_hc from step t + 1
    dc_next = np.zeros_like(c0)                # through f from step t + 1
    da, dw_hc = np.empty_like(a), np.zeros_like(w_hc)
    for t in reversed(range(dh.shape[0])):
        h_prev, c_prev = (h[t - 1], c[t - 1]) if t else (h0, c0)
        dc_next, da[t] = _lstm_unit_backward_ref(dc_next, dh[t] + dh_next, c_prev, a[t],
                                                 cont[t], c[t])
        h_conted = cont[t][:, None] * h_prev
        dw_hc += da[t].T @ h_conted
        dh_next = cont[t][:, None] * (da[t] @ w_hc)
    dx, dw_xc, db_c, dx_static, dw_static = _input_backward(da, x, w_xc, x_static, w_xc_static)
    return {"dx": dx, "dw_xc": dw_xc, "db_c": db_c, "dw_hc": dw_hc, "dx_static": dx_static,
            "dw_xc_static": dw_static, "dh0": dh_next, "dc0": dc_next}


# --- reference: RNN ------------------------------------------------------------------------------

@rnn_forward.impl("ref")
def _rnn_forward_ref(x, cont, h0, w_xh, b_h, w_hh, w_ho, b_o, x_static=None, w_xh_static=None):
    """x (T, N, ...), cont (T, N), h0 (N, H). Returns (o, h), both (T, N, H)."""
    xw, static = _input_term(x, w_xh, b_h, x_static, w_xh_static)
    h, h_prev = np.empty_like(xw), h0
    for t in range(xw.shape[0]):
        pre = (cont[t][:, None] * h_prev) @ w_hh.T + xw[t]
        if static is not None:
            pre += static
        h[t] = h_prev = np.tanh(pre)
    return np.tanh(h @ w_ho.T + b_o), h


@rnn_backward.impl("ref")
def _rnn_backward_ref(do, x, cont, h0, w_xh, w_hh, w_ho, o, h, x_static=None, w_xh_static=None):
    """Backpropagation through time from do (T, N, H), the gradient of every o_t, with forward's
    inputs and outputs. Returns a dict of dx, dw_xh, db_h, dw_hh, dw_ho, db_o, dx_static,
    dw_xh_static (None without a static input) and dh0."""
    do_pre = do * (1 - o * o)                                       # through o's tanh
    dw_ho = do_pre.reshape(-1, do.shape[-1]).T @ h.reshape(-1, h.shape[-1])
    db_o = do_pre.reshape(-1, do.shape[-1]).sum(axis=0)
    dh_out = do_pre @ w_ho                                          # (T, N, H)
    dpre, dw_hh, dh_next = np.empty_like(h), np.zeros_like(w_hh), np.zeros_like(h0)
    for t in reversed(range(do.shape[0])):
        h_prev = h[t - 1] if t else h0
        dpre[t] = (dh_out[t] + dh_next) * (1 - h[t] * h[t])        # through h's tanh
        dw_hh += dpre[t].T @ (cont[t][:, None] * h_prev)
        dh_next = cont[t][:, None] * (dpre[t] @ w_hh)
    dx, dw_xh, db_h, dx_static, dw_static = _input_backward(dpre, x, w_xh, x_static, w_xh_static)
    return {"dx": dx, "dw_xh": dw_xh, "db_h": db_h, "dw_hh": dw_hh, "dw_ho": dw_ho,
            "db_o": db_o, "dx_static": dx_static, "dw_xh_static": dw_static, "dh0": dh_next}
