"""The six solver types of Caffe and its learning-rate policies.

Every rule turns the (decayed) gradient ``g`` of one parameter into the step ``w -= step``,
keeping its memory in ``history`` (the learning rate ``lr = rate * lr_mult`` sits *inside*
the momentum history, Caffe's convention, unlike PyTorch's):

    SGD       v = momentum * v + lr * g                           step = v
    Nesterov  v' = momentum * v + lr * g                          step = (1 + m) v' - m v
    AdaGrad   h += g^2                                            step = lr * g / (sqrt(h) + delta)
    RMSProp   h = rms_decay * h + (1 - rms_decay) g^2             step = lr * g / (sqrt(h) + delta)
    AdaDelta  hg = m hg + (1-m) g^2;  u = g sqrt((hu + delta) / (hg + delta));
              hu = m hu + (1-m) u^2                               step = lr * u
    Adam      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  t = iter + 1
              step = lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)

(Adam's delta is added to the *uncorrected* sqrt(v), as in Caffe; b1 = momentum, b2 =
momentum2.) The learning rate itself comes from solver.learning_rate.
"""

import math
import os

import numpy as np

from minicnn import cuda
from minicnn.native import lib
from minicnn.solver import ParamStep, Solver, register_solver

# --- the solver types ----------------------------------------------------------------------------

class _Rule(Solver):
    def _parts(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        t = blob.dtype.type
        return blob.diff, t(rate * self.net.params_lr[param_id]), t

    def _momentum_args(self, param_id, rate, diff=True):
        """(lr, momentum, decay, regularization, scale) as csrc/solver.cpp's momentum_update
        takes them, or None where that fast path does not apply. ``diff``: whether the diff
        takes part (a layer's step checks its own, and reading a deferred one copies it)."""
        blob = self.net.learnable_params[param_id]
        history = self.history[param_id]
        regularization = {"L2": 1, "L1": 2}.get(self.param.regularization_type)
        arrays = (blob.diff, blob.data, history) if diff else (blob.data, history)
        if lib is None or regularization is None or os.environ.get("MINICNN_CPU") == "ref" \
                or blob.dtype not in (np.float32, np.float64) \
                or not all(isinstance(a, np.ndarray) and a.flags.c_contiguous
                           and a.dtype == blob.dtype for a in arrays):
            return None                        # unknown regularization: regularize() says so
        decay = self.param.weight_decay * self.net.params_weight_decay[param_id]
        return (rate * self.net.params_lr[param_id], self.param.momentum, decay,
                regularization if decay else 0,
                1.0 / self.param.iter_size if self.param.iter_size > 1 else 1.0)

    def _momentum_update(self, param_id, rate, nesterov):
        """The fast CPU path (csrc/solver.cpp) of SGD and Nesterov, when it applies."""
        args = self._momentum_args(param_id, rate)
        if args is None:
            return False
        blob = self.net.learnable_params[param_id]
        lib.momentum_update(blob.diff, blob.data, self.history[param_id], *args, nesterov)
        return True

    def _momentum_update_device(self, rate, skip, nesterov):
        """The GPU path of SGD and Nesterov: every parameter whose data, diff and history are
        contiguous device arrays, in one launch (kernels/solver.cu), bit for bit the step of
        csrc/solver.cpp. Returns the ids updated."""
        regularization = {"L2": 1, "L1": 2}.get(self.param.regularization_type)
        if self.net.device is None or regularization is None \
                or os.environ.get("MINICNN_FUSE", "1") == "0":
            return set()                       # unknown regularization: regularize() says so
        ids, rows, mults = [], [], []
        for param_id, blob in enumerate(self.net.learnable_params):
            if param_id in skip or blob.dtype not in (np.float32, np.float64):
                continue
            arrays = (blob.data, blob.diff, self.history[param_id])
            if all(cuda.is_device_array(a) and a.flags.c_contiguous and a.dtype == blob.dtype
                   for a in arrays):
                ids.append(param_id)
                rows.append(arrays)
                mults.append((self.net.params_lr[param_id],
                              self.param.weight_decay * self.net.params_weight_decay[param_id]))
        if rows:
            scale = 1.0 / self.param.iter_size if self.param.iter_size > 1 else 1.0
            cuda.momentum_step(rows, mults, rate, self.param.momentum, scale, regularization,
                               nesterov)
        return set(ids)

    def _momentum_step(self, param_id, rate, nesterov):
        args = self._momentum_args(param_id, rate, diff=False)
        if args is None or args[4] != 1.0:
            return None
        lr, momentum, decay, regularization, _ = args
        return ParamStep(lr, momentum, decay, regularization, nesterov, self.history[param_id])


@register_solver("SGD")
class SGDSolver(_Rule):
    """Stochastic gradient descent with momentum (Caffe's SGDSolver)."""

    def fused_update(self, param_id, rate):
        return self._momentum_update(param_id, rate, nesterov=False)

    def fused_device_update(self, rate, skip):
        return self._momentum_update_device(rate, skip, nesterov=False)

    def param_step(self, param_id, rate):
        return self._momentum_step(param_id, rate, nesterov=False)

    def compute_update_value(self, param_id, rate):
        g, lr, t = self._parts(param_id, rate)
        v = self.history[param_id]
        v *= t(self.param.momentum)
        v += lr * g
        g[...] = v


@register_solver("Nesterov")
class NesterovSolver(_Rule):
    """Nesterov's accelerated gradient, as Caffe writes it (the step looks ahead)."""

    def fused_update(self, param_id, rate):
        return self._momentum_update(param_id, rate, nesterov=True)

    def fused_device_update(self, rate, skip):
        return self._momentum_update_device(rate, skip, nesterov=True)

    def param_step(self, param_id, rate):
        return self._momentum_step(param_id, rate, nesterov=True)

    def compute_update_value(self, param_id, rate):
        g, lr, t = self._parts(param_id, rate)
        v, m = self.history[param_id], t(self.param.momentum)
        previous = v.copy()
        v *= m
        v += lr * g
        g[...] = (t(1) + m) * v - m * previous


@register_solver("AdaGrad")
class AdaGradSolver(_Rule):
    """AdaGrad: each weight's rate shrinks with the sum of its squared gradients."""

    def compute_update_value(self, param_id, rate):
        g, lr, t = self._parts(param_id, rate)
        h = self.history[param_id]
        h += g * g
        g[...] = lr * (g / (np.sqrt(h) + t(self.param.delta)))


@register_solver("RMSProp")
class RMSPropSolver(_Rule):
    """RMSProp: the rate shrinks with a running mean (rms_decay) of squared gradients."""

    def compute_update_value(self, param_id, rate):
        g, lr, t = self._parts(param_id, rate)
        h, decay = self.history[param_id], t(self.param.rms_decay)
        h *= decay
        h += (t(1) - decay) * (g * g)
        g[...] = lr * (g / (np.sqrt(h) + t(self.param.delta)))


@register_solver("AdaDelta")
class AdaDeltaSolver(_Rule):
    """AdaDelta: steps scaled by the ratio of running RMS of past steps and of gradients.
    Caffe uses ``momentum`` as the decay and still multiplies by the learning rate."""
    history_per_param = 2

    def compute_update_value(self, param_id, rate):
        g, lr, t = self._parts(param_id, rate)
        n = len(self.net.learnable_params)
        hg, hu = self.history[param_id], self.history[n + param_id]
        m, delta = t(self.param.momentum), t(self.param.delta)
        hg *= m
        hg += (t(1) - m) * (g * g)
        u = g * np.sqrt((hu + delta) / (hg + delta))
        hu *= m
        hu += (t(1) - m) * (u * u)
        g[...] = lr * u


@register_solver("Adam")
class AdamSolver(_Rule):
    """Adam (Kingma & Ba): momentum2 is beta2, momentum beta1, delta epsilon."""
    history_per_param = 2

    def compute_update_value(self, param_id, rate):
        g, lr, t = self._parts(param_id, rate)
        n = len(self.net.learnable_params)
        m, v = self.history[param_id], self.history[n + param_id]
        b1, b2 = self.param.momentum, self.param.momentum2
        m *= t(b1)
        m += t(1 - b1) * g
        v *= t(b2)
        v += t(1 - b2) * (g * g)
        correction = adam_correction(b1, b2, self.iter + 1, t)
        g[...] = (lr * correction) * (m / (np.sqrt(v) + t(self.param.delta)))


def adam_correction(beta1, beta2, step, dtype):
    """Adam's sqrt(1 - beta2^t) / (1 - beta1^t) as Caffe's AdamSolver computes it: pow(Dtype,
    int) is a double pow (C++11 promotes the int), so all of it is double, rounded once to the
    net's float."""
    return np.dtype(dtype).type(math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step))
