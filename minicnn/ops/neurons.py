"""Elementwise neurons of Caffe's layer zoo: one output per input, y = f(x), dx = dy * f'(x).
With u = shift + scale * x (Power, Exp, Log):

    PReLU      y = max(0, x) + a_c min(0, x)     a: one slope per channel (axis 1), or one shared
               dx = dy (x > 0 ? 1 : a_c)         da_c = sum over channel c of dy x (x <= 0)
    ELU        y = x if x > 0 else alpha (exp(x) - 1)
               dx = dy (x > 0 ? 1 : y + alpha)   (Caffe reads y, as here)
    Sigmoid    y = 1 / (1 + exp(-x)) = 0.5 tanh(x / 2) + 0.5      dx = dy y (1 - y)
    TanH       y = tanh(x)                                          dx = dy (1 - y^2)
    AbsVal     y = |x|                           dx = dy sign(x), sign(0) = 0
    Power      y = u^power                       dx = dy power scale u^(power - 1)
    Exp        y = base^u                        dx = dy y ln(base) scale
    Log        y = log_base(u)                   dx = dy scale / (u ln(base))
    BNLL       y = log(1 + exp(x))               dx = dy e / (e + 1), e = exp(min(x, 50))
    Threshold  y = 1 if x > threshold else 0     no backward (the derivative is 0 or undefined)
    Clip       y = max(min, min(x, max))         dx = dy (min <= x <= max)
    ReLU6      y = min(max(x, 0), 6)             dx = dy (0 < y < 6), the same as 0 < x < 6
    Swish      y = x s, s = sigmoid(beta x)      dx = dy (beta y + s (1 - beta y))

Exp and Log take base -1 to mean e (ln(base) = 1 exactly); callers check base > 0 (and, for
Log, base != 1). Kinks: PReLU and ELU at 0 take the x <= 0 branch (as ReLU, invariant I3); AbsVal
gives 0 at 0, Caffe's caffe_cpu_sign. Clip's backward passes dy where min <= x <= max, both
ends *included* (Caffe's comparison), so at x == min or x == max the gradient is dy, not 0
(PyTorch's clamp agrees); outside, and everywhere when min > max (y is then min), it is 0.

Clip keeps Caffe's CPU comparisons exactly, NaN included: std::min(x, max) keeps a NaN and
std::max(min, NaN) gives min, so Caffe's CPU maps NaN to min (np.clip and torch.clamp keep NaN;
Caffe's GPU kernel, fmax(min, fmin(x, max)), gives max). Swish computes sigmoid(beta x) in
Caffe's order: beta x rounded to the dtype first, then the tanh form of the sigmoid.

Where this differs in floating point from Caffe's loops, it is the more accurate form of the same
formula: Sigmoid uses Caffe's own tanh form (no overflow for large |x|); ELU uses expm1; BNLL
uses max(x, 0) + log1p(exp(-|x|)) (Caffe: x + log(1 + exp(-x)) for x > 0, else
log(1 + exp(x))); Exp computes exp(ln(base) u) in one exp (Caffe: base^shift exp(ln(base) scale x),
whose first factor can overflow on its own).

Power's backward is the direct formula. For powers other than 1 and 2 Caffe's takes shortcuts
instead: power y / x when shift == 0, power scale y / u otherwise, which are 0/0 = NaN wherever
u == 0 even where the derivative exists (power > 1); they agree elsewhere.
power == 0 or scale == 0 gives y = shift^power (1 when power == 0) and dx = 0, as in Caffe.

Values outside a function's domain (Log of a negative number, Power of a negative base with a
fractional power, Exp overflowing) give NaN or inf as Caffe's do, without NumPy warnings.

Every op keeps the input's dtype (parameters are Python floats, which NumPy 2 keeps weak).
Impls: ref (elementwise NumPy is memory-bound already); cuda (kernels/neurons.cu), the same
comparisons and the same sigmoid form per element.
"""

import math

import numpy as np

from minicnn.libm import c_math
from minicnn.ops._dispatch import Op

prelu_forward, prelu_backward = Op("prelu_forward"), Op("prelu_backward")
elu_forward, elu_backward = Op("elu_forward"), Op("elu_backward")
sigmoid_forward, sigmoid_backward = Op("sigmoid_forward"), Op("sigmoid_backward")
tanh_forward, tanh_backward = Op("tanh_forward"), Op("tanh_backward")
absval_forward, absval_backward = Op("absval_forward"), Op("absval_backward")
power_forward, power_backward = Op("power_forward"), Op("power_backward")
exp_forward, exp_backward = Op("exp_forward"), Op("exp_backward")
log_forward, log_backward = Op("log_forward"), Op("log_backward")
bnll_forward, bnll_backward = Op("bnll_forward"), Op("bnll_backward")
threshold_forward = Op("threshold_forward")
clip_forward, clip_backward = Op("clip_forward"), Op("clip_backward")
relu6_forward, relu6_backward = Op("relu6_forward"), Op("relu6_backward")
swish_forward, swish_backward = Op("swish_forward"), Op("swish_backward")

BNLL_THRESHOLD = 50.0                   # Caffe's kBNLL_THRESHOLD: exp's argument is clamped here


def ln_base(base):
    """ln(base) for Exp and Log, with base -1 meaning e (exactly 1)."""
    return 1.0 if base == -1 else math.log(base)


# --- reference: PReLU ----------------------------------------------------------------------------

def _channel_view(slope, ndim):
    """The slope shaped to broadcast along axis 1 of an ndim-axis x (a 0-d slope as it is)."""
    return slope if slope.ndim == 0 else slope.reshape((1, -1) + (1,) * (ndim - 2))


@prelu_forward.impl("ref")
def _prelu_forward_ref(x, slope):
    """x: (N, C, ...) with >= 2 axes; slope: (C,), or () when channel_shared."""
    return np.where(x > 0, x, x * _channel_view(slope, x.ndim))


@prelu_backward.impl("ref")
def _prelu_backward_ref(dy, x, slope):
    """(dx, dslope), dslope of slope's shape: the caller adds it to the slope's diff."""
    neg = x <= 0                                           # the kink takes the slope branch
    dx = np.where(neg, dy * _channel_view(slope, x.ndim), dy)
    contrib = np.where(neg, dy * x, 0)
    axes = tuple(a for a in range(x.ndim) if slope.ndim == 0 or a != 1)
    return dx, contrib.sum(axis=axes).reshape(slope.shape)


# --- reference: ELU, Sigmoid, TanH ----------------------------------------------------------------

@elu_forward.impl("ref")
def _elu_forward_ref(x, alpha=1.0):
    # exp of min(x, 0) only: no overflow for large x
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@elu_backward.impl("ref")
def _elu_backward_ref(dy, x, y, alpha=1.0):
    """Needs only the sign of x: y may stand in for x when alpha >= 0 (same sign)."""
    return np.where(x > 0, dy, dy * (y + alpha))


@sigmoid_forward.impl("ref")
def _sigmoid_forward_ref(x):
    return 0.5 * np.tanh(0.5 * x) + 0.5                  # Caffe's form; 1/(1+exp(-x)) overflows


@sigmoid_backward.impl("ref")
def _sigmoid_backward_ref(dy, y):
    return dy * y * (1 - y)


@tanh_forward.impl("ref")
def _tanh_forward_ref(x):
    return np.tanh(x)


@tanh_backward.impl("ref")
def _tanh_backward_ref(dy, y):
    return dy * (1 - y * y)


# --- reference: AbsVal ----------------------------------------------------------------------------

@absval_forward.impl("ref")
def _absval_forward_ref(x):
    return np.abs(x)


@absval_backward.impl("ref")
def _absval_backward_ref(dy, x):
    return dy * np.sign(x)                                # sign(0) = 0, as caffe_cpu_sign


# --- reference: Power, Exp, Log -------------------------------------------------------------------

def _power_constant(dtype, power, shift):
    """Power's output where the input does not matter: 1 for power 0, else pow(shift, power)
    in the net's float, C's powf for float32 (NumPy's float32 power is up to ulps off it)."""
    t = np.dtype(dtype).type
    return t(1) if power == 0 else c_math(dtype).pow(t(shift), t(power))


@power_forward.impl("ref")
def _power_forward_ref(x, power=1.0, scale=1.0, shift=0.0):
    if power * scale == 0:                                # the input does not matter
        return np.full_like(x, _power_constant(x.dtype, power, shift))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # NaN/inf as Caffe
        return (shift + scale * x) ** power


@power_backward.impl("ref")
def _power_backward_ref(dy, x, power=1.0, scale=1.0, shift=0.0):
    diff_scale = power * scale
    if diff_scale == 0:
        return np.zeros_like(dy)
    if power == 1:
        return dy * diff_scale
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return dy * (diff_scale * (shift + scale * x) ** (power - 1))


@exp_forward.impl("ref")
def _exp_forward_ref(x, base=-1.0, scale=1.0, shift=0.0):
    ln = ln_base(base)
    with np.errstate(over="ignore"):                      # overflow is inf, as in Caffe
        return np.exp(x * (ln * scale) + ln * shift)


@exp_backward.impl("ref")
def _exp_backward_ref(dy, y, base=-1.0, scale=1.0, shift=0.0):
    """Needs only y, so it is safe in place."""
    with np.errstate(invalid="ignore", over="ignore"):
        return dy * y * (ln_base(base) * scale)


@log_forward.impl("ref")
def _log_forward_ref(x, base=-1.0, scale=1.0, shift=0.0):
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, log(< 0) = NaN
        y = np.log(shift + scale * x)
    ln = ln_base(base)
    return y if ln == 1.0 else y * (1 / ln)


@log_backward.impl("ref")
def _log_backward_ref(dy, x, base=-1.0, scale=1.0, shift=0.0):
    with np.errstate(divide="ignore", invalid="ignore"):
        return dy * (scale / ln_base(base)) / (shift + scale * x)


# --- reference: BNLL, Threshold -------------------------------------------------------------------

@bnll_forward.impl("ref")
def _bnll_forward_ref(x):
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): exp's argument is never positive
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@bnll_backward.impl("ref")
def _bnll_backward_ref(dy, x):
    e = np.exp(np.minimum(x, BNLL_THRESHOLD))             # Caffe's clamp; e/(e+1) is 1 there
    return dy * (e / (e + 1))


@threshold_forward.impl("ref")
def _threshold_forward_ref(x, threshold=0.0):
    return (x > threshold).astype(x.dtype)


# --- reference: Clip, Swish ----------------------------------------------------------------------

@clip_forward.impl("ref")
def _clip_forward_ref(x, min, max):
    # Caffe's std::max(min, std::min(x, max)), comparison for comparison: NaN -> min
    below_max = np.where(max < x, max, x)
    return np.where(min < below_max, below_max, min).astype(x.dtype, copy=False)


@clip_backward.impl("ref")
def _clip_backward_ref(dy, x, min, max):
    """x must be the input: in place, y would pass every element."""
    return np.where((x >= min) & (x <= max), dy, 0).astype(dy.dtype, copy=False)


@relu6_forward.impl("ref")
def _relu6_forward_ref(x):
    return np.minimum(np.maximum(x, 0), 6).astype(x.dtype, copy=False)    # NaN stays NaN


@relu6_backward.impl("ref")
def _relu6_backward_ref(dy, y):
    """From y, not x: 0 < y < 6 exactly where 0 < x < 6, so the layer is safe in place. Both
    kinks (0 and 6) pass no gradient, as ReLU's at 0 (and TensorFlow's and PyTorch's relu6)."""
    return dy * ((y > 0) & (y < 6))


@swish_forward.impl("ref")
def _swish_forward_ref(x, beta=1.0):
    """(y, s): s = sigmoid(beta x) is returned for the backward, as Caffe keeps it."""
    s = _sigmoid_forward_ref(x * beta)
    return x * s, s


@swish_backward.impl("ref")
def _swish_backward_ref(dy, y, s, beta=1.0):
    """Needs y and s only (not x), so it is safe in place. d(x s)/dx = s + beta x s (1 - s)
    = beta y + s (1 - beta y)."""
    by = beta * y
    return dy * (by + s * (1 - by))


# --- CUDA (kernels/neurons.cu) ------------------------------------------------------------------
# Each op is one elementwise kernel over contiguous arrays; the host-side special cases of the
# reference (Power's constant output, Power with power 1, the ln(base) factors) stay on the host.

from minicnn import cuda  # noqa: E402


def _run(name, n, dtype, *args):
    cuda.launch_1d(cuda.kernel("neurons.cu", name, dtype), n, *args)


def _unary(name, x, *scalars):
    x = cuda.contiguous(x)
    y = cuda.cupy().empty_like(x)
    _run(name, x.size, x.dtype, x, y, *(x.dtype.type(s) for s in scalars))
    return y


def _binary(name, dy, other, *scalars):
    dy, other = cuda.contiguous(dy, other)
    dx = cuda.cupy().empty_like(dy)
    _run(name, dy.size, dy.dtype, dy, other, dx, *(dy.dtype.type(s) for s in scalars))
    return dx


def _slope_layout(x, slope):
    """(channels, inner) of the slope broadcast along axis 1 (channels 1 when shared)."""
    if slope.ndim == 0:
        return 1, x.size
    return int(slope.size), int(np.prod(x.shape[2:], dtype=np.int64))


@prelu_forward.impl("cuda", available=cuda.importable)
def _prelu_forward_cuda(x, slope):
    x, slope = cuda.contiguous(x, slope)
    channels, inner = _slope_layout(x, slope)
    y = cuda.cupy().empty_like(x)
    _run("prelu_forward", x.size, x.dtype, x, slope, y, np.int32(channels), np.int64(inner))
    return y


@prelu_backward.impl("cuda", available=cuda.importable)
def _prelu_backward_cuda(dy, x, slope):
    dy, x, slope = cuda.contiguous(dy, x, slope)
    channels, inner = _slope_layout(x, slope)
    cp = cuda.cupy()
    dx, contrib = cp.empty_like(dy), cp.empty_like(dy)
    _run("prelu_backward", dy.size, dy.dtype, dy, x, slope, dx, contrib, np.int32(channels),
         np.int64(inner))
    if slope.ndim == 0:
        return dx, contrib.sum().reshape(slope.shape)
    return dx, contrib.reshape(x.shape[0], channels, -1).sum(axis=(0, 2))


@elu_forward.impl("cuda", available=cuda.importable)
def _elu_forward_cuda(x, alpha=1.0):
    return _unary("elu_forward", x, alpha)


@elu_backward.impl("cuda", available=cuda.importable)
def _elu_backward_cuda(dy, x, y, alpha=1.0):
    dy, x, y = cuda.contiguous(dy, x, y)
    dx = cuda.cupy().empty_like(dy)
    _run("elu_backward", dy.size, dy.dtype, dy, x, y, dx, dy.dtype.type(alpha))
    return dx


@sigmoid_forward.impl("cuda", available=cuda.importable)
def _sigmoid_forward_cuda(x):
    return _unary("sigmoid_forward", x)


@sigmoid_backward.impl("cuda", available=cuda.importable)
def _sigmoid_backward_cuda(dy, y):
    return _binary("sigmoid_backward", dy, y)


@tanh_forward.impl("cuda", available=cuda.importable)
def _tanh_forward_cuda(x):
    return _unary("tanh_forward", x)


@tanh_backward.impl("cuda", available=cuda.importable)
def _tanh_backward_cuda(dy, y):
    return _binary("tanh_backward", dy, y)


@absval_forward.impl("cuda", available=cuda.importable)
def _absval_forward_cuda(x):
    return _unary("absval_forward", x)


@absval_backward.impl("cuda", available=cuda.importable)
def _absval_backward_cuda(dy, x):
    return _binary("absval_backward", dy, x)


@power_forward.impl("cuda", available=cuda.importable)
def _power_forward_cuda(x, power=1.0, scale=1.0, shift=0.0):
    if power * scale == 0:                                # the input does not matter
        return cuda.cupy().full(x.shape, _power_constant(x.dtype, power, shift), x.dtype)
    return _unary("power_forward", x, power, scale, shift)


@power_backward.impl("cuda", available=cuda.importable)
def _power_backward_cuda(dy, x, power=1.0, scale=1.0, shift=0.0):
    diff_scale = power * scale
    if diff_scale == 0:
        return cuda.cupy().zeros_like(dy)
    if power == 1:
        return dy * dy.dtype.type(diff_scale)
    return _binary("power_backward", dy, x, power, scale, shift)


@exp_forward.impl("cuda", available=cuda.importable)
def _exp_forward_cuda(x, base=-1.0, scale=1.0, shift=0.0):
    ln = ln_base(base)
    return _unary("exp_forward", x, ln * scale, ln * shift)


@exp_backward.impl("cuda", available=cuda.importable)
def _exp_backward_cuda(dy, y, base=-1.0, scale=1.0, shift=0.0):
    return _binary("exp_backward", dy, y, ln_base(base) * scale)


@log_forward.impl("cuda", available=cuda.importable)
def _log_forward_cuda(x, base=-1.0, scale=1.0, shift=0.0):
    ln = ln_base(base)
    x = cuda.contiguous(x)
    y = cuda.cupy().empty_like(x)
    t = x.dtype.type
    _run("log_forward", x.size, x.dtype, x, y, t(scale), t(shift), t(1 / ln),
         np.int32(ln != 1.0))
    return y


@log_backward.impl("cuda", available=cuda.importable)
def _log_backward_cuda(dy, x, base=-1.0, scale=1.0, shift=0.0):
    return _binary("log_backward", dy, x, scale / ln_base(base), scale, shift)


@bnll_forward.impl("cuda", available=cuda.importable)
def _bnll_forward_cuda(x):
    return _unary("bnll_forward", x)


@bnll_backward.impl("cuda", available=cuda.importable)
def _bnll_backward_cuda(dy, x):
    return _binary("bnll_backward", dy, x, BNLL_THRESHOLD)


@threshold_forward.impl("cuda", available=cuda.importable)
def _threshold_forward_cuda(x, threshold=0.0):
    return _unary("threshold_forward", x, threshold)


@clip_forward.impl("cuda", available=cuda.importable)
def _clip_forward_cuda(x, min, max):
    return _unary("clip_forward", x, min, max)


@clip_backward.impl("cuda", available=cuda.importable)
def _clip_backward_cuda(dy, x, min, max):
    return _binary("clip_backward", dy, x, min, max)


@relu6_forward.impl("cuda", available=cuda.importable)
def _relu6_forward_cuda(x):
    cp = cuda.cupy()
    return cp.minimum(cp.maximum(x, 0), 6).astype(x.dtype, copy=False)


@relu6_backward.impl("cuda", available=cuda.importable)
def _relu6_backward_cuda(dy, y):
    return dy * ((y > 0) & (y < 6))


@swish_forward.impl("cuda", available=cuda.importable)
def _swish_forward_cuda(x, beta=1.0):
    x = cuda.contiguous(x)
    cp = cuda.cupy()
    y, s = cp.empty_like(x), cp.empty_like(x)
    _run("swish_forward", x.size, x.dtype, x, y, s, x.dtype.type(beta))
    return y, s


@swish_backward.impl("cuda", available=cuda.importable)
def _swish_backward_cuda(dy, y, s, beta=1.0):
    dy, y, s = cuda.contiguous(dy, y, s)
    dx = cuda.cupy().empty_like(dy)
    _run("swish_backward", dy.size, dy.dtype, dy, y, s, dx, dy.dtype.type(beta))
    return dx
