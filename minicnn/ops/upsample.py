"""Upsampling, the forks' "Upsample" layer, in its two meanings.

Max-unpooling (SegNet's Upsample, two bottoms): each value goes back to the place its MAX
pooling window took it from. With ``mask`` the pooling's argmax (a flat index h * W + w into
each output plane, as Caffe's Pooling writes its mask top):

    y[n, c, :] = 0;  y[n, c, mask[n, c, i]] = x[n, c, i]      for every input position i
    dx[n, c, i] = dy[n, c, mask[n, c, i]]

Where two positions name the same place (overlapping windows), the later one in memory order
wins, as in SegNet's loop; the backward then hands that place's gradient to both (SegNet's
gather), so it is the adjoint only where the mask has no repeats.

Nearest-neighbour upsampling (the YOLOv3 ports' Upsample, one bottom): every value repeated
over a scale_h x scale_w block,

    y[n, c, h, w] = x[n, c, h // scale_h, w // scale_w]
    dx[n, c, p, q] = sum over the block's i, j (row by row) of
                     dy[n, c, p scale_h + i, q scale_w + j]

Both are copies: no kinks. Impls: ref (NumPy); on a GPU the layer runs on host copies.
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op

__all__ = ["max_unpool2d_backward", "max_unpool2d_forward", "nearest_upsample_backward",
           "nearest_upsample_forward"]

max_unpool2d_forward = Op("max_unpool2d_forward")
max_unpool2d_backward = Op("max_unpool2d_backward")
nearest_upsample_forward = Op("nearest_upsample_forward")
nearest_upsample_backward = Op("nearest_upsample_backward")


def _targets(mask, out_size):
    """The flat places (over all planes) the mask names, checked: whole numbers in
    [0, out_size) (a place past the plane means the pooling had another input size)."""
    planes = mask.shape[0] * mask.shape[1]
    flat = mask.reshape(planes, -1)
    index = flat.astype(np.int64)
    bad = (index != flat) | (index < 0) | (index >= out_size)
    if bad.any():
        where = np.unravel_index(np.flatnonzero(bad.ravel())[0], mask.shape)
        raise LayerError(
            f"mask value {flat.ravel()[np.flatnonzero(bad.ravel())[0]]:g} at index "
            f"{tuple(int(i) for i in where)} is not a place in the {out_size}-value output "
            "plane: the mask must come from the MAX Pooling whose input had the upsampled "
            "size (check scale, or upsample_h and upsample_w)")
    return index + (np.arange(planes, dtype=np.int64) * out_size)[:, None]


@max_unpool2d_forward.impl("ref")
def _max_unpool2d_forward_ref(x, mask, out_hw):
    n, c = x.shape[:2]
    out_size = out_hw[0] * out_hw[1]
    targets = _targets(mask, out_size).ravel()
    y = np.zeros(n * c * out_size, x.dtype)
    winner = np.full(y.size, -1, np.int64)          # the last input position naming each place
    np.maximum.at(winner, targets, np.arange(targets.size))
    placed = winner >= 0
    y[placed] = x.reshape(-1)[winner[placed]]
    return y.reshape(n, c, *out_hw)


@max_unpool2d_backward.impl("ref")
def _max_unpool2d_backward_ref(dy, mask):
    out_size = dy.shape[2] * dy.shape[3]
    return dy.reshape(-1)[_targets(mask, out_size)].reshape(mask.shape)


@nearest_upsample_forward.impl("ref")
def _nearest_upsample_forward_ref(x, scale_h, scale_w):
    return np.repeat(np.repeat(x, scale_h, axis=2), scale_w, axis=3)


@nearest_upsample_backward.impl("ref")
def _nearest_upsample_backward_ref(dy, scale_h, scale_w):
    dx = np.zeros((*dy.shape[:2], dy.shape[2] // scale_h, dy.shape[3] // scale_w), dy.dtype)
    for i in range(scale_h):                       # the fork's loop order: rows, then columns
        for j in range(scale_w):
            dx += dy[:, :, i::scale_h, j::scale_w]
    return dx
