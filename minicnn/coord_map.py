"""Where one blob's pixels sit in another's, for nets written with net_spec (pycaffe's
``caffe.coord_map``), and the Crop that aligns them: what FCN-style nets use to cut their
upsampled scores back onto the input.

    from minicnn.coord_map import crop
    n.score = crop(n.upscore, n.data)      # L.Crop(n.upscore, n.data) with the right offset

Each spatial layer maps its top's coordinates to its bottom's by an affine map per axis,
``bottom = a * top + b`` (a centre of a window to the centre of the window it came from):
Convolution and Pooling with stride s, padding p and (dilated) kernel extent k give
``a = s, b = (k - 1) / 2 - p``; Deconvolution the inverse; Crop a shift by its offset; layers
that keep every pixel where it was (ReLU, BatchNorm, Eltwise, ...) the identity. The maps are
written, as pycaffe writes them, from bottom to top: ``top = (1 / s) * bottom + (p - (k - 1) / 2)
/ s`` for a convolution. ``coord_map_from_to(a, b)`` walks both tops back to a common blob and
composes the maps in between; ``crop`` turns the result into a Crop layer, and refuses when
the two grids differ in scale or the offset is negative or fractional.

As in pycaffe, Pooling counts as a convolution of its kernel (Caffe's ceil rounding only adds
a last window; where pixels sit does not change), and Crop follows its first bottom.
"""

import numpy as np

from minicnn.net_spec import layers as L

__all__ = ["coord_map", "coord_map_from_to", "compose", "inverse", "crop", "conv_params",
           "crop_params",
           "UndefinedMapException", "AxisMismatchException", "PASS_THROUGH_LAYERS"]

# Layers whose top pixel i is the bottom's pixel i.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold", "Clip", "Swish"]


class UndefinedMapException(Exception):
    """The layer moves pixels in a way no affine map per axis describes (InnerProduct, global
    pooling, Interp, ...)."""


class AxisMismatchException(Exception):
    """Two maps start at different axes (a Crop of axis 1 after a convolution's axis 2)."""


def _fields(fn, message):
    """The layer's keywords, with those of its ``<message>`` dict (where pycaffe looks first)."""
    fields = dict(fn.params)
    nested = fields.get(message)
    if isinstance(nested, dict):
        fields.update(nested)
    return fields


def _spatial(fields, name, default, fn):
    """A per-axis field as an array: ``name`` (one value or a list), or its _h/_w pair."""
    if f"{name}_h" in fields or f"{name}_w" in fields:
        if name in fields:
            raise ValueError(f"{fn.type_name}: give {name} or {name}_h/{name}_w, not both")
        return np.array([fields.get(f"{name}_h", default), fields.get(f"{name}_w", default)],
                        dtype=float)
    return np.array(fields.get(name, default), dtype=float, ndmin=1)


def _window_params(fn):
    """(first spatial axis, stride, kernel extent, pad) of a Convolution, Pooling or Im2col."""
    if fn.type_name == "Pooling":
        fields = _fields(fn, "pooling_param")
        if fields.get("global_pooling"):
            raise UndefinedMapException(f"{fn.type_name} with global_pooling has no pixel map")
        axis = 1
        dilation = 1.0
    else:
        fields = _fields(fn, "convolution_param")
        axis = fields.get("axis", 1)
        dilation = _spatial(fields, "dilation", 1, fn) if "dilation" in fields else 1.0
    if "kernel_size" not in fields and "kernel_h" not in fields:
        raise ValueError(f"{fn.type_name}: the coordinate map needs its kernel_size")
    kernel = _spatial(fields, "kernel", 1, fn) if "kernel_h" in fields else \
        _spatial(fields, "kernel_size", 1, fn)
    return (axis, _spatial(fields, "stride", 1, fn), (kernel - 1) * dilation + 1,
            _spatial(fields, "pad", 0, fn))


def conv_params(fn):
    """pycaffe's coord_map.conv_params: (axis, stride, kernel extent, pad) of a Convolution,
    Deconvolution, Pooling or Im2col Function, the last three as arrays (one value, or one per
    spatial axis); the extent counts the dilation. The _h/_w fields are read too (pycaffe
    refuses them)."""
    return _window_params(fn)


def crop_params(fn):
    """pycaffe's coord_map.crop_params: (axis, offset array) of a Crop Function, with Caffe's
    defaults (axis 2, offset 0)."""
    fields = _fields(fn, "crop_param")
    return fields.get("axis", 2), np.array(fields.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The map of one layer (a net_spec Function) from its bottom's coordinates to its top's:
    (first axis it applies to or None for any, scale a, offset b) with top = a * bottom + b."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = _window_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = _window_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset.astype(float)        # the axis before the first cropped one
    raise UndefinedMapException(f"{fn.type_name} has no coordinate map")


def compose(base_map, next_map):
    """The map ``next_map`` after ``base_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"maps of axis {ax1} and axis {ax2} do not compose")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _bottoms(top):
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms    # Crop follows its first


def _maps_back(top):
    """Every blob reachable from ``top`` through mapped layers, with its map to ``top``,
    in the order reached."""
    maps, frontier = {top: (None, 1, 0)}, [top]
    while frontier:
        current = frontier.pop()
        try:
            layer_map = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _bottoms(current):
            if bottom not in maps:
                maps[bottom] = compose(maps[current], layer_map)
                frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map taking ``top_from``'s coordinates to ``top_to``'s, through their nearest
    common ancestor blob (the nets these are for have one path of spatial layers)."""
    from_maps = _maps_back(top_from)
    to_maps = _maps_back(top_to)
    for blob, to_map in to_maps.items():
        if blob in from_maps:
            return compose(to_map, inverse(from_maps[blob]))
    raise ValueError("cannot map between the two tops: no common blob reached through "
                     "spatial layers (Convolution, Pooling, Deconvolution, Crop, elementwise)")


def crop(top_from, top_to):
    """``L.Crop(top_from, top_to)`` with the axis and offsets that put ``top_from``'s pixels
    onto ``top_to``'s (pycaffe's caffe.coord_map.crop)."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.broadcast_to(a, np.shape(b)), np.asarray(b, dtype=float)
    if not np.all(a == 1):
        raise ValueError(f"cannot crop: the two tops' grids differ in scale (a = {a})")
    if not np.all(b <= 0):
        raise ValueError(f"cannot crop: {top_from.fn.type_name}'s top starts inside the other "
                         f"(offset {-b}); it would need padding")
    if not np.all(np.round(b) == b):
        raise ValueError(f"cannot crop: the offset {-b} is not a whole number of pixels")
    offsets = [int(v) for v in -np.round(b)]
    return L.Crop(top_from, top_to, crop_param={"axis": (ax if ax is not None else 1) + 1,
                                                "offset": offsets})
