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
Pure copies: no kinks. Impls: ref (NumPy's transpose, made contiguous); cuda (CuPy's).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op

permute_forward = Op("permute_forward")
permute_backward = Op("permute_backward")
channel_shuffle = Op("channel_shuffle")


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
