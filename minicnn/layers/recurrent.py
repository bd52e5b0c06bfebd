"""Recurrent layers: LSTM, RNN and LSTMUnit, an LSTM's one step (math: minicnn.ops.recurrent)."""

import math

import numpy as np

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register


class RecurrentLayer(Layer):
    """What LSTM and RNN share: Caffe's RecurrentLayer. Subclasses name their recurrent states
    (``states``) and their weights (``blob_names``, ``init_blobs``), and call their ops:
    run_forward(x, cont, initial states, x_static) -> (top, final states, saved) and
    run_backward(top diff, x, cont, saved, x_static) -> the ops' dict of gradients."""
    param_field = "recurrent_param"
    states = ()                   # ("h", "c") for LSTM: the states h_0/h_T, c_0/c_T expose

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1                       # cont, the sequence indicators

    def _counts(self):
        """(bottoms without x_static, tops) for this layer's expose_hidden."""
        exposed = len(self.states) if self.param.recurrent_param.expose_hidden else 0
        return 2 + exposed, 1 + exposed

    def default_num_tops(self):
        return len(self.param.top) if self.param.top else self._counts()[1]

    def _exposed_bottoms(self, bottom):
        """Indices of the bottoms h_0 (c_0): the last ones, with expose_hidden."""
        if not self.param.recurrent_param.expose_hidden:
            return range(0)
        return range(len(bottom) - len(self.states), len(bottom))

    def _bottom_names(self, static):
        """The bottoms' names; static None: x_static shown as optional."""
        names = ["x", "cont"] + (["[x_static]"] if static is None else ["x_static"] * static)
        if self.param.recurrent_param.expose_hidden:
            names += [f"{s}_0" for s in self.states]
        return names

    # --- setup ------------------------------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self.param.recurrent_param
        n_bottom, n_top = self._counts()
        if len(bottom) not in (n_bottom, n_bottom + 1) or len(top) != n_top:
            expose = "with" if p.expose_hidden else "without"
            raise LayerError(
                f"{self.type} {expose} expose_hidden takes {n_bottom} or {n_bottom + 1} bottoms "
                f"({', '.join(self._bottom_names(None))}) and {n_top} top(s); got "
                f"{len(bottom)} bottoms and {len(top)} tops")
        if p.num_output < 1:
            raise LayerError(f"recurrent_param.num_output must be positive, got {p.num_output}")
        self.hidden = p.num_output
        self.static_input = len(bottom) == n_bottom + 1
        x = self._x_shape(bottom)
        self.T = x[0]
        self.input_dim = math.prod(x[2:])
        self.static_dim = math.prod(bottom[2].shape[1:]) if self.static_input else None
        expected = self.num_blobs()
        if self.blobs and len(self.blobs) != expected:
            raise LayerError(
                f"{len(self.blobs)} parameter blobs given, but this {self.type} "
                f"({'with' if self.static_input else 'without'} a static input) has {expected}: "
                f"{', '.join(self.blob_names())}")
        self.init_blobs(p.weight_filler, p.bias_filler)
        self._state = None         # the last forward's final states, the next one's start
        self._saved = None         # what backward needs from forward

    def blob_names(self):
        raise NotImplementedError

    def num_blobs(self):
        return len(self.blob_names())

    def _init_weights(self, names, shapes, weight_filler, bias_filler):
        for k, (name, shape) in enumerate(zip(names, shapes)):
            filler = bias_filler if name.startswith("b_") else weight_filler
            self.init_param(k, shape, filler, what=name)

    def _x_shape(self, bottom):
        x = bottom[0].shape
        if len(x) < 2:
            raise LayerError(f"x (bottom 0) must have at least 2 axes (T time steps, N "
                             f"streams, ...), got shape {x}")
        return x

    def _check_shapes(self, bottom):
        x, cont = self._x_shape(bottom), bottom[1].shape
        if x[0] != self.T:
            raise LayerError(f"the number of time steps changed: x (bottom 0) has shape {x}, "
                             f"set up for T = {self.T} (Caffe fixes T at setup)")
        if math.prod(x[2:]) != self.input_dim:
            raise LayerError(f"x (bottom 0) of shape {x} has {math.prod(x[2:])} inputs per "
                             f"step, the weights take {self.input_dim}")
        n = x[1]
        if cont != (self.T, n):
            raise LayerError(f"cont (bottom 1) must have shape (T, N) = {(self.T, n)}, x's "
                             f"first two axes; got {cont}")
        names = self._bottom_names(self.static_input)
        if self.static_input:
            s = bottom[2].shape
            if len(s) < 1 or s[0] != n or math.prod(s[1:]) != self.static_dim:
                raise LayerError(f"x_static (bottom 2) must have shape (N, ...) with N = {n} "
                                 f"and {self.static_dim} values per stream; got {s}")
        for i in self._exposed_bottoms(bottom):
            if bottom[i].shape != (1, n, self.hidden):
                raise LayerError(f"{names[i]} (bottom {i}) must have shape (1, N, num_output) "
                                 f"= {(1, n, self.hidden)}; got {bottom[i].shape}")
        return n

    def reshape(self, bottom, top):
        n = self._check_shapes(bottom)
        if self._state is not None and self._state[0].shape[0] != n:
            # A new batch size. Caffe reshapes its state blobs, whose memory then holds the
            # first n streams' states if n is smaller, and fresh zeros if it is larger.
            self._state = [s[:n] for s in self._state] if n < self._state[0].shape[0] else None
        top[0].reshape((self.T, n, self.hidden))
        for t in top[1:]:
            t.reshape((1, n, self.hidden))

    def reset(self):
        """Forget the carried state: the next forward starts from zeros (Caffe's Reset)."""
        self._state = None

    # --- forward and backward -----------------------------------------------------------------
    def _initial_states(self, bottom):
        if self.param.recurrent_param.expose_hidden:
            return [bottom[i].data[0] for i in self._exposed_bottoms(bottom)]
        if self._state is not None:
            return self._state
        n = bottom[0].shape[1]
        return [np.zeros((n, self.hidden), bottom[0].dtype) for _ in self.states]

    def forward(self, bottom, top):
        x_static = bottom[2].data if self.static_input else None
        starts = self._initial_states(bottom)
        outputs, finals, self._saved = self.run_forward(bottom[0].data, bottom[1].data, starts,
                                                        x_static)
        top[0].data[...] = outputs
        for t, state in zip(top[1:], finals):
            t.data[...] = state[None]
        self._state = [s.copy() for s in finals]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError(f"{self.type} cannot backpropagate to the sequence "
                             "indicators cont (bottom 1); set propagate_down: false for them")
        if self._saved is None:
            raise LayerError("backward needs a forward first")
        x_static = bottom[2].data if self.static_input else None
        grads = self.run_backward(top[0].diff, bottom[0].data, bottom[1].data, self._saved,
                                  x_static)
        for k, name in enumerate(self.blob_names()):
            if self.param_propagate_down[k]:
                self.blobs[k].diff += grads["d" + name.lower()]      # I1: params accumulate
        if propagate_down[0]:
            bottom[0].diff[...] = grads["dx"]
        if self.static_input and propagate_down[2]:
            bottom[2].diff[...] = grads["dx_static"]
        # Caffe's layer shares only the data of exposed h_0 (c_0) with its unrolled net, so no
        # gradient reaches them (nor comes from the h_T, c_T tops): minicnn gives zeros too.
        for i in self._exposed_bottoms(bottom):
            if propagate_down[i]:
                bottom[i].diff[...] = 0


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """Caffe `LSTM`: a long short-term memory over T time steps of N streams.

    Bottoms: x (T, N, ...), cont (T, N), optionally x_static (N, ...); with expose_hidden also
    h_0 and c_0 (1, N, H). Tops: h (T, N, H), H = num_output; with expose_hidden also h_T and
    c_T (1, N, H). For t = 1..T, gates in Caffe's order i, f, o, g:
        a_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
        i, f, o = sigm(a_i), cont_t sigm(a_f), sigm(a_o);  g = tanh(a_g)
        c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
    cont_t = 0 starts a sequence: h_{t-1} and c_{t-1} are multiplied by it.
    blobs: W_xc (4H, I), b_c (4H,), W_xc_static (4H, I_s) only with x_static, W_hc (4H, H),
    in this order (Caffe's, so its .caffemodel loads); I = x's axes from 2 on, flattened.
    Surprises, all Caffe's: without expose_hidden the state carries over between forwards
    (h_0, c_0 of a forward are the last one's h_T, c_T: zeros at first, the first N streams'
    when N shrinks, zeros when it grows), so cont_1 = 1 continues the previous batch; with
    expose_hidden no gradient flows to h_0, c_0 or from h_T, c_T (their diffs are zeros /
    ignored); T is fixed at setup; the gradient of the forget gate is exact only for cont 0 or
    1 (see minicnn.ops.recurrent). debug_info is ignored."""
    states = ("h", "c")
    min_num_bottom, max_num_bottom = 2, 5
    min_num_top, max_num_top = 1, 3

    def blob_names(self):
        return ["W_xc", "b_c"] + (["W_xc_static"] if self.static_input else []) + ["W_hc"]

    def init_blobs(self, weight_filler, bias_filler):
        g = 4 * self.hidden
        shapes = {"W_xc": (g, self.input_dim), "b_c": (g,), "W_xc_static": (g, self.static_dim),
                  "W_hc": (g, self.hidden)}
        names = self.blob_names()
        self._init_weights(names, [shapes[n] for n in names], weight_filler, bias_filler)

    def _weights(self):
        w = dict(zip(self.blob_names(), (b.data for b in self.blobs)))
        return w["W_xc"], w["b_c"], w["W_hc"], w.get("W_xc_static")

    def run_forward(self, x, cont, starts, x_static):
        w_xc, b_c, w_hc, w_static = self._weights()
        h0, c0 = starts
        h, c, a = ops.lstm_forward(x, cont, h0, c0, w_xc, b_c, w_hc, x_static=x_static,
                                   w_xc_static=w_static)
        return h, (h[-1], c[-1]), (h0, c0, h, c, a)

    def run_backward(self, dh, x, cont, saved, x_static):
        w_xc, _, w_hc, w_static = self._weights()
        return ops.lstm_backward(dh, x, cont, *saved[:2], w_xc, w_hc, *saved[2:],
                                 x_static=x_static, w_xc_static=w_static)


@register("RNN")
class RNNLayer(RecurrentLayer):
    """Caffe `RNN`: a simple (Elman) recurrent net over T time steps of N streams.

    Bottoms: x (T, N, ...), cont (T, N), optionally x_static (N, ...); with expose_hidden also
    h_0 (1, N, H). Tops: o (T, N, H), H = num_output; with expose_hidden also h_T (1, N, H).
    For t = 1..T:
        h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)
    so the top is o, a second tanh layer over h, not h itself. cont_t = 0 starts a sequence.
    blobs: W_xh (H, I), b_h (H,), W_xh_static (H, I_s) only with x_static, W_hh (H, H),
    W_ho (H, H), b_o (H,), in this order (Caffe's); I = x's axes from 2 on, flattened.
    Surprises, all Caffe's: without expose_hidden h carries over between forwards (h_0 is the
    last forward's h_T: zeros at first, the first N streams' when N shrinks, zeros when it
    grows); with expose_hidden no gradient flows to h_0 or from h_T; T is fixed at setup.
    debug_info is ignored."""
    states = ("h",)
    min_num_bottom, max_num_bottom = 2, 4
    min_num_top, max_num_top = 1, 2

    def blob_names(self):
        return ["W_xh", "b_h"] + (["W_xh_static"] if self.static_input else []) + \
            ["W_hh", "W_ho", "b_o"]

    def init_blobs(self, weight_filler, bias_filler):
        h = self.hidden
        shapes = {"W_xh": (h, self.input_dim), "b_h": (h,), "W_xh_static": (h, self.static_dim),
                  "W_hh": (h, h), "W_ho": (h, h), "b_o": (h,)}
        names = self.blob_names()
        self._init_weights(names, [shapes[n] for n in names], weight_filler, bias_filler)

    def _weights(self):
        return dict(zip(self.blob_names(), (b.data for b in self.blobs)))

    def run_forward(self, x, cont, starts, x_static):
        w = self._weights()
        h0, = starts
        o, h = ops.rnn_forward(x, cont, h0, w["W_xh"], w["b_h"], w["W_hh"], w["W_ho"], w["b_o"],
                               x_static=x_static, w_xh_static=w.get("W_xh_static"))
        return o, (h[-1],), (h0, o, h)

    def run_backward(self, do, x, cont, saved, x_static):
        w = self._weights()
        h0, o, h = saved
        return ops.rnn_backward(do, x, cont, h0, w["W_xh"], w["W_hh"], w["W_ho"], o, h,
                                x_static=x_static, w_xh_static=w.get("W_xh_static"))


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """Caffe `LSTMUnit`: one LSTM step, the cell LSTM is built from.

    Bottoms: c_prev (1, N, H), X (1, N, 4H) the gate pre-activations in the order i, f, o, g,
    cont (1, N). Tops: c, h (1, N, H).
        i, f, o = sigm(X_i), cont sigm(X_f), sigm(X_o);  g = tanh(X_g)
        c = f c_prev + i g;  h = o tanh(c)
    No parameters. Backward is Caffe's: the forget gate's gradient c_prev f (1 - f) uses
    f = cont sigm(X_f), exact only for cont 0 or 1; no gradient to cont."""
    exact_num_bottom, exact_num_top = 3, 2
    backward_reads_data = ("top",)           # c, from top 0

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, x, cont = (b.shape for b in bottom)
        if len(c_prev) != 3 or c_prev[0] != 1:
            raise LayerError(f"c_prev (bottom 0) must have shape (1, N, H), got {c_prev}")
        n, hidden = c_prev[1], c_prev[2]
        if x != (1, n, 4 * hidden):
            raise LayerError(f"X (bottom 1) must have shape (1, N, 4H) = {(1, n, 4 * hidden)} "
                             f"for c_prev of shape {c_prev}; got {x}")
        if cont != (1, n):
            raise LayerError(f"cont (bottom 2) must have shape (1, N) = {(1, n)}; got {cont}")
        for t in top:
            t.reshape(c_prev)

    def forward(self, bottom, top):
        c, h = ops.lstm_unit_forward(bottom[0].data[0], bottom[1].data[0], bottom[2].data[0])
        top[0].data[0] = c
        top[1].data[0] = h

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise LayerError("LSTMUnit cannot backpropagate to the sequence "
                             "indicators cont (bottom 2); set propagate_down: false for them")
        if not (propagate_down[0] or propagate_down[1]):
            return
        dc_prev, dx = ops.lstm_unit_backward(top[0].diff[0], top[1].diff[0], bottom[0].data[0],
                                             bottom[1].data[0], bottom[2].data[0],
                                             top[0].data[0])
        if propagate_down[0]:
            bottom[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[0] = dx
