"""The PSPNet/yjxiong fork's "BN" layer: batch normalization and its learned slope and bias in
one layer (BVLC splits them into BatchNorm and Scale). Per channel c (axis 1), over the batch
and the positions (M values a channel):

    TRAIN      mean = average of x          var = average of (x - mean)^2   (biased: / M)
    TEST or frozen: the stored running mean and var instead
    x_hat = (x - mean) / sqrt(var + eps)          y = slope * x_hat + bias

Backward with batch statistics (g = slope * dy, sums over the channel's M values):

    dx = (g - sum(g) / M - x_hat * sum(g * x_hat) / M) / sqrt(var + eps)
    dslope = sum(dy * x_hat)      dbias = sum(dy)

and with stored statistics dx = g / sqrt(var + eps) (they are constants). No kinks. The same
code runs on NumPy (ref) and CuPy (cuda) arrays: only array methods are used.
"""

from minicnn.ops._dispatch import Op

fork_bn_forward, fork_bn_backward = Op("fork_bn_forward"), Op("fork_bn_backward")


def _per_channel(v, x):
    """A (C,)-sized vector shaped to broadcast over x (N, C, ...)."""
    return v.reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))


def _channel_mean(a):
    return a.mean(axis=(0,) + tuple(range(2, a.ndim)))


def _forward(x, slope, bias, mean, var, eps, batch_stats):
    """(y, x_hat, inv_std, batch mean, batch var); the batch ones are None with stored stats."""
    if batch_stats:
        mean = _channel_mean(x)
        centred = x - _per_channel(mean, x)
        var = _channel_mean(centred * centred)
    else:
        centred = x - _per_channel(mean.reshape(-1), x)
        var = var.reshape(-1)
    inv_std = (var + x.dtype.type(eps)) ** x.dtype.type(-0.5)
    x_hat = centred * _per_channel(inv_std, x)
    y = x_hat * _per_channel(slope.reshape(-1), x) + _per_channel(bias.reshape(-1), x)
    return (y, x_hat, inv_std) + ((mean, var) if batch_stats else (None, None))


def _backward(dy, x_hat, inv_std, slope, batch_stats):
    """(dx, dslope (C,), dbias (C,))."""
    axes = (0,) + tuple(range(2, dy.ndim))
    dslope, dbias = (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
    g = dy * _per_channel(slope.reshape(-1), dy)
    if batch_stats:
        count = dy.size // dy.shape[1]
        g = g - _per_channel(g.sum(axis=axes) / count, dy) - \
            x_hat * _per_channel((g * x_hat).sum(axis=axes) / count, dy)
    return g * _per_channel(inv_std, dy), dslope, dbias


fork_bn_forward.impl("ref")(_forward)
fork_bn_backward.impl("ref")(_backward)

# --- CUDA (CuPy evaluates the same expressions on device arrays) ---------------------------------

from minicnn import cuda  # noqa: E402

fork_bn_forward.impl("cuda", available=cuda.importable)(_forward)
fork_bn_backward.impl("cuda", available=cuda.importable)(_backward)
