"""The two layers of Ross Girshick's Fast/Faster R-CNN fork (caffe-fast-rcnn): ROIPooling and
SmoothL1Loss; and R-FCN's PSROIPooling (below, before SmoothL1Loss).

ROIPooling: max pooling of each region of interest to a fixed pooled_h x pooled_w grid. A roi
is (batch index, x1, y1, x2, y2) in image coordinates; spatial_scale maps them onto the feature
map (1/16 for VGG16's conv5_3). In the fork's arithmetic, all in the net's dtype:

    start_w = round(x1 * spatial_scale), end_w = round(x2 * spatial_scale)  (C's round: halves
                                                   away from zero; NumPy's np.round goes to even)
    roi_w   = max(end_w - start_w + 1, 1)          (a malformed roi, end < start, pools 1 pixel)
    bin_w   = roi_w / pooled_w                     (a float: bins overlap or leave gaps)
    bin pw covers columns start_w + [floor(pw * bin_w), ceil((pw + 1) * bin_w)), clipped to the
    map; rows the same way. An empty bin (all outside the map) gives 0; otherwise the max, the
    first one in row-major order on ties, whose index h * W + w is kept (argmax, -1: none).

Backward adds each top diff to the bottom element its argmax names. As in the fork (CPU and GPU),
a malformed roi gets no gradient: its backward walks the rows start..end, which are none. The
rois get no gradient either. Sums over rois are taken in the fork's order (roi by roi).

SmoothL1Loss: with x = inside * (pred - target) and sigma2 = sigma * sigma (in float, as the
fork multiplies its float field),

    f(x)  = 0.5 * sigma2 * x^2       if |x| < 1 / sigma2
          = |x| - 0.5 / sigma2       otherwise
    loss  = sum(outside * f(x)) / N                N = pred.shape[0], the batch size
    dpred = loss_weight / N * f'(x) * inside * outside,   f'(x) = sigma2 * x or sign(x)
    dtarget = -dpred

The fork evaluates f in double (its constants are doubles) and stores it in the net's dtype; so
does the reference. f and f' are continuous; f'' jumps at |x| = 1 / sigma2.

Impls: ref (NumPy: ROIPooling loops over the rois and bins, vectorised over the channels);
cuda for SmoothL1Loss (CuPy array expressions, as the reference). ROIPooling and PSROIPooling
have no CUDA impl: a GPU net runs them on host copies (minicnn.net.runs_on_host).
"""

import numpy as np

from minicnn.ops._dispatch import Op

roi_pool_forward, roi_pool_backward = Op("roi_pool_forward"), Op("roi_pool_backward")
psroi_pool_forward, psroi_pool_backward = Op("psroi_pool_forward"), Op("psroi_pool_backward")
smooth_l1_loss_forward = Op("smooth_l1_loss_forward")
smooth_l1_loss_backward = Op("smooth_l1_loss_backward")

FLT_MAX = float(np.finfo(np.float32).max)


# --- ROIPooling --------------------------------------------------------------------------------

def c_round(v):
    """C's round(): halves away from zero, exactly (v - trunc(v) has no rounding error)."""
    t = np.trunc(v)
    return t + np.sign(v) * (np.abs(v - t) >= 0.5)


def roi_batch_indices(rois):
    """The rois' batch indices as the fork reads them: the float cast to int (toward zero)."""
    return np.trunc(np.asarray(rois)[:, 0]).astype(np.int64)


def roi_pool_bins(rois, *, spatial_scale, pooled_h, pooled_w, height, width, dtype):
    """The fork's geometry of each roi (R rois as an (R, 5) host array):
    (batch (R,), hstart, hend (R, pooled_h), wstart, wend (R, pooled_w), well_formed (R,)),
    bin bounds clipped to the height x width map, computed in ``dtype`` as the fork does."""
    dtype = np.dtype(dtype).type
    coords = np.asarray(rois)[:, 1:5].astype(dtype) * dtype(spatial_scale)
    start_w, start_h, end_w, end_h = c_round(coords).astype(np.int64).T

    def bins(start, end, pooled, size):
        extent = np.maximum(end - start + 1, 1)
        bin_size = extent.astype(dtype) / dtype(pooled)                     # (R,) in dtype
        p = np.arange(pooled, dtype=dtype)
        lo = np.floor(p[None, :] * bin_size[:, None]).astype(np.int64)
        hi = np.ceil((p[None, :] + dtype(1)) * bin_size[:, None]).astype(np.int64)
        return (np.clip(lo + start[:, None], 0, size), np.clip(hi + start[:, None], 0, size))

    hstart, hend = bins(start_h, end_h, pooled_h, height)
    wstart, wend = bins(start_w, end_w, pooled_w, width)
    well_formed = (end_w >= start_w) & (end_h >= start_h)
    return roi_batch_indices(rois), hstart, hend, wstart, wend, well_formed


@roi_pool_forward.impl("ref")
def _roi_pool_forward_ref(x, rois, *, pooled_h, pooled_w, spatial_scale=1.0):
    """x (N, C, H, W), rois (R, 5) with batch indices in [0, N). Returns (y (R, C, pooled_h,
    pooled_w), argmax (same shape, int64): h * W + w of each max in its feature plane, -1 for
    an empty bin)."""
    _, c, height, width = x.shape
    batch, hstart, hend, wstart, wend, _ = roi_pool_bins(
        rois, spatial_scale=spatial_scale, pooled_h=pooled_h, pooled_w=pooled_w,
        height=height, width=width, dtype=x.dtype)
    y = np.zeros((len(batch), c, pooled_h, pooled_w), x.dtype)
    argmax = np.full(y.shape, -1, np.int64)
    channels = np.arange(c)
    for r, b in enumerate(batch):
        for i in range(pooled_h):
            h0, h1 = hstart[r, i], hend[r, i]
            for j in range(pooled_w):
                w0, w1 = wstart[r, j], wend[r, j]
                if h1 <= h0 or w1 <= w0:
                    continue                                     # empty bin: 0, argmax -1
                window = x[b, :, h0:h1, w0:w1].reshape(c, -1)
                k = window.argmax(axis=1)                        # the first max, row-major
                y[r, :, i, j] = window[channels, k]
                argmax[r, :, i, j] = (h0 + k // (w1 - w0)) * width + w0 + k % (w1 - w0)
    # the fork starts each bin at -FLT_MAX and takes a value only if greater
    low = (argmax >= 0) & ~(y > x.dtype.type(-FLT_MAX))
    y[low], argmax[low] = -FLT_MAX, -1
    return y, argmax


@roi_pool_backward.impl("ref")
def _roi_pool_backward_ref(dy, argmax, rois, x_shape, *, spatial_scale=1.0):
    """dx (x_shape): dy added at each argmax, roi by roi; nothing from malformed rois."""
    n, c, height, width = x_shape
    pooled_h, pooled_w = dy.shape[2:]
    batch, *_, well_formed = roi_pool_bins(
        rois, spatial_scale=spatial_scale, pooled_h=pooled_h, pooled_w=pooled_w,
        height=height, width=width, dtype=dy.dtype)
    plane = (batch[:, None] * c + np.arange(c)[None, :]) * (height * width)     # (R, C)
    keep = (argmax >= 0) & well_formed[:, None, None, None]
    dx = np.zeros(n * c * height * width, dy.dtype)
    np.add.at(dx, (plane[:, :, None, None] + argmax)[keep], dy[keep])
    return dx.reshape(x_shape)


# --- PSROIPooling (R-FCN) ----------------------------------------------------------------------
#
# R-FCN's position-sensitive pooling: the features hold output_dim groups of k x k score maps
# (k = group_size, the pooled size); bin (i, j) of output channel o averages its window of
# channel (o * k + i) * k + j only. The fork's geometry, in the net's dtype (its kernel is GPU
# only): corners round(x1) * scale .. (round(x2) + 1) * scale, so the roi is rounded *before*
# scaling (ROIPooling scales first), at least 0.1 wide and high; bin p covers
# [floor(p * bin + start), ceil((p + 1) * bin + start)) clipped to the map; an empty bin gives 0.
# Backward spreads each top diff evenly over its window (the fork's atomicAdd; here roi by roi).

def psroi_pool_bins(rois, *, spatial_scale, group_size, height, width, dtype):
    """(batch (R,), hstart, hend, wstart, wend (R, group_size)) as the fork's kernel."""
    dtype = np.dtype(dtype).type
    corners = c_round(np.asarray(rois)[:, 1:5].astype(dtype))
    scale, k = dtype(spatial_scale), dtype(group_size)
    x1, y1 = corners[:, 0] * scale, corners[:, 1] * scale
    x2, y2 = (corners[:, 2] + dtype(1)) * scale, (corners[:, 3] + dtype(1)) * scale

    def bins(start, end, size):
        extent = np.maximum(end - start, dtype(0.1))
        bin_size = extent / k
        p = np.arange(group_size, dtype=dtype)
        lo = np.floor(p[None, :] * bin_size[:, None] + start[:, None]).astype(np.int64)
        hi = np.ceil((p[None, :] + dtype(1)) * bin_size[:, None] + start[:, None]).astype(np.int64)
        return np.clip(lo, 0, size), np.clip(hi, 0, size)

    hstart, hend = bins(y1, y2, height)
    wstart, wend = bins(x1, x2, width)
    return roi_batch_indices(rois), hstart, hend, wstart, wend


def _psroi_windows(rois, group_size, output_dim, x_shape, spatial_scale, dtype):
    """(roi r, its item b, bin i, j, the bin's channels, its window (rows, columns), its area)
    for every bin that is not empty, roi by roi as the fork's kernel."""
    k = group_size
    batch, hstart, hend, wstart, wend = psroi_pool_bins(
        rois, spatial_scale=spatial_scale, group_size=k, height=x_shape[2], width=x_shape[3],
        dtype=dtype)
    channels = np.arange(output_dim) * k * k                    # (o * k + i) * k + j
    for r, b in enumerate(batch):
        for i in range(k):
            h0, h1 = hstart[r, i], hend[r, i]
            for j in range(k):
                w0, w1 = wstart[r, j], wend[r, j]
                if h1 > h0 and w1 > w0:
                    yield (r, b, i, j, channels + i * k + j, (slice(h0, h1), slice(w0, w1)),
                           np.dtype(dtype).type((h1 - h0) * (w1 - w0)))


@psroi_pool_forward.impl("ref")
def _psroi_pool_forward_ref(x, rois, *, output_dim, group_size, spatial_scale=1.0):
    """x (N, output_dim * group_size^2, H, W), rois (R, 5) -> y (R, output_dim, group_size,
    group_size): each bin the mean of its window of its own channel (0 when empty)."""
    y = np.zeros((len(rois), output_dim, group_size, group_size), x.dtype)
    for r, b, i, j, channels, (rows, cols), area in _psroi_windows(
            rois, group_size, output_dim, x.shape, spatial_scale, x.dtype):
        total = np.zeros(output_dim, x.dtype)
        for v in x[b, channels, rows, cols].reshape(output_dim, -1).T:   # the fork's order
            total += v
        y[r, :, i, j] = total / area
    return y


@psroi_pool_backward.impl("ref")
def _psroi_pool_backward_ref(dy, rois, x_shape, *, spatial_scale=1.0):
    """dx (x_shape): each top diff divided by its window's area, added over the window."""
    dx = np.zeros(x_shape, dy.dtype)
    for r, b, i, j, channels, (rows, cols), area in _psroi_windows(
            rois, dy.shape[2], dy.shape[1], x_shape, spatial_scale, dy.dtype):
        dx[b, channels, rows, cols] += (dy[r, :, i, j] / area)[:, None, None]
    return dx


# --- SmoothL1Loss ------------------------------------------------------------------------------

def smooth_l1_sigma2(sigma):
    """sigma * sigma as the fork computes it: a product of two floats (its field's type)."""
    return float(np.float32(sigma) * np.float32(sigma))


@smooth_l1_loss_forward.impl("ref")
def _smooth_l1_loss_forward_ref(pred, target, inside=None, outside=None, *, sigma=1.0):
    """(loss as a 0-d array of pred's dtype, x = inside * (pred - target)). The weights, when
    given, have pred's size."""
    dtype = pred.dtype.type
    x = pred - target.reshape(pred.shape)
    if inside is not None:
        x = inside.reshape(pred.shape) * x
    sigma2 = dtype(smooth_l1_sigma2(sigma))
    v, s2 = x.astype(np.float64), float(sigma2)                # the fork's double constants
    errors = np.where(np.abs(v) < 1.0 / s2, 0.5 * v * v * s2, np.abs(v) - 0.5 / s2)
    errors = errors.astype(pred.dtype)
    if outside is not None:
        errors = outside.reshape(pred.shape) * errors
    return np.asarray(np.sum(errors) / dtype(pred.shape[0]), pred.dtype), x


@smooth_l1_loss_backward.impl("ref")
def _smooth_l1_loss_backward_ref(x, inside=None, outside=None, *, sigma=1.0, loss_weight=1.0):
    """d(loss)/d(pred) for the x that forward returned; d/d(target) is its negative."""
    dtype = x.dtype.type
    sigma2 = dtype(smooth_l1_sigma2(sigma))
    slope = np.where(np.abs(x).astype(np.float64) < 1.0 / float(sigma2), sigma2 * x,
                     np.sign(x)).astype(x.dtype)
    grad = dtype(dtype(float(loss_weight)) / dtype(x.shape[0])) * slope
    if inside is not None:
        grad = grad * inside.reshape(x.shape)
    if outside is not None:
        grad = grad * outside.reshape(x.shape)
    return grad


# --- CUDA (SmoothL1Loss only: CuPy array expressions, as the reference) --------------------------

from minicnn import cuda  # noqa: E402


@smooth_l1_loss_forward.impl("cuda", available=cuda.importable)
def _smooth_l1_loss_forward_cuda(pred, target, inside=None, outside=None, *, sigma=1.0):
    cp = cuda.cupy()
    dtype = pred.dtype.type
    x = pred - target.reshape(pred.shape)
    if inside is not None:
        x = inside.reshape(pred.shape) * x
    v, s2 = x.astype(np.float64), float(dtype(smooth_l1_sigma2(sigma)))
    errors = cp.where(cp.abs(v) < 1.0 / s2, 0.5 * v * v * s2, cp.abs(v) - 0.5 / s2)
    errors = errors.astype(pred.dtype)
    if outside is not None:
        errors = outside.reshape(pred.shape) * errors
    return (errors.sum() / dtype(pred.shape[0])).astype(pred.dtype), x


@smooth_l1_loss_backward.impl("cuda", available=cuda.importable)
def _smooth_l1_loss_backward_cuda(x, inside=None, outside=None, *, sigma=1.0, loss_weight=1.0):
    cp = cuda.cupy()
    sigma2 = x.dtype.type(smooth_l1_sigma2(sigma))
    slope = cp.where(cp.abs(x).astype(np.float64) < 1.0 / float(sigma2), sigma2 * x,
                     cp.sign(x)).astype(x.dtype)
    grad = cuda.loss_scale(loss_weight, float(x.shape[0]), x.dtype) * slope
    if inside is not None:
        grad = grad * inside.reshape(x.shape)
    if outside is not None:
        grad = grad * outside.reshape(x.shape)
    return grad
