"""2-D convolution, Caffe's "Convolution" (cross-correlation, as every CNN library computes it).

    y[n, f, p, q] = b[f] + sum_{c,i,j} w[f, c, i, j] * xpad[n, g*C/G + c, p*sh + i*dh, q*sw + j*dw]

at output position (p, q), with g = f // (F/G) the group of output f, c running over that
group's C/G input channels and xpad = x zero-padded by (ph, pw) on each side. Shapes:

    x  (N, C, H, W)     w  (F, C/G, kh, kw)     b  (F,) or None     y  (N, F, oh, ow)
    oh = floor((H + 2ph - (dh*(kh-1) + 1)) / sh) + 1     (same for ow)

group G splits the channels into G contiguous blocks (G == C is depthwise); dilation d > 1
spaces the kernel taps d apart (atrous). Backward, per group g:

    db = sum_{n, p, q} dy                            (F,)
    dw = sum_n dy_g @ cols_g^T                       (F, C/G, kh, kw)
    dx = col2im(w_g^T @ dy_g)                        (N, C, H, W)

where cols = im2col(x) lays every kernel window out as a column. col2im is the adjoint of
im2col: it adds each column entry back onto the pixel it was read from (padding is dropped).

Why: im2col turns the convolution into a matrix product per group and image, y_g = w_g @
cols_g (w_g: (F/G, C/G*kh*kw), cols_g: (C/G*kh*kw, oh*ow)), so the backward is InnerProduct's
(minicnn/ops/inner_product.py): dw_g = dy_g @ cols_g^T, summed over images because the same
filter slides over all of them, and dcols_g = w_g^T @ dy_g. A pixel of x was copied into every
window that covers it, so its gradient is the sum of those copies' gradients: col2im does that
sum. dx is therefore a transposed convolution of dy with w (stride becomes upsampling), which
is exactly Caffe's Deconvolution forward. db sums dy over the images and positions that every
bias value was added to.

Reading order: the ``# --- reference (the spec)`` section below (im2col_ref, col2im_ref and the
_ref functions) is the whole math in NumPy; everything after it is speed, checked against it by
tests/ops/test_conv.py.
conv2d_backward(..., need=(dx?, dw?, db?)) computes only the parts asked for (None otherwise);
every impl takes ``need``. ``out=`` (forward) and ``dx_out=`` (backward) name arrays to write y
and dx into, as NumPy's ``out``: the layers pass their blobs, so nothing is copied.
``dw_acc=``/``db_acc=`` name the parameter diffs that dw and db are added onto (Caffe
accumulates parameter gradients), returned in their place: the GPU's GEMM adds into them
directly (beta = 1) instead of into a zeroed array that the layer then adds.

Deconvolution reuses these: its forward is ``conv2d_backward_data`` and its backward is
``conv2d_forward`` (for the bottom diff) and ``conv2d_backward_filter`` (for the weights), with
the roles of x and y swapped; ``ConvGeometry.transposed_out_hw`` gives its output size.

No kinks: convolution is linear in x and in w. dtype follows the inputs (float32 stays float32).
Impls: ref (im2col + batched matmul in NumPy); cpu: depthwise convolutions (C/G == 1) run a
direct kernel (csrc/depthwise.cpp); float32 runs on minicnn's own GEMM (csrc/gemm.h,
csrc/conv_gemm.cpp), which packs the im2col columns of a cache-sized block as it goes and
stores y straight into the (N, F, oh, ow) output; float64 folds a chunk of images into one
BLAS product per group (csrc/im2col.cpp: columns laid out (C*kh*kw, images*oh*ow), so the
product stays large even on 13x13 maps; 1x1 convolutions skip im2col; buffers reused).
3x3 and 5x5 stride-1 float32 convolutions with enough output tiles run Winograd's F(2x2, 3x3)
or F(2x2, 5x5) instead (csrc/winograd.cpp; _winograd says where).
"""

import os
from dataclasses import dataclass

import numpy as np

from minicnn.errors import LayerError
from minicnn.native import lib
from minicnn.ops._dispatch import Op, write_out
from minicnn.ops._windows import tap_ranges
from minicnn.ops._workspace import workspace

__all__ = ["ConvGeometry", "col2im_ref", "conv2d_backward", "conv2d_backward_data",
           "conv2d_backward_filter", "conv2d_forward", "im2col_ref"]

conv2d_forward = Op("conv2d_forward")
conv2d_backward = Op("conv2d_backward")
conv2d_backward_data = Op("conv2d_backward_data")
conv2d_backward_filter = Op("conv2d_backward_filter")


# --- geometry ----------------------------------------------------------------------------------

def _pair(value, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = value
    except (TypeError, ValueError):
        raise LayerError(f"{name} must be an int or an (h, w) pair, not {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w)):
        raise LayerError(f"{name} must hold integers, not {value!r}")
    return int(h), int(w)


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, pad and dilation of a 2-D convolution, each an (h, w) pair.

        ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1))     ConvGeometry(3, 2, 1)  # same
    """
    kernel: tuple
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    dilation: tuple = (1, 1)

    def __post_init__(self):
        for name in ("kernel", "stride", "pad", "dilation"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        for name, low in (("kernel", 1), ("stride", 1), ("dilation", 1), ("pad", 0)):
            h, w = getattr(self, name)
            if h < low or w < low:
                raise LayerError(f"{name} must be >= {low} on both axes, got {h}x{w} (h x w)")

    @classmethod
    def from_param(cls, p):
        """The geometry a ConvolutionParameter describes, by Caffe's rules (2 spatial axes):
        kernel_size/stride/pad/dilation given once (both axes) or twice (h, w), or the
        kernel_h/kernel_w, stride_h/stride_w, pad_h/pad_w alternatives, never both forms."""
        kernel = _axis_pair(p, "kernel_size", "kernel_h", "kernel_w", default=None)
        stride = _axis_pair(p, "stride", "stride_h", "stride_w", default=1)
        pad = _axis_pair(p, "pad", "pad_h", "pad_w", default=0)
        dilation = _axis_pair(p, "dilation", None, None, default=1)
        if min(kernel) < 1:
            raise LayerError(f"kernel dimensions must be nonzero, got {kernel[0]}x{kernel[1]}")
        if min(stride) < 1:
            raise LayerError(f"stride dimensions must be nonzero, got {stride[0]}x{stride[1]}")
        if min(dilation) < 1:
            raise LayerError(f"dilation must be nonzero, got {dilation[0]}x{dilation[1]}")
        return cls(kernel, stride, pad, dilation)

    @property
    def extent(self):
        """(h, w) span of one dilated kernel window: d*(k-1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def out_hw(self, h, w):
        """Output (oh, ow) for an (h, w) input: floor((in + 2p - extent) / s) + 1."""
        out = tuple((size + 2 * p - e) // s + 1
                    for size, p, e, s in zip((h, w), self.pad, self.extent, self.stride))
        if min(out) < 1:
            raise LayerError(
                f"convolution output would be {out[0]}x{out[1]}: the {h}x{w} input padded by "
                f"{self.pad[0]}x{self.pad[1]} is smaller than the kernel extent "
                f"{self.extent[0]}x{self.extent[1]} (kernel {self.kernel[0]}x{self.kernel[1]}, "
                f"dilation {self.dilation[0]}x{self.dilation[1]})")
        return out

    def transposed_out_hw(self, h, w):
        """Deconvolution's output (oh, ow) for an (h, w) input: s*(in - 1) + extent - 2p, the
        smallest input a convolution of this geometry maps to (h, w) (with stride s the next
        s - 1 sizes map there too, by the convolution's floor; Caffe picks the smallest)."""
        out = tuple(s * (size - 1) + e - 2 * p
                    for size, p, e, s in zip((h, w), self.pad, self.extent, self.stride))
        if min(out) < 1:
            raise LayerError(f"deconvolution output would be {out[0]}x{out[1]} for a {h}x{w} "
                             f"input: pad {self.pad[0]}x{self.pad[1]} is too large")
        return out


def _axis_pair(p, name, h_name, w_name, default):
    """One (h, w) pair from a repeated field ``name`` or from its ``h_name``/``w_name`` form."""
    values = list(getattr(p, name))
    if h_name is not None and (p.HasField(h_name) or p.HasField(w_name)):
        if values:
            raise LayerError(f"either {name} or {h_name}/{w_name} should be specified; not both "
                             f"({name}: {values}, {h_name}: {getattr(p, h_name)}, "
                             f"{w_name}: {getattr(p, w_name)})")
        return getattr(p, h_name), getattr(p, w_name)     # an unset one reads as its default
    if not values and default is None:
        raise LayerError(f"no kernel size: give {name} (once, or once per spatial dimension) "
                         f"or {h_name} and {w_name}")
    if len(values) > 2:
        raise LayerError(f"{name} must be specified once, or once per spatial dimension "
                         f"({name} specified {len(values)} times; 2 spatial dims)")
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


# --- reference (the spec) ----------------------------------------------------------------------

def im2col_ref(x, geom):
    """Every kernel window of x as a column: (N, C, H, W) -> (N, C, kh, kw, oh, ow).

    cols[n, c, i, j, y, z] = x[n, c, y*sh + i*dh - ph, z*sw + j*dw - pw], and 0 where that
    position is padding (outside the image).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    oh, ow = geom.out_hw(h, w)
    cols = np.zeros((n, c, kh, kw, oh, ow), x.dtype)
    for i, lo_y, hi_y, r in tap_ranges(h, kh, sh, ph, dh, oh):
        for j, lo_z, hi_z, q in tap_ranges(w, kw, sw, pw, dw, ow):   # tap (i, j) of every window:
            cols[:, :, i, j, lo_y:hi_y, lo_z:hi_z] = \
                x[:, :, r:r + (hi_y - lo_y - 1) * sh + 1:sh,       # one strided slice
                  q:q + (hi_z - lo_z - 1) * sw + 1:sw]
    return cols


def col2im_ref(cols, x_hw, geom):
    """The adjoint of im2col_ref: (N, C, kh, kw, oh, ow) -> (N, C, H, W), each entry added onto
    the pixel its tap read (windows overlap, so pixels sum several); entries on padding drop."""
    n, c, kh, kw, oh, ow = cols.shape
    h, w = x_hw
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.pad, geom.dilation
    if (kh, kw) != geom.kernel or (oh, ow) != geom.out_hw(h, w):
        raise LayerError(f"columns of shape {cols.shape} do not fit a {h}x{w} image with kernel "
                         f"{geom.kernel} and output {geom.out_hw(h, w)}")
    x = np.zeros((n, c, h, w), cols.dtype)
    for i, lo_y, hi_y, r in tap_ranges(h, kh, sh, ph, dh, oh):
        for j, lo_z, hi_z, q in tap_ranges(w, kw, sw, pw, dw, ow):   # within one tap, windows
            x[:, :, r:r + (hi_y - lo_y - 1) * sh + 1:sh,                # never hit a pixel twice
              q:q + (hi_z - lo_z - 1) * sw + 1:sw] += cols[:, :, i, j, lo_y:hi_y, lo_z:hi_z]
    return x


def _check_4d(**arrays):
    for name, a in arrays.items():
        if np.ndim(a) != 4:
            raise LayerError(f"conv2d needs a 4-D {name}, got one of shape {np.shape(a)}")


def _check_shapes(x_shape, w_shape, group, geom, b=None):
    c, (f, cg, kh, kw) = x_shape[1], w_shape
    if group < 1 or c % group or f % group:
        raise LayerError(f"channels {c} and filters {f} must both be divisible by group {group}")
    if cg * group != c or (kh, kw) != geom.kernel:
        raise LayerError(f"weights of shape {tuple(w_shape)} do not fit {c} input channels in "
                         f"{group} group(s) with kernel {geom.kernel[0]}x{geom.kernel[1]}: "
                         f"expected ({f}, {c // group}, {geom.kernel[0]}, {geom.kernel[1]})")
    if b is not None and tuple(b.shape) != (f,):
        raise LayerError(f"bias of shape {tuple(b.shape)} does not fit {f} filters: expected "
                         f"({f},)")


def _check_dy(dy_shape, n, f, out_hw):
    if tuple(dy_shape) != (n, f, *out_hw):
        raise LayerError(f"dy of shape {tuple(dy_shape)} does not match the output shape "
                         f"{(n, f, *out_hw)}")


@conv2d_forward.impl("ref")
def _conv2d_forward_ref(x, w, b, *, geom, group=1, out=None):
    _check_4d(x=x, w=w)
    _check_shapes(x.shape, w.shape, group, geom, b)
    n, f = x.shape[0], w.shape[0]
    oh, ow = geom.out_hw(*x.shape[2:])
    k = w.shape[1] * w.shape[2] * w.shape[3]                      # C/G*kh*kw (named: N may be 0)
    cols = im2col_ref(x, geom).reshape(n, group, k, oh * ow)      # (N, G, C/G*kh*kw, oh*ow)
    wg = w.reshape(group, f // group, -1)                         # (G, F/G, C/G*kh*kw)
    y = np.matmul(wg, cols).reshape(n, f, oh, ow)                 # wg broadcasts over N
    if b is not None:
        y += b.reshape(1, f, 1, 1)             # in place: y keeps the dtype of x and w
    return write_out(out, y)


@conv2d_backward_data.impl("ref")
def _conv2d_backward_data_ref(dy, w, *, x_hw, geom, group=1):
    """d(loss)/dx from dy (N, F, oh, ow): (N, C, H, W) with (H, W) = x_hw (stride hides it)."""
    _check_4d(dy=dy, w=w)
    n, f, oh, ow = dy.shape
    c = w.shape[1] * group
    _check_shapes((n, c, *x_hw), w.shape, group, geom)
    _check_dy(dy.shape, n, w.shape[0], geom.out_hw(*x_hw))
    dyg = dy.reshape(n, group, f // group, oh * ow)               # (N, G, F/G, oh*ow)
    wg = w.reshape(group, f // group, -1)                         # (G, F/G, C/G*kh*kw)
    dcols = np.matmul(wg.transpose(0, 2, 1), dyg)                 # (N, G, C/G*kh*kw, oh*ow)
    return col2im_ref(dcols.reshape(n, c, *geom.kernel, oh, ow), x_hw, geom)


@conv2d_backward_filter.impl("ref")
def _conv2d_backward_filter_ref(dy, x, *, geom, group=1):
    """d(loss)/dw from dy (N, F, oh, ow) and x (N, C, H, W): (F, C/G, kh, kw)."""
    _check_4d(dy=dy, x=x)
    n, f, oh, ow = dy.shape
    c = x.shape[1]
    if group < 1 or c % group:
        raise LayerError(f"channels {c} must be divisible by group {group}")
    _check_shapes(x.shape, (f, c // group, *geom.kernel), group, geom)
    _check_dy(dy.shape, x.shape[0], f, geom.out_hw(*x.shape[2:]))
    k = c // group * geom.kernel[0] * geom.kernel[1]              # named: N may be 0
    cols = im2col_ref(x, geom).reshape(n, group, k, oh * ow)      # (N, G, C/G*kh*kw, oh*ow)
    dyg = dy.reshape(n, group, f // group, oh * ow)               # (N, G, F/G, oh*ow)
    dw = np.matmul(dyg, cols.transpose(0, 1, 3, 2)).sum(axis=0)   # (G, F/G, C/G*kh*kw)
    return dw.reshape(f, c // group, *geom.kernel)


def _accumulate(acc, value):
    """value added onto acc (returned), or value itself when there is no acc."""
    if acc is None or value is None:
        return value
    acc += value.reshape(acc.shape)
    return acc


@conv2d_backward.impl("ref")
def _conv2d_backward_ref(dy, x, w, *, geom, group=1, need=(True, True, True), dx_out=None,
                         dw_acc=None, db_acc=None):
    """(dx, dw, db) for dy (N, F, oh, ow). ``need`` says which of the three to compute; the
    others come back as None (a frozen layer or the data layer's bottom need no work)."""
    need_dx, need_dw, need_db = need
    dx = _conv2d_backward_data_ref(dy, w, x_hw=x.shape[2:], geom=geom, group=group) \
        if need_dx else None
    dw = _conv2d_backward_filter_ref(dy, x, geom=geom, group=group) if need_dw else None
    db = dy.sum(axis=(0, 2, 3)) if need_db else None              # (F,)
    return write_out(dx_out if need_dx else None, dx), _accumulate(dw_acc, dw), \
        _accumulate(db_acc, db)


# --- fast CPU (csrc/im2col.cpp, csrc/depthwise.cpp) ----------------------------------------------
#
# Images go through in chunks whose columns fit COLS_BUDGET elements (at least one image per
# chunk), so the scratch memory stays bounded whatever the batch size.

COLS_BUDGET = 1 << 23          # 32 MiB of float32 columns


def _native_ok(*arrays):
    """The native kernels take float32 or float64 arrays of one dtype; anything else (mixed
    dtypes, float16, ...) runs on the reference."""
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        a is None or a.dtype == dtype for a in arrays)


def _geom_tuple(geom):
    return (*geom.kernel, *geom.stride, *geom.pad, *geom.dilation)


def _is_pointwise(geom):
    """1x1, stride 1, no padding: the input already is its own column matrix."""
    return geom.kernel == (1, 1) and geom.stride == (1, 1) and geom.pad == (0, 0)


def _is_fully_connected(x_shape, geom, group):
    """A 1x1 convolution of 1x1 maps without groups (a classifier written as a convolution:
    MobileNet's fc7, NIN's and SqueezeNet's heads at their last map) is an InnerProduct of
    (N, C) by w (F, C): its float32 kernels stream the weights in their own order, where the
    convolution's GEMM packs all of them for a product one position wide (MobileNet's fc7 at
    batch 1, one thread, Zen 3: input gradient 1.18 -> 0.11 ms, filter gradient 1.73 ->
    0.27)."""
    return _is_pointwise(geom) and x_shape[2:] == (1, 1) and group == 1


def _is_depthwise(channels, group):
    """Each filter sees one input channel of its own group (C/G == 1; F may be a multiple)."""
    return channels == group > 1


def _chunks(n, rows, plane):
    """(first image, images) chunks whose (rows, images * plane) columns fit COLS_BUDGET."""
    per = max(1, COLS_BUDGET // max(1, rows * plane))
    return [(n0, min(per, n - n0)) for n0 in range(0, n, per)]


def _columns(x, n0, nb, geom, oh, ow):
    """The (C*kh*kw, nb*oh*ow) column matrix of images n0..n0+nb-1 of x, in scratch memory."""
    c = x.shape[1]
    cols = workspace("conv_cols", (c * geom.kernel[0] * geom.kernel[1], nb * oh * ow), x.dtype)
    if _is_pointwise(geom):
        lib.nfp_to_fnp(x, cols, n0, nb, None)
    else:
        lib.im2col_rows(x, cols, n0, nb, _geom_tuple(geom), oh, ow)
    return cols


# Winograd's F(2x2, 3x3) (csrc/winograd.cpp) for stride-1 undilated float32 convolutions
# where it measured faster than the direct products (bench/RESULTS.md): 16 products of
# tiles x C x F over 2x2 output tiles instead of 9 taps per output, 0.44-0.52 of the multiply-
# adds; F(2x2, 5x5) for 5x5 kernels, 36 products instead of 25 taps per output (0.39 of them
# on 27x27); other kernels as 3x3 pieces. Its sums round differently from the direct
# product's (a few float32 ulps, like cuDNN's WINOGRAD algorithms), and its input transforms
# add up to 4 (3x3) or more (5x5) values first, so |x| near FLT_MAX (from ~8e37 for 3x3, ~1e37
# for 5x5) overflows there to inf/NaN where the direct product is finite;
# MINICNN_CONV_WINOGRAD=0 turns it off, =2 takes it wherever the geometry allows (for the
# tests). WINOGRAD_MODE is read at each call.
WINOGRAD_MODE = os.environ.get("MINICNN_CONV_WINOGRAD", "1")
# below this many 2x2 output tiles (over the batch), transforming the filters costs more than
# the products save, by kernel size
WINOGRAD_MIN_TILES = {(3, 3): 96, (5, 5): 512}
# ... and with AVX2's 16-wide micro tiles, for F(2x2, 3x3): at 128 tiles (7x7 maps, batch 8)
# the direct products measured faster in every pass (Zen 3, one thread, two runs each: 512
# channels forward 27.4-27.6 against 35.7-35.8 ms, input gradient 29.3-29.6 against 36.1-37.3;
# 256 6.9-7.0 (one run 9.4) against 8.2-8.5 and 7.3-7.6 against 8.5-9.4; 128 1.9 against
# 2.3-2.4 and 1.9-2.0 against 2.5); at 196 (28x28, one image, 128 channels: 2.80-2.88 against
# 2.96-2.97) and 256 (7x7, batch 16, 256 channels: 11.7-12.2 against 13.7) Winograd was the
# faster
WINOGRAD_MIN_TILES_NARROW = {(3, 3): 192, (5, 5): 512}
# the filter gradient holds the transforms of a chunk of images at a time, at least one: no
# Winograd where one image's pass this
WINOGRAD_FILTER_BYTES = 1 << 27
# F(2x2, 3x3)'s filter gradient by default only where one image's transforms are at most this:
# 64 channels at 56x56 (6.4 MB an image) took 9.7-30 ms on 2 cores against 9.0-10.4 direct
# (CaffeNet's conv3 2 MB, ResNet's 28x28 1.6 MB: faster)
WINOGRAD_FILTER_IMAGE_BYTES = 1 << 22
# With AVX2's 16-wide micro tiles (no AVX-512) F(2x2, 3x3)'s filter gradient lost to the direct
# product on small maps with fewer channels than this (Zen 3, one thread, default against
# MINICNN_CONV_WINOGRAD=0, two runs each: 192 channels a group at 13x13, batch 16, 22.2-22.8
# against 19.3 ms; CaffeNet's conv5 31.0-31.5 against 25.7; 64 at 28x28, batch 8, 6.5
# against 5.0; 128 at 14x14 5.6-5.8 against 5.0; two threads the same or closer), and won
# with 128 at 28x28 (18.4-18.7 against 20.0-20.2) and with 256 at 14x14 (19.0-19.7 against
# 22.6-22.9): there it keeps 128 channels and maps of 28x28 (196 tiles an image) or more.
WINOGRAD_FILTER_NARROW_CHANNELS = 256


def _winograd(x_shape, w_shape, group, geom, dtype, part):
    """Whether ``part`` ("forward", "data", "filter") of this convolution runs by Winograd."""
    if WINOGRAD_MODE == "0" or dtype != np.float32 or not hasattr(lib, "winograd_forward") or \
            geom.stride != (1, 1) or geom.dilation != (1, 1):
        return False
    n, c, h, w = x_shape
    oh, ow = geom.out_hw(h, w)
    per_image = ((oh + 1) // 2) * ((ow + 1) // 2)
    tiles = n * per_image
    if geom.kernel == (5, 5):       # F(2x2, 5x5): 36 elements a tile
        elements, pieces = 36, 1
    else:                           # F(2x2, 3x3) on 3x3 pieces: 16 elements a tile and piece
        elements, pieces = 16, ((geom.kernel[0] + 2) // 3) * ((geom.kernel[1] + 2) // 3)
    image_bytes = elements * per_image * (c * pieces + w_shape[0]) * 4   # its transforms
    if part == "filter" and image_bytes > WINOGRAD_FILTER_BYTES:
        return False
    if WINOGRAD_MODE == "2":
        return True
    cg, fg = c // group, w_shape[0] // group
    wide = lib.gemm_kernel().startswith("avx512")
    min_tiles = (WINOGRAD_MIN_TILES if wide else WINOGRAD_MIN_TILES_NARROW).get(geom.kernel)
    if tiles < (min_tiles or np.inf) or min(cg, fg) < 16 or \
            _is_depthwise(c, group):
        return False
    if part == "data":              # each thread takes whole images
        return n >= lib.num_threads()
    if part == "filter":
        if geom.kernel == (5, 5):
            return True
        # F(2x2, 3x3)'s transforms outweigh the savings below 64 channels, and with AVX2's
        # tiles below WINOGRAD_FILTER_NARROW_CHANNELS unless the maps are 28x28 or more
        narrow = min(cg, fg) < WINOGRAD_FILTER_NARROW_CHANNELS and not wide and \
            not (min(cg, fg) >= 128 and per_image >= 196)
        return geom.kernel == (3, 3) and min(cg, fg) >= 64 and tiles >= 256 and \
            image_bytes <= WINOGRAD_FILTER_IMAGE_BYTES and not narrow
    return True


# Atrous (dilated) stride-1 convolutions run by Winograd too, after a "space to batch" split
# (DeepLab's atrous_conv2d): an output row o reads the padded input's rows o, o + d, o + 2d, ...,
# all of o's residue mod d. So the padded input cut into its d x d phases (every d-th row and
# column, from each starting residue) gives d*d small undilated convolutions, each phase's
# outputs being every d-th output from the same residue. Phases whose sub-images differ in
# tile count (when d does not divide the padded size) go in separate calls, at most 2 per axis.
# By default only 3x3 kernels with at least ATROUS_MIN_CHANNELS channels and filters a group
# (with fewer, the split's copies cost more than Winograd saves), and only where the split's
# estimated cost is below the direct product's taps, which skip those reading only padding:
# large rates on small maps stay direct, and so do small maps (bench/RESULTS.md: ASPP's 3x3
# at rates 2, 4 and 6 on 33x33 maps take it, 12 and 18 do not).
ATROUS_MIN_CHANNELS = 128
# the split's costs in direct taps (one output's tap over the channels and filters), measured on
# 2 cores with 128-512 channels: a phase's 2x2 tile, copies included, about 20; each call's
# filter transforms and start about 3000 (so 17x17 maps at rate 2, 648 tiles in 4 calls, stay
# direct: 18 ms against 15.6 with 256 channels at batch 8)
ATROUS_TAPS_PER_TILE = 20
ATROUS_TAPS_PER_CALL = 3000


def _phase_runs(size, pad, dilation, kernel):
    """One axis's phases as runs [(first residue, end residue, rows in, rows out)]: residue a's
    phase reads the padded rows a, a + d, ... (``rows in`` of them) and makes outputs a, a + d,
    ... (``rows out``). Residues with the same tile count share a run and its larger size (the
    extra row is padding, its output dropped); residues without outputs are left out."""
    padded = size + 2 * pad
    out = padded - dilation * (kernel - 1)
    runs = []
    for a in range(min(dilation, out)):
        rows_in = -(-(padded - a) // dilation)
        rows_out = rows_in - kernel + 1
        if runs and (runs[-1][3] + 1) // 2 == (rows_out + 1) // 2:
            runs[-1][1] = a + 1                 # same tiles: the run keeps its larger size
        else:
            runs.append([a, a + 1, rows_in, rows_out])
    return [tuple(r) for r in runs]


def _taps_inside(size, pad, dilation, kernel, out):
    """(output, tap) pairs of one axis whose tap reads the input, not its padding: tap k of
    output o reads o - pad + k*dilation."""
    return sum(max(0, min(out, pad - k * dilation + size) - max(0, pad - k * dilation))
               for k in range(kernel))


def _atrous_winograd(x_shape, w_shape, group, geom, dtype, part):
    """Whether ``part`` of this dilated convolution runs by Winograd on its phases."""
    if WINOGRAD_MODE == "0" or dtype != np.float32 or not hasattr(lib, "winograd_forward") or \
            geom.stride != (1, 1) or geom.dilation == (1, 1) or x_shape[0] == 0 or \
            _is_depthwise(x_shape[1], group):
        return False
    rows, cols = _axis_runs(x_shape, geom)
    if WINOGRAD_MODE != "2":
        oh, ow = geom.out_hw(*x_shape[2:])
        taps = (_taps_inside(x_shape[2], geom.pad[0], geom.dilation[0], geom.kernel[0], oh) *
                _taps_inside(x_shape[3], geom.pad[1], geom.dilation[1], geom.kernel[1], ow))
        tiles = sum((r1 - r0) * ((ro + 1) // 2) for r0, r1, _, ro in rows) * \
            sum((c1 - c0) * ((co + 1) // 2) for c0, c1, _, co in cols)
        cost = len(rows) * len(cols) * ATROUS_TAPS_PER_CALL + \
            x_shape[0] * tiles * ATROUS_TAPS_PER_TILE
        if geom.kernel != (3, 3) or cost >= x_shape[0] * taps or \
                min(x_shape[1], w_shape[0]) < ATROUS_MIN_CHANNELS * group:
            return False
    # decided as one undilated convolution of every phase at the largest phase's size
    phases = x_shape[0] * geom.dilation[0] * geom.dilation[1]
    return _winograd((phases, x_shape[1], rows[0][2], cols[0][2]), w_shape, group,
                     ConvGeometry(geom.kernel), dtype, part)


def _axis_runs(shape, geom):
    """_phase_runs of the rows and of the columns of an (N, C, H, W) input."""
    return tuple(_phase_runs(size, p, d, k) for size, p, d, k in
                 zip(shape[2:], geom.pad, geom.dilation, geom.kernel))


def _phase_groups(shape, geom):
    """The split's calls: every (row run, column run) pair."""
    rows, cols = _axis_runs(shape, geom)
    return [(r, c) for r in rows for c in cols]


def _split(planes, run_h, run_w, size_h, size_w, geom, offset):
    """The phases of ``planes`` (N, K, H, W) in the runs given as one batch of (phases * N, K,
    size_h, size_w) images, phase-major: rows a, a + dh, ... of the planes shifted by -offset
    (the pad for x; 0 for dy), zeros outside them."""
    count_h, count_w = run_h[1] - run_h[0], run_w[1] - run_w[0]
    n, k = planes.shape[:2]
    images = np.empty((count_h * count_w * n, k, size_h, size_w), np.float32)
    lib.phases_gather(planes, images,
                      (count_h, count_w, *geom.dilation, run_h[0], run_w[0], *offset))
    return images


def _merge(images, planes, run_h, run_w, geom, offset):
    """The inverse of _split: each phase image's values back into its places in ``planes``
    (those falling outside dropped)."""
    count_h, count_w = run_h[1] - run_h[0], run_w[1] - run_w[0]
    lib.phases_scatter(images, planes,
                       (count_h, count_w, *geom.dilation, run_h[0], run_w[0], *offset))


def _atrous_forward(x, w, b, y, group, geom):
    """y <- the dilated convolution of x, by Winograd on the phases of the padded x."""
    f = w.shape[0]
    for run_h, run_w in _phase_groups(x.shape, geom):
        xs = _split(x, run_h, run_w, run_h[2], run_w[2], geom, geom.pad)
        ys = np.empty((xs.shape[0], f, run_h[3], run_w[3]), np.float32)
        lib.winograd_forward(xs, w, b, ys, group, 0, 0)
        _merge(ys, y, run_h, run_w, geom, (0, 0))


def _atrous_backward(dy, x, w, dx, dw_sum, group, geom):
    """dx <- the input gradient and/or dw_sum += the filter gradient (each when not None) of
    the dilated convolution, by Winograd on the phases, as _atrous_forward."""
    oh, ow = dy.shape[2:]
    if dx is not None and (oh < geom.dilation[0] or ow < geom.dilation[1]):
        dx[...] = 0                 # residues without outputs: their rows get no gradient
    for run_h, run_w in _phase_groups(dx.shape if x is None else x.shape, geom):
        dys = _split(dy, run_h, run_w, run_h[3], run_w[3], geom, (0, 0))
        if dw_sum is not None:
            xs = _split(x, run_h, run_w, run_h[2], run_w[2], geom, geom.pad)
            lib.winograd_backward_filter(dys, xs, dw_sum, group, 0, 0)
        if dx is not None:
            dxs = np.empty((dys.shape[0], dx.shape[1], run_h[2], run_w[2]), np.float32)
            lib.winograd_backward_data(dys, w, dxs, group, 0, 0)
            _merge(dxs, dx, run_h, run_w, geom, geom.pad)


def _output(out, shape, dtype):
    """``out`` when the kernels can write it directly, else a new array."""
    if out is not None and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous \
            and out.flags.writeable:
        return out
    return np.empty(shape, dtype)


@conv2d_forward.impl("cpu", available=lib is not None)
def _conv2d_forward_cpu(x, w, b, *, geom, group=1, out=None):
    _check_4d(x=x, w=w)
    _check_shapes(x.shape, w.shape, group, geom, b)
    if not _native_ok(x, w, b):
        return _conv2d_forward_ref(x, w, b, geom=geom, group=group, out=out)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    b = None if b is None else np.ascontiguousarray(b)
    n, f = x.shape[0], w.shape[0]
    oh, ow = geom.out_hw(*x.shape[2:])
    y = _output(out, (n, f, oh, ow), x.dtype)
    if _is_depthwise(x.shape[1], group):
        lib.depthwise_forward(x, w, b, y, _geom_tuple(geom))
        return write_out(out, y) if y is not out else y
    if _winograd(x.shape, w.shape, group, geom, x.dtype, "forward"):
        lib.winograd_forward(x, w, b, y, group, *geom.pad)
        return write_out(out, y) if y is not out else y
    if _atrous_winograd(x.shape, w.shape, group, geom, x.dtype, "forward"):
        _atrous_forward(x, w, b, y, group, geom)
        return write_out(out, y) if y is not out else y
    if x.dtype == np.float32 and _is_fully_connected(x.shape, geom, group):
        c = x.shape[1]
        lib.ip_forward(x.reshape(n, c), w.reshape(f, c), b, y.reshape(n, f), False)
        return write_out(out, y) if y is not out else y
    if x.dtype == np.float32:                       # minicnn's GEMM, implicit im2col
        lib.conv_gemm_forward(x, w, b, y, group, _geom_tuple(geom))
        return write_out(out, y) if y is not out else y
    fg = f // group
    wg = w.reshape(group, fg, -1)                                   # (G, F/G, K)
    k = wg.shape[2]
    for n0, nb in _chunks(n, x.shape[1] * geom.kernel[0] * geom.kernel[1], oh * ow):
        cols = _columns(x, n0, nb, geom, oh, ow)                    # (G*K, nb*P)
        y_t = workspace("conv_y_t", (f, nb * oh * ow), x.dtype)     # (F, nb*P)
        for g in range(group):
            np.matmul(wg[g], cols[g * k:(g + 1) * k], out=y_t[g * fg:(g + 1) * fg])
        lib.fnp_to_nfp(y_t, y, n0, nb, b)
    return write_out(out, y) if y is not out else y


def _conv2d_backward_cpu_parts(dy, x, w, x_shape, geom, group, need, dx_out=None,
                               dw_into=None):
    """(dx, dw, db) on the native path; x or w may be None when the part needing it is not
    asked for. ``dw_into``: an array the filter gradient is added onto (returned as dw)."""
    need_dx, need_dw, need_db = need
    n, f, oh, ow = dy.shape
    c = x_shape[1]
    dtype = dy.dtype
    dy = np.ascontiguousarray(dy)
    x = None if x is None else np.ascontiguousarray(x)
    w = None if w is None else np.ascontiguousarray(w)
    kh, kw = geom.kernel
    dx = _output(dx_out, tuple(x_shape), dtype) if need_dx else None
    db = np.zeros(f, dtype) if need_db else None
    if _is_depthwise(c, group):
        if need_dx:
            lib.depthwise_backward_data(dy, w, dx, _geom_tuple(geom))
        dw = None
        if need_dw:                               # db summed in the same pass over dy
            dw = np.zeros((f, 1, kh, kw), dtype)  # (written, not added: added below)
            lib.depthwise_backward_filter(dy, x, dw, _geom_tuple(geom), db)
            dw = _accumulate(dw_into, dw)
        elif need_db:
            lib.channel_sums(dy, db)
        return _finish_dx(dx_out, dx), dw, db
    # every other kernel below adds its filter gradient into dw
    dw = None if not need_dw else \
        dw_into if dw_into is not None else np.zeros((f, c // group, kh, kw), dtype)
    if dtype == np.float32 and _is_fully_connected(x_shape, geom, group):
        if need_db:
            lib.channel_sums(dy, db)
        if need_dw:
            lib.ip_backward_filter(dy.reshape(n, f), x.reshape(n, c), dw.reshape(f, c), False)
        if need_dx:
            lib.ip_backward_data(dy.reshape(n, f), w.reshape(f, c), dx.reshape(n, c), False)
        return _finish_dx(dx_out, dx), dw, db
    if dtype == np.float32:                         # minicnn's GEMM, implicit im2col
        if need_db:
            lib.channel_sums(dy, db)
        w_shape = (f, c // group, kh, kw)
        atrous_dw = need_dw and _atrous_winograd(x_shape, w_shape, group, geom, dtype, "filter")
        atrous_dx = need_dx and _atrous_winograd(x_shape, w_shape, group, geom, dtype, "data")
        if atrous_dw or atrous_dx:
            _atrous_backward(dy, x, w, dx if atrous_dx else None, dw if atrous_dw else None,
                             group, geom)
            need_dw, need_dx = need_dw and not atrous_dw, need_dx and not atrous_dx
        if need_dw and _winograd(x_shape, w_shape, group, geom, dtype, "filter"):
            lib.winograd_backward_filter(dy, x, dw, group, *geom.pad)
        elif need_dw:
            lib.conv_gemm_backward_filter(dy, x, dw, group, _geom_tuple(geom))
        if need_dx and _winograd(x_shape, w_shape, group, geom, dtype, "data"):
            lib.winograd_backward_data(dy, w, dx, group, *geom.pad)
        elif need_dx:
            lib.conv_gemm_backward_data(dy, w, dx, group, _geom_tuple(geom))
        return _finish_dx(dx_out, dx), dw, db
    fg, k = f // group, c // group * kh * kw
    dwg = None if dw is None else dw.reshape(group, fg, k)
    wg = None if w is None else w.reshape(group, fg, k)
    chunks = _chunks(n, c * kh * kw, oh * ow)
    for n0, nb in chunks:
        dy_t = workspace("conv_dy_t", (f, nb * oh * ow), dtype)      # (F, nb*P)
        lib.nfp_to_fnp(dy, dy_t, n0, nb, db)
        if need_dw:
            cols = _columns(x, n0, nb, geom, oh, ow)                 # (G*K, nb*P)
            for g in range(group):
                part = np.matmul(dy_t[g * fg:(g + 1) * fg], cols[g * k:(g + 1) * k].T)
                dwg[g] += part
        if need_dx:                                 # the columns' buffer is free again: reuse
            dcols = workspace("conv_cols", (c * kh * kw, nb * oh * ow), dtype)
            for g in range(group):
                np.matmul(wg[g].T, dy_t[g * fg:(g + 1) * fg], out=dcols[g * k:(g + 1) * k])
            if _is_pointwise(geom):
                lib.fnp_to_nfp(dcols, dx, n0, nb, None)
            else:
                lib.col2im_rows(dcols, dx, n0, nb, _geom_tuple(geom), oh, ow)
    return _finish_dx(dx_out, dx), dw, db


def _finish_dx(dx_out, dx):
    return dx if dx is None or dx is dx_out else write_out(dx_out, dx)


@conv2d_backward.impl("cpu", available=lib is not None)
def _conv2d_backward_cpu(dy, x, w, *, geom, group=1, need=(True, True, True), dx_out=None,
                         dw_acc=None, db_acc=None):
    _check_4d(dy=dy, x=x, w=w)
    _check_shapes(x.shape, w.shape, group, geom)
    _check_dy(dy.shape, x.shape[0], w.shape[0], geom.out_hw(*x.shape[2:]))
    if not _native_ok(dy, x, w):
        return _conv2d_backward_ref(dy, x, w, geom=geom, group=group, need=need, dx_out=dx_out,
                                    dw_acc=dw_acc, db_acc=db_acc)
    # the parameter's diff itself takes the sum where the kernels can add into it (no
    # temporary the size of w, and no second pass to add it)
    dw_into = _usable_acc(dw_acc, w.shape, w.dtype, device=False)
    dx, dw, db = _conv2d_backward_cpu_parts(dy, x, w, x.shape, geom, group, need, dx_out,
                                            dw_into)
    return dx, dw if dw_into is not None else _accumulate(dw_acc, dw), _accumulate(db_acc, db)


@conv2d_backward_data.impl("cpu", available=lib is not None)
def _conv2d_backward_data_cpu(dy, w, *, x_hw, geom, group=1):
    _check_4d(dy=dy, w=w)
    n = dy.shape[0]
    x_shape = (n, w.shape[1] * group, *x_hw)
    _check_shapes(x_shape, w.shape, group, geom)
    _check_dy(dy.shape, n, w.shape[0], geom.out_hw(*x_hw))
    if not _native_ok(dy, w):
        return _conv2d_backward_data_ref(dy, w, x_hw=x_hw, geom=geom, group=group)
    return _conv2d_backward_cpu_parts(dy, None, w, x_shape, geom, group, (True, False, False))[0]


@conv2d_backward_filter.impl("cpu", available=lib is not None)
def _conv2d_backward_filter_cpu(dy, x, *, geom, group=1):
    _check_4d(dy=dy, x=x)
    f, c = dy.shape[1], x.shape[1]
    if group < 1 or c % group:
        raise LayerError(f"channels {c} must be divisible by group {group}")
    _check_shapes(x.shape, (f, c // group, *geom.kernel), group, geom)
    _check_dy(dy.shape, x.shape[0], f, geom.out_hw(*x.shape[2:]))
    if not _native_ok(dy, x):
        return _conv2d_backward_filter_ref(dy, x, geom=geom, group=group)
    return _conv2d_backward_cpu_parts(dy, x, None, x.shape, geom, group, (False, True, False))[1]


# --- CUDA (kernels/im2col.cu, kernels/depthwise.cu; products on cuBLAS) -------------------------
#
# Forward: im2col into image-major columns (nb, C*kh*kw, oh*ow) and, per group, one strided-
# batched GEMM over the images writing y in NCHW (1x1/stride 1/no pad convolutions skip im2col:
# x is its own column matrix). Backward: dy and the columns of a chunk of images are laid out
# (rows, images * oh * ow), so that dW is one GEMM per group summing over every image, and dx one
# GEMM into columns that col2im gathers (no atomics). Depthwise convolutions run direct kernels.
# Scratch columns are bounded by CUDA_COLS_BUDGET elements per chunk of images.
#
# Small maps (fewer than CUDA_WIDE_BELOW output positions: CaffeNet's 13x13, ResNet's 14x14
# and 7x7) of more than one image take the forward the backward's way: columns (rows, images *
# positions), one wide GEMM per group into (F, images * positions), then a transpose into NCHW.
# A product per image there is at most a couple of GEMM tiles wide and leaves much of each tile
# empty (169 positions fill 66% of two 128-wide tiles); the transpose costs a pass over y.

from minicnn import cuda  # noqa: E402

CUDA_COLS_BUDGET = 1 << 27     # 512 MiB of float32 columns
CUDA_WIDE_BELOW = 256          # output positions below which the forward takes one wide GEMM


def _cuda_geom(c, h, w, geom, oh, ow):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    return tuple(np.int32(v) for v in (c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow))


def _cuda_chunks(n, rows, plane):
    per = max(1, CUDA_COLS_BUDGET // max(1, rows * plane))
    return [(n0, min(per, n - n0)) for n0 in range(0, n, per)]


def _cuda_check(x_shape, w_shape, group, geom, b=None, dy_shape=None):
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise LayerError(f"conv2d needs 4-D x and w, got shapes {tuple(x_shape)} and "
                         f"{tuple(w_shape)}")
    _check_shapes(x_shape, w_shape, group, geom, b)
    if dy_shape is not None:
        _check_dy(dy_shape, x_shape[0], w_shape[0], geom.out_hw(*x_shape[2:]))


def _depthwise_args(x_shape, f, geom, oh, ow):
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    return tuple(np.int32(v) for v in (c, h, w, f // c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow))


@conv2d_forward.impl("cuda", available=cuda.importable)
def _conv2d_forward_cuda(x, w, b, *, geom, group=1, out=None):
    _cuda_check(x.shape, w.shape, group, geom, b)
    x, w, b = cuda.contiguous(x, w, b)
    n, c, h, wd = x.shape
    f = w.shape[0]
    oh, ow = geom.out_hw(h, wd)
    plane = oh * ow
    y = cuda.output(cuda.distinct(out, x, w, b), (n, f, oh, ow), x.dtype)
    if _is_depthwise(c, group):
        cuda.launch_1d(cuda.kernel("depthwise.cu", "depthwise_forward", x.dtype), y.size,
                       x, w, w if b is None else b, y, *_depthwise_args(x.shape, f, geom, oh, ow),
                       np.int32(b is not None))
        return cuda.finish(out, y)
    fg, rows = f // group, c * geom.kernel[0] * geom.kernel[1]
    k = rows // group                                              # C/G * kh * kw
    if plane < CUDA_WIDE_BELOW and n > 1:
        _conv2d_forward_wide_cuda(x, w, y, geom, group)
    elif _is_pointwise(geom):                                      # x is (N, C, P) columns
        for g in range(group):
            cuda.gemm(w, x, y, fg, plane, k, batch=n, offset_a=g * fg * k, stride_b=c * plane,
                      offset_b=g * k * plane, stride_c=f * plane, offset_c=g * fg * plane)
    else:
        im2col = cuda.kernel("im2col.cu", "im2col", x.dtype)
        for n0, nb in _cuda_chunks(n, rows, plane):
            cols = cuda.cupy().empty((nb, rows, plane), x.dtype)
            cuda.launch_1d(im2col, nb * c * plane, x[n0:n0 + nb], cols,
                           *_cuda_geom(c, h, wd, geom, oh, ow), np.int64(rows * plane),
                           np.int64(plane))
            for g in range(group):
                cuda.gemm(w, cols, y, fg, plane, k, batch=nb, offset_a=g * fg * k,
                          stride_b=rows * plane, offset_b=g * k * plane, stride_c=f * plane,
                          offset_c=(n0 * f + g * fg) * plane)
    if b is not None:
        cuda.launch_1d(cuda.kernel("im2col.cu", "channel_bias_add", x.dtype), y.size, y, b,
                       np.int32(f), np.int64(plane))
    return cuda.finish(out, y)


def _wide_columns(x, geom, oh, ow):
    """The columns of a chunk of images x (nb, C, H, W) laid out (C*kh*kw, nb * oh*ow), so
    that one GEMM covers every image: im2col, or x transposed for a 1x1 convolution."""
    nb, c, h, wd = x.shape
    plane, dtype = oh * ow, x.dtype
    cols = cuda.cupy().empty((c * geom.kernel[0] * geom.kernel[1], nb * plane), dtype)
    if _is_pointwise(geom):                                        # (nb, C, P) -> (C, nb*P)
        cuda.launch_1d(cuda.kernel("im2col.cu", "nfp_to_fnp", dtype), cols.size, x, cols,
                       np.int32(c), np.int64(plane), np.int64(nb))
    else:
        cuda.launch_1d(cuda.kernel("im2col.cu", "im2col", dtype), nb * c * plane, x, cols,
                       *_cuda_geom(c, h, wd, geom, oh, ow), np.int64(plane),
                       np.int64(nb * plane))
    return cols


def _conv2d_forward_wide_cuda(x, w, y, geom, group):
    """y (N, F, oh, ow) = conv(x, w) without bias, chunk by chunk of images: columns (rows,
    images * P), one GEMM per group into (F, images * P), then a transpose into y."""
    cp = cuda.cupy()
    n, c = x.shape[:2]
    f, oh, ow = y.shape[1:]
    plane = oh * ow
    dtype = x.dtype
    fg, rows = f // group, c * geom.kernel[0] * geom.kernel[1]
    k = rows // group
    transpose = cuda.kernel("im2col.cu", "nfp_to_fnp", dtype)
    for n0, nb in _cuda_chunks(n, rows + f, plane):               # columns and y_t both
        span = nb * plane
        cols = _wide_columns(x[n0:n0 + nb], geom, oh, ow)          # (C*kh*kw, nb*P)
        y_t = cp.empty((f, span), dtype)                           # (F, nb*P)
        for g in range(group):
            cuda.gemm(w, cols, y_t, fg, span, k, offset_a=g * fg * k, offset_b=g * k * span,
                      offset_c=g * fg * span)
        target = y[n0:n0 + nb]                                     # (F, nb, P) -> (nb, F, P)
        cuda.launch_1d(transpose, target.size, y_t, target, np.int32(nb), np.int64(plane),
                       np.int64(f))


def _usable_acc(acc, shape, dtype, device=True):
    """acc, if a kernel or GEMM (on the GPU, or on the host when not ``device``) can add into
    it directly, else None."""
    if acc is None or cuda.is_device_array(acc) != device or not acc.flags.c_contiguous \
            or acc.dtype != dtype or acc.shape != tuple(shape):
        return None
    return acc if device or acc.flags.writeable else None


def _depthwise_filter_cuda(dy, x, f, geom, oh, ow, dw=None):
    """dw += the depthwise filter gradient (dw None: a new array)."""
    n = x.shape[0]
    kh, kw = geom.kernel
    if dw is None:
        dw = cuda.cupy().zeros((f, 1, kh, kw), dy.dtype)
    splits = max(1, min(-(-n * oh * ow // (cuda.BLOCK * 4)), -(-1024 // f)))
    partial = cuda.cupy().empty((splits, f * kh * kw), dy.dtype)     # each split's sums
    cuda.launch_blocks(cuda.kernel("depthwise.cu", "depthwise_backward_filter", dy.dtype),
                       (f, splits), (dy, x, partial, np.int32(n),
                                          *_depthwise_args(x.shape, f, geom, oh, ow)))
    cuda.launch_1d(cuda.kernel("depthwise.cu", "depthwise_filter_finish", dy.dtype), dw.size,
                   partial, dw, np.int32(splits))
    return dw


def _conv2d_backward_cuda_parts(dy, x, w, x_shape, geom, group, need, dx_out=None,
                                dw_acc=None, db_acc=None):
    """(dx, dw, db) on the GPU; x or w may be None when the part needing it is not asked for.
    dw and db are added onto dw_acc and db_acc where given (and returned in their place)."""
    need_dx, need_dw, need_db = need
    cp = cuda.cupy()
    dy, x, w = cuda.contiguous(dy, x, w)
    n, f, oh, ow = dy.shape
    c, h, wd = x_shape[1:]
    plane = oh * ow
    kh, kw = geom.kernel
    dtype = dy.dtype
    db = None
    if need_db:                       # per-channel sums in double, added on the device
        usable = _usable_acc(db_acc, (f,), dtype)
        db = cuda.channel_add_total("channel_sum", (dy,), (n, f, plane), usable, dtype)
        db = db if db_acc is None or usable is not None else _accumulate(db_acc, db)
    dx = cuda.output(cuda.distinct(dx_out, dy, x, w), x_shape, dtype) if need_dx else None
    dw = dw_into = None
    if need_dw:                       # the GEMMs (or the depthwise kernel) add onto dw
        dw_shape = (f, c // group, kh, kw)
        dw_into = _usable_acc(dw_acc, dw_shape, dtype)
        dw = dw_into if dw_into is not None else cp.zeros(dw_shape, dtype)
    if _is_depthwise(c, group):
        if need_dx:
            cuda.launch_1d(cuda.kernel("depthwise.cu", "depthwise_backward_data", dtype),
                           dx.size, dy, w, dx, *_depthwise_args(x_shape, f, geom, oh, ow))
        if need_dw:
            _depthwise_filter_cuda(dy, x, f, geom, oh, ow, dw)
    elif need_dx or need_dw:
        _conv2d_backward_gemms(dy, x, w, x_shape, geom, group, need_dx, need_dw, dx, dw)
    if need_dw and dw_into is None:
        dw = _accumulate(dw_acc, dw)
    return cuda.finish(dx_out, dx) if need_dx else None, dw, db


def _conv2d_backward_gemms(dy, x, w, x_shape, geom, group, need_dx, need_dw, dx, dw):
    """dx = col2im(w^T dy) and dw += dy cols^T by cuBLAS, chunk by chunk of images."""
    cp = cuda.cupy()
    n, f, oh, ow = dy.shape
    c, h, wd = x_shape[1:]
    plane = oh * ow
    kh, kw = geom.kernel
    dtype = dy.dtype
    fg, rows = f // group, c * kh * kw
    k = rows // group
    transpose = cuda.kernel("im2col.cu", "nfp_to_fnp", dtype)
    pointwise = _is_pointwise(geom)
    for n0, nb in _cuda_chunks(n, rows, plane):
        span = nb * plane                                          # columns of this chunk
        dy_t = cp.empty((f, span), dtype)                          # (F, nb*P)
        cuda.launch_1d(transpose, dy_t.size, dy[n0:n0 + nb], dy_t, np.int32(f),
                       np.int64(plane), np.int64(nb))
        if need_dw:
            cols = _wide_columns(x[n0:n0 + nb], geom, oh, ow)      # (C*kh*kw, nb*P)
            for g in range(group):                                 # dW_g += dy_g cols_g^T
                cuda.gemm(dy_t, cols, dw, fg, k, span, trans_b=True, beta=1.0,
                          offset_a=g * fg * span, offset_b=g * k * span, offset_c=g * fg * k)
        if need_dx:
            dcols = cp.empty((rows, span), dtype)
            for g in range(group):                                 # dcols_g = w_g^T dy_g
                cuda.gemm(w, dy_t, dcols, k, span, fg, trans_a=True, offset_a=g * fg * k,
                          offset_b=g * fg * span, offset_c=g * k * span)
            target = dx[n0:n0 + nb]
            if pointwise:                                          # (C, nb*P) -> (nb, C, P)
                cuda.launch_1d(transpose, target.size, dcols, target, np.int32(nb),
                               np.int64(plane), np.int64(c))
            else:
                cuda.launch_1d(cuda.kernel("im2col.cu", "col2im", dtype), target.size, dcols,
                               target, *_cuda_geom(c, h, wd, geom, oh, ow), np.int64(plane),
                               np.int64(span))


@conv2d_backward.impl("cuda", available=cuda.importable)
def _conv2d_backward_cuda(dy, x, w, *, geom, group=1, need=(True, True, True), dx_out=None,
                          dw_acc=None, db_acc=None):
    _cuda_check(x.shape, w.shape, group, geom, dy_shape=dy.shape)
    return _conv2d_backward_cuda_parts(dy, x, w, x.shape, geom, group, need, dx_out,
                                       dw_acc, db_acc)


@conv2d_backward_data.impl("cuda", available=cuda.importable)
def _conv2d_backward_data_cuda(dy, w, *, x_hw, geom, group=1):
    x_shape = (dy.shape[0], w.shape[1] * group, *x_hw)
    _cuda_check(x_shape, w.shape, group, geom, dy_shape=dy.shape)
    return _conv2d_backward_cuda_parts(dy, None, w, x_shape, geom, group,
                                       (True, False, False))[0]


@conv2d_backward_filter.impl("cuda", available=cuda.importable)
def _conv2d_backward_filter_cuda(dy, x, *, geom, group=1):
    f, c = dy.shape[1], x.shape[1]
    if group < 1 or c % group:
        raise LayerError(f"channels {c} must be divisible by group {group}")
    _cuda_check(x.shape, (f, c // group, *geom.kernel), group, geom, dy_shape=dy.shape)
    return _conv2d_backward_cuda_parts(dy, x, None, x.shape, geom, group,
                                       (False, True, False))[1]
