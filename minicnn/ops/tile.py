"""Tiling, Caffe's "Tile" layer: the block of axes from ``axis`` on repeated ``tiles`` times.

x is seen as M = prod(shape[:axis]) blocks of D = prod(shape[axis:]) values; y holds each block
``tiles`` times in a row, so y.shape[axis] = tiles * x.shape[axis] and the other dims stay:

    y[m, t, :] = x[m, :]                 (as (M, tiles, D))
    dx[m, :]   = sum over t of dy[m, t, :]

So along ``axis`` the whole sub-blob repeats (1 2 3 -> 1 2 3 1 2 3, numpy.tile), not each
element (1 1 2 2 3 3, numpy.repeat). No kinks. Impls: ref; cuda (a CuPy broadcast copy, and
kernels/tile.cu's sum of the copies in the reference's order).
"""

import math

import numpy as np

from minicnn.ops._dispatch import Op

tile_forward, tile_backward = Op("tile_forward"), Op("tile_backward")


def tile_shape(shape, axis, tiles):
    return tuple(d * tiles if a == axis else d for a, d in enumerate(shape))


@tile_forward.impl("ref")
def _tile_forward_ref(x, axis, tiles):
    blocks = x.reshape(math.prod(x.shape[:axis]), 1, -1)            # (M, 1, D)
    y = np.broadcast_to(blocks, (blocks.shape[0], tiles, blocks.shape[2]))
    return np.ascontiguousarray(y).reshape(tile_shape(x.shape, axis, tiles))


@tile_backward.impl("ref")
def _tile_backward_ref(dy, axis, tiles):
    m = math.prod(dy.shape[:axis])
    x_shape = tuple(d // tiles if a == axis else d for a, d in enumerate(dy.shape))
    copies = dy.reshape(m, tiles, -1)                                 # (M, tiles, D)
    dx = copies[:, 0].copy()
    for t in range(1, tiles):                # copy by copy, in Caffe's order (caffe_axpy)
        dx += copies[:, t]
    return dx.reshape(x_shape)


# --- CUDA (kernels/tile.cu) ---------------------------------------------------------------------

from minicnn import cuda  # noqa: E402


@tile_forward.impl("cuda", available=cuda.importable)
def _tile_forward_cuda(x, axis, tiles):
    cp = cuda.cupy()
    blocks = x.reshape(math.prod(x.shape[:axis]), 1, -1)            # (M, 1, D)
    y = cp.broadcast_to(blocks, (blocks.shape[0], tiles, blocks.shape[2]))
    return cp.ascontiguousarray(y).reshape(tile_shape(x.shape, axis, tiles))


@tile_backward.impl("cuda", available=cuda.importable)
def _tile_backward_cuda(dy, axis, tiles):
    dy = cuda.contiguous(dy)
    x_shape = tuple(d // tiles if a == axis else d for a, d in enumerate(dy.shape))
    dx = cuda.cupy().empty(x_shape, dy.dtype)
    inner = math.prod(dy.shape[axis:]) // tiles if tiles else 0
    cuda.launch_1d(cuda.kernel("tile.cu", "tile_backward", dy.dtype), dx.size, dy, dx,
                   np.int32(tiles), np.int64(inner))
    return dx
