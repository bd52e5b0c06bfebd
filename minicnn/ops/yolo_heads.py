"""The output layers of YOLOv2 and YOLOv3, as Darknet computes them at test time
(src/region_layer.c forward_region_layer, src/yolo_layer.c forward_yolo_layer).

The bottom is a convolution's output (N, A*E, H, W): A anchors, each with E = coords + 1 + classes
planes of H x W ("entries"), in Darknet's order

    entry 0, 1          x, y: the box centre's offset inside its cell        -> logistic
    entry 2, 3          w, h: log of the box size over the anchor's           (left as they are)
    entries 4..coords-1 further coordinates, if any                          (left as they are)
    entry coords        objectness                                           -> logistic
    entries coords+1..  class scores                                         -> logistic, or a
                                                                                softmax over them

so the top has the bottom's shape and layout. ``softmax`` (YOLOv2's [region] softmax=1) takes
the softmax over each anchor's classes at each place; without it (YOLOv3's [yolo], and [region]
softmax=0) each class score is a logistic on its own. ``background`` (a [region] option) has no
objectness: the softmax runs over classes + 1 entries starting at entry ``coords``, the first of
them a background class. ``tree`` (a [region]'s tree=, YOLO9000; minicnn.ops.softmax_tree) takes
one softmax per group of sibling classes instead, over each anchor's classes at each place, as
Darknet's GPU path does (softmax_tree kernel, temperature 1). Debian's CPU-only libdarknet
computes something else there: its CPU branch offsets each group by entries, not by planes, and
divides by the region layer's temperature, which parse_region never sets (0): NaN. minicnn
follows the GPU path, the one YOLO9000's weights were trained with and the one the decoding
(get_region_detections) assumes. What a detector then reads from the top (boxes, scores) is
minicnn.detection's head_boxes.

Backward is the chain rule through those maps: y (1 - y) for a logistic, y (dy - sum(dy y)) for
a softmax (per group for a tree), dy itself for w, h. Darknet has no such backward (its layers are
losses when training); minicnn's lets a saliency map or a fine-tuning loss reach through the head.
"""

import numpy as np

from minicnn.ops._dispatch import Op
from minicnn.ops.softmax_tree import _softmax_tree_backward_ref, _softmax_tree_forward_ref

yolo_head_forward, yolo_head_backward = Op("yolo_head_forward"), Op("yolo_head_backward")


def head_entries(coords, classes):
    return coords + 1 + classes


def _planes(a, anchors):
    """(N, A*E, H, W) -> a (N, A, E, H*W) view."""
    n, c, h, w = a.shape
    return a.reshape(n, anchors, c // anchors, h * w)


def _logistic(v):
    return 0.5 * np.tanh(0.5 * v) + 0.5               # 1/(1+exp(-v)) without its overflow


def _parts(coords, classes, softmax, background, tree=None):
    """(entries under a logistic, the softmax's entries as a slice or None)."""
    logistic = [0, 1]
    if not background:
        logistic.append(coords)
    if tree is not None:
        return logistic, slice(coords + 1, coords + 1 + classes)
    if softmax:
        start = coords + (0 if background else 1)
        return logistic, slice(start, start + classes + (1 if background else 0))
    return logistic + list(range(coords + 1, coords + 1 + classes)), None


@yolo_head_forward.impl("ref")
def _yolo_head_forward_ref(x, *, anchors, coords=4, classes, softmax=False, background=False,
                           tree=None):
    """The activated head: x (N, anchors*(coords+1+classes), H, W) -> y of the same shape."""
    y = x.copy()
    xv, yv = _planes(x, anchors), _planes(y, anchors)
    logistic, soft = _parts(coords, classes, softmax, background, tree)
    yv[:, :, logistic] = _logistic(xv[:, :, logistic])
    if tree is not None:
        yv[:, :, soft] = _softmax_tree_forward_ref(xv[:, :, soft], tree=tree, axis=2)
    elif soft is not None:
        z = xv[:, :, soft]
        e = np.exp(z - z.max(axis=2, keepdims=True))
        yv[:, :, soft] = e / e.sum(axis=2, keepdims=True)
    return y


@yolo_head_backward.impl("ref")
def _yolo_head_backward_ref(dy, y, *, anchors, coords=4, classes, softmax=False,
                            background=False, tree=None):
    """dx from the top's diff and the top itself (so the layer could run in place)."""
    dx = dy.copy()
    dv, yv, xv = _planes(dy, anchors), _planes(y, anchors), _planes(dx, anchors)
    logistic, soft = _parts(coords, classes, softmax, background, tree)
    s = yv[:, :, logistic]
    xv[:, :, logistic] = dv[:, :, logistic] * s * (1 - s)
    if tree is not None:
        xv[:, :, soft] = _softmax_tree_backward_ref(dv[:, :, soft], yv[:, :, soft], tree=tree,
                                                    axis=2)
    elif soft is not None:
        p, g = yv[:, :, soft], dv[:, :, soft]
        xv[:, :, soft] = p * (g - (g * p).sum(axis=2, keepdims=True))
    return dx
