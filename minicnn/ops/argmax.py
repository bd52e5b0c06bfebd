"""The top_k largest values and their indices, Caffe's "ArgMax".

Without an axis, each item n of x (N, ...) is searched over its flattened C*H*W values; the output
has max(3, x.ndim) axes, (N, 1, top_k, 1, ...): the indices (into the flattened item), or
(N, 2, top_k, 1, ...) with out_max_val: [:, 0] the indices, [:, 1] the values.
With an axis, that axis of x becomes top_k long and holds the indices along it, or the values
when out_max_val (then there are no indices).

Order: descending by value; among equal values the LARGER index comes first. (Caffe sorts
(value, index) pairs with std::greater, which compares the index second.) Indices are stored as
numbers of x's dtype. No backward (the output is piecewise constant in x).
Impls: ref.
"""

import numpy as np

from minicnn.ops._dispatch import Op

argmax_forward = Op("argmax_forward")


def argmax_shape(shape, top_k=1, out_max_val=False, axis=None):
    """The output shape for an input of ``shape`` (axis: None, or non-negative)."""
    if axis is not None:
        return shape[:axis] + (top_k,) + shape[axis + 1:]
    out = [1] * max(3, len(shape))
    out[0], out[1], out[2] = shape[0], 2 if out_max_val else 1, top_k
    return tuple(out)


@argmax_forward.impl("ref")
def _argmax_forward_ref(x, *, top_k=1, out_max_val=False, axis=None):
    """axis: None (per item over everything after axis 0) or a non-negative axis."""
    rows = x.reshape(x.shape[0], -1) if axis is None else np.moveaxis(x, axis, -1)
    # a stable ascending sort keeps equal values in index order; reversed, equal values come
    # larger index first, as Caffe's pair comparison
    order = np.argsort(rows, axis=-1, kind="stable")[..., ::-1][..., :top_k]
    values = np.take_along_axis(rows, order, axis=-1)
    indices = order.astype(x.dtype)
    shape = argmax_shape(x.shape, top_k, out_max_val, axis)
    if axis is not None:
        return np.moveaxis(values if out_max_val else indices, -1, axis).reshape(shape)
    parts = (indices, values) if out_max_val else (indices,)
    return np.stack(parts, axis=1).reshape(shape)
