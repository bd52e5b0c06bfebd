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
them a background class. What a detector then reads from the top (boxes, scores) is
minicnn.detection's region_detections.

Backward is the chain rule through those maps: y (1 - y) for a logistic, y (dy - sum(dy y)) for
a softmax, dy itself for w, h. Darknet has no such backward (its layers are losses when
training); minicnn's lets a saliency map or a fine-tuning loss reach through the head.
"""

import numpy as np

from minicnn.ops._dispatch import Op

yolo_head_forward, yolo_head_backward = Op("yolo_head_forward"), Op("yolo_head_backward")


def head_entries(coords, classes):
    return coords + 1 + classes


def _planes(a, anchors):
    """(N, A*E, H, W) -> a (N, A, E, H*W) view."""
    n, c, h, w = a.shape
    return a.reshape(n, anchors, c // anchors, h * w)


def _logistic(v):
    return 0.5 * np.tanh(0.5 * v) + 0.5               # 1/(1+exp(-v)) without its overflow


def _parts(coords, classes, softmax, background):
    """(entries under a logistic, the softmax's entries as a slice or None)."""
    logistic = [0, 1]
    if not background:
        logistic.append(coords)
    if softmax:
        start = coords + (0 if background else 1)
        return logistic, slice(start, start + classes + (1 if background else 0))
    return logistic + list(range(coords + 1, coords + 1 + classes)), None


@yolo_head_forward.impl("ref")
def _yolo_head_forward_ref(x, *, anchors, coords=4, classes, softmax=False, background=False):
    """The activated head: x (N, anchors*(coords+1+classes), H, W) -> y of the same shape."""
    y = x.copy()
    xv, yv = _planes(x, anchors), _planes(y, anchors)
    logistic, soft = _parts(coords, classes, softmax, background)
    yv[:, :, logistic] = _logistic(xv[:, :, logistic])
    if soft is not None:
        z = xv[:, :, soft]
        e = np.exp(z - z.max(axis=2, keepdims=True))
        yv[:, :, soft] = e / e.sum(axis=2, keepdims=True)
    return y


@yolo_head_backward.impl("ref")
def _yolo_head_backward_ref(dy, y, *, anchors, coords=4, classes, softmax=False,
                            background=False):
    """dx from the top's diff and the top itself (so the layer could run in place)."""
    dx = dy.copy()
    dv, yv, xv = _planes(dy, anchors), _planes(y, anchors), _planes(dx, anchors)
    logistic, soft = _parts(coords, classes, softmax, background)
    s = yv[:, :, logistic]
    xv[:, :, logistic] = dv[:, :, logistic] * s * (1 - s)
    if soft is not None:
        p, g = yv[:, :, soft], dv[:, :, soft]
        xv[:, :, soft] = p * (g - (g * p).sum(axis=2, keepdims=True))
    return dx
