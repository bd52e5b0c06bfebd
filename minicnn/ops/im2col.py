"""Caffe's "Im2col" layer as an op: every kernel window of the image as a column, the first
half of a convolution (minicnn.ops.conv multiplies these columns by the weights).

    y[n, (c*kh + i)*kw + j, oy, ox] = x[n, c, oy*sh + i*dh - ph, ox*sw + j*dw - pw]   (0 on padding)
    dx = col2im(dy): each column entry added back onto the pixel it was read from

Impls: ref (minicnn.ops.conv's im2col_ref / col2im_ref), cuda (the convolution's own
kernels/im2col.cu kernels, whose image-major column layout is this layer's top).
"""

from minicnn.ops._dispatch import Op
from minicnn.ops.conv import col2im_ref, im2col_ref

im2col_forward = Op("im2col_forward")
im2col_backward = Op("im2col_backward")


@im2col_forward.impl("ref")
def _im2col_forward_ref(x, *, geom):
    n, c = x.shape[:2]
    cols = im2col_ref(x, geom)                                  # (N, C, kh, kw, oh, ow)
    return cols.reshape(n, c * geom.kernel[0] * geom.kernel[1], *cols.shape[-2:])


@im2col_backward.impl("ref")
def _im2col_backward_ref(dy, *, x_hw, geom):
    n, rows, oh, ow = dy.shape
    kh, kw = geom.kernel
    return col2im_ref(dy.reshape(n, rows // (kh * kw), kh, kw, oh, ow), x_hw, geom)


# --- CUDA (kernels/im2col.cu) --------------------------------------------------------------------

import numpy as np  # noqa: E402

from minicnn import cuda  # noqa: E402
from minicnn.ops.conv import _cuda_geom  # noqa: E402


@im2col_forward.impl("cuda", available=cuda.importable)
def _im2col_forward_cuda(x, *, geom):
    x = cuda.contiguous(x)
    n, c, h, w = x.shape
    oh, ow = geom.out_hw(h, w)
    rows, plane = c * geom.kernel[0] * geom.kernel[1], oh * ow
    cols = cuda.cupy().empty((n, rows, oh, ow), x.dtype)
    cuda.launch_1d(cuda.kernel("im2col.cu", "im2col", x.dtype), n * c * plane, x, cols,
                   *_cuda_geom(c, h, w, geom, oh, ow), np.int64(rows * plane), np.int64(plane))
    return cols


@im2col_backward.impl("cuda", available=cuda.importable)
def _im2col_backward_cuda(dy, *, x_hw, geom):
    dy = cuda.contiguous(dy)
    n, rows, oh, ow = dy.shape
    h, w = x_hw
    c = rows // (geom.kernel[0] * geom.kernel[1])
    dx = cuda.cupy().empty((n, c, h, w), dy.dtype)
    cuda.launch_1d(cuda.kernel("im2col.cu", "col2im", dy.dtype), dx.size, dy, dx,
                   *_cuda_geom(c, h, w, geom, oh, ow), np.int64(rows * oh * ow),
                   np.int64(oh * ow))
    return dx
