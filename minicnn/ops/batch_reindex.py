"""Picking items of a batch by index: Caffe's "BatchReindex" layer, and "Filter" (which picks
the items whose selector is nonzero).

    y[i] = x[index[i]]                     dx[j] = sum of dy[i] over the i with index[i] == j

An item may be picked several times (its gradient then adds up) or not at all (gradient 0).
``index`` holds whole numbers stored as floats, as every Caffe blob does; anything else is an
error here, where Caffe would cast 1.5 to 1 or read outside the batch. Impls: ref (NumPy).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op

batch_reindex_forward = Op("batch_reindex_forward")
batch_reindex_backward = Op("batch_reindex_backward")


def item_indices(index, num_items, what="index"):
    """``index`` as int64 positions into a batch of ``num_items``, or a LayerError naming the
    first value that is not one."""
    index = np.asarray(index).reshape(-1)
    whole = np.isfinite(index) & (index == np.round(index))
    bad = ~whole | (index < 0) | (index >= num_items)
    if bad.any():
        i = int(np.argmax(bad))
        raise LayerError(f"{what}[{i}] is {float(index[i]):g}: not an item of a batch of "
                         f"{num_items} (a whole number in [0, {num_items}))")
    return index.astype(np.int64)


@batch_reindex_forward.impl("ref")
def _batch_reindex_forward_ref(x, index, out=None):
    index = item_indices(index, x.shape[0])
    if out is None:
        return x[index]
    np.take(x, index, axis=0, out=out)
    return out


@batch_reindex_backward.impl("ref")
def _batch_reindex_backward_ref(dy, index, num_items, dx_out=None):
    index = item_indices(index, num_items)
    dx = np.zeros((num_items, *dy.shape[1:]), dy.dtype) if dx_out is None else dx_out
    if dx_out is not None:
        dx[...] = 0
    np.add.at(dx, index, dy)           # repeated indices add up (dx[index] += dy would not)
    return dx
