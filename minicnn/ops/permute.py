"""Axis permutation, SSD's Caffe "Permute" layer, and ShuffleNet's channel shuffle.

    y = transpose(x, order)                dx = transpose(dy, argsort(order))

``order`` names, for each output axis, the input axis it takes; SSD's rule completes a partial
order with the axes it leaves out, in increasing order (``permute_order``).

The channel shuffle (the ShuffleNet forks' "ShuffleChannel") is a permutation of the channels
only: C = G * K channels seen as a G x K matrix (G groups of K), transposed, so that output
channel k * G + g is input channel g * K + k and the next grouped convolution's groups each
see a channel from every group:

    y = x.reshape(N, G, K, ...).swapaxes(1, 2).reshape(N, C, ...)

Its adjoint is the inverse permutation, the same shuffle with K groups: dx = shuffle(dy, K).

YOLOv2's "Reorg" (Darknet's reorg layer, and the Caffe ports' copy of it) is a permutation of
each item's values too, by Darknet's reorg_cpu with forward = 0: for bottom position (k, j, i)
of (C, H, W) and stride s, with C' = C / s^2, it takes the value at (k mod C', j s + (k div C')
div s, i s + (k div C') mod s) of the same values read as (C', H s, W s), and the result is
read as (C s^2, H / s, W / s) (reorg_index). Not a plain space-to-depth: that reading of the
input as a larger map is Darknet's, and the weights of YOLOv2 were trained through it.
reverse (the ports' option) scatters by the same map. Pure copies: no kinks. Impls: ref
(NumPy's transpose and indexing, made contiguous); cuda (the same on CuPy arrays).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op

permute_forward = Op("permute_forward")
permute_backward = Op("permute_backward")
channel_shuffle = Op("channel_shuffle")
reorg_forward, reorg_backward = Op("reorg_forward"), Op("reorg_backward")


def reorg_index(c, h, w, stride):
    """The flat index, within one item, that each bottom position (k, j, i) of a C x H x W
    item reads (Darknet's out_index), as a (C*H*W,) int64 array in bottom order."""
    k, j, i = (a.ravel() for a in np.meshgrid(np.arange(c), np.arange(h), np.arange(w),
                                             indexing="ij"))
    out_c = c // (stride * stride)
    offset = k // out_c
    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
    return w2 + w * stride * (h2 + h * stride * (k % out_c))


def _reorg(values, reverse, adjoint, index):
    """The gather (or, for reverse / the adjoint, the scatter) of each item's flat values."""
    n = values.shape[0]
    flat = values.reshape(n, -1)
    if reverse == adjoint:                       # gather: out[p] = in[index[p]]
        return flat[:, index]
    out = flat.copy()                            # scatter: out[index[p]] = in[p]
    out[:, index] = flat
    return out


def permute_order(order, ndim):
    """The full axis order from a partial one (SSD's PermuteLayer::LayerSetUp)."""
    order = [int(a) for a in order]
    for a in order:
        if not 0 <= a < ndim:
            raise LayerError(f"permute order {order}: axis {a} does not exist in a blob of "
                             f"{ndim} axes")
    if len(set(order)) != len(order):
        raise LayerError(f"permute order {order} names an axis twice")
    return tuple(order + [a for a in range(ndim) if a not in order])


@permute_forward.impl("ref")
def _permute_forward_ref(x, order):
    return np.ascontiguousarray(np.transpose(x, order))


@permute_backward.impl("ref")
def _permute_backward_ref(dy, order):
    return np.ascontiguousarray(np.transpose(dy, np.argsort(order)))


def reorg_shape(shape, stride, reverse=False):
    """The top shape of a Reorg of an (N, C, H, W) bottom."""
    n, c, h, w = shape
    s2 = stride * stride
    if reverse:
        return n, c // s2, h * stride, w * stride
    return n, c * s2, h // stride, w // stride


@reorg_forward.impl("ref")
def _reorg_forward_ref(x, stride, reverse=False):
    """x (N, C, H, W) -> (N, C s^2, H/s, W/s), or (N, C/s^2, H s, W s) with reverse."""
    index = reorg_index(*x.shape[1:], stride)
    return _reorg(x, reverse, False, index).reshape(reorg_shape(x.shape, stride, reverse))


@reorg_backward.impl("ref")
def _reorg_backward_ref(dy, x_shape, stride, reverse=False):
    index = reorg_index(*x_shape[1:], stride)
    return _reorg(dy, reverse, True, index).reshape(x_shape)


@channel_shuffle.impl("ref")
def _channel_shuffle_ref(x, group):
    """x (N, C, ...) with its channels as a group x C/group matrix, transposed (see above);
    the backward is channel_shuffle(dy, C // group)."""
    n, c = x.shape[:2]
    groups = x.reshape(n, group, c // group, *x.shape[2:])
    return np.ascontiguousarray(groups.swapaxes(1, 2)).reshape(x.shape)


# --- CUDA (a CuPy transpose made contiguous: one copy kernel) ------------------------------------

from minicnn import cuda  # noqa: E402


@permute_forward.impl("cuda", available=cuda.importable)
def _permute_forward_cuda(x, order):
    cp = cuda.cupy()
    return cp.ascontiguousarray(cp.transpose(x, tuple(int(a) for a in order)))


@permute_backward.impl("cuda", available=cuda.importable)
def _permute_backward_cuda(dy, order):
    cp = cuda.cupy()
    return cp.ascontiguousarray(cp.transpose(dy, tuple(int(a) for a in np.argsort(order))))


@channel_shuffle.impl("cuda", available=cuda.importable)
def _channel_shuffle_cuda(x, group):
    cp = cuda.cupy()
    n, c = x.shape[:2]
    groups = x.reshape(n, group, c // group, *x.shape[2:])
    return cp.ascontiguousarray(groups.swapaxes(1, 2)).reshape(x.shape)


@reorg_forward.impl("cuda", available=cuda.importable)
def _reorg_forward_cuda(x, stride, reverse=False):
    index = cuda.cupy().asarray(reorg_index(*x.shape[1:], stride))
    return _reorg(cuda.contiguous(x), reverse, False, index).reshape(
        reorg_shape(x.shape, stride, reverse))


@reorg_backward.impl("cuda", available=cuda.importable)
def _reorg_backward_cuda(dy, x_shape, stride, reverse=False):
    index = cuda.cupy().asarray(reorg_index(*x_shape[1:], stride))
    return _reorg(cuda.contiguous(dy), reverse, True, index).reshape(x_shape)
