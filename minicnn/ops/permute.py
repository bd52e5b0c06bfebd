"""Axis permutation, SSD's Caffe "Permute" layer.

    y = transpose(x, order)                dx = transpose(dy, argsort(order))

``order`` names, for each output axis, the input axis it takes; SSD's rule completes a partial
order with the axes it leaves out, in increasing order (``permute_order``). A pure copy: no
kinks. Impls: ref (NumPy's transpose, made contiguous).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op

permute_forward = Op("permute_forward")
permute_backward = Op("permute_backward")


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
