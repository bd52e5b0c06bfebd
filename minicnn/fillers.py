"""Fillers: how a parameter blob is initialised, keyed by FillerParameter.type as in Caffe.

    w = fill(FillerParameter(type="xavier"), (20, 1, 5, 5), np.float32)

fan_in = count / shape[0] and fan_out = count / shape[1], as Caffe computes them (for a conv
weight (F, C, kh, kw): fan_in = C*kh*kw, fan_out = F*kh*kw). Caffe's default filler is constant 0,
so a layer without a weight_filler starts at all zeros.
"""

import math

import numpy as np

from minicnn.errors import MinicnnError
from minicnn.rng import get_rng

FILLERS = {}


def register_filler(name):
    def decorate(fn):
        if name in FILLERS:
            raise ValueError(f"filler '{name}' is registered twice")
        FILLERS[name] = fn
        return fn
    return decorate


def fill(filler_param, shape, dtype=np.float32, rng=None):
    """A new array of ``shape`` filled as ``filler_param`` (a FillerParameter) says."""
    fn = FILLERS.get(filler_param.type)
    if fn is None:
        raise MinicnnError(f"unknown filler type '{filler_param.type}'; known: "
                           f"{', '.join(sorted(FILLERS))}")
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)           # nothing to fill (and no fan to divide by)
    values = fn(filler_param, shape, rng if rng is not None else get_rng())
    return np.asarray(values, dtype=np.float64).reshape(shape).astype(dtype)


def _fans(shape):
    count = math.prod(shape)
    fan_in = count / shape[0] if shape and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(p, shape):
    fan_in, fan_out = _fans(shape)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out,
            "AVERAGE": (fan_in + fan_out) / 2}[p.variance_norm]


@register_filler("constant")
def _constant(p, shape, rng):
    return np.full(shape, p.value)


@register_filler("uniform")
def _uniform(p, shape, rng):
    if not p.min <= p.max:
        raise MinicnnError(f"uniform filler needs min <= max, got min {p.min:g}, max {p.max:g}")
    return rng.uniform(p.min, p.max, shape)


@register_filler("gaussian")
def _gaussian(p, shape, rng):
    if not p.std > 0:                             # Caffe checks sigma > 0 too
        raise MinicnnError(f"gaussian filler needs std > 0, got {p.std:g}")
    values = rng.normal(p.mean, p.std, shape)
    if p.sparse >= 0:                           # keep each weight with prob. sparse / num_outputs
        if not shape:
            raise MinicnnError("sparse gaussian filler needs a blob with at least one axis")
        keep = p.sparse / shape[0]
        values = values * (rng.random(shape) < keep)
    return values


@register_filler("positive_unitball")
def _positive_unitball(p, shape, rng):
    values = rng.uniform(0, 1, shape).reshape(shape[0] if shape else 1, -1)
    return values / values.sum(axis=1, keepdims=True)     # each output's weights sum to 1


@register_filler("xavier")
def _xavier(p, shape, rng):
    scale = math.sqrt(3 / _variance_n(p, shape))          # U[-s, s] has variance 1/n
    return rng.uniform(-scale, scale, shape)


@register_filler("msra")
def _msra(p, shape, rng):
    return rng.normal(0, math.sqrt(2 / _variance_n(p, shape)), shape)


@register_filler("bilinear")
def _bilinear(p, shape, rng):
    """Bilinear interpolation kernels for a Deconvolution that upsamples (FCN's recipe).

    BVLC's filler and its test_filler.cpp: f = ceil(k / 2), c = (k - 1) / (2f), a tap x is
    1 - |x / f - c|, so every kernel is symmetric (k = 3: 0.5, 1, 0.5). The first version of
    Caffe's filler (2015), copied into many PyTorch and TensorFlow ports, had c = (2f - 1 -
    f % 2) / (2f): the same for the recipe's sizes (1, 4, 5, 8, ...), off-centre for the
    others (k = 3: 0.25, 0.75, 0.75)."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise MinicnnError(f"bilinear filler needs a square 4-D blob, got shape {shape}")
    k = shape[3]
    f = math.ceil(k / 2)
    c = (k - 1) / (2 * f)
    taps = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(taps, taps), shape)
