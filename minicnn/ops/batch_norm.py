"""Batch normalization without scale or shift, Caffe's "BatchNorm".

x has shape (N, C, *spatial) (or (N,), which counts as one channel, as in Caffe); statistics are
per channel, over every axis but 1 (m = N * prod(spatial) values each):

    mean = E[x],  var = E[(x - mean)^2]               (biased: the batch's own spread)
    y    = (x - mean) / sqrt(var + eps)
    training (batch statistics):  dx = (dy - E[dy] - y * E[dy * y]) / sqrt(var + eps)
    global statistics (constants): dx = dy / sqrt(var + eps)

Why the two extra terms in training: every x_k of a channel moves that channel's mean and
variance too, so y_i depends on x_k through three paths. With s = sqrt(var + eps), dmean/dx_k =
1/m and ds/dx_k = (x_k - mean) / (m s) = y_k / m (the mean's own change drops out of the variance
because E[x - mean] = 0), hence

    dy_i/dx_k = (delta_ik - 1/m - y_i y_k / m) / s
    dx_k = sum_i dL/dy_i * dy_i/dx_k = (dy_k - E[dy] - y_k E[dy y]) / s     (dy_i: dL/dy_i)

-E[dy] is the path through the mean, -y_k E[dy y] the path through the variance. With global
statistics the mean and variance are stored constants, so only delta_ik / s is left.

Running statistics are Caffe's unnormalized sums (blobs [0], [1], [2] of the layer):

    s <- lambda * s + 1,  mean_acc <- lambda * mean_acc + mean,
    var_acc <- lambda * var_acc + m / (m - 1) * var           (factor 1 when m == 1)
    global mean = mean_acc / s, global var = var_acc / s       (both 0 when s == 0)

No kinks. Backward takes y and sqrt(var + eps) rather than x, so an in-place layer (whose x is
overwritten by y) can keep what it needs from forward.
``out=`` names the array to write y (forward) or dx (backward) into; forward's ``out2=`` a second
array to write y into as well (an in-place layer keeps y and fills its top in one pass).
Impls: ref; cpu for forward and backward (csrc/normalization.cpp: a thread per channel, each
formula one pass over memory where NumPy makes a temporary per operator).
"""

import numpy as np

from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out

batch_norm_forward, batch_norm_backward = Op("batch_norm_forward"), Op("batch_norm_backward")
batch_norm_update_stats = Op("batch_norm_update_stats")
batch_norm_global_stats = Op("batch_norm_global_stats")


def _channels_view(x):
    """x as (N, C, S): axis 1 is the channel, everything after it is spatial."""
    c = x.shape[1] if x.ndim > 1 else 1
    return x.reshape(x.shape[0], c, -1)


# --- reference ---------------------------------------------------------------------------------

@batch_norm_forward.impl("ref")
def _batch_norm_forward_ref(x, eps=1e-5, mean=None, var=None, *, out=None, out2=None):
    """Returns (y, mean, var, std). mean/var None: the batch's statistics (biased variance);
    given: used as they are (global statistics). std = sqrt(var + eps), shape (C,)."""
    x3 = _channels_view(x)
    if mean is None:
        mean = x3.mean(axis=(0, 2))
    centered = x3 - mean[:, None]
    if var is None:
        var = np.mean(centered * centered, axis=(0, 2))
    std = np.sqrt(var + eps)
    y = (centered / std[:, None]).reshape(x.shape)
    if out2 is not None:
        out2[...] = y
    return write_out(out, y), mean, var, std


@batch_norm_backward.impl("ref")
def _batch_norm_backward_ref(dy, y, std, use_global_stats=False, *, out=None):
    """dx from dy, the normalized output y and std = sqrt(var + eps) (C,). With batch
    statistics the mean and variance depend on every x, hence the two correction terms."""
    dy3, y3 = _channels_view(dy), _channels_view(y)
    if use_global_stats:
        dx = dy3 / std[:, None]
    else:
        dx = (dy3 - dy3.mean(axis=(0, 2), keepdims=True)
              - y3 * np.mean(dy3 * y3, axis=(0, 2), keepdims=True)) / std[:, None]
    return write_out(out, dx.reshape(dy.shape))


def _bias_correction(m, dtype):
    """Caffe's m / (m - 1): Dtype(m) / (m - 1), the int m rounded to the net's float first
    (from m = 2^24 + 2 on a float32 net's factor is 1 + 2^-23, where m / (m - 1) is 1)."""
    t = np.dtype(dtype).type
    return t(m) / t(m - 1) if m > 1 else t(1)


@batch_norm_update_stats.impl("ref")
def _batch_norm_update_stats_ref(mean_acc, var_acc, scale_factor, mean, var, m,
                                 moving_average_fraction=0.999, *, out=None):
    """New (mean_acc, var_acc, scale_factor) after one training batch of m values per channel.
    The stored variance is unbiased (m / (m - 1)), as Caffe stores it. ``out``: three arrays
    to write them into (the accumulators themselves, to update them in place)."""
    lam = moving_average_fraction
    correction = _bias_correction(m, mean_acc.dtype)
    new = (lam * mean_acc + mean, lam * var_acc + correction * var, lam * scale_factor + 1)
    if out is None:
        return new
    for target, value in zip(out, new):
        target[...] = value
    return tuple(out)


@batch_norm_global_stats.impl("ref")
def _batch_norm_global_stats_ref(mean_acc, var_acc, scale_factor):
    """(mean, var) from the running sums: divided by the scale factor, 0 while it is 0."""
    s = float(np.asarray(scale_factor).reshape(-1)[0])
    inv = 0.0 if s == 0 else 1.0 / s
    return mean_acc * mean_acc.dtype.type(inv), var_acc * var_acc.dtype.type(inv)


# --- fast CPU (csrc/normalization.cpp) ----------------------------------------------------------

def _native_ok(*arrays):
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and arrays[0].ndim >= 1 and all(
        a is None or (a.dtype == dtype and a.flags.c_contiguous) for a in arrays)


def _target(out, like):
    if out is not None and out.shape == like.shape and out.dtype == like.dtype and \
            out.flags.c_contiguous and out.flags.writeable:
        return out
    return np.empty(like.shape, like.dtype)


@batch_norm_forward.impl("cpu", available=lib is not None)
def _batch_norm_forward_cpu(x, eps=1e-5, mean=None, var=None, *, out=None, out2=None):
    c = x.shape[1] if x.ndim > 1 else 1
    if not _native_ok(x, mean, var) or (mean is None) != (var is None) or \
            (mean is not None and (mean.shape != (c,) or var.shape != (c,))) or \
            (out2 is not None and _target(out2, x) is not out2):
        return _batch_norm_forward_ref(x, eps, mean, var, out=out, out2=out2)
    batch = mean is None
    mean = np.empty(c, x.dtype) if batch else mean
    var = np.empty(c, x.dtype) if batch else var
    std = np.empty(c, x.dtype)
    y = _target(out, x)
    lib.bn_forward(x, y, mean, var, std, batch, float(eps), out2)
    return (y if out is None or y is out else write_out(out, y)), mean, var, std


@batch_norm_backward.impl("cpu", available=lib is not None)
def _batch_norm_backward_cpu(dy, y, std, use_global_stats=False, *, out=None):
    if not _native_ok(dy, y, std) or y.shape != dy.shape or \
            std.shape != ((dy.shape[1] if dy.ndim > 1 else 1),):
        return _batch_norm_backward_ref(dy, y, std, use_global_stats, out=out)
    dx = _target(out, dy)
    lib.bn_backward(dy, y, std, dx, bool(use_global_stats))
    return dx if out is None or dx is out else write_out(out, dx)


# --- CUDA (kernels/normalization.cu) ------------------------------------------------------------
# Channel statistics are two passes (mean, then the squared deviations from it) accumulated in
# double on the device and finished there (one thread a channel), as are the moving averages:
# a layer costs its launches and no CuPy operations. The normalization and the backward formula
# are elementwise kernels.

from minicnn import cuda  # noqa: E402


def _cuda_layout(x):
    c = x.shape[1] if x.ndim > 1 else 1
    outer = x.shape[0] if x.ndim else 1
    return outer, c, x.size // max(1, outer * c)


@batch_norm_forward.impl("cuda", available=cuda.importable)
def _batch_norm_forward_cuda(x, eps=1e-5, mean=None, var=None, *, out=None, out2=None):
    cp = cuda.cupy()
    x, mean, var = cuda.contiguous(x, mean, var)
    layout = _cuda_layout(x)
    c, t = layout[1], x.dtype.type
    m = max(1, x.size // c)
    std = cp.empty(c, x.dtype)
    if mean is None:
        mean, mean64 = cuda.channel_mean("channel_sum", (x,), layout, m, x.dtype)
    elif var is None:
        mean64 = mean.astype(np.float64)
    if var is None:               # the second pass, around the mean in double
        var = cp.empty(c, x.dtype)
        part, splits = cuda.channel_partials("channel_sqdev", (x,), layout, (mean64,))
        cuda.launch(cuda.kernel("normalization.cu", "channel_variance", x.dtype), c,
                    (part, var, std, np.int32(splits), np.float64(m), t(eps), np.int32(c)))
    else:
        cuda.launch(cuda.kernel("normalization.cu", "batch_norm_std", x.dtype), c,
                    (var, std, t(eps), np.int32(c)))
    y = cuda.output(out, x.shape, x.dtype)                         # elementwise: x itself is fine
    cuda.launch_1d(cuda.kernel("normalization.cu", "batch_norm_forward", x.dtype), x.size, x,
                   mean, std, y, np.int32(c), np.int64(layout[2]))
    y = cuda.finish(out, y)
    if out2 is not None:
        out2[...] = y
    return y, mean, var, std


@batch_norm_backward.impl("cuda", available=cuda.importable)
def _batch_norm_backward_cuda(dy, y, std, use_global_stats=False, *, out=None):
    dy, y, std = cuda.contiguous(dy, y, std)
    layout = _cuda_layout(dy)
    if use_global_stats:
        mean_dy = mean_dyy = std                                   # not read
    else:
        m = max(1, dy.size // layout[1])
        mean_dy, _ = cuda.channel_mean("channel_sum", (dy,), layout, m, dy.dtype)
        mean_dyy, _ = cuda.channel_mean("channel_dot", (dy, y), layout, m, dy.dtype)
    dx = cuda.output(out, dy.shape, dy.dtype)                      # reads element i only
    cuda.launch_1d(cuda.kernel("normalization.cu", "batch_norm_backward", dy.dtype), dy.size, dy,
                   y, std, mean_dy, mean_dyy, dx, np.int32(layout[1]), np.int64(layout[2]),
                   np.int32(bool(use_global_stats)))
    return cuda.finish(out, dx)


def _writable_like(targets, arrays):
    """Whether the kernel can write straight into ``targets``: contiguous device arrays of the
    shapes and dtypes of ``arrays``."""
    return all(cuda.is_device_array(o) and o.flags.c_contiguous and o.shape == a.shape
               and o.dtype == a.dtype for o, a in zip(targets, arrays))


@batch_norm_update_stats.impl("cuda", available=cuda.importable)
def _batch_norm_update_stats_cuda(mean_acc, var_acc, scale_factor, mean, var, m,
                                  moving_average_fraction=0.999, *, out=None):
    mean_acc, var_acc, scale_factor, mean, var = cuda.contiguous(mean_acc, var_acc, scale_factor,
                                                                 mean, var)
    t = mean_acc.dtype.type
    cp = cuda.cupy()
    accumulators = (mean_acc, var_acc, scale_factor)
    direct = out is not None and _writable_like(out, accumulators)
    results = tuple(out) if direct else tuple(cp.empty_like(a) for a in accumulators)
    cuda.launch(cuda.kernel("normalization.cu", "batch_norm_update_stats", mean_acc.dtype),
                mean_acc.size, (mean_acc, var_acc, scale_factor, mean, var, *results,
                                t(moving_average_fraction), _bias_correction(m, mean_acc.dtype),
                                np.int32(mean_acc.size)))
    if out is None or direct:
        return results
    for target, value in zip(out, results):
        cuda.assign(target, value)
    return tuple(out)


@batch_norm_global_stats.impl("cuda", available=cuda.importable)
def _batch_norm_global_stats_cuda(mean_acc, var_acc, scale_factor):
    mean_acc, var_acc, scale_factor = cuda.contiguous(mean_acc, var_acc, scale_factor)
    cp = cuda.cupy()
    mean, var = cp.empty_like(mean_acc), cp.empty_like(var_acc)    # no value to the host
    cuda.launch(cuda.kernel("normalization.cu", "batch_norm_global_stats", mean_acc.dtype),
                mean_acc.size, (mean_acc, var_acc, scale_factor, mean, var,
                                np.int32(mean_acc.size)))
    return mean, var


def bn_scale_relu_backward_cuda(dy, top, slope, y, std, gamma, g_out, dx, dscale, dbias,
                                global_stats):
    """The backward of minicnn/fusion.py's training chain BatchNorm -> Scale (-> ReLU) on the
    GPU, as the CPU's native bn_scale_relu_backward: g_out <- Scale's dx, dscale and dbias
    (None: not wanted) += Scale's gradients, dx <- BatchNorm's dx; top None: no ReLU. g_out and
    dx may be dy. Two passes over the blob (the sums, then dx) where the layers make seven."""
    cp = cuda.cupy()
    outer, c, inner = _cuda_layout(dy)
    t = dy.dtype.type
    relu = top is not None
    top = dy if top is None else top
    means = cp.zeros(2 * c, dy.dtype)
    if not global_stats or dscale is not None or dbias is not None:
        splits = cuda.channel_splits((outer, c, inner))
        part = cp.empty((c, splits, 4), np.float64)
        cuda.launch_blocks(cuda.kernel("normalization.cu", "chain_backward_sums", dy.dtype),
                           (c, splits), (dy, top, y, gamma, part, np.int32(relu), t(slope),
                                         np.int32(c), np.int64(inner), np.int64(outer)))
        cuda.launch(cuda.kernel("normalization.cu", "chain_backward_finish", dy.dtype), c,
                    (part, np.int32(splits), means if dscale is None else dscale,
                     means if dbias is None else dbias, means, np.int32(dscale is not None),
                     np.int32(dbias is not None), np.int32(bool(global_stats)),
                     np.float64(max(1, outer * inner)), np.int32(c)))
    cuda.launch_1d(cuda.kernel("normalization.cu", "chain_backward_dx", dy.dtype), dy.size, dy,
                   top, y, std, gamma, means, g_out, dx, np.int32(relu), t(slope),
                   np.int32(bool(global_stats)), np.int32(g_out is not dx), np.int32(c),
                   np.int64(inner))
    return dx
