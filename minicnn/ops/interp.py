"""Bilinear resizing with aligned corners: the "Interp" layer of the DeepLab and PSPNet Caffe
forks. It is not in BVLC Caffe (its interp_param is a fork field; see minicnn.proto.schema).

Cropping. pad_beg and pad_end must be <= 0: they crop |pad_beg| rows and columns at the start and
|pad_end| at the end (the same on both axes), leaving H_eff = H + pad_beg + pad_end rows (and
W_eff columns), read from row -pad_beg on. Positive pads are refused, as in the forks.

Output size (interp_output_hw), from exactly one of:
    zoom_factor z >= 1                H_out = H_eff + (H_eff - 1)(z - 1)
    shrink_factor s >= 1              H_out = (H_eff - 1) // s + 1
    both                              shrink first, then zoom the shrunk size
    height and width (both, > 0)      H_out = height, W_out = width
    a second bottom                   H_out, W_out = its H, W
The forks take the first of shrink-only, zoom-only, height/width, shrink+zoom that applies and
refuse a second bottom together with any of the others; minicnn refuses every combination that
would silently ignore a field (zoom with height, height without width).

Values. Per axis, output index i reads the source coordinate (corner-aligned: the first and last
outputs sit on the first and last effective inputs, like align_corners=True)

    s = i (H_eff - 1) / (H_out - 1)          (s = 0 when H_out == 1)
    i0 = floor(s), i1 = min(i0 + 1, H_eff - 1), t = s - i0
    y[i] = (1 - t) x[i0 - pad_beg] + t x[i1 - pad_beg]

and the two axes are separable: y = A_h x A_w^T with A (H_out, H) holding those weights (columns
outside the crop are 0). Equal sizes give the identity. Backward is the exact adjoint,
dx = A_h^T dy A_w: each dy element is scatter-added onto the (up to) four pixels it read, with
the same weights; cropped-away pixels get 0. Linear, so no kinks. The forks compute the ratio
(H_eff - 1) / (H_out - 1) in float32 even for double blobs; minicnn uses float64 weights cast to
the input dtype, which differs from them by a rounding (~1e-7 relative) at most.
Impls: ref.
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op

__all__ = ["interp_backward", "interp_forward", "interp_output_hw"]

interp_forward, interp_backward = Op("interp_forward"), Op("interp_backward")


def _check_pads(pad_beg, pad_end):
    if pad_beg > 0 or pad_end > 0:
        raise LayerError(f"Interp supports only pad_beg <= 0 and pad_end <= 0 (cropping), got "
                         f"pad_beg {pad_beg} and pad_end {pad_end}")


def _effective(h, w, pad_beg, pad_end):
    _check_pads(pad_beg, pad_end)
    h_eff, w_eff = h + pad_beg + pad_end, w + pad_beg + pad_end
    if h_eff < 1 or w_eff < 1:
        raise LayerError(f"Interp crops the {h}x{w} input to {h_eff}x{w_eff} (pad_beg {pad_beg}, "
                         f"pad_end {pad_end}): nothing is left")
    return h_eff, w_eff


def interp_output_hw(h, w, *, zoom_factor=None, shrink_factor=None, height=None, width=None,
                     size_hw=None, pad_beg=0, pad_end=0):
    """(H_out, W_out) for an (h, w) input by the rules above; pass only the fields that are set
    (None = not given) and ``size_hw`` = the second bottom's (H, W) if there is one."""
    h_eff, w_eff = _effective(h, w, pad_beg, pad_end)
    given = [name for name, v in (("zoom_factor", zoom_factor), ("shrink_factor", shrink_factor),
                                  ("height", height), ("width", width)) if v is not None]
    if size_hw is not None:
        if given:
            raise LayerError(f"Interp with a second bottom takes its size from it; "
                             f"{', '.join(given)} must not be given too (ambiguous)")
        out = tuple(size_hw)
    elif height is not None or width is not None:
        if height is None or width is None:
            raise LayerError(f"Interp needs both height and width, got height {height} and "
                             f"width {width}")
        if zoom_factor is not None or shrink_factor is not None:
            raise LayerError(f"give Interp height and width ({height}, {width}) or "
                             f"zoom_factor/shrink_factor ({zoom_factor}, {shrink_factor}), not "
                             f"both")
        out = (height, width)
    elif zoom_factor is not None or shrink_factor is not None:
        out = (h_eff, w_eff)
        if shrink_factor is not None:
            if shrink_factor < 1:
                raise LayerError(f"Interp shrink_factor must be >= 1, got {shrink_factor}")
            out = tuple((size - 1) // shrink_factor + 1 for size in out)
        if zoom_factor is not None:
            if zoom_factor < 1:
                raise LayerError(f"Interp zoom_factor must be >= 1, got {zoom_factor}")
            out = tuple(size + (size - 1) * (zoom_factor - 1) for size in out)
    else:
        raise LayerError("Interp needs its output size: zoom_factor, shrink_factor (or both), "
                         "height and width, or a second bottom")
    if min(out) < 1:
        raise LayerError(f"Interp output size must be positive, got {out[0]}x{out[1]} for a "
                         f"{h}x{w} input")
    return int(out[0]), int(out[1])


def _weights(size_in, size_out, pad_beg, size_eff, dtype):
    """A (size_out, size_in): row i holds the two corner-aligned bilinear weights of output i."""
    a = np.zeros((size_out, size_in), np.float64)
    i = np.arange(size_out)
    # integer numerator, one division: s is exact whenever it is a whole number
    s = i * (size_eff - 1) / (size_out - 1) if size_out > 1 else np.zeros(size_out)
    i0 = np.minimum(np.floor(s).astype(np.int64), size_eff - 1)
    i1 = np.minimum(i0 + 1, size_eff - 1)
    t = s - i0
    np.add.at(a, (i, i0 - pad_beg), 1 - t)      # add: i0 == i1 on the last input row
    np.add.at(a, (i, i1 - pad_beg), t)
    return a.astype(dtype)


def _check_4d(name, shape):
    if len(shape) != 4:
        raise LayerError(f"Interp needs a 4-D (N, C, H, W) {name}, got shape {tuple(shape)}")


@interp_forward.impl("ref")
def _interp_forward_ref(x, *, out_hw, pad_beg=0, pad_end=0):
    """(N, C, H, W) -> (N, C, H_out, W_out)."""
    _check_4d("input", x.shape)
    h, w = x.shape[2:]
    h_eff, w_eff = _effective(h, w, pad_beg, pad_end)
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise LayerError(f"Interp output size must be two positive sizes, got {out_hw}")
    a_h = _weights(h, out_hw[0], pad_beg, h_eff, x.dtype)
    a_w = _weights(w, out_hw[1], pad_beg, w_eff, x.dtype)
    return np.matmul(np.matmul(a_h, x), a_w.T)


@interp_backward.impl("ref")
def _interp_backward_ref(dy, x_shape, *, pad_beg=0, pad_end=0):
    """dy (N, C, H_out, W_out) -> dx (N, C, H, W) = x_shape: the adjoint of the forward."""
    _check_4d("input", x_shape)
    _check_4d("dy", dy.shape)
    if tuple(dy.shape[:2]) != tuple(x_shape[:2]):
        raise LayerError(f"dy of shape {tuple(dy.shape)} does not fit an input of shape "
                         f"{tuple(x_shape)}")
    h, w = x_shape[2:]
    h_eff, w_eff = _effective(h, w, pad_beg, pad_end)
    a_h = _weights(h, dy.shape[2], pad_beg, h_eff, dy.dtype)
    a_w = _weights(w, dy.shape[3], pad_beg, w_eff, dy.dtype)
    return np.matmul(np.matmul(a_h.T, dy), a_w)


# --- CUDA (cuBLAS: the two small weight matrices times the planes, batched) ----------------------

from minicnn import cuda  # noqa: E402


@interp_forward.impl("cuda", available=cuda.importable)
def _interp_forward_cuda(x, *, out_hw, pad_beg=0, pad_end=0):
    _check_4d("input", x.shape)
    h, w = x.shape[2:]
    h_eff, w_eff = _effective(h, w, pad_beg, pad_end)
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise LayerError(f"Interp output size must be two positive sizes, got {out_hw}")
    cp = cuda.cupy()
    a_h = cp.asarray(_weights(h, out_hw[0], pad_beg, h_eff, x.dtype))
    a_w_t = cp.asarray(np.ascontiguousarray(_weights(w, out_hw[1], pad_beg, w_eff, x.dtype).T))
    return cp.matmul(cp.matmul(a_h, cuda.contiguous(x)), a_w_t)


@interp_backward.impl("cuda", available=cuda.importable)
def _interp_backward_cuda(dy, x_shape, *, pad_beg=0, pad_end=0):
    _check_4d("input", x_shape)
    _check_4d("dy", dy.shape)
    if tuple(dy.shape[:2]) != tuple(x_shape[:2]):
        raise LayerError(f"dy of shape {tuple(dy.shape)} does not fit an input of shape "
                         f"{tuple(x_shape)}")
    h, w = x_shape[2:]
    h_eff, w_eff = _effective(h, w, pad_beg, pad_end)
    cp = cuda.cupy()
    a_h_t = cp.asarray(np.ascontiguousarray(_weights(h, dy.shape[2], pad_beg, h_eff, dy.dtype).T))
    a_w = cp.asarray(_weights(w, dy.shape[3], pad_beg, w_eff, dy.dtype))
    return cp.matmul(cp.matmul(a_h_t, cuda.contiguous(dy)), a_w)
